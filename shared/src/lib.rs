//! The library behind the samosaChaat chat functions.
//!
//! Data flows one way: request -> [`auth`] -> [`api`] (route, body) -> [`store`]
//! (one Query) -> [`prompt`] -> [`inference`] -> [`relay`] (stream to the browser)
//! -> [`store`] (persist) -> `done`. [`chat`] ties those together for `send` and
//! `regenerate`; [`conversations`] serves the CRUD routes; [`live`] keeps an
//! answer in DynamoDB while it streams (stop, resume, settling dead answers).

pub mod adapters;
pub mod chat;
pub mod conversations;
pub mod foundation;
pub mod limits;
pub mod live;
pub mod prompt;
pub mod relay;

pub use adapters::state::AppState;
pub use adapters::store;
pub use foundation::error::ApiError;
