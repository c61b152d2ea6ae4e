//! The `send` function: streams an answer to the browser (Lambda response streaming).

use samosachaat::{chat, runtime, AppState};

// One invocation at a time per instance, on a fraction of a vCPU: one thread
// avoids cross-thread wake-ups on every hand-off (see the README's benchmark).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let state = AppState::from_env().await?;
    runtime::run_streaming(move |req| chat::send(state.clone(), req)).await
}
