//! The `conversations` function: create, list, read, rename and delete conversations.

use samosachaat::{conversations, runtime, AppState};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let state = AppState::from_env().await?;
    runtime::run_buffered(move |req| conversations::handle(state.clone(), req)).await
}
