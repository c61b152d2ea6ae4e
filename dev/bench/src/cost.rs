//! What one million answers cost at a memory size: Lambda GB-seconds (arm64) and
//! requests, DynamoDB request units (on-demand). The prices and the answer's
//! shape are stated here and printed with the table.

/// When the prices below were taken, and from where.
pub const PRICES_TAKEN: &str = "2026-12-01, AWS list prices for us-east-1 as published on \
     aws.amazon.com/lambda/pricing and aws.amazon.com/dynamodb/pricing/on-demand \
     (Lambda arm64 first tier; DynamoDB on-demand since its 2024-11-01 cut); \
     not fetched by the benchmark: check them before relying on the totals";
/// Lambda arm64, USD per GB-second (first 7.5 billion GB-s a month).
pub const LAMBDA_GB_S: f64 = 0.000_013_333_4;
/// Lambda, USD per request.
pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
/// DynamoDB on-demand, USD per write request unit.
pub const DDB_WRITE_UNIT: f64 = 0.625 / 1e6;
/// DynamoDB on-demand, USD per read request unit.
pub const DDB_READ_UNIT: f64 = 0.125 / 1e6;

/// The answer the cost is computed for.
pub const ANSWER_TOKENS: f64 = 500.0;
/// The model's pace once it streams (tokens per second).
pub const TOKENS_PER_SECOND: f64 = 50.0;
/// The model's own time to its first token (s).
pub const UPSTREAM_FIRST_TOKEN_S: f64 = 1.0;
/// Share of answers that start a new instance (their Init is billed too).
pub const COLD_START_SHARE: f64 = 0.01;

pub fn assumptions() -> String {
    format!(
        "one answer = {ANSWER_TOKENS} tokens at {TOKENS_PER_SECOND} tokens/s after {UPSTREAM_FIRST_TOKEN_S} s \
         to the model's first token, billed from the event to the end of the invocation \
         (the function's own TTFT overhead and its time after the last token added); \
         {:.0} % of answers pay a cold start's Init; Lambda arm64 ${LAMBDA_GB_S} per GB-s, \
         ${:.2} per 1M requests; DynamoDB on-demand ${:.3} per 1M write units, ${:.3} per 1M \
         read units, units per send as measured; API Gateway, data transfer and logs not included",
        COLD_START_SHARE * 100.0,
        LAMBDA_REQUEST * 1e6,
        DDB_WRITE_UNIT * 1e6,
        DDB_READ_UNIT * 1e6,
    )
}

/// What the cost of one answer is made of, as measured.
pub struct Measured {
    pub memory_mb: u32,
    /// The function's own time before the first token (ms).
    pub overhead_ms: f64,
    /// Relay cost per token beyond the model's pace (µs, wall).
    pub relay_us: f64,
    /// Last token → end of the invocation (ms).
    pub tail_ms: f64,
    pub init_ms: f64,
    pub read_units: f64,
    pub write_units: f64,
}

/// (Lambda, DynamoDB) USD per million answers.
pub fn per_million(m: &Measured) -> (f64, f64) {
    let gb = f64::from(m.memory_mb) / 1024.0;
    // The stream is paced by the model; relaying only adds when it is slower
    // than the pace, which it is not by orders of magnitude, so its wall cost
    // is added as is (an upper bound).
    let seconds = UPSTREAM_FIRST_TOKEN_S
        + ANSWER_TOKENS / TOKENS_PER_SECOND
        + (m.overhead_ms.max(0.0) + m.tail_ms + COLD_START_SHARE * m.init_ms) / 1000.0
        + ANSWER_TOKENS * m.relay_us.max(0.0) / 1e6;
    let lambda = gb * seconds * LAMBDA_GB_S + LAMBDA_REQUEST;
    let dynamodb = m.read_units * DDB_READ_UNIT + m.write_units * DDB_WRITE_UNIT;
    (lambda * 1e6, dynamodb * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_128_mb_answer_costs_half_a_256_mb_one_in_gb_seconds() {
        let m = |memory_mb| Measured {
            memory_mb,
            overhead_ms: 0.0,
            relay_us: 0.0,
            tail_ms: 0.0,
            init_ms: 0.0,
            read_units: 0.5,
            write_units: 4.0,
        };
        let (l128, d) = per_million(&m(128));
        let (l256, _) = per_million(&m(256));
        // 11 s at 0.125 GB: 1.375 GB-s an answer.
        assert!((l128 - (1.375 * LAMBDA_GB_S + LAMBDA_REQUEST) * 1e6).abs() < 1e-9);
        assert!((l256 - 0.2) - 2.0 * (l128 - 0.2) < 1e-9);
        assert!((d - (0.5 * 0.125 + 4.0 * 0.625)).abs() < 1e-9);
    }
}
