//! `Idempotency-Key` on send and regenerate: a retry stores nothing twice.

mod common;

use common::{marker, roles_and_contents, s, Stack, Stream, User};
use serde_json::{json, Value};
use uuid::Uuid;

async fn post(
    stack: &Stack,
    user: &User,
    function: &str,
    id: Uuid,
    key: &str,
    body: Value,
) -> Stream {
    stack
        .post_stream_with(
            function,
            user,
            &id.to_string(),
            body,
            &[("idempotency-key", key)],
        )
        .await
}

#[tokio::test]
async fn a_retry_after_completion_replays_the_stored_answer() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let key = format!("key-{m}");
    stack
        .scenario(json!({"match": m, "tokens": ["Hel", "lo", "!"]}))
        .await;
    let body = json!({"content": format!("retry me {m}")});

    let first = post(&stack, &user, "send", id, &key, body.clone()).await;
    let message_id = first.message_id();
    let retry = post(&stack, &user, "send", id, &key, body).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.headers["content-type"], "text/event-stream");
    assert_eq!(
        retry.events,
        [
            json!({"token": "Hello!"}),
            json!({"done": true, "message_id": message_id})
        ]
    );

    let stored = roles_and_contents(&stack.stored_messages(id).await);
    assert_eq!(
        stored,
        [
            ("user".into(), format!("retry me {m}")),
            ("assistant".into(), "Hello!".into())
        ]
    );
    assert_eq!(
        stack.upstream_requests(&m).await.len(),
        1,
        "the upstream was called once"
    );
}

#[tokio::test]
async fn a_retry_while_running_is_409_and_a_different_body_is_422() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let key = format!("key-{m}");
    stack
        .scenario(json!({"match": m, "tokens": ["slow"], "first_token_delay_ms": 3000}))
        .await;
    let body = json!({"content": format!("long one {m}")});

    let first = post(&stack, &user, "send", id, &key, body.clone());
    let during = async {
        // Once the first holds the conversation's live slot (its model takes
        // three seconds to the first token, time enough on a loaded machine).
        assert!(stack.went_live(id).await, "the first send never went live");
        let running = post(&stack, &user, "send", id, &key, body.clone()).await;
        // The key reused for another request (here: another conversation, so
        // the first one's live answer does not answer 409 first).
        let elsewhere = stack.create_conversation(&user).await;
        let other = post(
            &stack,
            &user,
            "send",
            elsewhere,
            &key,
            json!({"content": format!("other {m}")}),
        )
        .await;
        (running, other)
    };
    let (first, (running, other)) = tokio::join!(first, during);
    first.message_id();
    assert_eq!(running.status, 409);
    assert_eq!(other.status, 422);
    let detail: Value = serde_json::from_slice(&other.raw).expect("json");
    assert!(detail["detail"]
        .as_str()
        .expect("detail")
        .starts_with("Idempotency-Key"));
    assert_eq!(
        stack.stored_messages(id).await.len(),
        2,
        "one user message, one answer"
    );
}

/// One key sent with two requests at the same moment (two conversations, so
/// neither meets the other's live answer first): the key's record admits one,
/// the other is refused 422 and writes nothing, and the upstream is called once.
#[tokio::test]
async fn racing_requests_with_one_key_run_once() {
    let stack = Stack::get().await;
    let (user, a, m) = stack.chat().await;
    let b = stack.create_conversation(&user).await;
    let key = format!("key-{m}");
    stack
        .scenario(json!({"match": m, "tokens": ["only", " once"], "first_token_delay_ms": 500}))
        .await;
    let (first, second) = tokio::join!(
        post(
            &stack,
            &user,
            "send",
            a,
            &key,
            json!({"content": format!("a {m}")})
        ),
        post(
            &stack,
            &user,
            "send",
            b,
            &key,
            json!({"content": format!("b {m}")})
        ),
    );
    let mut statuses = [first.status, second.status];
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 422],
        "first: {:?}\nsecond: {:?}",
        String::from_utf8_lossy(&first.raw),
        String::from_utf8_lossy(&second.raw)
    );
    let (won, lost) = if first.status == 200 { (a, b) } else { (b, a) };
    assert_eq!(stack.stored_messages(won).await.len(), 2);
    assert!(stack.stored_messages(lost).await.is_empty());
    assert_eq!(stack.upstream_requests(&m).await.len(), 1);
}

#[tokio::test]
async fn a_retry_of_a_failed_send_replays_the_failure_without_a_second_message() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let key = format!("key-{m}");
    stack.scenario(json!({"match": m, "status": 502})).await;
    let body = json!({"content": format!("unlucky {m}")});
    post(&stack, &user, "send", id, &key, body.clone())
        .await
        .assert_failed_with("inference_error");
    let retry = post(&stack, &user, "send", id, &key, body).await;
    retry.assert_failed_with("inference_error");
    assert_eq!(retry.events.len(), 2);
    assert_eq!(stack.stored_messages(id).await.len(), 1);
    assert_eq!(stack.upstream_requests(&m).await.len(), 1);
}

#[tokio::test]
async fn keys_are_per_user_and_regenerate_honours_them() {
    let stack = Stack::get().await;
    let alice = stack.user();
    let bob = stack.user();
    let m = marker();
    let key = format!("shared-{m}");
    stack
        .scenario(json!({"match": m, "tokens": ["a"], "repeat": true}))
        .await;
    let alice_id = stack.create_conversation(&alice).await;
    let bob_id = stack.create_conversation(&bob).await;
    post(
        &stack,
        &alice,
        "send",
        alice_id,
        &key,
        json!({"content": format!("x {m}")}),
    )
    .await
    .message_id();
    // Bob's identical key is his own.
    post(
        &stack,
        &bob,
        "send",
        bob_id,
        &key,
        json!({"content": format!("x {m}")}),
    )
    .await
    .message_id();
    assert_eq!(stack.stored_messages(bob_id).await.len(), 2);

    let regen_key = format!("regen-{m}");
    let first = post(
        &stack,
        &alice,
        "regenerate",
        alice_id,
        &regen_key,
        json!({}),
    )
    .await;
    let id = first.message_id();
    let retry = post(
        &stack,
        &alice,
        "regenerate",
        alice_id,
        &regen_key,
        json!({}),
    )
    .await;
    assert_eq!(retry.message_id(), id);
    let stored = stack.stored_messages(alice_id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(s(&stored[1], "id"), id);
}

#[tokio::test]
async fn a_malformed_key_is_422_and_writes_nothing() {
    let stack = Stack::get().await;
    let (user, id) = stack.user_with_conversation().await;
    for key in ["k".repeat(129), "has space".to_owned(), "ключ".to_owned()] {
        let resp = stack
            .http
            .post(stack.url("send", &format!("/api/conversations/{id}/messages")))
            .bearer_auth(&user.token)
            .header("idempotency-key", key.as_bytes())
            .json(&json!({"content": "x"}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 422, "{key}");
    }
    assert_eq!(stack.items(id).await.len(), 1);
}
