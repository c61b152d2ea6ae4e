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

/// Relay cost per token, wall (µs), one value per long answer: its send's
/// first-to-last token time minus the direct upstream's, over the gaps between
/// its `tokens` tokens.
pub fn relay_wall_us(send_ms: &[f64], direct_ms: &[f64], tokens: usize) -> Vec<f64> {
    send_ms
        .iter()
        .zip(direct_ms)
        .map(|(s, d)| (s - d) * 1000.0 / (tokens - 1) as f64)
        .collect()
}

/// CPU per relayed token (µs): a long answer's CPU minus a short one's, over
/// the tokens between them.
pub fn relay_cpu_per_token_us(long_cpu_us: &[f64], short_cpu_us: &[f64], tokens: usize) -> f64 {
    (crate::stats::median(long_cpu_us) - crate::stats::median(short_cpu_us))
        / (tokens - crate::driver::SMALL_TOKENS) as f64
}
