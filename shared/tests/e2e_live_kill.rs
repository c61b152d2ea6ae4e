//! A function process killed (SIGKILL) mid-answer: the text it checkpointed is
//! settled `incomplete` by the next request that meets the answer, and the
//! conversation is not blocked.
//!
//! It kills the `send` process with an open connection to the mock upstream, so
//! `scripts/test.sh` runs it on its own, after the other tests.

mod common;

use std::time::Duration;

use common::{eventually, s, Stack};
use serde_json::Value;

/// The text a browser saw before its stream broke or ended.
async fn read_until_broken(mut resp: reqwest::Response) -> String {
    let mut raw = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        raw.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&raw)
        .split("\n\n")
        .filter_map(|block| block.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|e| e["token"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_killed_function_loses_at_most_its_last_checkpoint_interval() {
    let stack = Stack::get().await;
    let (user, id, m) = stack.chat().await;
    let content = format!("doomed {m}");
    let tokens = stack.slow_answer(&content, 400, 50).await;
    let resp = stack
        .send_req(&user, id, &content)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let browser = tokio::spawn(read_until_broken(resp));

    // Let a few checkpoints land, then kill the function.
    let checkpointed = || async {
        let (_, body) = stack.get_conversation(&user, id).await;
        body["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["status"] == "streaming").cloned())
            .and_then(|m| m["content"].as_str().map(str::len))
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(20), || async {
            checkpointed().await >= 40
        })
        .await
    );
    let pids = stack.generating_sends().await;
    assert_eq!(
        pids.len(),
        1,
        "the one send process generating the answer: {pids:?}"
    );
    for pid in &pids {
        let status = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {pid}");
    }
    let seen = browser.await.expect("browser");
    assert!(seen.len() < tokens.concat().len(), "the stream broke");

    // No checkpoint any more: once LIVE_STALE_AFTER_MS passes, the next request
    // that meets the answer settles it with the checkpointed text.
    let mut last = Value::Null;
    for _ in 0..300 {
        let (_, body) = stack.get_conversation(&user, id).await;
        last = body["messages"].clone();
        if last
            .as_array()
            .is_some_and(|m| m.len() == 2 && m[1]["status"] == "incomplete")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last[1]["status"], "incomplete", "never settled: {last}");
    let kept = last[1]["content"].as_str().expect("content").to_owned();
    assert!(!kept.is_empty());
    assert!(seen.starts_with(&kept), "kept text is what the browser saw");
    // At 20 tokens a second and a 1 s interval, about 20 tokens (under 200
    // bytes) can be lost; allow for the kill landing mid-write on a busy machine.
    assert!(
        seen.len() - kept.len() <= 600,
        "lost {} bytes",
        seen.len() - kept.len()
    );
    let stored = stack.stored_messages(id).await;
    assert_eq!(s(&stored[1], "status"), "incomplete");

    // The dead answer no longer blocks the conversation.
    let resumed = stack
        .http
        .get(stack.url("send", &format!("/api/conversations/{id}/stream")))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 204);
    stack.turn(&user, id, &format!("again {m}"), &["ok"]).await;
}
