//! The scenarios: each drives the function (or the peer) through the driver and
//! returns its raw samples; `report` turns them into figures.
//!
//! - `cold`: new processes, Init Duration and the first send after it;
//! - `warm`: one process, paired sends and direct calls (TTFT overhead, CPU per
//!   send) and long answers (relay cost per token), then its peak memory;
//! - `requests`: DynamoDB requests, round trips and capacity units per send,
//!   through counting proxies;
//! - `peer`: the Python service this replaces, against the same mock upstream;
//! - `live`: live answers' DynamoDB units, resume lag and stop latency.
//!
//! A new scenario is one more module here: a `run` function taking the
//! `driver::Bench` (and the share's cgroup when it times the function) and
//! returning a struct of samples, called from `main::run` and rendered by a
//! section of its own in `report`.

pub mod cold;
pub mod live;
pub mod peer;
pub mod requests;
pub mod warm;
