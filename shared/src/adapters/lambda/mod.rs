//! How a function meets Lambda: its `main` and the event loop ([`runtime`]), and
//! the Runtime API client ([`runtime_api`]).

pub mod runtime;
pub mod runtime_api;
