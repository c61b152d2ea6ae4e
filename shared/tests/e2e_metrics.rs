//! What an operator sees of each invocation: its CloudWatch embedded-metric-format
//! record in the functions' log (one JSON line, read back from the stack's
//! `logs/functions.log`), its log lines carrying its request id, and its trace
//! header reaching the upstream.
//!
//! Tests run side by side, so each finds its own records by the request id the
//! functions return in `x-request-id` (the record's `requestId` property).

mod common;

use std::time::Duration;

use common::{eventually, Stack, Stream, User};
use serde_json::{json, Value};
use uuid::Uuid;

const NAMESPACE: &str = "samosaChaat";

/// Every metric an operator can chart, with its unit.
const UNITS: &[(&str, &str)] = &[
    ("Requests", "Count"),
    ("DynamoDBRetries", "Count"),
    ("DynamoDBThrottles", "Count"),
    ("Answers", "Count"),
    ("Tokens", "Count"),
    ("TimeToFirstToken", "Milliseconds"),
    ("UpstreamTimeToFirstToken", "Milliseconds"),
    ("StreamDuration", "Milliseconds"),
];

fn log_text(stack: &Stack) -> String {
    let path = format!("{}/logs/functions.log", stack.env["STACK_DIR"]);
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The JSON lines of the functions' log.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

fn request_id(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id header")
        .to_owned()
}

/// The metrics record of the invocation `request_id`, once it is written (a
/// stream's record comes when its task ends). Exactly one.
async fn record_of(stack: &Stack, request_id: &str) -> Value {
    let records = || -> Vec<Value> {
        json_lines(&log_text(stack))
            .into_iter()
            .filter(|v| v.get("_aws").is_some() && v["requestId"] == request_id)
            .collect()
    };
    let written = eventually(Duration::from_secs(10), || {
        let found = !records().is_empty();
        async move { found }
    })
    .await;
    assert!(written, "no metrics record for request {request_id}");
    // Give a second record (there must be none) the time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = records();
    assert_eq!(all.len(), 1, "one record per invocation: {all:?}");
    all.into_iter().next().expect("one record")
}

/// Checks the record is valid EMF: each directive's namespace, its metrics with
/// their units, its dimension sets; every metric and dimension named is a
/// member of the record. Returns the dimension sets of every directive.
fn assert_emf(record: &Value) -> Vec<Value> {
    let aws = &record["_aws"];
    assert!(aws["Timestamp"].as_u64().is_some(), "{record}");
    let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
    let mut dimension_sets = Vec::new();
    for directive in directives {
        assert_eq!(directive["Namespace"], NAMESPACE, "{record}");
        for metric in directive["Metrics"].as_array().expect("metrics") {
            let name = metric["Name"].as_str().expect("name");
            let unit = UNITS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, u)| *u)
                .unwrap_or_else(|| panic!("unknown metric {name}"));
            assert_eq!(metric["Unit"], unit, "{name}");
            assert!(record[name].is_number(), "{name} missing: {record}");
        }
        for set in directive["Dimensions"].as_array().expect("dimensions") {
            for dimension in set.as_array().expect("set") {
                let key = dimension.as_str().expect("dimension");
                assert!(record[key].is_string(), "{key} missing: {record}");
            }
        }
        dimension_sets.push(directive["Dimensions"].clone());
    }
    dimension_sets
}

/// A request's record: EMF, its function, route and status, one request.
fn assert_request(record: &Value, function: &str, route: &str, status: u16) {
    assert_emf(record);
    assert_eq!(record["function"], function, "{record}");
    assert_eq!(record["route"], route, "{record}");
    assert_eq!(record["status"], status.to_string(), "{record}");
    assert_eq!(record["Requests"], 1, "{record}");
}

/// A stream's record: a request, and its answer with `outcome`.
fn assert_answer(record: &Value, function: &str, route: &str, outcome: &str) {
    assert_request(record, function, route, 200);
    let sets = assert_emf(record);
    assert_eq!(
        sets,
        vec![
            json!([["function", "route", "status"], ["function"]]),
            json!([["function", "outcome"], ["function"]]),
        ],
        "{record}"
    );
    assert_eq!(record["outcome"], outcome, "{record}");
    assert_eq!(record["Answers"], 1, "{record}");
    assert!(record["StreamDuration"].as_u64().is_some(), "{record}");
}

/// No user data in a record: neither ids nor text nor credentials.
fn assert_no_user_data(record: &Value, user: &User, secrets: &[&str]) {
    let text = record.to_string();
    for secret in secrets
        .iter()
        .copied()
        .chain([user.id.to_string().as_str(), user.token.as_str()])
    {
        assert!(!text.contains(secret), "{secret:?} in {text}");
    }
    // Only the fixed members: figures, dimensions, the two ids of the invocation.
    let allowed = [
        "_aws",
        "function",
        "route",
        "status",
        "outcome",
        "requestId",
        "traceId",
    ];
    for key in record.as_object().expect("object").keys() {
        assert!(
            allowed.contains(&key.as_str()) || UNITS.iter().any(|(n, _)| n == key),
            "unexpected member {key} in {text}"
        );
    }
}

#[tokio::test]
async fn a_successful_send_writes_one_record_with_its_figures() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("metrics {m}");
    let stream = stack
        .send_scripted(&user, id, &content, &["alpha", " beta", " gamma"])
        .await;
    assert_eq!(stream.status, 200);
    let message_id = stream.message_id();
    let rid = request_id(&stream.headers);

    let record = record_of(&stack, &rid).await;
    assert_answer(&record, "send", "messages", "done");
    assert_eq!(record["Tokens"], 3);
    let ttft = record["TimeToFirstToken"].as_u64().expect("ttft");
    let upstream = record["UpstreamTimeToFirstToken"]
        .as_u64()
        .expect("upstream ttft");
    assert!(upstream <= ttft, "{record}");
    assert!(ttft < 5_000, "{record}");
    assert_eq!(record["DynamoDBThrottles"], 0);
    assert!(record["DynamoDBRetries"].as_u64().is_some());
    assert_no_user_data(
        &record,
        &user,
        &[&id.to_string(), &m, "alpha", "gamma", &message_id],
    );

    // The trace header of the invocation went upstream with the request.
    let trace = record["traceId"].as_str().expect("traceId").to_owned();
    assert!(trace.starts_with("Root="), "{trace}");
    let upstream_requests = stack.upstream_requests(&m).await;
    assert_eq!(upstream_requests.len(), 1);
    assert_eq!(upstream_requests[0]["headers"]["x-amzn-trace-id"], trace);

    // Every log line of the stream's task carries the invocation's request id
    // and trace id, though the task runs after the handler returned.
    let in_the_task = |line: &Value| {
        line["spans"].as_array().is_some_and(|spans| {
            spans
                .iter()
                .any(|s| s["name"] == "chat" && s["conversation_id"] == id.to_string())
        })
    };
    let lines: Vec<Value> = json_lines(&log_text(&stack))
        .into_iter()
        .filter(in_the_task)
        .collect();
    assert!(lines.len() >= 2, "the stream's log lines: {lines:?}");
    for line in &lines {
        let invocation = line["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|s| s["name"] == "invocation"))
            .unwrap_or_else(|| panic!("no invocation span: {line}"));
        assert_eq!(invocation["requestId"], rid.as_str(), "{line}");
        assert_eq!(invocation["xrayTraceId"], trace.as_str(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
}

#[tokio::test]
async fn upstream_failures_are_counted_by_their_outcome() {
    let stack = Stack::get().await;

    // Reset before the response head: inference_unavailable, no token.
    let (user, id, m) = stack.chat().await;
    let content = format!("unavailable {m}");
    stack
        .scenario(json!({"match": content, "reset_before_headers": true}))
        .await;
    let stream = stack.send(&user, id, &content).await;
    stream.assert_failed_with("inference_unavailable");
    let record = record_of(&stack, &request_id(&stream.headers)).await;
    assert_answer(&record, "send", "messages", "inference_unavailable");
    assert_eq!(record["Tokens"], 0);
    assert!(record.get("TimeToFirstToken").is_none(), "{record}");
    assert!(record.get("UpstreamTimeToFirstToken").is_none(), "{record}");
    assert_no_user_data(&record, &user, &[&id.to_string(), &m]);

    // An upstream 503 on regenerate: inference_error.
    let (user, id, m) = stack.chat().await;
    let content = format!("error {m}");
    stack.turn(&user, id, &content, &["first", " answer"]).await;
    stack
        .scenario(json!({"match": content, "status": 503}))
        .await;
    let stream = stack.regenerate(&user, id).await;
    stream.assert_failed_with("inference_error");
    let record = record_of(&stack, &request_id(&stream.headers)).await;
    assert_answer(&record, "regenerate", "regenerate", "inference_error");
    assert_eq!(record["Tokens"], 0);
    assert_no_user_data(&record, &user, &[&id.to_string(), &m, "first"]);

    // A drop after two tokens: inference_interrupted, with its first token.
    let (user, id, m) = stack.chat().await;
    let content = format!("drop {m}");
    stack
        .scenario(json!({"match": content, "tokens": ["one", " two", " three"], "drop_after": 2}))
        .await;
    let stream = stack.send(&user, id, &content).await;
    stream.assert_failed_with("inference_interrupted");
    let record = record_of(&stack, &request_id(&stream.headers)).await;
    assert_answer(&record, "send", "messages", "inference_interrupted");
    assert_eq!(record["Tokens"], 2);
    assert!(record["TimeToFirstToken"].as_u64().is_some(), "{record}");
}

#[tokio::test]
async fn a_stopped_answer_is_counted_stopped() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("long {m}");
    stack.slow_answer(&content, 200, 50).await;
    let req = stack.send_req(&user, id, &content);
    let generating =
        tokio::spawn(async move { Stream::read(req.send().await.expect("send")).await });

    // Stop once the answer is live.
    let mut stop = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stop.is_none() && std::time::Instant::now() < deadline {
        let resp = stack
            .stop_req(&user, &id.to_string())
            .send()
            .await
            .expect("stop");
        if resp.status() == 202 {
            stop = Some(request_id(resp.headers()));
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stop = stop.expect("the answer was never live");
    let stream = generating.await.expect("stream");
    assert_eq!(stream.last()["stopped"], true, "{:?}", stream.events);

    let record = record_of(&stack, &request_id(&stream.headers)).await;
    assert_answer(&record, "send", "messages", "stopped");
    assert_eq!(record["Tokens"], stream.tokens().len());
    assert!(record["TimeToFirstToken"].as_u64().is_some(), "{record}");
    assert_no_user_data(&record, &user, &[&id.to_string(), &m, " w1"]);

    // The stop request is the conversations function's.
    let stop = record_of(&stack, &stop).await;
    assert_request(&stop, "conversations", "stop", 202);
    assert!(stop.get("outcome").is_none(), "{stop}");
}

#[tokio::test]
async fn an_answer_write_throttled_to_the_end_is_persist_failed_with_its_throttles() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let word = format!("w{}", Uuid::new_v4().simple());
    stack
        .scenario(json!({"match": m, "tokens": ["fine", format!(" {word}")]}))
        .await;
    stack
        .fault(json!({
            "operation": "TransactWriteItems", "body_contains": word,
            "fault": "throttle", "times": null,
        }))
        .await;
    let stream = stack.send(&user, id, &format!("q {m}")).await;
    stream.assert_failed_with("persist_failed");

    let record = record_of(&stack, &request_id(&stream.headers)).await;
    assert_answer(&record, "send", "messages", "persist_failed");
    assert_eq!(record["Tokens"], 2);
    // The SDK's four attempts at the answer write, each throttled.
    assert_eq!(record["DynamoDBThrottles"], 4, "{record}");
    assert!(
        record["DynamoDBRetries"].as_u64().unwrap_or(0) >= 3,
        "{record}"
    );
    assert_no_user_data(&record, &user, &[&id.to_string(), &m, &word]);
}

#[tokio::test]
async fn conversations_calls_and_refused_requests_have_route_and_status() {
    let stack = Stack::get().await;
    let user = stack.user();

    let resp = stack
        .http
        .post(stack.url("conversations", "/api/conversations"))
        .bearer_auth(&user.token)
        .json(&json!({"title": "a private title"}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 201);
    let rid = request_id(resp.headers());
    let body: Value = resp.json().await.expect("json");
    let id = body["id"].as_str().expect("id").to_owned();
    let record = record_of(&stack, &rid).await;
    assert_request(&record, "conversations", "create", 201);
    assert_eq!(
        assert_emf(&record),
        vec![json!([["function", "route", "status"], ["function"]])]
    );
    assert_eq!(record["DynamoDBThrottles"], 0);
    assert_no_user_data(&record, &user, &[&id, "private"]);

    // Each route by name, whatever the status.
    let unknown = Uuid::new_v4();
    let cases = [
        (
            reqwest::Method::GET,
            "/api/conversations".to_owned(),
            true,
            "list",
            200,
        ),
        (
            reqwest::Method::GET,
            format!("/api/conversations/{id}"),
            true,
            "get",
            200,
        ),
        (
            reqwest::Method::GET,
            format!("/api/conversations/{unknown}"),
            true,
            "get",
            404,
        ),
        (
            reqwest::Method::PUT,
            format!("/api/conversations/{id}"),
            false,
            "rename",
            401,
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/conversations/{id}"),
            true,
            "other",
            405,
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/conversations/{id}"),
            true,
            "delete",
            204,
        ),
    ];
    for (method, path, auth, route, status) in cases {
        let mut req = stack
            .http
            .request(method.clone(), stack.url("conversations", &path));
        if auth {
            req = req.bearer_auth(&user.token);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let record = record_of(&stack, &request_id(resp.headers())).await;
        assert_request(&record, "conversations", route, status);
        assert_no_user_data(&record, &user, &[&id, &unknown.to_string()]);
    }

    // A send refused before its stream opens: a request, no answer.
    let resp = stack
        .http
        .post(stack.url("send", &format!("/api/conversations/{unknown}/messages")))
        .bearer_auth(&user.token)
        .json(&json!({"content": ""}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 422);
    let record = record_of(&stack, &request_id(resp.headers())).await;
    assert_request(&record, "send", "messages", 422);
    assert!(record.get("outcome").is_none(), "{record}");
    assert!(record.get("Answers").is_none(), "{record}");
}
