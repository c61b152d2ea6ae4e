//! `regenerate` end to end: a new answer for the last turn, never a lost one.

mod common;

use common::{marker, roles_and_contents, s, Stack};
use samosachaat::domain::prompt::SYS_DEFAULT;
use serde_json::json;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
        .collect()
}

#[tokio::test]
async fn regenerate_replaces_the_last_answer() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let hi = format!("hi {m}");
    stack
        .scenario(json!({"match": m, "tokens": ["first"]}))
        .await;
    stack
        .scenario(json!({"match": m, "tokens": ["second", " reply"]}))
        .await;
    let first = stack.send(&user, id, &hi).await.message_id();

    let stream = stack.regenerate(&user, id).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.tokens(), ["second", " reply"]);
    let second = stream.message_id();
    assert_ne!(first, second);

    let stored = stack.stored_messages(id).await;
    assert_eq!(
        roles_and_contents(&stored),
        pairs(&[("user", &hi), ("assistant", "second reply")])
    );
    assert_eq!(s(&stored[1], "id"), second);
    assert_eq!(s(&stored[1], "token_count"), "2");

    // The upstream got only the user turn, with the prompt.
    let requests = stack.upstream_requests(&m).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1]["body"]["messages"],
        json!([{"role": "user", "content": format!("{SYS_DEFAULT}\n\n{hi}")}])
    );
}

#[tokio::test]
async fn a_failed_regeneration_keeps_the_old_answer() {
    let stack = Stack::get().await;
    let user = stack.user();
    for failure in [
        json!({"status": 503}),
        json!({"tokens": ["par", "tial", "!"], "drop_after": 2}),
        json!({"tokens": ["x"], "no_done": true}),
    ] {
        let id = stack.create_conversation(&user).await;
        let m = marker();
        stack
            .scenario(json!({"match": m, "tokens": ["kept"]}))
            .await;
        let mut scenario = failure.clone();
        scenario["match"] = json!(m);
        stack.scenario(scenario).await;
        stack.send(&user, id, &format!("q {m}")).await.message_id();
        let before = stack.stored_messages(id).await;

        let stream = stack.regenerate(&user, id).await;
        assert!(stream.error().is_some(), "{failure}: {:?}", stream.events);
        assert_eq!(stream.last(), &json!({"done": true}));
        assert_eq!(stack.stored_messages(id).await, before, "{failure}");
    }
}

#[tokio::test]
async fn regenerate_after_a_failed_turn_answers_it_and_deletes_nothing() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    stack.turn(&user, id, &format!("one {m}"), &["A1"]).await;
    stack
        .scenario(json!({"match": format!("two {m}"), "status": 500}))
        .await;
    stack
        .scenario(json!({"match": format!("two {m}"), "tokens": ["A2"]}))
        .await;
    stack
        .send(&user, id, &format!("two {m}"))
        .await
        .assert_failed_with("inference_error");

    let stream = stack.regenerate(&user, id).await;
    stream.message_id();
    let stored = roles_and_contents(&stack.stored_messages(id).await);
    let one = format!("one {m}");
    let two = format!("two {m}");
    assert_eq!(
        stored,
        pairs(&[
            ("user", &one),
            ("assistant", "A1"),
            ("user", &two),
            ("assistant", "A2")
        ])
    );

    // The upstream saw the whole history up to the unanswered question.
    let requests = stack.upstream_requests(&two).await;
    let messages = requests.last().expect("request")["body"]["messages"].clone();
    assert_eq!(messages.as_array().expect("array").len(), 3);
    assert_eq!(messages[2], json!({"role": "user", "content": two}));
}

#[tokio::test]
async fn only_the_last_answer_is_ever_replaced() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    stack.turn(&user, id, &format!("one {m}"), &["A1"]).await;
    stack.turn(&user, id, &format!("two {m}"), &["A2"]).await;
    stack
        .scenario(json!({"match": format!("two {m}"), "tokens": ["A2 again"]}))
        .await;
    let before = stack.stored_messages(id).await;

    stack.regenerate(&user, id).await.message_id();
    let after = stack.stored_messages(id).await;
    assert_eq!(after.len(), 4);
    assert_eq!(after[..3], before[..3], "earlier turns are untouched");
    assert_eq!(s(&after[3], "content"), "A2 again");
}

#[tokio::test]
async fn racing_regenerates_leave_exactly_one_answer() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    stack
        .scenario(json!({"match": m, "tokens": ["original"]}))
        .await;
    // Both answers take a while, so the second regenerate meets the first one
    // live, whichever claims the conversation first.
    stack
        .scenario(json!({"match": m, "tokens": ["one"], "first_token_delay_ms": 3000}))
        .await;
    stack
        .scenario(json!({"match": m, "tokens": ["two"], "first_token_delay_ms": 3000}))
        .await;
    stack
        .send(&user, id, &format!("race {m}"))
        .await
        .message_id();

    let (a, b) = tokio::join!(stack.regenerate(&user, id), stack.regenerate(&user, id));
    // The live slot admits one of them; the other is refused before any upstream
    // call (409), so a turn never gets two answers.
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "a: {:?}\nb: {:?}", a.events, b.events);
    let done: Vec<_> = [&a, &b].into_iter().filter(|s| s.status == 200).collect();
    assert_eq!(done[0].error(), None, "{:?}", done[0].events);
    assert_eq!(
        stack.upstream_requests(&m).await.len(),
        2,
        "the send and one regeneration"
    );

    let stored = stack.stored_messages(id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(s(&stored[1], "id"), done[0].message_id());
    assert_eq!(s(&stored[1], "content"), done[0].tokens().concat());
}

#[tokio::test]
async fn a_send_during_a_regeneration_is_refused_and_nothing_is_misattached() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let one = format!("one {m}");
    let two = format!("two {m}");
    stack.turn(&user, id, &one, &["A1"]).await;
    stack
        .scenario(
            // Long enough for the send to reach its function while the
            // regeneration is still live, even on a loaded machine (a CI run
            // once took 1.2 s from the slot's claim to the send's); the
            // heartbeat keeps a silent live answer from looking dead.
            json!({"match": one, "tokens": ["late", " answer"], "first_token_delay_ms": 3000}),
        )
        .await;
    stack
        .scenario(json!({"match": two, "tokens": ["A2"]}))
        .await;

    let regenerate = stack.regenerate(&user, id);
    let send = async {
        // Once the regeneration holds the conversation's live slot (its model
        // takes three seconds to the first token).
        assert!(
            stack.went_live(id).await,
            "the regeneration never went live"
        );
        stack.send(&user, id, &two).await
    };
    let (regenerated, sent) = tokio::join!(regenerate, send);
    // One live answer per conversation: the send is refused and writes nothing.
    assert_eq!(sent.status, 409, "{:?}", String::from_utf8_lossy(&sent.raw));
    let detail: serde_json::Value = serde_json::from_slice(&sent.raw).expect("json");
    assert!(detail["detail"]
        .as_str()
        .expect("detail")
        .contains("being generated"));
    assert!(stack.upstream_requests(&two).await.is_empty());
    regenerated.message_id();
    let stored = roles_and_contents(&stack.stored_messages(id).await);
    assert_eq!(
        stored,
        pairs(&[("user", &one), ("assistant", "late answer")])
    );
}

#[tokio::test]
async fn regenerate_without_a_user_message_is_400() {
    let stack = Stack::get().await;
    let (user, id) = stack.user_with_conversation().await;
    let resp = stack
        .http
        .post(stack.url("regenerate", &format!("/api/conversations/{id}/regenerate")))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<serde_json::Value>().await.expect("json"),
        json!({"detail": "conversation has no user messages to regenerate from"})
    );
    assert_eq!(stack.items(id).await.len(), 1);
}

#[tokio::test]
async fn regenerate_validates_its_body() {
    let stack = Stack::get().await;
    let (user, id) = stack.user_with_conversation().await;
    for body in [json!({"temperature": 3}), json!({"top_k": "5"}), json!([1])] {
        let stream = stack
            .post_stream("regenerate", &user, &id.to_string(), body.clone())
            .await;
        assert_eq!(stream.status, 422, "{body}");
    }
    assert_eq!(stack.items(id).await.len(), 1);
}
