//! The `regenerate` function: streams an answer to the browser (Lambda response streaming).

use samosachaat::{chat, runtime, AppState};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let state = AppState::from_env().await?;
    runtime::run_streaming(move |req| chat::regenerate(state.clone(), req)).await
}
