//! `send` end to end: the compiled function under `cargo lambda watch`, the mock
//! upstream over HTTP, DynamoDB Local. Assertions are on what the browser
//! receives and what the table holds.

mod common;

use std::time::Duration;

use common::{eventually, marker, roles_and_contents, s, Stack};
use samosachaat::domain::prompt::SYS_DEFAULT;
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test]
async fn first_message_streams_and_is_stored() {
    let stack = Stack::get().await;
    let (user, id) = stack.user_with_conversation().await;
    // "hi there" is this test's own content (it becomes the title), so its
    // scenario matches on it: no other test sends it.
    let stream = stack
        .send_scripted(&user, id, "hi there", &["hel", "lo", " world"])
        .await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["cache-control"], "no-cache");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    assert_eq!(stream.tokens(), ["hel", "lo", " world"]);
    for event in &stream.events[..3] {
        assert_eq!(event["gpu"], 0, "token events are forwarded as sent");
    }
    let message_id = stream.message_id();
    assert_eq!(stream.events.len(), 4);

    // The answer is readable the moment `done` arrives.
    let (status, conversation) = stack.get_conversation(&user, id).await;
    assert_eq!(status, 200);
    assert_eq!(conversation["title"], "hi there");
    let messages = conversation["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["content"], "hi there");
    assert_eq!(messages[1]["id"], message_id.as_str());
    assert_eq!(messages[1]["content"], "hello world");
    assert_eq!(messages[1]["token_count"], 3);
    assert_eq!(messages[1]["status"], "complete");
    assert_eq!(messages[1]["model_tag"], "default");
    assert!(messages[1]["inference_time_ms"].as_u64().is_some());

    // The table holds exactly the conversation and the two messages, and the
    // conversation's updated_at moved with them.
    let items = stack.items(id).await;
    assert_eq!(items.len(), 3);
    let meta = items.iter().find(|i| s(i, "sk") == "META").expect("meta");
    assert!(s(meta, "updated_at") >= s(&items[1], "created_at"));

    // The upstream got the prompt in the first user message, and the key.
    let requests = stack.upstream_requests("hi there").await;
    let request = requests.last().expect("upstream request");
    assert_eq!(
        request["headers"]["x-internal-api-key"],
        stack.env["INTERNAL_API_KEY"].as_str()
    );
    let body = &request["body"];
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": format!("{SYS_DEFAULT}\n\nhi there")}])
    );
    assert_eq!(body["temperature"], 0.8);
    assert_eq!(body["max_tokens"], 1024);
    assert_eq!(body["top_k"], 50);
    assert_eq!(body["force_web_search"], false);
}

#[tokio::test]
async fn second_turn_sends_history_and_parameters() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    stack.turn(&user, id, &format!("one {m}"), &["A1"]).await;
    stack
        .scenario(json!({"match": format!("two {m}"), "tokens": ["A2"]}))
        .await;
    let body = json!({
        "content": format!("two {m}"), "temperature": 0.2, "max_tokens": 7, "top_k": 3,
        "thinking_mode": true, "force_web_search": true,
    });
    let stream = stack
        .post_stream("send", &user, &id.to_string(), body)
        .await;
    stream.message_id();

    let requests = stack.upstream_requests(&format!("two {m}")).await;
    let sent = &requests.last().expect("request")["body"];
    let messages = sent["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 3);
    assert!(messages[0]["content"]
        .as_str()
        .expect("content")
        .ends_with(&format!("after the closing tag.\n\none {m}")));
    assert_eq!(messages[1], json!({"role": "assistant", "content": "A1"}));
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": format!("two {m}")})
    );
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["max_tokens"], 7);
    assert_eq!(sent["top_k"], 3);
    assert_eq!(sent["force_web_search"], true);

    let stored = roles_and_contents(&stack.stored_messages(id).await);
    assert_eq!(
        stored,
        [
            ("user".into(), format!("one {m}")),
            ("assistant".into(), "A1".into()),
            ("user".into(), format!("two {m}")),
            ("assistant".into(), "A2".into()),
        ]
    );
    // The title came from the first message only.
    let (_, conversation) = stack.get_conversation(&user, id).await;
    assert_eq!(conversation["title"], format!("one {m}"));
}

#[tokio::test]
async fn missing_foreign_and_malformed_ids_are_the_same_404_and_write_nothing() {
    let stack = Stack::get().await;
    let owner = stack.user();
    let other = stack.user();
    let id = stack.create_conversation(&owner).await;
    let before = stack.items(id).await;
    let body = json!({"content": format!("intruder {}", marker())});

    let mut answers: Vec<(u16, Value)> = Vec::new();
    for target in [
        id.to_string(),
        Uuid::new_v4().to_string(),
        "not-a-uuid".into(),
        "1234".into(),
    ] {
        for function in ["send", "regenerate"] {
            let action = if function == "send" {
                "messages"
            } else {
                "regenerate"
            };
            let resp = stack
                .http
                .post(stack.url(function, &format!("/api/conversations/{target}/{action}")))
                .bearer_auth(&other.token)
                .json(&body)
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            answers.push((status, resp.json().await.expect("json body")));
        }
    }
    for answer in &answers {
        assert_eq!(answer, &(404, json!({"detail": "conversation not found"})));
    }
    assert_eq!(stack.items(id).await, before);
}

#[tokio::test]
async fn invalid_bodies_are_422_and_write_nothing() {
    let stack = Stack::get().await;
    let (user, id) = stack.user_with_conversation().await;
    let before = stack.items(id).await;
    // Non-UTF-8 bytes go as octet-stream: Function URLs then base64-encode the
    // body (cargo lambda's emulator refuses such bytes in a text body outright).
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("missing content", br#"{}"#.to_vec(), 422),
        ("empty content", br#"{"content":""}"#.to_vec(), 422),
        (
            "8001 characters",
            format!(r#"{{"content":"{}"}}"#, "é".repeat(8001)).into_bytes(),
            422,
        ),
        ("array", br#"[{"content":"x"}]"#.to_vec(), 422),
        (
            "number as string",
            br#"{"content":"x","max_tokens":"5"}"#.to_vec(),
            422,
        ),
        (
            "temperature above 2",
            br#"{"content":"x","temperature":2.5}"#.to_vec(),
            422,
        ),
        (
            "top_k above 200",
            br#"{"content":"x","top_k":201}"#.to_vec(),
            422,
        ),
        ("not json", b"content=x".to_vec(), 422),
        ("not utf-8", b"{\"content\":\"\xff\"}".to_vec(), 422),
        (
            "70 KB",
            format!(r#"{{"content":"{}"}}"#, "a".repeat(70 * 1024)).into_bytes(),
            413,
        ),
    ];
    for (name, body, status) in cases {
        let resp = stack
            .http
            .post(stack.url("send", &format!("/api/conversations/{id}/messages")))
            .bearer_auth(&user.token)
            .header(
                "content-type",
                if std::str::from_utf8(&body).is_ok() {
                    "application/json"
                } else {
                    "application/octet-stream"
                },
            )
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), status, "{name}");
        let json: Value = resp.json().await.expect("json body");
        assert!(json["detail"].is_string(), "{name}: {json}");
    }
    assert_eq!(stack.items(id).await, before);
}

#[tokio::test]
async fn auth_and_method_errors() {
    let stack = Stack::get().await;
    let (user, id) = stack.user_with_conversation().await;
    let url = stack.url("send", &format!("/api/conversations/{id}/messages"));
    let body = json!({"content": "x"});

    let no_token = stack
        .http
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(no_token.status(), 401);
    let mut expired = Stack::claims(user.id);
    expired["exp"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() - 1);
    let resp = stack
        .http
        .post(&url)
        .bearer_auth(stack.sign(&expired))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"detail": "not authenticated"})
    );

    let get = stack
        .http
        .get(&url)
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("request");
    assert_eq!(get.status(), 405);
    assert_eq!(stack.stored_messages(id).await.len(), 0);
}

#[tokio::test]
async fn upstream_failures_end_with_an_error_then_done() {
    let stack = Stack::get().await;
    let user = stack.user();
    // (scenario, error code, stored answer: (content, status) or none)
    type Case<'a> = (Value, &'a str, Option<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (json!({"status": 500}), "inference_error", None),
        (json!({"status": 429}), "inference_error", None),
        (
            json!({"reset_before_headers": true}),
            "inference_unavailable",
            None,
        ),
        (
            json!({"tokens": ["a", "b", "c", "d"], "drop_after": 2}),
            "inference_interrupted",
            Some(("ab", "incomplete")),
        ),
        (
            json!({"tokens": ["x", "y"], "no_done": true}),
            "inference_interrupted",
            Some(("xy", "incomplete")),
        ),
        (
            json!({"tokens": ["x"], "drop_after": 0}),
            "inference_interrupted",
            None,
        ),
    ];
    for (mut scenario, code, stored) in cases {
        let id = stack.create_conversation(&user).await;
        let m = marker();
        scenario["match"] = json!(m);
        stack.scenario(scenario.clone()).await;
        let stream = stack.send(&user, id, &format!("fail {m}")).await;
        assert_eq!(stream.status, 200, "{scenario}");
        stream.assert_failed_with(code);
        if code == "inference_error" {
            assert_eq!(
                stream.events[stream.events.len() - 2]["status_code"],
                scenario["status"]
            );
        }
        let messages = stack.stored_messages(id).await;
        // The user message is always kept; an answer only if tokens arrived.
        assert_eq!(s(&messages[0], "role"), "user", "{scenario}");
        match stored {
            None => assert_eq!(messages.len(), 1, "{scenario}"),
            Some((content, status)) => {
                assert_eq!(messages.len(), 2, "{scenario}");
                assert_eq!(s(&messages[1], "content"), content);
                assert_eq!(s(&messages[1], "status"), status);
                assert_eq!(s(&messages[1], "token_count"), content.len().to_string());
            }
        }
    }
}

#[tokio::test]
async fn hostile_upstream_framing_is_read_correctly() {
    let stack = Stack::get().await;
    let user = stack.user();
    let tokens = json!(["नम", "स्ते 🙂", " \"quoted\"", "\nnew line"]);
    let variants = [
        json!({"chunk_bytes": 3}),
        json!({"chunk_bytes": 1, "crlf": true}),
        json!({"events_per_chunk": 3, "junk": true, "bom": true}),
    ];
    for variant in variants {
        let id = stack.create_conversation(&user).await;
        let m = marker();
        let mut scenario = variant.clone();
        scenario["match"] = json!(m);
        scenario["tokens"] = tokens.clone();
        stack.scenario(scenario).await;
        let stream = stack.send(&user, id, &format!("framing {m}")).await;
        assert_eq!(json!(stream.tokens()), tokens, "{variant}");
        stream.message_id();
        let messages = stack.stored_messages(id).await;
        assert_eq!(
            s(&messages[1], "content"),
            "नमस्ते 🙂 \"quoted\"\nnew line",
            "{variant}"
        );
    }
}

#[tokio::test]
async fn silence_is_filled_with_pings_and_the_answer_stored() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    // The test stack pings after 400 ms of silence: a 1.7 s wait before the
    // headers and another before the first token stand in for 17 s in production.
    stack
        .scenario(json!({"match": m, "headers_delay_ms": 1700, "first_token_delay_ms": 1700, "tokens": ["late"]}))
        .await;
    let stream = stack.send(&user, id, &format!("slow {m}")).await;
    assert!(
        stream.pings >= 4,
        "pings: {} in {:?}",
        stream.pings,
        String::from_utf8_lossy(&stream.raw)
    );
    assert!(String::from_utf8_lossy(&stream.raw).contains(": ping\n\n"));
    assert_eq!(stream.tokens(), ["late"]);
    stream.message_id();
    assert_eq!(stack.stored_messages(id).await.len(), 2);
}

#[tokio::test]
async fn tokens_are_forwarded_as_they_arrive() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    stack
        .scenario(json!({"match": m, "tokens": ["t1", "t2", "t3"], "token_delay_ms": 600}))
        .await;
    let mut resp = stack
        .http
        .post(stack.url("send", &format!("/api/conversations/{id}/messages")))
        .bearer_auth(&user.token)
        .json(&json!({"content": format!("paced {m}")}))
        .send()
        .await
        .expect("request");
    let mut seen = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        seen.extend_from_slice(&chunk);
        if String::from_utf8_lossy(&seen).contains("\"t1\"") {
            break;
        }
    }
    // t3 leaves the upstream 1.2 s after t1: seeing t1 without t3 means t1 was
    // not held back behind later tokens (an ordering check, not a timing one).
    assert!(String::from_utf8_lossy(&seen).contains("\"t1\""));
    assert!(
        !String::from_utf8_lossy(&seen).contains("\"t3\""),
        "t1 was held back until t3"
    );
    while resp.chunk().await.expect("chunk").is_some() {}
}

#[tokio::test]
async fn a_browser_that_leaves_still_gets_the_full_answer_stored() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    stack
        .scenario(json!({"match": m, "tokens": ["one", " two", " three", " four"], "token_delay_ms": 300}))
        .await;
    let mut resp = stack
        .http
        .post(stack.url("send", &format!("/api/conversations/{id}/messages")))
        .bearer_auth(&user.token)
        .json(&json!({"content": format!("leaving {m}")}))
        .send()
        .await
        .expect("request");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"one\"") {
        let chunk = resp.chunk().await.expect("chunk").expect("first token");
        seen.extend_from_slice(&chunk);
    }
    drop(resp);

    let stored = eventually(Duration::from_secs(10), || async {
        stack.stored_messages(id).await.len() == 2
    })
    .await;
    assert!(stored, "the answer was not stored after the browser left");
    let messages = stack.stored_messages(id).await;
    assert_eq!(s(&messages[1], "content"), "one two three four");
    assert_eq!(s(&messages[1], "status"), "complete");
}
