//! Per-invocation metrics in CloudWatch's embedded metric format (EMF): one JSON
//! line on stdout per invocation, which CloudWatch Logs turns into metrics. No
//! network call, no agent, nothing kept between invocations.
//!
//! Every invocation has one [`Invocation`] record, made by the Lambda runtime
//! adapter (`adapters::lambda::runtime`) and reachable from the request's extensions. The record is written when the last
//! part of the invocation lets go of it: the handler for a buffered response, the
//! stream's task for a streamed answer (the handler returns the response at once
//! and the answer goes on in that task, so its figures exist only at the task's
//! end). Lambda runs one invocation at a time per instance, and the Runtime API
//! asks for the next event only once the stream's body has ended, so a record never
//! mixes two invocations.
//!
//! Dimensions are low-cardinality only: the function's name, the route, the status,
//! the answer's outcome. The request id and the trace header go in as properties
//! (searchable in Logs Insights, not metrics); never a user id, conversation id or
//! text.
//!
//! Written by hand rather than through the `metrics` facade and an EMF exporter
//! (`metrics_cloudwatch_embedded`): that exporter writes one document per label
//! set with a single dimension set each, keeps its registry and properties in
//! process-global state, and flushes through a handler wrapper tied to
//! `lambda_runtime`'s loop, which these functions do not use and which would flush
//! before a stream ends. One document with two dimension sets per directive (per
//! outcome, and the function's total) is what the alarms need, and it is a few
//! lines of serde.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "samosaChaat";

/// One per invocation (Count), by function, route and status.
pub const REQUESTS: &str = "Requests";
/// DynamoDB requests the SDK sent again (an attempt after the first), per invocation (Count).
pub const DYNAMODB_RETRIES: &str = "DynamoDBRetries";
/// DynamoDB attempts answered with a throttling error, per invocation (Count).
pub const DYNAMODB_THROTTLES: &str = "DynamoDBThrottles";
/// One per streamed answer (Count), by function and outcome.
pub const ANSWERS: &str = "Answers";
/// From the event reaching the function to the first token handed to the
/// browser's stream (Milliseconds); answers with at least one token.
pub const TIME_TO_FIRST_TOKEN: &str = "TimeToFirstToken";
/// From the upstream request being sent to its first token (Milliseconds).
pub const UPSTREAM_TIME_TO_FIRST_TOKEN: &str = "UpstreamTimeToFirstToken";
/// Token events relayed in one answer (Count).
pub const TOKENS: &str = "Tokens";
/// From the stream opening to its last event (Milliseconds).
pub const STREAM_DURATION: &str = "StreamDuration";

/// Every metric the functions write, with its unit.
pub const METRICS: &[(&str, &str)] = &[
    (REQUESTS, "Count"),
    (DYNAMODB_RETRIES, "Count"),
    (DYNAMODB_THROTTLES, "Count"),
    (ANSWERS, "Count"),
    (TIME_TO_FIRST_TOKEN, "Milliseconds"),
    (UPSTREAM_TIME_TO_FIRST_TOKEN, "Milliseconds"),
    (TOKENS, "Count"),
    (STREAM_DURATION, "Milliseconds"),
];

/// Dimension names.
pub const FUNCTION: &str = "function";
pub const ROUTE: &str = "route";
pub const STATUS: &str = "status";
pub const OUTCOME: &str = "outcome";

/// Every invocation's metrics, and their dimension sets.
pub const REQUEST_METRICS: &[&str] = &[REQUESTS, DYNAMODB_RETRIES, DYNAMODB_THROTTLES];
pub const REQUEST_DIMENSIONS: &[&[&str]] = &[&[FUNCTION, ROUTE, STATUS], &[FUNCTION]];
/// A streamed answer's metrics, and their dimension sets.
pub const ANSWER_METRICS: &[&str] = &[
    ANSWERS,
    TOKENS,
    STREAM_DURATION,
    TIME_TO_FIRST_TOKEN,
    UPSTREAM_TIME_TO_FIRST_TOKEN,
];
pub const ANSWER_DIMENSIONS: &[&[&str]] = &[&[FUNCTION, OUTCOME], &[FUNCTION]];

/// Every outcome of an answer: how its stream ended for the browser.
pub const OUTCOMES: &[&str] = &[
    "done",
    "stopped",
    "inference_unavailable",
    "inference_error",
    "inference_interrupted",
    "persist_failed",
    "conflict",
    // The conversation was deleted while its answer streamed.
    "deleted",
];

/// Counts the DynamoDB client's retries and throttles since the cold start; an
/// invocation reports its own share as the difference between its start and end.
#[derive(Debug, Default)]
pub struct DynamoCounters {
    retries: AtomicU64,
    throttles: AtomicU64,
}

impl DynamoCounters {
    fn snapshot(&self) -> DynamoSnapshot {
        DynamoSnapshot {
            retries: self.retries.load(Ordering::Relaxed),
            throttles: self.throttles.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct DynamoSnapshot {
    retries: u64,
    throttles: u64,
}

/// The DynamoDB client's interceptor feeding [`DynamoCounters`].
#[derive(Debug, Clone, Default)]
pub struct DynamoInterceptor(pub Arc<DynamoCounters>);

/// Error codes DynamoDB throttles with (as `__type` or a cancellation reason).
const THROTTLE_CODES: &[&[u8]] = &[
    b"ProvisionedThroughputExceeded",
    b"ThrottlingException",
    b"ThrottlingError",
    b"RequestLimitExceeded",
];

impl Intercept for DynamoInterceptor {
    fn name(&self) -> &'static str {
        "samosachaat metrics"
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The SDK numbers an operation's attempts from 1.
        if cfg
            .load::<RequestAttempts>()
            .is_some_and(|a| a.attempts() > 1)
        {
            self.0.retries.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        // DynamoDB throttles with a 400 whose body names the error; the body of a
        // non-streaming response is in memory by now. Only codes are looked at.
        if response.status().as_u16() == 400 {
            let body = response.body().bytes().unwrap_or_default();
            if THROTTLE_CODES
                .iter()
                .any(|code| body.windows(code.len()).any(|w| w == *code))
            {
                self.0.throttles.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// What one streamed answer measured.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub outcome: &'static str,
    /// When the first token was handed to the browser's stream.
    pub first_token: Option<Instant>,
    /// When the upstream request was sent.
    pub upstream_started: Option<Instant>,
    pub tokens: u64,
    /// When the stream opened.
    pub stream_opened: Option<Instant>,
}

/// The metrics of one invocation, written as one EMF line when the last clone
/// is dropped. Clones share the record.
#[derive(Debug, Clone)]
pub struct Invocation(Arc<Mutex<Record>>);

#[derive(Debug)]
struct Record {
    /// `None`: not measured (a handler driven in-process by a test).
    out: Option<Out>,
    route: &'static str,
    status: Option<u16>,
    answer: Option<Answer>,
}

#[derive(Debug)]
struct Out {
    function: Arc<str>,
    request_id: String,
    trace_id: Option<String>,
    started: Instant,
    counters: Arc<DynamoCounters>,
    dynamodb_at_start: DynamoSnapshot,
}

impl Invocation {
    /// A record for the invocation that starts now.
    pub fn start(
        function: Arc<str>,
        request_id: String,
        trace_id: Option<String>,
        counters: Arc<DynamoCounters>,
    ) -> Self {
        let dynamodb_at_start = counters.snapshot();
        Self::with(Some(Out {
            function,
            request_id,
            trace_id,
            started: Instant::now(),
            counters,
            dynamodb_at_start,
        }))
    }

    /// A record that is never written.
    pub fn unmeasured() -> Self {
        Self::with(None)
    }

    fn with(out: Option<Out>) -> Self {
        Invocation(Arc::new(Mutex::new(Record {
            out,
            route: "other",
            status: None,
            answer: None,
        })))
    }

    /// The record of `req`'s invocation (an unmeasured one if it has none).
    pub fn of(req: &lambda_http::Request) -> Self {
        req.extensions()
            .get::<Invocation>()
            .cloned()
            .unwrap_or_else(Self::unmeasured)
    }

    fn update(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The route, one of a fixed set of names.
    pub fn route(&self, route: &'static str) {
        self.update(|r| r.route = route);
    }

    pub fn status(&self, status: u16) {
        self.update(|r| r.status = Some(status));
    }

    pub fn answer(&self, answer: Answer) {
        self.update(|r| r.answer = Some(answer));
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let Some(out) = &self.out else {
            return;
        };
        let mut line = self.document(out, SystemTime::now()).to_string();
        line.push('\n');
        // One write of one line: nothing else on this thread writes in between.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Record {
    /// The EMF document: the figures as top-level members, and a directive per
    /// group naming their dimension sets.
    fn document(&self, out: &Out, now: SystemTime) -> Value {
        let ended = Instant::now();
        let dynamodb = out.counters.snapshot();
        let mut doc = Map::new();
        doc.insert(FUNCTION.into(), json!(&*out.function));
        doc.insert(ROUTE.into(), json!(self.route));
        doc.insert(
            STATUS.into(),
            json!(self
                .status
                .map_or_else(|| "none".to_owned(), |s| s.to_string())),
        );
        doc.insert(REQUESTS.into(), json!(1));
        doc.insert(
            DYNAMODB_RETRIES.into(),
            json!(dynamodb
                .retries
                .saturating_sub(out.dynamodb_at_start.retries)),
        );
        doc.insert(
            DYNAMODB_THROTTLES.into(),
            json!(dynamodb
                .throttles
                .saturating_sub(out.dynamodb_at_start.throttles)),
        );
        let mut directives = vec![directive(REQUEST_DIMENSIONS, REQUEST_METRICS)];
        if let Some(answer) = &self.answer {
            doc.insert(OUTCOME.into(), json!(answer.outcome));
            doc.insert(ANSWERS.into(), json!(1));
            doc.insert(TOKENS.into(), json!(answer.tokens));
            let mut names = vec![ANSWERS, TOKENS];
            if let Some(opened) = answer.stream_opened {
                doc.insert(
                    STREAM_DURATION.into(),
                    json!(millis(ended.saturating_duration_since(opened))),
                );
                names.push(STREAM_DURATION);
            }
            if let Some(first) = answer.first_token {
                doc.insert(
                    TIME_TO_FIRST_TOKEN.into(),
                    json!(millis(first.saturating_duration_since(out.started))),
                );
                names.push(TIME_TO_FIRST_TOKEN);
                if let Some(sent) = answer.upstream_started {
                    doc.insert(
                        UPSTREAM_TIME_TO_FIRST_TOKEN.into(),
                        json!(millis(first.saturating_duration_since(sent))),
                    );
                    names.push(UPSTREAM_TIME_TO_FIRST_TOKEN);
                }
            }
            directives.push(directive(ANSWER_DIMENSIONS, &names));
        }
        doc.insert("requestId".into(), json!(out.request_id));
        if let Some(trace) = &out.trace_id {
            doc.insert("traceId".into(), json!(trace));
        }
        let timestamp = now.duration_since(UNIX_EPOCH).map_or(0, millis);
        doc.insert(
            "_aws".into(),
            json!({ "Timestamp": timestamp, "CloudWatchMetrics": directives }),
        );
        Value::Object(doc)
    }
}

fn directive(dimensions: &[&[&str]], names: &[&str]) -> Value {
    let metrics: Vec<Value> = names
        .iter()
        .map(|name| json!({ "Name": name, "Unit": unit(name) }))
        .collect();
    json!({ "Namespace": NAMESPACE, "Dimensions": dimensions, "Metrics": metrics })
}

fn unit(name: &str) -> &'static str {
    METRICS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("None", |(_, unit)| unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(counters: &Arc<DynamoCounters>) -> Out {
        Out {
            function: Arc::from("send"),
            request_id: "req-1".into(),
            trace_id: Some("Root=1-abc".into()),
            started: Instant::now(),
            counters: counters.clone(),
            dynamodb_at_start: counters.snapshot(),
        }
    }

    fn members_named_by(directive: &Value) -> Vec<String> {
        let mut names: Vec<String> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_owned())
            .collect();
        for set in directive["Dimensions"].as_array().unwrap() {
            names.extend(
                set.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap().to_owned()),
            );
        }
        names
    }

    #[test]
    fn a_buffered_request_has_one_directive_and_its_members() {
        let counters = Arc::new(DynamoCounters::default());
        let out = out(&counters);
        counters.retries.fetch_add(3, Ordering::Relaxed);
        counters.throttles.fetch_add(3, Ordering::Relaxed);
        let record = Record {
            out: None,
            route: "list",
            status: Some(200),
            answer: None,
        };
        let doc = record.document(&out, UNIX_EPOCH + Duration::from_millis(1234));
        assert_eq!(doc["_aws"]["Timestamp"], 1234);
        let directives = doc["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 1);
        assert_eq!(directives[0]["Namespace"], NAMESPACE);
        for name in members_named_by(&directives[0]) {
            assert!(doc.get(&name).is_some(), "{name} missing in {doc}");
        }
        assert_eq!(doc[REQUESTS], 1);
        assert_eq!(doc[DYNAMODB_RETRIES], 3);
        assert_eq!(doc[DYNAMODB_THROTTLES], 3);
        assert_eq!(doc[STATUS], "200");
        assert_eq!(doc["requestId"], "req-1");
    }

    #[test]
    fn an_answer_adds_its_outcome_directive_and_units() {
        let counters = Arc::new(DynamoCounters::default());
        let out = out(&counters);
        let t = out.started;
        let record = Record {
            out: None,
            route: "messages",
            status: Some(200),
            answer: Some(Answer {
                outcome: "done",
                first_token: Some(t + Duration::from_millis(30)),
                upstream_started: Some(t + Duration::from_millis(10)),
                tokens: 4,
                stream_opened: Some(t),
            }),
        };
        let doc = record.document(&out, SystemTime::now());
        let directives = doc["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 2);
        assert_eq!(
            directives[1]["Dimensions"],
            json!([[FUNCTION, OUTCOME], [FUNCTION]])
        );
        for name in members_named_by(&directives[1]) {
            assert!(doc.get(&name).is_some(), "{name} missing in {doc}");
        }
        assert_eq!(doc[OUTCOME], "done");
        assert_eq!(doc[TIME_TO_FIRST_TOKEN], 30);
        assert_eq!(doc[UPSTREAM_TIME_TO_FIRST_TOKEN], 20);
        assert_eq!(doc[TOKENS], 4);
        for metric in directives[1]["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            let expected = if name == TIME_TO_FIRST_TOKEN
                || name == UPSTREAM_TIME_TO_FIRST_TOKEN
                || name == STREAM_DURATION
            {
                "Milliseconds"
            } else {
                "Count"
            };
            assert_eq!(metric["Unit"], expected, "{name}");
        }
    }

    #[test]
    fn an_answer_without_tokens_has_no_time_to_first_token() {
        let counters = Arc::new(DynamoCounters::default());
        let out = out(&counters);
        let record = Record {
            out: None,
            route: "regenerate",
            status: Some(200),
            answer: Some(Answer {
                outcome: "inference_unavailable",
                stream_opened: Some(out.started),
                upstream_started: Some(out.started),
                ..Answer::default()
            }),
        };
        let doc = record.document(&out, SystemTime::now());
        assert!(doc.get(TIME_TO_FIRST_TOKEN).is_none());
        assert!(doc.get(UPSTREAM_TIME_TO_FIRST_TOKEN).is_none());
        assert_eq!(doc[TOKENS], 0);
    }
}
