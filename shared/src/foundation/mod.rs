//! The foundation every layer stands on: the configuration, what can go wrong,
//! and time. It imports nothing else of the crate.

pub mod config;
pub mod error;
pub mod role;
pub mod time_fmt;
