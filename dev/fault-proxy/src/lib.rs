//! A small HTTP/1.1 reverse proxy that sits between the AWS SDK and the local
//! DynamoDB server (DynamoDB Local) and injects faults on chosen requests:
//! throttling-style 400 `ProvisionedThroughputExceededException`, 500
//! `InternalFailure`, a transaction conflict (which DynamoDB Local never
//! produces), a connection reset without a response (before or after the
//! upstream applied the request), or added latency.
//!
//! Requests are forwarded faithfully (method, path and query, headers except the
//! hop-by-hop ones, body) and side by side, as DynamoDB receives them; responses
//! come back the same way. Client connections are kept alive and upstream
//! connections are pooled, so the proxy adds no more than a copy of each (small)
//! body to a request that no rule touches.
//!
//! The control API lives under `/__faults` on the same port (the SDK never uses
//! that path); see the crate's README.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Where the control API lives.
pub const CONTROL_PREFIX: &str = "/__faults";
/// At most this many requests are kept in the log (oldest dropped first).
pub const LOG_CAPACITY: usize = 10_000;

pub const THROTTLE_BODY: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded."}"#;
pub const ERROR500_BODY: &str =
    r#"{"__type":"com.amazon.coral.service#InternalFailure","message":"injected"}"#;
pub const TRANSACTION_CONFLICT_BODY: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#;
const AMZ_JSON: &str = "application/x-amz-json-1.0";

/// What a rule does to a request it fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 400 `ProvisionedThroughputExceededException`; not forwarded.
    Throttle,
    /// 500 `InternalFailure`; not forwarded.
    Error500,
    /// What DynamoDB answers a write that meets a transaction in progress on one
    /// of its items: for `TransactWriteItems` a 400 `TransactionCanceledException`
    /// whose first item's reason is `TransactionConflict`, for a single-item
    /// write a 400 `TransactionConflictException`; not forwarded.
    TransactionConflict,
    /// The client connection is reset (SO_LINGER 0) without a response; not forwarded.
    Reset,
    /// Forwarded (the upstream applies it), then the client connection is reset
    /// instead of the response: the "write applied, answer lost" case.
    ResetAfter,
    /// Forwarded after this many milliseconds.
    Latency(u64),
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Throttle => "throttle",
            Self::Error500 => "error500",
            Self::TransactionConflict => "transaction_conflict",
            Self::Reset => "reset",
            Self::ResetAfter => "reset_after",
            Self::Latency(_) => "latency",
        }
    }
}

/// A registered rule and its counters.
#[derive(Debug, Clone)]
struct Rule {
    operation: Option<String>,
    body_contains: Vec<u8>,
    fault: Fault,
    skip: u64,
    /// `None`: every matching request after `skip`.
    times: Option<u64>,
    /// Matching requests seen so far.
    seen: u64,
    /// Requests this rule fired on.
    fired: u64,
}

impl Rule {
    fn matches(&self, operation: Option<&str>, body: &[u8]) -> bool {
        if let Some(op) = &self.operation {
            if operation != Some(op.as_str()) {
                return false;
            }
        }
        contains(body, &self.body_contains)
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "operation": self.operation,
            "body_contains": String::from_utf8_lossy(&self.body_contains),
            "fault": self.fault.name(),
            "skip": self.skip,
            "times": self.times,
            "seen": self.seen,
            "fired": self.fired,
        });
        if let Fault::Latency(ms) = self.fault {
            v["latency_ms"] = json!(ms);
        }
        v
    }
}

/// One proxied request, as the log keeps it.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    operation: Option<String>,
    /// What the client received; `None` when its connection was reset.
    status: Option<u16>,
    /// What the upstream answered; `None` when the request was not forwarded.
    upstream_status: Option<u16>,
    fault: Option<Fault>,
    at_ms: u64,
    /// Arrival to the end of the upstream exchange (or the fault's answer).
    duration_ms: Option<u64>,
    body: Bytes,
}

#[derive(Default)]
struct Faults {
    rules: Vec<Rule>,
    log: VecDeque<Entry>,
    next_seq: u64,
}

struct Proxy {
    upstream: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    faults: Mutex<Faults>,
}

type Body = Full<Bytes>;

/// Parses `--upstream` (`http://host:port`, no path).
pub fn parse_upstream(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("bad upstream {s:?}: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!("upstream must be http://host:port, got {s:?}"));
    }
    Ok(uri)
}

/// Serves the proxy on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, upstream: Uri) -> io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let proxy = Arc::new(Proxy {
        upstream,
        client,
        faults: Mutex::new(Faults::default()),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: wait a little, keep serving.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let reset = Arc::new(Notify::new());
            let svc = {
                let reset = reset.clone();
                service_fn(move |req| handle(proxy.clone(), reset.clone(), req))
            };
            let mut conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = &mut conn => {}
                () = reset.notified() => {
                    // No response: a TCP reset (SO_LINGER 0 then close).
                    let stream = conn.into_parts().io.into_inner();
                    let _ = stream.set_zero_linger();
                    drop(stream);
                }
            }
        });
    }
}

async fn handle(
    proxy: Arc<Proxy>,
    reset: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let at_ms = now_ms();
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "unreadable request body")),
    };
    if parts.uri.path() == CONTROL_PREFIX || parts.uri.path().starts_with("/__faults/") {
        return Ok(control(&proxy, &parts.method, &parts.uri, &body));
    }

    let operation = operation_of(&parts);
    let (fault, seq) = proxy.admit(operation, at_ms, &body);

    match fault {
        Some(Fault::Throttle) => {
            proxy.finish(seq, Some(400), None);
            Ok(amz_json(StatusCode::BAD_REQUEST, THROTTLE_BODY))
        }
        Some(Fault::Error500) => {
            proxy.finish(seq, Some(500), None);
            Ok(amz_json(StatusCode::INTERNAL_SERVER_ERROR, ERROR500_BODY))
        }
        Some(Fault::TransactionConflict) => {
            proxy.finish(seq, Some(400), None);
            let body = transaction_conflict(operation_of(&parts).as_deref(), &body);
            Ok(amz_json(StatusCode::BAD_REQUEST, &body))
        }
        Some(Fault::Reset) => {
            reset.notify_one();
            std::future::pending().await
        }
        Some(Fault::Latency(ms)) => {
            // A delayed request still arrives even if the client gave up on it
            // meanwhile (an SDK attempt timeout): its own task, not the
            // connection's, which is dropped when the client goes away.
            let proxy = proxy.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                proxy.forward(seq, parts, body).await
            });
            Ok(task.await.unwrap_or_else(|_| {
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "fault-proxy: task failed",
                )
            }))
        }
        Some(Fault::ResetAfter) => {
            let _ = proxy.forward(seq, parts, body).await;
            proxy.clear_status(seq);
            reset.notify_one();
            std::future::pending().await
        }
        None => Ok(proxy.forward(seq, parts, body).await),
    }
}

/// The DynamoDB operation of a request: `X-Amz-Target` after the dot.
fn operation_of(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit_once('.').map(|(_, op)| op.to_owned()))
}

/// DynamoDB's answer to a write that meets a transaction in progress: a
/// transaction is cancelled with one reason per item (the first item's is the
/// conflict), a single-item write fails on its own.
fn transaction_conflict(operation: Option<&str>, body: &[u8]) -> String {
    if operation != Some("TransactWriteItems") {
        return TRANSACTION_CONFLICT_BODY.to_owned();
    }
    let items = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("TransactItems")
                .and_then(Value::as_array)
                .map(Vec::len)
        })
        .unwrap_or(1)
        .max(1);
    let reasons: Vec<Value> = (0..items)
        .map(|i| {
            if i == 0 {
                json!({"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"})
            } else {
                json!({"Code": "None"})
            }
        })
        .collect();
    let names: Vec<&str> = (0..items)
        .map(|i| {
            if i == 0 {
                "TransactionConflict"
            } else {
                "None"
            }
        })
        .collect();
    json!({
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "message": format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
            names.join(", ")
        ),
        "CancellationReasons": reasons,
    })
    .to_string()
}

impl Proxy {
    /// Decides the fault for this request, if a rule fires, and logs it (without
    /// its outcome yet); returns the fault and the log sequence number. Every
    /// matching rule counts the request; the first rule (in registration order)
    /// that is past its `skip` and not used up fires and is charged.
    fn admit(&self, operation: Option<String>, at_ms: u64, body: &Bytes) -> (Option<Fault>, u64) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let mut fired = None;
        for rule in faults.rules.iter_mut() {
            if !rule.matches(operation.as_deref(), body) {
                continue;
            }
            rule.seen += 1;
            let armed = rule.seen > rule.skip && rule.times.is_none_or(|t| rule.fired < t);
            if armed && fired.is_none() {
                rule.fired += 1;
                fired = Some(rule.fault);
            }
        }
        let seq = faults.next_seq;
        faults.next_seq += 1;
        if faults.log.len() >= LOG_CAPACITY {
            faults.log.pop_front();
        }
        faults.log.push_back(Entry {
            seq,
            operation,
            status: None,
            upstream_status: None,
            fault: fired,
            at_ms,
            duration_ms: None,
            body: body.clone(),
        });
        (fired, seq)
    }

    fn with_entry(&self, seq: u64, f: impl FnOnce(&mut Entry)) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(pos) = faults.log.binary_search_by_key(&seq, |e| e.seq) {
            f(&mut faults.log[pos]);
        }
    }

    /// Records the outcome of logged request `seq`.
    fn finish(&self, seq: u64, status: Option<u16>, upstream_status: Option<u16>) {
        let now = now_ms();
        self.with_entry(seq, |e| {
            e.status = status;
            e.upstream_status = upstream_status;
            e.duration_ms = Some(now.saturating_sub(e.at_ms));
        });
    }

    /// The client got no response after all (`reset_after`).
    fn clear_status(&self, seq: u64) {
        self.with_entry(seq, |e| e.status = None);
    }

    /// Forwards the request and logs the outcome; an unreachable upstream is a 502.
    async fn forward(&self, seq: u64, parts: Parts, body: Bytes) -> Response<Body> {
        match self.exchange(&parts, body).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                self.finish(seq, Some(status), Some(status));
                resp
            }
            Err(e) => {
                self.finish(seq, Some(502), None);
                let body = json!({
                    "__type": "com.amazon.coral.service#InternalFailure",
                    "message": format!("fault-proxy: upstream failed: {e}"),
                });
                amz_json(StatusCode::BAD_GATEWAY, &body.to_string())
            }
        }
    }

    async fn exchange(&self, parts: &Parts, body: Bytes) -> Result<Response<Body>, String> {
        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let uri = Uri::from_parts(uri).map_err(|e| e.to_string())?;
        let mut req = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        copy_end_to_end(&parts.headers, req.headers_mut());
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let mut out = Response::new(Full::new(body));
        *out.status_mut() = parts.status;
        copy_end_to_end(&parts.headers, out.headers_mut());
        Ok(out)
    }
}

fn control(proxy: &Proxy, method: &Method, uri: &Uri, body: &[u8]) -> Response<Body> {
    let path = uri.path().trim_end_matches('/');
    match (method, path) {
        (&Method::POST, CONTROL_PREFIX) => match parse_rule(body) {
            Ok(rule) => {
                let v = rule.to_json();
                proxy
                    .faults
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .rules
                    .push(rule);
                json_response(StatusCode::CREATED, &v)
            }
            Err(detail) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "detail": detail }),
            ),
        },
        (&Method::GET, CONTROL_PREFIX) => {
            let faults = proxy.faults.lock().unwrap_or_else(|p| p.into_inner());
            let rules: Vec<Value> = faults.rules.iter().map(Rule::to_json).collect();
            json_response(StatusCode::OK, &Value::Array(rules))
        }
        (&Method::GET, "/__faults/log") => {
            let needle = uri
                .query()
                .and_then(|q| query_param(q, "contains"))
                .unwrap_or_default();
            let faults = proxy.faults.lock().unwrap_or_else(|p| p.into_inner());
            let entries: Vec<Value> = faults
                .log
                .iter()
                .filter(|e| contains(&e.body, needle.as_bytes()))
                .map(|e| {
                    json!({
                        "operation": e.operation,
                        "status": e.status,
                        "upstream_status": e.upstream_status,
                        "fault": e.fault.map(Fault::name),
                        "at_ms": e.at_ms,
                        "duration_ms": e.duration_ms,
                        "body": String::from_utf8_lossy(&e.body),
                    })
                })
                .collect();
            json_response(StatusCode::OK, &Value::Array(entries))
        }
        (&Method::POST, "/__faults/reset") => {
            let mut faults = proxy.faults.lock().unwrap_or_else(|p| p.into_inner());
            faults.rules.clear();
            faults.log.clear();
            json_response(StatusCode::OK, &json!({ "ok": true }))
        }
        (&Method::GET, "/__faults/health") => json_response(StatusCode::OK, &json!({"ok": true})),
        (_, CONTROL_PREFIX | "/__faults/log" | "/__faults/reset" | "/__faults/health") => {
            json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "detail": "method not allowed" }),
            )
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({ "detail": "not found" })),
    }
}

/// A rule from its JSON; the error says which field is wrong.
fn parse_rule(body: &[u8]) -> Result<Rule, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("a rule is a JSON object".into());
    };
    const FIELDS: [&str; 6] = [
        "operation",
        "body_contains",
        "fault",
        "latency_ms",
        "skip",
        "times",
    ];
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field {unknown:?}"));
    }
    let operation = match map.get("operation") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => return Err("operation: a DynamoDB operation name or null".into()),
    };
    let body_contains = match map.get("body_contains") {
        Some(Value::String(s)) if !s.is_empty() => s.as_bytes().to_vec(),
        _ => return Err("body_contains: a non-empty string is required".into()),
    };
    let latency = uint(&map, "latency_ms")?;
    let fault = match map.get("fault").and_then(Value::as_str) {
        Some("throttle") => Fault::Throttle,
        Some("error500") => Fault::Error500,
        Some("transaction_conflict") => Fault::TransactionConflict,
        Some("reset") => Fault::Reset,
        Some("reset_after") => Fault::ResetAfter,
        Some("latency") => match latency {
            Some(ms) if ms <= 600_000 => Fault::Latency(ms),
            _ => return Err("latency_ms: 0..=600000 is required for latency".into()),
        },
        _ => return Err(
            "fault: one of throttle, error500, transaction_conflict, reset, reset_after, latency"
                .into(),
        ),
    };
    if latency.is_some() && !matches!(fault, Fault::Latency(_)) {
        return Err("latency_ms: only for the latency fault".into());
    }
    let skip = uint(&map, "skip")?.unwrap_or(0);
    let times = match map.get("times") {
        None => Some(1),
        Some(Value::Null) => None,
        Some(_) => Some(uint(&map, "times")?.unwrap_or(1)),
    };
    Ok(Rule {
        operation,
        body_contains,
        fault,
        skip,
        times,
        seen: 0,
        fired: 0,
    })
}

fn uint(map: &Map<String, Value>, field: &str) -> Result<Option<u64>, String> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{field}: a non-negative integer")),
    }
}

/// Headers that belong to one connection, not to the message (RFC 9110 7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The first value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn amz_json(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    resp.headers_mut().insert(
        "x-amzn-requestid",
        HeaderValue::from_static("fault-proxy-injected"),
    );
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_defaults_and_reject_bad_fields() {
        let r = parse_rule(br#"{"body_contains":"x","fault":"throttle"}"#).unwrap();
        assert_eq!((r.operation, r.skip, r.times), (None, 0, Some(1)));
        let r = parse_rule(
            br#"{"operation":"Query","body_contains":"x","fault":"latency","latency_ms":5,"skip":2,"times":null}"#,
        )
        .unwrap();
        assert_eq!(r.fault, Fault::Latency(5));
        assert_eq!(
            (r.operation.as_deref(), r.skip, r.times),
            (Some("Query"), 2, None)
        );
        for bad in [
            &br#"{"fault":"throttle"}"#[..],
            br#"{"body_contains":"","fault":"throttle"}"#,
            br#"{"body_contains":"x","fault":"boom"}"#,
            br#"{"body_contains":"x","fault":"latency"}"#,
            br#"{"body_contains":"x","fault":"reset","latency_ms":3}"#,
            br#"{"body_contains":"x","fault":"reset","times":-1}"#,
            br#"{"body_contains":"x","fault":"reset","extra":1}"#,
            br#"[]"#,
            br#"nope"#,
        ] {
            assert!(parse_rule(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(
            query_param("a=1&contains=x%20y+z%2", "contains").as_deref(),
            Some("x y z%2")
        );
        assert_eq!(
            query_param("contains=%E2%9C%93", "contains").as_deref(),
            Some("✓")
        );
        assert_eq!(query_param("other=1", "contains"), None);
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(!contains(b"abc", b"abcd"));
        assert!(contains(b"abc", b""));
    }
}
