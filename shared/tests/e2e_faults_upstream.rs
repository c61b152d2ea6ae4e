//! Upstream faults and browser disconnects: whatever happens, the stream ends with
//! an error event and `done`, and nothing the user should keep is lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{body_bytes, eventually, marker, s, Stack, Stream};
use samosachaat::foundation::config::Config;
use samosachaat::handlers::send;
use samosachaat::AppState;
use serde_json::json;

/// The functions' state with some settings changed, for in-process runs.
fn state_with(stack: &Stack, overrides: &[(&str, &str)]) -> Arc<AppState> {
    let mut env = stack.env.clone();
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = Config::from_lookup(|k| env.get(k).cloned()).expect("config");
    Arc::new(AppState::new(config, stack.functions_dynamodb()).expect("state"))
}

async fn send_in_process(
    stack: &Stack,
    state: Arc<AppState>,
    user: &common::User,
    id: uuid::Uuid,
    content: &str,
) -> Stream {
    let event = stack
        .event("send-message.json", id, &user.token)
        .replace("Hello from the sample event", content);
    let request = lambda_http::request::from_str(&event).expect("event");
    let resp = send::send(state, request).await.expect("handler");
    let status = resp.status().as_u16();
    Stream::parse(
        status,
        Default::default(),
        body_bytes(resp.into_body()).await,
    )
}

#[tokio::test]
async fn connection_refused_is_inference_unavailable() {
    let stack = Stack::get().await;
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let state = state_with(
        &stack,
        &[(
            "INFERENCE_URL",
            &format!("http://127.0.0.1:{port}/generate"),
        )],
    );
    let (user, id) = stack.user_with_conversation().await;
    let stream = send_in_process(&stack, state, &user, id, &format!("refused {}", marker())).await;
    assert_eq!(stream.status, 200);
    stream.assert_failed_with("inference_unavailable");
    let messages = stack.stored_messages(id).await;
    assert_eq!(
        messages.len(),
        1,
        "the question is kept, there is no answer"
    );
    assert_eq!(s(&messages[0], "role"), "user");
}

/// Production settings (a ping every 15 s): a first token after 60 s still
/// reaches the browser, with pings all along, and is stored.
#[tokio::test]
async fn a_first_token_after_60_seconds_arrives_with_pings_all_along() {
    let stack = Stack::get().await;
    let state = state_with(
        &stack,
        &[
            ("PING_INTERVAL_MS", "15000"),
            ("INFERENCE_DEADLINE_SECS", "270"),
        ],
    );
    let (user, id, m) = stack.chat().await;
    stack
        .scenario(json!({"match": m, "headers_delay_ms": 30000, "first_token_delay_ms": 30500, "tokens": ["worth", " the wait"]}))
        .await;
    let stream = send_in_process(&stack, state, &user, id, &format!("patience {m}")).await;
    assert!(stream.pings >= 4, "{} pings", stream.pings);
    assert_eq!(stream.tokens(), ["worth", " the wait"]);
    stream.message_id();
    let messages = stack.stored_messages(id).await;
    assert_eq!(s(&messages[1], "content"), "worth the wait");
    assert_eq!(s(&messages[1], "status"), "complete");
}

#[tokio::test]
async fn a_stream_that_never_ends_is_cut_at_the_deadline_and_its_part_kept() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    // The test stack's deadline is 6 s; the upstream sends two tokens and hangs.
    stack
        .scenario(json!({"match": m, "tokens": ["never", " ending", " story"], "hang_after": 2}))
        .await;
    let stream = stack.send(&user, id, &format!("endless {m}")).await;
    assert_eq!(stream.tokens(), ["never", " ending"]);
    stream.assert_failed_with("inference_interrupted");
    assert!(
        stream.pings >= 1,
        "pings kept the browser's connection alive meanwhile"
    );
    let messages = stack.stored_messages(id).await;
    assert_eq!(s(&messages[1], "content"), "never ending");
    assert_eq!(s(&messages[1], "status"), "incomplete");
    assert_eq!(s(&messages[1], "token_count"), "2");
}

/// An upstream that streams more than an item can hold (DynamoDB refuses items
/// over 400 KB; DynamoDB Local too) is cut where the answer would outgrow the
/// relay's limit: the browser's text is what is stored, `incomplete`.
#[tokio::test]
async fn an_answer_too_large_to_store_is_cut_and_its_part_kept() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let token = "x".repeat(1000);
    let tokens = vec![token.clone(); 400];
    stack.scenario(json!({"match": m, "tokens": tokens})).await;
    let stream = stack.send(&user, id, &format!("flood {m}")).await;
    let kept = samosachaat::domain::relay::MAX_ANSWER_BYTES / 1000;
    assert_eq!(stream.tokens().len(), kept);
    stream.assert_failed_with("inference_interrupted");
    let messages = stack.stored_messages(id).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(s(&messages[1], "content"), token.repeat(kept));
    assert_eq!(s(&messages[1], "status"), "incomplete");
}

/// The browser leaves at three moments; each time the answer is stored exactly
/// as if it had stayed.
#[tokio::test]
async fn a_browser_leaving_at_any_phase_changes_nothing_stored() {
    let stack = Stack::get().await;
    let user = stack.user();
    // (scenario, bytes the browser waits for before leaving; empty: leave at once)
    let phases = [
        (
            "before the first token",
            json!({"tokens": ["a", "b"], "headers_delay_ms": 800}),
            "",
        ),
        (
            "mid-stream",
            json!({"tokens": ["a", "b", "c"], "token_delay_ms": 300}),
            "\"a\"",
        ),
        (
            "right before done",
            json!({"tokens": ["a", "b"], "token_delay_ms": 600}),
            "\"b\"",
        ),
    ];
    for (phase, mut scenario, wait_for) in phases {
        let id = stack.create_conversation(&user).await;
        let m = marker();
        scenario["match"] = json!(m);
        let expected: String = scenario["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_str().expect("token"))
            .collect();
        stack.scenario(scenario).await;
        let request = stack
            .http
            .post(stack.url("send", &format!("/api/conversations/{id}/messages")))
            .bearer_auth(&user.token)
            .json(&json!({"content": format!("leave {m}")}));
        if wait_for.is_empty() {
            // Leave before any byte of the response: the request is sent, then
            // the client gives up while the upstream is still silent.
            let _ = tokio::time::timeout(Duration::from_millis(300), request.send()).await;
        } else {
            let mut resp = request.send().await.expect("request");
            let mut seen = Vec::new();
            while !String::from_utf8_lossy(&seen).contains(wait_for) {
                let chunk = resp.chunk().await.expect("chunk").expect("more");
                seen.extend_from_slice(&chunk);
            }
            drop(resp);
        }
        let stored = eventually(Duration::from_secs(15), || async {
            stack.stored_messages(id).await.len() == 2
        })
        .await;
        assert!(stored, "{phase}: the answer was not stored");
        let messages = stack.stored_messages(id).await;
        assert_eq!(s(&messages[1], "content"), expected, "{phase}");
        assert_eq!(s(&messages[1], "status"), "complete", "{phase}");
    }
}
