//! A bounded load test on loopback: 50 concurrent streams through
//! `cargo lambda watch --concurrency 64`, twice over the same 50 conversations,
//! each of its own user (per-user limits would refuse one user's 50).
//! Every stream must end with `done`, every answer be stored exactly once, every
//! conversation's messages be in order. The figures (streams/s, slowest time to
//! first token) are printed, not asserted: this machine is shared and noisy.

mod common;

use std::time::{Duration, Instant};

use common::{marker, roles_and_contents, Stack, User};
use serde_json::json;
use uuid::Uuid;

const STREAMS: usize = 50;
const TOKENS: usize = 20;

struct Run {
    first_token: Duration,
    message_id: String,
}

async fn one_stream(stack: &Stack, user: &User, id: Uuid, content: String) -> Run {
    let started = Instant::now();
    let mut resp = stack
        .http
        .post(stack.url("send", &format!("/api/conversations/{id}/messages")))
        .bearer_auth(&user.token)
        .json(&json!({ "content": content }))
        .send()
        .await
        .expect("request");
    if resp.status() != 200 {
        let status = resp.status();
        panic!("{status}: {}", resp.text().await.unwrap_or_default());
    }
    let mut raw = Vec::new();
    let mut first_token = None;
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        raw.extend_from_slice(&chunk);
        if first_token.is_none() && String::from_utf8_lossy(&raw).contains("\"token\"") {
            first_token = Some(started.elapsed());
        }
    }
    let stream = common::Stream::parse(200, Default::default(), raw);
    assert_eq!(stream.tokens().len(), TOKENS, "{:?}", stream.events);
    Run {
        first_token: first_token.expect("a token"),
        message_id: stream.message_id(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_streams_lose_nothing() {
    let stack = Stack::get().await;
    let users: Vec<User> = (0..STREAMS).map(|_| stack.user()).collect();
    let m = marker();
    let tokens: Vec<String> = (0..TOKENS).map(|i| format!("t{i} ")).collect();
    stack
        .scenario(json!({"match": m, "tokens": tokens, "token_delay_ms": 10, "repeat": true}))
        .await;
    let mut ids = Vec::new();
    for user in &users {
        ids.push(stack.create_conversation(user).await);
    }

    let mut answers = vec![Vec::new(); STREAMS];
    for round in 0..2 {
        let started = Instant::now();
        let runs =
            futures_util::future::join_all(ids.iter().zip(&users).enumerate().map(
                |(i, (id, user))| one_stream(&stack, user, *id, format!("load {round} {i} {m}")),
            ))
            .await;
        let elapsed = started.elapsed();
        let slowest = runs.iter().map(|r| r.first_token).max().unwrap_or_default();
        let mut sorted: Vec<Duration> = runs.iter().map(|r| r.first_token).collect();
        sorted.sort();
        eprintln!(
            "load round {round} ({}): {STREAMS} streams of {TOKENS} tokens in {:.2} s = {:.1} streams/s; \
             time to first token p50 {:?}, slowest {:?}",
            if round == 0 { "instances starting" } else { "warm" },
            elapsed.as_secs_f64(),
            STREAMS as f64 / elapsed.as_secs_f64(),
            sorted[STREAMS / 2],
            slowest,
        );
        for (i, run) in runs.into_iter().enumerate() {
            answers[i].push(run.message_id);
        }
    }

    let answer: String = tokens.concat();
    for (i, id) in ids.iter().enumerate() {
        let items = stack.stored_messages(*id).await;
        let expected = vec![
            ("user".to_owned(), format!("load 0 {i} {m}")),
            ("assistant".to_owned(), answer.clone()),
            ("user".to_owned(), format!("load 1 {i} {m}")),
            ("assistant".to_owned(), answer.clone()),
        ];
        assert_eq!(roles_and_contents(&items), expected, "conversation {i}");
        let stored_ids: Vec<String> = [&items[1], &items[3]]
            .iter()
            .map(|i| common::s(i, "id"))
            .collect();
        assert_eq!(
            stored_ids, answers[i],
            "the streamed message ids are the stored ones"
        );
    }
}
