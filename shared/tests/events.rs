//! Every sample event in `events/` (the ones `sam local invoke -e` and
//! `cargo lambda invoke --data-file` use) parsed by `lambda_http` and run through
//! the handlers against the local stack: a broken event fails here.

mod common;

use common::{body_bytes, Stack, Stream};
use lambda_http::request::LambdaRequest;
use lambda_http::{Context, LambdaEvent, Request};
use samosachaat::adapters::lambda::runtime;
use samosachaat::handlers::{conversations, regenerate, send};
use serde_json::Value;

fn parse(event: &str) -> Request {
    lambda_http::request::from_str(event).expect("event parses")
}

#[tokio::test]
async fn every_sample_event_runs_through_its_handler() {
    let stack = Stack::get().await;
    let state = stack.app_state();
    let user = stack.user();
    let mut files: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../events"))
            .expect("events dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");

    for file in &files {
        let id = stack.create_conversation(&user).await;
        let event = stack.event(file, id, &user.token);
        let request = parse(&event);
        let (status, body) = if file.starts_with("conversations-") {
            let resp = conversations::handle(state.clone(), request)
                .await
                .expect("handler");
            (resp.status().as_u16(), body_bytes(resp.into_body()).await)
        } else {
            if file.starts_with("regenerate") {
                // Regenerate needs a turn to answer.
                let first = parse(&stack.event("send-message.json", id, &user.token));
                let resp = send::send(state.clone(), first).await.expect("handler");
                body_bytes(resp.into_body()).await;
            }
            let resp = if file.starts_with("send-") {
                send::send(state.clone(), request).await
            } else {
                regenerate::regenerate(state.clone(), request).await
            }
            .expect("handler");
            (resp.status().as_u16(), body_bytes(resp.into_body()).await)
        };
        let expected = match file.as_str() {
            "conversations-create.json" => 201,
            // Nothing is live in a fresh conversation: stop and resume say so.
            "conversations-delete.json" | "conversations-stop.json" | "send-resume.json" => 204,
            _ => 200,
        };
        assert_eq!(
            status,
            expected,
            "{file}: {}",
            String::from_utf8_lossy(&body)
        );
        if expected == 204 {
            assert!(body.is_empty(), "{file}");
        } else if !file.starts_with("conversations-") {
            let stream = Stream::parse(status, Default::default(), body);
            stream.message_id();
            assert!(!stream.tokens().is_empty(), "{file}");
        } else if expected != 204 {
            let json: Value = serde_json::from_slice(&body).expect("json");
            assert!(json.is_object(), "{file}");
        }
    }
}

#[tokio::test]
async fn an_undecodable_base64_body_is_a_400_not_a_panic() {
    let stack = Stack::get().await;
    let state = stack.app_state();
    let user = stack.user();
    let id = stack.create_conversation(&user).await;
    let mut event: Value =
        serde_json::from_str(&stack.event("send-message-base64.json", id, &user.token))
            .expect("json");
    event["body"] = Value::String("%%% not base64 %%%".into());
    let payload: LambdaRequest = serde_json::from_value(event).expect("lambda request");
    let request: Request = runtime::sanitize(LambdaEvent::new(payload, Context::default()))
        .payload
        .into();
    let resp = send::send(state.clone(), request).await.expect("handler");
    assert_eq!(resp.status(), 400);
    let body: Value = serde_json::from_slice(&body_bytes(resp.into_body()).await).expect("json");
    assert!(body["detail"].as_str().expect("detail").contains("base64"));
    assert_eq!(stack.stored_messages(id).await.len(), 0);

    // A client cannot forge the marker: it is dropped from a well-formed event.
    let mut event: Value =
        serde_json::from_str(&stack.event("conversations-list.json", id, &user.token))
            .expect("json");
    event["headers"]["x-samosachaat-body-error"] = Value::String("base64".into());
    let payload: LambdaRequest = serde_json::from_value(event).expect("lambda request");
    let request: Request = runtime::sanitize(LambdaEvent::new(payload, Context::default()))
        .payload
        .into();
    let resp = conversations::handle(state, request)
        .await
        .expect("handler");
    assert_eq!(resp.status(), 200);
}
