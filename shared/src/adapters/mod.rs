//! The outside world, each behind one module: DynamoDB ([`store`]), the
//! inference upstream ([`upstream`]), access tokens ([`auth`]), Lambda's
//! runtime ([`lambda`]), CloudWatch metrics ([`metrics`]), the HTTP surface
//! ([`api`]), and the clients built once per cold start ([`state`]).

pub mod api;
pub mod auth;
pub mod lambda;
pub mod metrics;
pub mod state;
pub mod store;
pub mod upstream;
