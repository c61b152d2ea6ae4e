//! The `send` function: streams an answer to the browser (Lambda response streaming).

use samosachaat::adapters::lambda::runtime;
use samosachaat::handlers::send;

fn main() -> Result<(), lambda_http::Error> {
    runtime::main(|state| runtime::run_streaming(state, send::send))
}
