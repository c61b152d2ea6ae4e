//! The library behind the samosaChaat chat functions.
//!
//! Data flows one way: request -> [`auth`] -> [`api`] (route, body) -> [`store`]
//! (one Query) -> [`prompt`] -> [`inference`] -> [`relay`] (stream to the browser)
//! -> [`store`] (persist) -> `done`. [`chat`] ties those together for `send` and
//! `regenerate`; [`conversations`] serves the CRUD routes; [`live`] keeps an
//! answer in DynamoDB while it streams (stop, resume, settling dead answers).

pub mod api;
pub mod auth;
pub mod chat;
pub mod conversations;
pub mod foundation;
pub mod inference;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod prompt;
pub mod relay;
pub mod runtime;
pub mod runtime_api;
pub mod schema;
pub mod sse;
pub mod state;
pub mod store;

pub use foundation::error::ApiError;
pub use state::AppState;
