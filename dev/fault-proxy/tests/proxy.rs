//! The proxy in-process, on port 0, in front of a tiny fake upstream that records
//! what it receives and counts its connections.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct Harness {
    proxy: String,
    addr: SocketAddr,
    upstream: Arc<Upstream>,
    http: reqwest::Client,
}

async fn start() -> Harness {
    let upstream = Arc::new(Upstream::default());
    let up_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up_listener.local_addr().unwrap();
    let state = upstream.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = up_listener.accept().await.unwrap();
            state.connections.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        let slow = parts.uri.path() == "/slow";
                        state.seen.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.to_string(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                                .collect(),
                            body: body.clone(),
                        });
                        if slow {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        let out = json!({ "echo": body }).to_string();
                        let resp = Response::builder()
                            .status(if parts.uri.path() == "/teapot" {
                                418
                            } else {
                                200
                            })
                            .header("content-type", "application/x-amz-json-1.0")
                            .header("x-amzn-requestid", "up-1")
                            .header("x-custom", "a")
                            .header("x-custom", "b")
                            .body(Full::new(Bytes::from(out)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream_uri = fault_proxy::parse_upstream(&format!("http://{up_addr}")).unwrap();
    tokio::spawn(fault_proxy::serve(listener, upstream_uri));
    Harness {
        proxy: format!("http://{addr}"),
        addr,
        upstream,
        http: reqwest::Client::new(),
    }
}

impl Harness {
    async fn rule(&self, rule: Value) {
        let resp = self
            .http
            .post(format!("{}/__faults", self.proxy))
            .json(&rule)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{rule}");
    }

    async fn log(&self, contains: &str) -> Vec<Value> {
        self.http
            .get(format!("{}/__faults/log?contains={contains}", self.proxy))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A DynamoDB-style request; the status and body, or the transport error.
    async fn call(&self, op: &str, body: &str) -> Result<(u16, String), reqwest::Error> {
        let resp = self
            .http
            .post(format!("{}/", self.proxy))
            .header("x-amz-target", format!("DynamoDB_20120810.{op}"))
            .header("content-type", "application/x-amz-json-1.0")
            .body(body.to_owned())
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }
}

/// Writes one HTTP/1.1 request on `stream` and reads one Content-Length response.
async fn raw_exchange(stream: &mut TcpStream, op: &str, body: &str) -> std::io::Result<String> {
    let req = format!(
        "POST / HTTP/1.1\r\nhost: localhost\r\nx-amz-target: DynamoDB_20120810.{op}\r\n\
         content-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if buf.len() >= end + 4 + length {
                return Ok(text);
            }
        }
    }
}

#[tokio::test]
async fn forwards_method_path_headers_and_body_both_ways() {
    let h = start().await;
    let resp = h
        .http
        .put(format!("{}/some/path?x=1&y=%20", h.proxy))
        .header("x-amz-target", "DynamoDB_20120810.PutItem")
        .header("authorization", "AWS4-HMAC-SHA256 Credential=local")
        .header("x-multi", "1")
        .header("connection", "keep-alive")
        .body("{\"hello\":\"world\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-amz-json-1.0");
    assert_eq!(resp.headers()["x-amzn-requestid"], "up-1");
    let custom: Vec<_> = resp.headers().get_all("x-custom").iter().collect();
    assert_eq!(custom, ["a", "b"]);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["echo"], "{\"hello\":\"world\"}");

    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "PUT");
    assert_eq!(s.path, "/some/path?x=1&y=%20");
    assert_eq!(s.body, "{\"hello\":\"world\"}");
    let header = |name: &str| {
        s.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("x-amz-target"), ["DynamoDB_20120810.PutItem"]);
    assert_eq!(
        header("authorization"),
        ["AWS4-HMAC-SHA256 Credential=local"]
    );
    assert_eq!(header("x-multi"), ["1"]);
    assert_eq!(header("content-length"), ["17"]);
    // The client's Host is kept (SigV4 signs it).
    assert_eq!(header("host"), [h.addr.to_string().as_str()]);

    // Upstream statuses come back as they are.
    let resp = h
        .http
        .get(format!("{}/teapot", h.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
}

#[tokio::test]
async fn keeps_client_connections_alive_and_pools_upstream_ones() {
    let h = start().await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    for i in 0..5 {
        let resp = raw_exchange(&mut stream, "Query", &format!("{{\"n\":{i}}}"))
            .await
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains(&format!("{{\\\"n\\\":{i}}}")), "{resp}");
    }
    assert_eq!(h.upstream.seen().len(), 5);
    assert_eq!(h.upstream.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn throttle_answers_the_dynamodb_error_without_forwarding() {
    let h = start().await;
    h.rule(
        json!({"operation": "TransactWriteItems", "body_contains": "conv-t", "fault": "throttle"}),
    )
    .await;
    let (status, body) = h
        .call("TransactWriteItems", "{\"id\":\"conv-t\"}")
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(body, fault_proxy::THROTTLE_BODY);
    assert!(h.upstream.seen().is_empty());
    // times defaults to 1: the next one passes.
    let (status, _) = h
        .call("TransactWriteItems", "{\"id\":\"conv-t\"}")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(h.upstream.seen().len(), 1);

    // The header the SDK reads the error type from is there.
    h.rule(json!({"body_contains": "conv-t2", "fault": "throttle"}))
        .await;
    let resp = h
        .http
        .post(format!("{}/", h.proxy))
        .header("x-amz-target", "DynamoDB_20120810.Query")
        .body("conv-t2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-amz-json-1.0");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["__type"],
        "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
    );
}

#[tokio::test]
async fn transaction_conflict_answers_as_dynamodb_does_without_forwarding() {
    let h = start().await;
    h.rule(json!({"body_contains": "conv-c", "fault": "transaction_conflict", "times": 2}))
        .await;
    let tx = r#"{"TransactItems":[{"Put":{"x":"conv-c"}},{"Update":{}},{"Delete":{}}]}"#;
    let (status, body) = h.call("TransactWriteItems", tx).await.unwrap();
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["__type"],
        "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
    );
    let codes: Vec<&str> = body["CancellationReasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["TransactionConflict", "None", "None"]);
    let (status, body) = h.call("UpdateItem", "conv-c").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (400, fault_proxy::TRANSACTION_CONFLICT_BODY)
    );
    assert!(h.upstream.seen().is_empty());
    assert_eq!(h.call("UpdateItem", "conv-c").await.unwrap().0, 200);
}

#[tokio::test]
async fn writes_are_forwarded_side_by_side() {
    // DynamoDB takes concurrent requests at once; so does the proxy: a write
    // the upstream holds does not hold back another write.
    let h = start().await;
    let slow = {
        let (http, proxy) = (h.http.clone(), h.proxy.clone());
        tokio::spawn(async move {
            http.post(format!("{proxy}/slow"))
                .header("x-amz-target", "DynamoDB_20120810.TransactWriteItems")
                .body("first")
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let started = Instant::now();
    while h.upstream.seen().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tokio::time::timeout(
        Duration::from_millis(1000),
        h.call("TransactWriteItems", "second"),
    )
    .await
    .expect("the second write waited for the first");
    assert_eq!(second.unwrap().0, 200);
    assert!(!slow.is_finished());
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test]
async fn error500_answers_internal_failure() {
    let h = start().await;
    h.rule(json!({"body_contains": "conv-5", "fault": "error500"}))
        .await;
    let (status, body) = h.call("Query", "conv-5").await.unwrap();
    assert_eq!(status, 500);
    assert_eq!(body, fault_proxy::ERROR500_BODY);
    assert!(h.upstream.seen().is_empty());
    assert_eq!(h.call("Query", "conv-5").await.unwrap().0, 200);
}

#[tokio::test]
async fn reset_closes_the_connection_without_a_response_and_without_forwarding() {
    let h = start().await;
    h.rule(json!({"body_contains": "conv-r", "fault": "reset"}))
        .await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    // A first request on the same connection is served normally.
    raw_exchange(&mut stream, "Query", "other").await.unwrap();
    let err = raw_exchange(&mut stream, "Query", "conv-r")
        .await
        .expect_err("no response");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(
        h.upstream.seen().len(),
        1,
        "the reset request was not forwarded"
    );

    // Through a pooled client it is a transport error; the next request works.
    h.rule(json!({"body_contains": "conv-pooled", "fault": "reset"}))
        .await;
    assert!(h.call("Query", "conv-pooled").await.is_err());
    assert_eq!(h.call("Query", "conv-pooled").await.unwrap().0, 200);

    let log = h.log("conv-r").await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["fault"], "reset");
    assert_eq!(log[0]["status"], Value::Null);
    assert_eq!(log[0]["upstream_status"], Value::Null);
}

#[tokio::test]
async fn reset_after_forwards_then_drops_the_response() {
    let h = start().await;
    h.rule(json!({"body_contains": "conv-ra", "fault": "reset_after"}))
        .await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let err = raw_exchange(&mut stream, "TransactWriteItems", "conv-ra")
        .await
        .expect_err("no response");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1, "applied upstream");
    assert_eq!(seen[0].body, "conv-ra");
    let log = h.log("conv-ra").await;
    assert_eq!(log[0]["fault"], "reset_after");
    assert_eq!(log[0]["status"], Value::Null);
    assert_eq!(log[0]["upstream_status"], 200);
}

#[tokio::test]
async fn latency_delays_the_forwarded_request() {
    let h = start().await;
    h.rule(json!({"operation": "Query", "body_contains": "conv-l", "fault": "latency", "latency_ms": 300}))
        .await;
    let t = Instant::now();
    assert_eq!(h.call("Query", "conv-l").await.unwrap().0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(h.upstream.seen().len(), 1);
    let t = Instant::now();
    assert_eq!(h.call("Query", "conv-l").await.unwrap().0, 200);
    assert!(t.elapsed() < Duration::from_millis(250), "used up");
}

#[tokio::test]
async fn a_delayed_request_still_arrives_after_the_client_gave_up() {
    let h = start().await;
    h.rule(json!({"body_contains": "conv-late", "fault": "latency", "latency_ms": 300}))
        .await;
    let gave_up = h
        .http
        .post(format!("{}/", h.proxy))
        .header("x-amz-target", "DynamoDB_20120810.TransactWriteItems")
        .body("conv-late")
        .timeout(Duration::from_millis(50))
        .send()
        .await;
    assert!(gave_up.is_err());
    assert!(h.upstream.seen().is_empty());
    let log = h.log("conv-late").await;
    assert_eq!(log.len(), 1, "logged on arrival");
    assert_eq!(log[0]["status"], Value::Null);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.upstream.seen().len(), 1);
    let log = h.log("conv-late").await;
    assert_eq!(log[0]["upstream_status"], 200);
}

#[tokio::test]
async fn skip_and_times_count_matching_requests() {
    let h = start().await;
    h.rule(json!({"body_contains": "conv-s", "fault": "error500", "skip": 1, "times": 2}))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(h.call("TransactWriteItems", "conv-s").await.unwrap().0);
    }
    assert_eq!(statuses, [200, 500, 500, 200, 200]);

    h.rule(json!({"body_contains": "conv-always", "fault": "throttle", "times": null}))
        .await;
    for _ in 0..4 {
        assert_eq!(h.call("Query", "conv-always").await.unwrap().0, 400);
    }

    let log = h.log("conv-s").await;
    let faults: Vec<_> = log.iter().map(|e| e["fault"].clone()).collect();
    assert_eq!(
        faults,
        [
            Value::Null,
            json!("error500"),
            json!("error500"),
            Value::Null,
            Value::Null
        ]
    );
    let statuses: Vec<_> = log.iter().map(|e| e["status"].clone()).collect();
    assert_eq!(statuses, [200, 500, 500, 200, 200]);
    assert!(log.iter().all(|e| e["operation"] == "TransactWriteItems"));
    let at: Vec<u64> = log.iter().map(|e| e["at_ms"].as_u64().unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "in order");
}

#[tokio::test]
async fn rules_are_scoped_by_body_and_operation() {
    let h = start().await;
    h.rule(json!({"operation": "Query", "body_contains": "conv-a", "fault": "throttle", "times": null}))
        .await;
    assert_eq!(h.call("Query", "conv-b").await.unwrap().0, 200);
    assert_eq!(h.call("GetItem", "conv-a").await.unwrap().0, 200);
    assert_eq!(h.call("Query", "xx conv-a xx").await.unwrap().0, 400);
    // Requests without a target are forwarded and logged with a null operation.
    let resp = h
        .http
        .post(format!("{}/", h.proxy))
        .body("conv-a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let log = h.log("conv-a").await;
    let ops: Vec<_> = log.iter().map(|e| e["operation"].clone()).collect();
    assert_eq!(ops, [json!("GetItem"), json!("Query"), Value::Null]);
    assert_eq!(h.log("conv-b").await.len(), 1);
    assert_eq!(h.log("nothing-like-it").await.len(), 0);
}

#[tokio::test]
async fn control_api_validates_lists_and_resets() {
    let h = start().await;
    for bad in [
        json!({"fault": "throttle"}),
        json!({"body_contains": "x", "fault": "explode"}),
        json!({"body_contains": "x", "fault": "latency"}),
        json!({"body_contains": "x", "fault": "throttle", "bogus": 1}),
    ] {
        let resp = h
            .http
            .post(format!("{}/__faults", h.proxy))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["detail"].is_string());
    }
    h.rule(json!({"body_contains": "conv-c", "fault": "throttle", "times": null}))
        .await;
    let rules: Value = h
        .http
        .get(format!("{}/__faults", h.proxy))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rules[0]["body_contains"], "conv-c");
    assert_eq!(rules[0]["times"], Value::Null);
    assert_eq!(h.call("Query", "conv-c").await.unwrap().0, 400);

    let resp = h
        .http
        .post(format!("{}/__faults/reset", h.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h.call("Query", "conv-c").await.unwrap().0, 200);
    let log = h.log("conv-c").await;
    assert_eq!(log.len(), 1, "log cleared, then one request");
    assert_eq!(log[0]["fault"], Value::Null);
    // The control API is never forwarded.
    assert!(h
        .upstream
        .seen()
        .iter()
        .all(|s| !s.path.starts_with("/__faults")));
}

#[tokio::test]
async fn upstream_down_is_a_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let upstream = fault_proxy::parse_upstream(&format!("http://{dead_addr}")).unwrap();
    tokio::spawn(fault_proxy::serve(listener, upstream));
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
}
