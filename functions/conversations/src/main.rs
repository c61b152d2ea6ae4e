//! The `conversations` function: create, list, read, rename and delete conversations.

use samosachaat::adapters::lambda::runtime;
use samosachaat::handlers::conversations;

fn main() -> Result<(), lambda_http::Error> {
    runtime::main(|state| runtime::run_buffered(state, conversations::handle))
}
