//! End-to-end tests over real TCP: the server runs in-process on port 0 and is
//! spoken to with a raw HTTP/1.1 client, so the exact bytes and chunking are visible.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mock_inference::{serve, Config};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(cfg: Config) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, cfg));
    addr
}

/// A response as read off the wire until the server closed the connection.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body as sent (still chunk-framed when chunked).
    raw_body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The chunks of a chunked body, and whether it ended with the last chunk.
    fn chunks(&self) -> (Vec<Vec<u8>>, bool) {
        let mut rest = &self.raw_body[..];
        let mut chunks = Vec::new();
        loop {
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                return (chunks, false);
            };
            let size = std::str::from_utf8(&rest[..eol]).expect("size line");
            let size = usize::from_str_radix(size, 16).expect("hex size");
            rest = &rest[eol + 2..];
            if size == 0 {
                return (chunks, rest == b"\r\n");
            }
            if rest.len() < size + 2 {
                return (chunks, false);
            }
            chunks.push(rest[..size].to_vec());
            assert_eq!(&rest[size..size + 2], b"\r\n");
            rest = &rest[size + 2..];
        }
    }

    fn body(&self) -> Vec<u8> {
        if self.header("transfer-encoding") == Some("chunked") {
            self.chunks().0.concat()
        } else {
            self.raw_body.clone()
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).expect("JSON body")
    }
}

fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header");
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        raw_body: raw[end + 4..].to_vec(),
    }
}

/// Sends one request and reads everything until the server closes.
async fn raw_request(addr: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no EOF"))??;
    Ok(out)
}

fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    req
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let raw = raw_request(addr, &build_request(method, path, headers, body))
        .await
        .expect("response");
    parse_response(&raw)
}

fn chat(user_text: &str) -> Vec<u8> {
    json!({
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": user_text},
        ],
        "temperature": 0.8, "max_tokens": 1024, "top_k": 50, "force_web_search": false
    })
    .to_string()
    .into_bytes()
}

async fn generate(addr: SocketAddr, user_text: &str) -> Response {
    request(addr, "POST", "/generate", &[], &chat(user_text)).await
}

async fn add_scenario(addr: SocketAddr, scenario: Value) {
    let resp = request(
        addr,
        "POST",
        "/__mock/scenarios",
        &[],
        scenario.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        resp.status,
        201,
        "{}",
        String::from_utf8_lossy(&resp.body())
    );
    assert_eq!(resp.json(), json!({"ok": true}));
}

/// A tolerant SSE parser: the JSON objects of the `data` of each event.
fn sse_objects(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).expect("UTF-8 stream");
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = text.replace("\r\n", "\n");
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            serde_json::from_str::<Value>(&data.join("\n"))
                .ok()
                .filter(Value::is_object)
        })
        .collect()
}

fn tokens_of(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| o.get("token")?.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn default_reply_bytes() {
    let addr = start(Config::default()).await;
    let resp = generate(addr, "how  are\nyou").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    let (chunks, complete) = resp.chunks();
    assert!(complete);
    assert_eq!(chunks.len(), 7, "one event per chunk");
    let expected: String = ["Hello!", " You", " said:", " how", " are", " you"]
        .iter()
        .map(|t| format!("data: {{\"token\": \"{t}\", \"gpu\": 0}}\n\n"))
        .chain(["data: {\"done\": true}\n\n".to_owned()])
        .collect();
    assert_eq!(String::from_utf8(resp.body()).expect("utf-8"), expected);
}

#[tokio::test]
async fn chunk_bytes_reassembles_to_the_same_events() {
    let addr = start(Config::default()).await;
    let tokens = json!(["a \"quoted\"", " line\nbreak", " 😀é", " \\ back"]);
    add_scenario(
        addr,
        json!({"match": "[whole-A]", "tokens": tokens, "token_delay_ms": 0}),
    )
    .await;
    add_scenario(
        addr,
        json!({"match": "[split-A]", "tokens": tokens, "chunk_bytes": 3, "split_delay_ms": 0}),
    )
    .await;

    let whole = generate(addr, "please [whole-A] now").await;
    let split = generate(addr, "please [split-A] now").await;
    let (chunks, complete) = split.chunks();
    assert!(complete);
    assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 3));
    assert!(
        chunks.iter().any(|c| std::str::from_utf8(c).is_err()),
        "some chunk splits a UTF-8 character"
    );
    assert_eq!(split.body(), whole.body());
    let objects = sse_objects(&split.body());
    assert_eq!(json!(tokens_of(&objects)), tokens);
    assert_eq!(objects.last(), Some(&json!({"done": true})));
}

#[tokio::test]
async fn junk_crlf_bom_and_grouping_still_parse() {
    let addr = start(Config::default()).await;
    add_scenario(
        addr,
        json!({"match": "[junk-B]", "tokens": ["x", "y", "z"], "junk": true, "crlf": true,
               "bom": true, "events_per_chunk": 3, "gpu": 2, "done_extra": true}),
    )
    .await;
    let resp = generate(addr, "[junk-B]").await;
    let body = resp.body();
    assert!(body.starts_with("\u{feff}".as_bytes()));
    let text = String::from_utf8_lossy(&body);
    for junk in [
        ": keepalive",
        "event: message",
        "retry: 10",
        "data: not json",
        "data: [1,2]",
    ] {
        assert!(text.contains(junk), "{junk}");
    }
    let objects = sse_objects(&body);
    assert_eq!(tokens_of(&objects), ["x", "y", "z"]);
    assert_eq!(objects[0]["gpu"], 2);
    assert_eq!(objects.last(), Some(&json!({"done": true, "gpu": 2})));
    // 5 junk events, 3 tokens, 3 junk events, done: 12 events, 3 per chunk.
    assert_eq!(resp.chunks().0.len(), 4);
}

#[tokio::test]
async fn drop_after_leaves_an_incomplete_body() {
    let addr = start(Config::default()).await;
    add_scenario(
        addr,
        json!({"match": "[drop-C]", "tokens": ["1", "2", "3", "4"], "drop_after": 2}),
    )
    .await;
    let resp = generate(addr, "[drop-C]").await;
    assert_eq!(resp.status, 200);
    let (chunks, complete) = resp.chunks();
    assert!(!complete, "no terminating chunk");
    assert_eq!(tokens_of(&sse_objects(&chunks.concat())), ["1", "2"]);
    assert!(!String::from_utf8_lossy(&resp.raw_body).contains("done"));
}

#[tokio::test]
async fn no_done_ends_cleanly_without_done() {
    let addr = start(Config::default()).await;
    add_scenario(
        addr,
        json!({"match": "[nodone-D]", "tokens": ["1"], "no_done": true}),
    )
    .await;
    let resp = generate(addr, "[nodone-D]").await;
    let (chunks, complete) = resp.chunks();
    assert!(complete);
    assert_eq!(
        sse_objects(&chunks.concat()),
        [json!({"token": "1", "gpu": 0})]
    );
}

#[tokio::test]
async fn hang_after_keeps_the_connection_open() {
    let addr = start(Config::default()).await;
    add_scenario(
        addr,
        json!({"match": "[hang-E]", "tokens": ["1", "2", "3"], "hang_after": 1}),
    )
    .await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&build_request("POST", "/generate", &[], &chat("[hang-E]")))
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let waited = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(waited.is_err(), "connection must stay open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains(r#"{"token": "1", "gpu": 0}"#));
    assert!(!text.contains(r#""2""#));
}

#[tokio::test]
async fn status_scenario_answers_an_error() {
    let addr = start(Config::default()).await;
    add_scenario(
        addr,
        json!({"match": "[err-F]", "status": 500, "headers_delay_ms": 20}),
    )
    .await;
    let resp = generate(addr, "[err-F]").await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.json()["detail"].is_string());
    // Consumed: the next request gets the default reply.
    assert_eq!(generate(addr, "[err-F]").await.status, 200);
}

#[tokio::test]
async fn reset_before_headers_resets_the_connection() {
    let addr = start(Config::default()).await;
    add_scenario(
        addr,
        json!({"match": "[reset-G]", "reset_before_headers": true}),
    )
    .await;
    let result = raw_request(addr, &build_request("POST", "/x", &[], &chat("[reset-G]"))).await;
    match result {
        Err(err) => assert_eq!(err.kind(), io::ErrorKind::ConnectionReset),
        Ok(bytes) => panic!("expected a reset, got {} bytes", bytes.len()),
    }
}

#[tokio::test]
async fn scenarios_match_by_substring_in_order_and_repeat() {
    let addr = start(Config::default()).await;
    add_scenario(addr, json!({"match": "[order-H]", "tokens": ["first"]})).await;
    add_scenario(
        addr,
        json!({"match": "[other-H]", "tokens": ["other"], "repeat": true}),
    )
    .await;
    add_scenario(addr, json!({"match": "[order-H]", "tokens": ["second"]})).await;
    let toks = |r: Response| tokens_of(&sse_objects(&r.body()));
    assert_eq!(toks(generate(addr, "x [order-H] y").await), ["first"]);
    assert_eq!(toks(generate(addr, "[other-H]").await), ["other"]);
    assert_eq!(toks(generate(addr, "[other-H]").await), ["other"]);
    assert_eq!(toks(generate(addr, "[order-H]").await), ["second"]);
    assert_eq!(toks(generate(addr, "[order-H]").await)[0], "Hello!");
    // Only the last user message counts.
    let body = json!({"messages": [
        {"role": "user", "content": "[other-H]"},
        {"role": "assistant", "content": "[other-H]"},
        {"role": "user", "content": "plain"}
    ]});
    let resp = request(addr, "POST", "/g", &[], body.to_string().as_bytes()).await;
    assert_eq!(toks(resp), ["Hello!", " You", " said:", " plain"]);
}

#[tokio::test]
async fn recorded_requests_filter_by_match() {
    let addr = start(Config::default()).await;
    let a = chat("question [rec-I1]");
    request(
        addr,
        "POST",
        "/generate",
        &[("X-Internal-API-Key", "secret")],
        &a,
    )
    .await;
    generate(addr, "question [rec-I2]").await;

    let resp = request(addr, "GET", "/__mock/requests?match=%5Brec-I1%5D", &[], b"").await;
    assert_eq!(resp.status, 200);
    let list = resp.json();
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["headers"]["x-internal-api-key"], "secret");
    assert_eq!(
        list[0]["body"],
        serde_json::from_slice::<Value>(&a).expect("json")
    );
    assert!(list[0]["received_at_ms"].as_u64().expect("ms") > 1_600_000_000_000);

    let all = request(addr, "GET", "/__mock/requests", &[], b"")
        .await
        .json();
    assert_eq!(all.as_array().map(Vec::len), Some(2));

    let reset = request(addr, "POST", "/__mock/reset", &[], b"").await;
    assert_eq!(reset.status, 200);
    let all = request(addr, "GET", "/__mock/requests", &[], b"")
        .await
        .json();
    assert_eq!(all, json!([]));
}

#[tokio::test]
async fn api_key_is_checked() {
    let cfg = Config {
        api_key: Some("k3y".to_owned()),
        ..Config::default()
    };
    let addr = start(cfg).await;
    for headers in [&[][..], &[("X-Internal-API-Key", "wrong")][..]] {
        let resp = request(addr, "POST", "/generate", headers, &chat("hi")).await;
        assert_eq!(resp.status, 401);
        assert_eq!(resp.json(), json!({"detail": "invalid api key"}));
    }
    let resp = request(
        addr,
        "POST",
        "/generate",
        &[("x-internal-api-key", "k3y")],
        &chat("hi"),
    )
    .await;
    assert_eq!(resp.status, 200);
    // Rejected requests are recorded too.
    let all = request(addr, "GET", "/__mock/requests", &[], b"")
        .await
        .json();
    assert_eq!(all.as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn control_api_edges() {
    let addr = start(Config::default()).await;
    let health = request(addr, "GET", "/__mock/health", &[], b"").await;
    assert_eq!((health.status, health.body()), (200, b"ok".to_vec()));
    for bad in [
        &b"not json"[..],
        br#"{"tokens": []}"#,
        br#"{"match": "m", "nope": 1}"#,
    ] {
        let resp = request(addr, "POST", "/__mock/scenarios", &[], bad).await;
        assert_eq!(resp.status, 422);
    }
    assert_eq!(
        request(addr, "GET", "/__mock/nothing", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        request(addr, "GET", "/generate", &[], b"").await.status,
        405
    );
    let resp = request(addr, "POST", "/generate", &[], br#"{"messages": "x"}"#).await;
    assert_eq!(resp.status, 422);
    let raw = raw_request(addr, b"NONSENSE\r\n\r\n")
        .await
        .expect("response");
    assert_eq!(parse_response(&raw).status, 400);
}

#[tokio::test]
async fn chunked_request_bodies_are_read() {
    let addr = start(Config::default()).await;
    let body = chat("chunky [chunked-J]");
    let (a, b) = body.split_at(10);
    let mut req = b"POST /generate HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for part in [a, b] {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = parse_response(&raw_request(addr, &req).await.expect("response"));
    assert_eq!(resp.status, 200);
    assert_eq!(
        tokens_of(&sse_objects(&resp.body()))
            .last()
            .map(String::as_str),
        Some(" [chunked-J]")
    );
}
