//! The `conversations` function: create, list, read, rename and delete conversations.

use samosachaat::{conversations, runtime, AppState};

// One invocation at a time per instance, on a fraction of a vCPU: one thread
// avoids cross-thread wake-ups on every hand-off (see the README's benchmark).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let state = AppState::from_env().await?;
    runtime::run_buffered(move |req| conversations::handle(state.clone(), req)).await
}
