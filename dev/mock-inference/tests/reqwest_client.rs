//! What the project's real HTTP client (reqwest) sees of the scenarios.

use std::time::Duration;

use mock_inference::{serve, Config};
use serde_json::{json, Value};
use tokio::net::TcpListener;

async fn start() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, Config::default()));
    format!("http://{addr}")
}

fn chat(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}], "temperature": null})
}

/// Reads the body chunk by chunk: (chunks received, Ok(()) or the body error).
async fn read_chunks(mut resp: reqwest::Response) -> (Vec<Vec<u8>>, Result<(), reqwest::Error>) {
    let mut chunks = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => chunks.push(chunk.to_vec()),
            Ok(None) => return (chunks, Ok(())),
            Err(err) => return (chunks, Err(err)),
        }
    }
}

#[tokio::test]
async fn reqwest_sees_clean_ends_drops_splits_and_errors() {
    let base = start().await;
    let client = reqwest::Client::new();
    for scenario in [
        json!({"match": "[rq-drop]", "tokens": ["a", "b", "c"], "drop_after": 1}),
        json!({"match": "[rq-split]", "tokens": ["😀😀"], "chunk_bytes": 5}),
        json!({"match": "[rq-429]", "status": 429}),
    ] {
        let resp = client
            .post(format!("{base}/__mock/scenarios"))
            .json(&scenario)
            .send()
            .await
            .expect("register");
        assert_eq!(resp.status(), 201);
    }
    let generate = |text: &str| {
        client
            .post(format!("{base}/generate"))
            .json(&chat(text))
            .send()
    };

    let (chunks, end) = read_chunks(generate("[rq-clean]").await.expect("send")).await;
    assert!(end.is_ok());
    assert!(String::from_utf8(chunks.concat())
        .expect("utf-8")
        .ends_with("data: {\"done\": true}\n\n"));

    let (chunks, end) = read_chunks(generate("[rq-drop]").await.expect("send")).await;
    assert!(end.is_err(), "a dropped stream must be a body error");
    assert_eq!(chunks.concat(), b"data: {\"token\": \"a\", \"gpu\": 0}\n\n");

    let (chunks, end) = read_chunks(generate("[rq-split]").await.expect("send")).await;
    assert!(end.is_ok());
    assert!(chunks.len() > 5 && chunks.iter().all(|c| c.len() <= 5));

    let resp = generate("[rq-429]").await.expect("send");
    assert_eq!(resp.status(), 429);

    let recorded: Value = client
        .get(format!("{base}/__mock/requests?match=%5Brq-"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("requests")
        .json()
        .await
        .expect("json");
    assert_eq!(recorded.as_array().map(Vec::len), Some(4));
    assert_eq!(recorded[0]["body"], chat("[rq-clean]"));
}
