//! A warm instance reuses its upstream connection: after the upstream's `done` the
//! relay reads the body to its end, so the next send needs no new connection (and,
//! in production, no new TLS handshake).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use samosachaat::adapters::upstream::{InferenceClient, InferenceRequest, Turn};
use samosachaat::domain::relay::{open, stream, Ending, Sink, Timing, Unwatched};
use samosachaat::foundation::config::Config;
use samosachaat::foundation::role::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A keep-alive upstream: answers every request on a connection with two tokens
/// and `done`, then ends the chunked body in a separate write a little later.
async fn upstream(connections: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket));
        }
    });
    format!("http://{addr}/chat")
}

async fn serve(mut socket: TcpStream) {
    let mut buf = Vec::new();
    loop {
        // The request head, then its Content-Length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);

        let mut reply =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for event in [
            "data: {\"token\": \"nam\"}\n\n",
            "data: {\"token\": \"aste\"}\n\n",
            "data: {\"done\": true}\n\n",
        ] {
            reply.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
        }
        if socket.write_all(&reply).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if socket.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

fn config(url: &str) -> Config {
    let public_key = include_str!("fixtures/jwt-public.pem");
    Config::from_lookup(|name| match name {
        "INFERENCE_URL" => Some(url.to_owned()),
        "JWT_PUBLIC_KEY" => Some(public_key.to_owned()),
        "TABLE_NAME" => Some("unused".to_owned()),
        "INTERNAL_API_KEY" => Some("internal-key".to_owned()),
        _ => None,
    })
    .unwrap()
}

#[tokio::test]
async fn consecutive_sends_share_one_upstream_connection() {
    let connections = Arc::new(AtomicUsize::new(0));
    let url = upstream(connections.clone()).await;
    let config = config(&url);
    let client = InferenceClient::new(&config).unwrap();
    let request = InferenceRequest::new(
        vec![Turn {
            role: Role::User,
            content: "hello".into(),
        }],
        &Default::default(),
        &config.defaults,
    );

    for turn in 0..3 {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sink = Sink::new(tx);
        let timing = Timing {
            ping: Duration::from_secs(30),
            deadline: tokio::time::Instant::now() + Duration::from_secs(30),
        };
        let opened = open(&client, &request, None, &mut sink, timing, &mut Unwatched).await;
        let outcome = stream(opened, &mut sink, timing, &mut Unwatched).await;
        assert_eq!(outcome.ending, Ending::Done, "turn {turn}");
        assert_eq!(outcome.content, "namaste");
        drop(sink);
        let mut browser = Vec::new();
        while let Some(bytes) = rx.recv().await {
            browser.extend_from_slice(&bytes);
        }
        assert_eq!(
            String::from_utf8(browser).unwrap(),
            "data: {\"token\": \"nam\"}\n\ndata: {\"token\": \"aste\"}\n\n"
        );
        // The next message of a conversation comes much later than the body's
        // end; give the background read time to see it.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}
