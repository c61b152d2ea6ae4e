//! Live answers end to end (SPEC sections 2, 3, 6): stop, resume, the live answer
//! in the conversation, one live answer per conversation.

mod common;

use std::time::Duration;

use common::{eventually, roles_and_contents, s, Stack, Stream, User};
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A stream read in the background, as a browser tab reads it.
fn in_background(req: reqwest::RequestBuilder) -> tokio::task::JoinHandle<Stream> {
    tokio::spawn(async move { Stream::read(req.send().await.expect("request")).await })
}

fn resume_req(stack: &Stack, user: &User, id: Uuid) -> reqwest::RequestBuilder {
    stack
        .http
        .get(stack.url("send", &format!("/api/conversations/{id}/stream")))
        .bearer_auth(&user.token)
}

async fn stop(stack: &Stack, user: &User, id: &str) -> (u16, Value) {
    let resp = stack.stop_req(user, id).send().await.expect("stop");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The conversation's live answer as `GET` shows it, if any.
async fn live_message(stack: &Stack, user: &User, id: Uuid) -> Option<Value> {
    let (status, body) = stack.get_conversation(user, id).await;
    assert_eq!(status, 200, "{body}");
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["status"] == "streaming")
        .cloned()
}

/// Polls `f` until it gives a value, for at most [`WAIT`].
async fn poll<T, Fut: std::future::Future<Output = Option<T>>>(
    mut f: impl FnMut() -> Fut,
) -> Option<T> {
    let end = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the live answer shows at least `chars` characters of text.
async fn until_streaming(stack: &Stack, user: &User, id: Uuid, chars: usize) -> Value {
    poll(|| async {
        live_message(stack, user, id)
            .await
            .filter(|m| m["content"].as_str().unwrap_or("").len() >= chars)
    })
    .await
    .unwrap_or_else(|| panic!("no live answer with {chars} characters"))
}

#[tokio::test]
async fn stop_ends_the_stream_and_keeps_the_text_so_far() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("long {m}");
    let full = stack.slow_answer(&content, 200, 50).await;
    let generating = in_background(stack.send_req(&user, id, &content));

    let live = until_streaming(&stack, &user, id, 10).await;
    assert_eq!(live["role"], "assistant");
    assert!(full
        .concat()
        .starts_with(live["content"].as_str().expect("text")));

    // From another client: the same user, a fresh request.
    let (status, body) = stop(&stack, &user, &id.to_string()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["message_id"], live["id"]);

    let stream = generating.await.expect("stream");
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.last(),
        &json!({"done": true, "message_id": live["id"], "stopped": true}),
        "{:?}",
        stream.events
    );
    assert_eq!(stream.error(), None);
    let text = stream.tokens().concat();
    assert!(text.len() < full.concat().len(), "the upstream was stopped");
    assert!(full.concat().starts_with(&text));

    let stored = stack.stored_messages(id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(s(&stored[1], "id"), live["id"].as_str().expect("id"));
    assert_eq!(s(&stored[1], "status"), "stopped");
    assert_eq!(s(&stored[1], "content"), text, "what the browser saw");
    assert!(live_message(&stack, &user, id).await.is_none());

    // Nothing is live any more: a second stop is harmless.
    assert_eq!(stop(&stack, &user, &id.to_string()).await.0, 204);
    // And the conversation takes the next message.
    stack.turn(&user, id, &format!("next {m}"), &["ok"]).await;
}

#[tokio::test]
async fn a_stop_before_the_first_token_stores_no_answer() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("slow start {m}");
    stack
        .scenario(json!({"match": content, "tokens": ["never"], "first_token_delay_ms": 4000}))
        .await;
    let generating = in_background(stack.send_req(&user, id, &content));
    // As soon as the answer is live (its claim is the first thing a send writes).
    let stopped = poll(|| async {
        let (status, body) = stop(&stack, &user, &id.to_string()).await;
        (status == 202).then_some(body)
    })
    .await;
    assert!(stopped.is_some(), "never live");
    let stream = generating.await.expect("stream");
    assert_eq!(stream.tokens(), Vec::<String>::new());
    assert_eq!(stream.last(), &json!({"done": true, "stopped": true}));
    assert_eq!(
        roles_and_contents(&stack.stored_messages(id).await),
        [("user".to_owned(), content)]
    );
}

#[tokio::test]
async fn resumed_readers_get_the_whole_answer_and_the_same_ending() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("resume {m}");
    let full = stack.slow_answer(&content, 80, 50).await;
    let original = in_background(stack.send_req(&user, id, &content));

    until_streaming(&stack, &user, id, 10).await;
    // Two readers, as after a reload and on a second device.
    let first = in_background(resume_req(&stack, &user, id));
    let second = in_background(resume_req(&stack, &user, id));

    let original = original.await.expect("original");
    let message_id = original.message_id();
    for resumed in [first.await.expect("first"), second.await.expect("second")] {
        assert_eq!(resumed.status, 200);
        assert_eq!(
            resumed.headers["content-type"], "text/event-stream",
            "same stream format"
        );
        assert_eq!(resumed.tokens().concat(), full.concat(), "byte for byte");
        assert_eq!(resumed.last(), original.last());
        assert!(resumed.tokens().len() >= 2, "text so far, then new text");
    }
    let stored = stack.stored_messages(id).await;
    assert_eq!(s(&stored[1], "id"), message_id);
    assert_eq!(s(&stored[1], "content"), full.concat());
    assert_eq!(s(&stored[1], "status"), "complete");

    // Nothing live any more.
    let after = resume_req(&stack, &user, id).send().await.expect("resume");
    assert_eq!(after.status(), 204);
}

#[tokio::test]
async fn a_resumed_reader_sees_a_stop_as_the_original_does() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("stop resumed {m}");
    stack.slow_answer(&content, 200, 50).await;
    let original = in_background(stack.send_req(&user, id, &content));
    until_streaming(&stack, &user, id, 5).await;
    let resumed = in_background(resume_req(&stack, &user, id));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stop(&stack, &user, &id.to_string()).await.0, 202);
    let original = original.await.expect("original");
    let resumed = resumed.await.expect("resumed");
    assert_eq!(original.last()["stopped"], true);
    assert_eq!(resumed.last(), original.last());
    assert_eq!(resumed.tokens().concat(), original.tokens().concat());
}

#[tokio::test]
async fn one_live_answer_per_conversation() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("first {m}");
    stack.slow_answer(&content, 200, 50).await;
    let generating = in_background(stack.send_req(&user, id, &content));
    until_streaming(&stack, &user, id, 1).await;
    let before = stack.items(id).await;

    let other = format!("second {m}");
    let refused = stack.send(&user, id, &other).await;
    assert_eq!(refused.status, 409);
    let detail: Value = serde_json::from_slice(&refused.raw).expect("json");
    assert!(
        detail["detail"]
            .as_str()
            .expect("detail")
            .contains("being generated"),
        "{detail}"
    );
    let regenerate = stack.regenerate(&user, id).await;
    assert_eq!(regenerate.status, 409);
    assert!(stack.upstream_requests(&other).await.is_empty());
    assert_eq!(
        stack.items(id).await,
        before,
        "refused requests write nothing"
    );

    // Stopped, or, on a slow run, cut first by the test stack's 6 s deadline
    // (the answer takes 10 s): either way it ends with `done` and its text is
    // kept. Stopping itself is tested above.
    let (status, _) = stop(&stack, &user, &id.to_string()).await;
    assert!(matches!(status, 202 | 204), "{status}");
    let ended = generating.await.expect("stream");
    assert_eq!(ended.last()["done"], true, "{:?}", ended.events);
    if status == 202 && ended.error().is_none() {
        assert_eq!(ended.last()["stopped"], true, "{:?}", ended.events);
    }
    assert_eq!(
        stack.stored_messages(id).await.len(),
        2,
        "the question and its answer"
    );
    // Once it ended, the conversation takes the next message.
    stack.turn(&user, id, &other, &["fine"]).await;
}

#[tokio::test]
async fn stop_and_resume_refuse_what_is_not_the_users() {
    let stack = Stack::get().await;
    let (user, id) = stack.user_with_conversation().await;
    let stranger = stack.user();
    // Nothing live: 204 for both.
    assert_eq!(stop(&stack, &user, &id.to_string()).await.0, 204);
    let resp = resume_req(&stack, &user, id).send().await.expect("resume");
    assert_eq!(resp.status(), 204);
    // Another user's conversation, an unknown one and a malformed id: one 404.
    for (who, target) in [
        (&stranger, id.to_string()),
        (&user, Uuid::new_v4().to_string()),
        (&user, "not-a-uuid".to_owned()),
    ] {
        let (status, body) = stop(&stack, who, &target).await;
        assert_eq!(status, 404, "{target}");
        assert_eq!(body, json!({"detail": "conversation not found"}));
        let resp = stack
            .http
            .get(stack.url("send", &format!("/api/conversations/{target}/stream")))
            .bearer_auth(&who.token)
            .send()
            .await
            .expect("resume");
        assert_eq!(resp.status(), 404, "{target}");
    }
    // Wrong methods and no token.
    let resp = stack
        .http
        .get(stack.url("conversations", &format!("/api/conversations/{id}/stop")))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("get stop");
    assert_eq!(resp.status(), 405);
    let resp = stack
        .http
        .post(stack.url("send", &format!("/api/conversations/{id}/stream")))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("post stream");
    assert_eq!(resp.status(), 405);
    let resp = stack
        .http
        .post(stack.url("conversations", &format!("/api/conversations/{id}/stop")))
        .send()
        .await
        .expect("stop without token");
    assert_eq!(resp.status(), 401);
    assert_eq!(stack.items(id).await.len(), 1, "nothing written");
}

#[tokio::test]
async fn deleting_a_conversation_mid_answer_stops_it_and_leaves_nothing() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("doomed {m}");
    stack.slow_answer(&content, 200, 50).await;
    let generating = in_background(stack.send_req(&user, id, &content));
    until_streaming(&stack, &user, id, 5).await;
    let resp = stack.delete_conversation(&user, id).await;
    assert_eq!(resp.status(), 204);
    let stream = generating.await.expect("stream");
    stream.assert_failed_with("persist_failed");
    assert!(stream.tokens().len() < 200, "the upstream was stopped");
    assert!(
        eventually(WAIT, || async { stack.all_items(id).await.is_empty() }).await,
        "left behind: {:?}",
        stack.all_items(id).await
    );
    assert_eq!(stop(&stack, &user, &id.to_string()).await.0, 404);
}

/// A regeneration whose final write meets a delete: the upstream is done
/// before the generating function's next look at its slot, and its answer's
/// transaction (held back by the fault proxy) arrives after the delete. Its
/// failed condition looks like a lost race (`conflict`); the answer's last
/// checkpoint, written on its own after it, outlived the delete in the
/// conversation's partition.
#[tokio::test]
async fn a_regeneration_whose_final_write_meets_a_delete_leaves_nothing() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("regen-doomed {m}");
    stack.turn(&user, id, &content, &["first"]).await;
    stack
        .scenario(json!({"match": content, "tokens": ["second", " answer"]}))
        .await;
    stack
        .fault(json!({
            "operation": "TransactWriteItems", "body_contains": id.to_string(),
            "fault": "latency", "latency_ms": 2000,
        }))
        .await;
    let regenerating = in_background(
        stack
            .http
            .post(stack.url("regenerate", &format!("/api/conversations/{id}/regenerate")))
            .bearer_auth(&user.token)
            .json(&json!({})),
    );
    // The answer's write is held in the proxy once its transaction arrived.
    assert!(
        eventually(WAIT, || async {
            stack
                .fault_log(&id.to_string())
                .await
                .iter()
                .any(|e| e["fault"] == "latency")
        })
        .await,
        "the answer's write never came"
    );
    let resp = stack.delete_conversation(&user, id).await;
    assert_eq!(resp.status(), 204);
    let stream = regenerating.await.expect("stream");
    stream.assert_failed_with("persist_failed");
    assert!(
        eventually(WAIT, || async { stack.all_items(id).await.is_empty() }).await,
        "left behind: {:?}",
        stack
            .all_items(id)
            .await
            .iter()
            .map(|i| s(i, "sk"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn list_order_and_created_at_agree() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    for i in 0..4 {
        stack
            .turn(&user, id, &format!("q{i} {m}"), &["a", "b"])
            .await;
    }
    let (_, body) = stack.get_conversation(&user, id).await;
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 8);
    for pair in messages.windows(2) {
        assert!(pair[0]["id"].as_str() < pair[1]["id"].as_str());
        assert!(
            pair[0]["created_at"].as_str() <= pair[1]["created_at"].as_str(),
            "{pair:?}"
        );
    }
}
