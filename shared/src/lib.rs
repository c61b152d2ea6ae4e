//! The library behind the samosaChaat chat functions, in four layers; a module
//! imports only from its own layer or the ones below, never in a circle
//! (`tests/layers.rs` checks both):
//!
//! - [`handlers`]: what a route reaches (send, regenerate, resume, stop,
//!   conversations);
//! - [`domain`]: the rules they use (an answer's life, the relay, live answers,
//!   per-user limits, the prompt);
//! - [`adapters`]: the outside world (the store, the upstream, auth, Lambda's
//!   runtime and metrics, the HTTP surface) and [`AppState`], which holds them;
//! - [`foundation`]: configuration, errors, time, a message's role.
//!
//! Data flows one way: request -> auth -> validate -> load -> prompt -> upstream
//! -> relay -> persist -> `done`.

pub mod adapters;
pub mod domain;
pub mod foundation;
pub mod handlers;

pub use adapters::state::AppState;
pub use adapters::store;
pub use foundation::error::ApiError;
