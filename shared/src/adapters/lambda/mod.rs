//! How a function meets Lambda: its `main` and the event loop ([`runtime`]), the
//! Runtime API client ([`runtime_api`]), and each invocation's metrics record
//! ([`metrics`]).

pub mod metrics;
pub mod runtime;
pub mod runtime_api;
