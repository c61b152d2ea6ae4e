//! The inference upstream: its client, the request it receives, and the
//! incremental reader of the event stream it answers with.

mod client;
mod request;
pub mod sse;

pub use client::{InferenceClient, StartError, Upstream};
pub use request::{ChatParams, InferenceRequest, Turn};
