//! DynamoDB requests per send, through counting proxies: a separate function
//! process whose DynamoDB endpoint and inference URL point at proxies of the
//! benchmark. For each send: the requests, and the round trips (requests that
//! overlap in time count as one), started before the upstream call; all
//! requests; new connections; estimated capacity units; the order of events.

use std::fmt::Write as _;
use std::time::Instant;

use crate::capacity::Units;
use crate::driver::{Bench, Res, INIT_TIMEOUT, SMALL_TOKENS};
use crate::proxy::{self, Exchange, Proxy};
use crate::stats::ms;

/// What one send did, seen from the proxies.
pub struct Counted {
    /// Sent with an `Idempotency-Key`.
    pub keyed: bool,
    /// Time to first token through the proxies.
    pub ttft_ms: f64,
    /// Requests started before the function opened its upstream connection.
    pub before_open: usize,
    /// Round trips among those (overlapping requests count once).
    pub round_trips_before_open: usize,
    /// Requests started before the upstream request's first byte.
    pub before_request: usize,
    pub total: usize,
    /// New DynamoDB connections the function opened.
    pub connections: usize,
    pub units: Units,
    /// Of `units`, those of the per-user limit record (`LIMIT#<user>`).
    pub limit_units: Units,
    /// Requests to the limit record among those before the upstream call opens.
    pub limits_before_open: usize,
    pub pattern: String,
    /// released → first request sent → last reply before upstream → upstream
    /// opened → first token (ms).
    pub phases: Option<[f64; 4]>,
}

/// Round trips: requests grouped by overlap of their [sent, replied] spans.
pub fn round_trips(exchanges: &[&Exchange]) -> usize {
    trips(
        exchanges
            .iter()
            .map(|x| (x.sent, x.replied.unwrap_or(x.sent)))
            .collect(),
    )
}

fn trips(mut spans: Vec<(Instant, Instant)>) -> usize {
    spans.sort();
    let mut trips = 0;
    let mut end: Option<Instant> = None;
    for (s, e) in spans {
        match end {
            Some(t) if s <= t => end = Some(t.max(e)),
            _ => {
                trips += 1;
                end = Some(e);
            }
        }
    }
    trips
}

pub async fn run(b: &mut Bench, n: usize) -> Res<Vec<Counted>> {
    let ddb = Proxy::dynamodb(b.dynamodb)
        .await
        .map_err(|e| e.to_string())?;
    let upstream = Proxy::connections(b.mock)
        .await
        .map_err(|e| e.to_string())?;
    let env = [
        ("AWS_ENDPOINT_URL_DYNAMODB", format!("http://{}", ddb.addr)),
        (
            "INFERENCE_URL",
            format!("http://{}/generate", upstream.addr),
        ),
    ];
    let f = b.start_function("send-count", None, &env).await?;
    f.api.poll(INIT_TIMEOUT).await?;
    let mut out = Vec::new();
    for i in 0..2 * n {
        // The first half without an Idempotency-Key, the second with one.
        b.idempotency_key = i >= n;
        let run = b.send(&f.api, SMALL_TOKENS).await?;
        let released = run.invoked.released;
        let finished = run.invoked.finished;
        let exchanges: Vec<Exchange> = ddb
            .exchanges(released)
            .into_iter()
            .filter(|x| x.sent <= finished)
            .collect();
        let connections = ddb
            .since(released)
            .iter()
            .filter(|l| l.what == proxy::OPEN && l.at <= finished)
            .count();
        let up = upstream.since(released);
        let at = |what: &str| up.iter().find(|l| l.what == what).map(|l| l.at);
        let (open, request) = (at(proxy::OPEN), at(proxy::REQUEST));
        let started_before = |t: Option<Instant>| -> Vec<&Exchange> {
            exchanges
                .iter()
                .filter(|x| t.is_none_or(|u| x.sent < u))
                .collect()
        };
        // The upstream call starts with its request: its connection may have
        // been made ahead, during the round trip, or kept from an earlier answer.
        let before = started_before(request);
        let mut units = Units::default();
        let mut limit_units = Units::default();
        for x in &exchanges {
            units += x.units;
            if x.record == "LIMIT" {
                limit_units += x.units;
            }
        }
        let limits_before_open = before.iter().filter(|x| x.record == "LIMIT").count();
        let mut pattern = String::new();
        let mut marks = [(open, "[upstream opened]"), (request, "[upstream request]")];
        marks.sort_by_key(|m| m.0);
        let mut marks = marks.iter().filter(|m| m.0.is_some()).peekable();
        for x in &exchanges {
            while let Some(m) = marks.next_if(|m| m.0.is_some_and(|t| t <= x.sent)) {
                let _ = write!(pattern, "{} ", m.1);
            }
            let _ = write!(pattern, "{} ", x.op);
        }
        for m in marks {
            let _ = write!(pattern, "{} ", m.1);
        }
        let last_reply = before.iter().filter_map(|x| x.replied).max();
        let phases = match (before.first(), last_reply, request) {
            (Some(q), Some(r), Some(u)) => Some([
                ms(q.sent - released),
                ms(r.saturating_duration_since(q.sent)),
                ms(u.saturating_duration_since(r)),
                ms(run.tokens[0].saturating_duration_since(u)),
            ]),
            _ => None,
        };
        out.push(Counted {
            keyed: b.idempotency_key,
            ttft_ms: ms(run.ttft()),
            before_open: before.len(),
            round_trips_before_open: round_trips(&before),
            before_request: started_before(request).len(),
            total: exchanges.len(),
            connections,
            units,
            limit_units,
            limits_before_open,
            pattern: pattern.trim().to_owned(),
            phases,
        });
    }
    b.idempotency_key = false;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn overlapping_requests_are_one_round_trip() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        // Query and a concurrent conditional update, then a write after both.
        assert_eq!(
            trips(vec![(at(0), at(3)), (at(1), at(4)), (at(5), at(6))]),
            2
        );
        assert_eq!(trips(vec![(at(0), at(1)), (at(2), at(3))]), 2);
        assert_eq!(trips(vec![]), 0);
    }
}
