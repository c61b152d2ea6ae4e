//! The `conversations` function end to end: the calls the chat screen makes.

mod common;

use std::collections::HashSet;

use aws_sdk_dynamodb::types::AttributeValue;

use common::{marker, Stack, User};
use serde_json::{json, Value};
use uuid::Uuid;

async fn call(
    stack: &Stack,
    user: &User,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = stack
        .http
        .request(method, stack.url("conversations", path))
        .bearer_auth(&user.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn create_get_list_rename_delete() {
    let stack = Stack::get().await;
    let user = stack.user();

    let (status, created) = call(
        &stack,
        &user,
        reqwest::Method::POST,
        "/api/conversations",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["title"], "New conversation");
    assert_eq!(created["model_tag"], "default");
    assert_eq!(created["is_favorited"], false);
    assert_eq!(created["user_id"], user.id.to_string());
    for field in ["created_at", "updated_at"] {
        let value = created[field].as_str().expect(field);
        assert!(
            time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );
        assert!(value.ends_with('Z'));
    }
    let keys: HashSet<&str> = created
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "id",
            "user_id",
            "title",
            "model_tag",
            "is_favorited",
            "created_at",
            "updated_at"
        ])
    );
    let id = created["id"].as_str().expect("id").to_owned();

    let (status, custom) = call(
        &stack,
        &user,
        reqwest::Method::POST,
        "/api/conversations",
        Some(json!({"title": "Trip plans", "model_tag": "d24"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(custom["title"], "Trip plans");
    assert_eq!(custom["model_tag"], "d24");

    let (status, got) = call(
        &stack,
        &user,
        reqwest::Method::GET,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["messages"], json!([]));
    assert_eq!(got["title"], "New conversation");

    let (status, renamed) = call(
        &stack,
        &user,
        reqwest::Method::PUT,
        &format!("/api/conversations/{id}"),
        Some(json!({"title": "Renamed"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(renamed["title"], "Renamed");
    assert!(renamed["updated_at"].as_str() > created["updated_at"].as_str());

    let (status, list) = call(
        &stack,
        &user,
        reqwest::Method::GET,
        "/api/conversations",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [id.as_str(), custom["id"].as_str().expect("id")],
        "renamed one is most recent"
    );
    assert_eq!(list["next_cursor"], Value::Null);

    let (status, body) = call(
        &stack,
        &user,
        reqwest::Method::DELETE,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!((status, body), (204, Value::String(String::new())));
    let (status, _) = call(
        &stack,
        &user,
        reqwest::Method::GET,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &stack,
        &user,
        reqwest::Method::DELETE,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn users_never_see_or_change_each_others_conversations() {
    let stack = Stack::get().await;
    let owner = stack.user();
    let other = stack.user();
    let id = stack.create_conversation(&owner).await;
    let before = stack.items(id).await;
    let not_found = json!({"detail": "conversation not found"});
    let path = format!("/api/conversations/{id}");
    for (method, body) in [
        (reqwest::Method::GET, None),
        (reqwest::Method::PUT, Some(json!({"title": "mine now"}))),
        (reqwest::Method::DELETE, None),
    ] {
        let foreign = call(&stack, &other, method.clone(), &path, body.clone()).await;
        let missing = call(
            &stack,
            &other,
            method.clone(),
            &format!("/api/conversations/{}", Uuid::new_v4()),
            body.clone(),
        )
        .await;
        let malformed = call(
            &stack,
            &other,
            method.clone(),
            "/api/conversations/nope",
            body,
        )
        .await;
        for answer in [foreign, missing, malformed] {
            assert_eq!(answer, (404, not_found.clone()), "{method}");
        }
    }
    let (_, list) = call(
        &stack,
        &other,
        reqwest::Method::GET,
        "/api/conversations",
        None,
    )
    .await;
    assert_eq!(list["items"], json!([]));
    assert_eq!(stack.items(id).await, before);
}

#[tokio::test]
async fn list_follows_updated_at_after_sends_and_pages_cover_everything_once() {
    let stack = Stack::get().await;
    let user = stack.user();
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(stack.create_conversation(&user).await.to_string());
    }
    // A message moves its conversation to the top.
    let bumped = Uuid::parse_str(&ids[2]).expect("uuid");
    let content = format!("bump {}", marker());
    stack.turn(&user, bumped, &content, &["ok"]).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/conversations?limit=3&cursor={c}"),
            None => "/api/conversations?limit=3".to_owned(),
        };
        let (status, page) = call(&stack, &user, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|c| c["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        7,
        "each exactly once"
    );
    assert_eq!(
        seen[0], ids[2],
        "the conversation with the newest message comes first"
    );
    let rest: Vec<&String> = seen[1..].iter().collect();
    let mut expected: Vec<&String> = ids.iter().filter(|i| **i != ids[2]).collect();
    expected.reverse();
    assert_eq!(rest, expected, "then newest created first");
}

#[tokio::test]
async fn delete_removes_every_item_of_a_long_conversation() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    stack
        .scenario(json!({"match": m, "tokens": ["a"], "token_delay_ms": 0, "repeat": true}))
        .await;
    // Nine sends (the test stack allows ten a minute per user), then more turns
    // written in the store's message shape: more items than one delete batch.
    for i in 0..9 {
        stack
            .send(&user, id, &format!("msg {i} {m}"))
            .await
            .message_id();
    }
    for i in 0..10 {
        let message = Uuid::now_v7();
        stack
            .functions_dynamodb()
            .put_item()
            .table_name(&stack.table)
            .item("pk", AttributeValue::S(format!("CONV#{id}")))
            .item("sk", AttributeValue::S(format!("M#{message}")))
            .item("id", AttributeValue::S(message.to_string()))
            .item("conversation_id", AttributeValue::S(id.to_string()))
            .item(
                "role",
                AttributeValue::S(if i % 2 == 0 { "user" } else { "assistant" }.into()),
            )
            .item("content", AttributeValue::S(format!("more {i}")))
            .item(
                "created_at",
                AttributeValue::S(samosachaat::foundation::time_fmt::of_id(message)),
            )
            .item("status", AttributeValue::S("complete".into()))
            .send()
            .await
            .expect("put message");
    }
    assert_eq!(
        stack.items(id).await.len(),
        29,
        "28 messages and the conversation"
    );
    let (status, got) = call(
        &stack,
        &user,
        reqwest::Method::GET,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let messages = got["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 28);
    for pair in messages.windows(2) {
        assert!(
            pair[0]["id"].as_str() < pair[1]["id"].as_str(),
            "oldest first"
        );
    }

    let (status, _) = call(
        &stack,
        &user,
        reqwest::Method::DELETE,
        &format!("/api/conversations/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(stack.all_items(id).await.len(), 0);
}

#[tokio::test]
async fn a_send_to_a_deleted_conversation_stores_nothing() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    // The conversation is deleted while the upstream is still thinking: once
    // the send holds the conversation's live slot (a fixed wait lost the race
    // to a slow machine, where the delete came first and the send met a 404).
    stack
        .scenario(json!({"match": m, "tokens": ["late"], "headers_delay_ms": 2000}))
        .await;
    let content = format!("doomed {m}");
    let send = stack.send(&user, id, &content);
    let delete = async {
        assert!(stack.went_live(id).await, "the send never went live");
        call(
            &stack,
            &user,
            reqwest::Method::DELETE,
            &format!("/api/conversations/{id}"),
            None,
        )
        .await
    };
    let (stream, (status, _)) = tokio::join!(send, delete);
    assert_eq!(status, 204);
    assert!(stream.error().is_some(), "{:?}", stream.events);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        stack.all_items(id).await.len(),
        0,
        "no half conversation was resurrected"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_and_write_nothing() {
    let stack = Stack::get().await;
    let (user, id) = stack.user_with_conversation().await;
    let before_items = stack.items(id).await;
    let long = "x".repeat(501);
    let cases: Vec<(reqwest::Method, String, Option<Value>, u16)> = vec![
        (
            reqwest::Method::POST,
            "/api/conversations".into(),
            Some(json!({"title": long})),
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/conversations".into(),
            Some(json!({"title": ""})),
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/conversations".into(),
            Some(json!({"model_tag": "m".repeat(101)})),
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/conversations".into(),
            Some(json!({"title": 5})),
            422,
        ),
        (
            reqwest::Method::POST,
            "/api/conversations".into(),
            Some(json!(["x"])),
            422,
        ),
        (
            reqwest::Method::PUT,
            format!("/api/conversations/{id}"),
            Some(json!({})),
            422,
        ),
        (
            reqwest::Method::PUT,
            format!("/api/conversations/{id}"),
            Some(json!({"title": long})),
            422,
        ),
        (
            reqwest::Method::GET,
            "/api/conversations?limit=0".into(),
            None,
            422,
        ),
        (
            reqwest::Method::GET,
            "/api/conversations?limit=201".into(),
            None,
            422,
        ),
        (
            reqwest::Method::GET,
            "/api/conversations?limit=ten".into(),
            None,
            422,
        ),
        (
            reqwest::Method::GET,
            "/api/conversations?cursor=bogus".into(),
            None,
            422,
        ),
        (
            reqwest::Method::DELETE,
            "/api/conversations".into(),
            None,
            405,
        ),
        (
            reqwest::Method::POST,
            format!("/api/conversations/{id}"),
            Some(json!({})),
            405,
        ),
        (reqwest::Method::GET, "/api/elsewhere".into(), None, 404),
    ];
    for (method, path, body, status) in cases {
        let (got, detail) = call(&stack, &user, method.clone(), &path, body).await;
        assert_eq!(got, status, "{method} {path}: {detail}");
        assert!(detail["detail"].is_string(), "{method} {path}: {detail}");
    }
    let (_, list) = call(
        &stack,
        &user,
        reqwest::Method::GET,
        "/api/conversations",
        None,
    )
    .await;
    assert_eq!(
        list["items"].as_array().expect("items").len(),
        1,
        "no conversation was created"
    );
    assert_eq!(stack.items(id).await, before_items);

    let anonymous = stack
        .http
        .get(stack.url("conversations", "/api/conversations"))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401);
}

/// SPEC 6, as the samosaChaat frontend meets it: it creates every conversation
/// as "New chat". The first user message titles the conversation (its first 80
/// characters) whatever title it was created with, unless the user renamed it.
#[tokio::test]
async fn the_first_message_titles_a_conversation_unless_the_user_renamed_it() {
    let stack = Stack::get().await;
    let user = stack.user();
    let m = marker();
    let first = format!("{m} how do I make samosa dough crisp and flaky, with ajwain, without it turning oily in the fryer?");
    let expected: String = first.chars().take(80).collect();

    for created_with in [
        json!({"title": "New chat"}),
        json!({}),
        json!({"title": "Dinner"}),
    ] {
        let id = stack
            .create_conversation_with(&user, created_with.clone())
            .await;
        stack.turn(&user, id, &first, &["Rest", " it"]).await;
        let (_, got) = stack.get_conversation(&user, id).await;
        assert_eq!(got["title"], json!(expected), "created with {created_with}");
        // Later messages leave it.
        stack
            .turn(&user, id, &format!("{m} and the filling?"), &["Potato"])
            .await;
        let (_, got) = stack.get_conversation(&user, id).await;
        assert_eq!(got["title"], json!(expected), "created with {created_with}");
    }

    // Renamed before its first message: the rename wins.
    let id = stack
        .create_conversation_with(&user, json!({"title": "New chat"}))
        .await;
    let (status, _) = call(
        &stack,
        &user,
        reqwest::Method::PUT,
        &format!("/api/conversations/{id}"),
        Some(json!({"title": "Samosa research"})),
    )
    .await;
    assert_eq!(status, 200);
    stack.turn(&user, id, &first, &["Rest"]).await;
    let (_, got) = stack.get_conversation(&user, id).await;
    assert_eq!(got["title"], "Samosa research");

    // Renamed after: the rename stands too.
    let id = stack.create_conversation(&user).await;
    stack.turn(&user, id, &first, &["Rest"]).await;
    call(
        &stack,
        &user,
        reqwest::Method::PUT,
        &format!("/api/conversations/{id}"),
        Some(json!({"title": "Later name"})),
    )
    .await;
    stack.turn(&user, id, &format!("{m} again"), &["Ok"]).await;
    let (_, got) = stack.get_conversation(&user, id).await;
    assert_eq!(got["title"], "Later name");
}
