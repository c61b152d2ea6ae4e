//! The upstream connection: a warm instance reuses it (after the upstream's
//! `done` the relay reads the body to its end, so the next send needs no new
//! connection and, in production, no new TLS handshake), one is made ahead
//! while DynamoDB answers, one the upstream closed is replaced, and an
//! abandoned answer closes its connection.

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
/// With `close_idle`, it closes a connection that carried no request for
/// 100 ms (as a server whose keep-alive timeout passed), without saying so.
async fn upstream(connections: Arc<AtomicUsize>, close_idle: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket, close_idle));
        }
    });
    format!("http://{addr}/chat")
}

async fn serve(mut socket: TcpStream, close_idle: bool) {
    let mut buf = Vec::new();
    loop {
        // The request head, then its Content-Length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let idle = if close_idle {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(3600)
            };
            match tokio::time::timeout(idle, socket.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
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

fn request(config: &Config) -> InferenceRequest {
    InferenceRequest::new(
        vec![Turn {
            role: Role::User,
            content: "hello".into(),
        }],
        &Default::default(),
        &config.defaults,
    )
}

/// One answer relayed as a send relays it: what the browser got.
async fn relay_once(client: &InferenceClient, request: &InferenceRequest) -> String {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut sink = Sink::new(tx);
    let timing = Timing {
        ping: Duration::from_secs(30),
        deadline: tokio::time::Instant::now() + Duration::from_secs(30),
    };
    let opened = open(client, request, None, &mut sink, timing, &mut Unwatched).await;
    let outcome = stream(opened, &mut sink, timing, &mut Unwatched).await;
    assert_eq!(outcome.ending, Ending::Done);
    assert_eq!(outcome.content, "namaste");
    drop(sink);
    let mut browser = Vec::new();
    while let Some(bytes) = rx.recv().await {
        browser.extend_from_slice(&bytes);
    }
    String::from_utf8(browser).unwrap()
}

/// The counting test upstream (`close_idle` as [`upstream`]), a client of it and
/// a request for it.
struct Pool {
    connections: Arc<AtomicUsize>,
    client: InferenceClient,
    request: InferenceRequest,
}

impl Pool {
    async fn new(close_idle: bool) -> Pool {
        let connections = Arc::new(AtomicUsize::new(0));
        let url = upstream(connections.clone(), close_idle).await;
        let config = config(&url);
        Pool {
            client: InferenceClient::new(&config).unwrap(),
            request: request(&config),
            connections,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

const BROWSER: &str = "data: {\"token\": \"nam\"}\n\ndata: {\"token\": \"aste\"}\n\n";

#[tokio::test]
async fn consecutive_sends_share_one_upstream_connection() {
    let pool = Pool::new(false).await;

    for turn in 0..3 {
        // As a send does: made ahead (a kept connection is checked instead).
        pool.client.connect_ahead();
        assert_eq!(
            relay_once(&pool.client, &pool.request).await,
            BROWSER,
            "turn {turn}"
        );
        // The next message of a conversation comes much later than the body's
        // end; give the background read time to see it.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(pool.connections(), 1);
}

#[tokio::test]
async fn a_connection_is_made_ahead_and_carries_the_next_request() {
    let pool = Pool::new(false).await;

    pool.client.connect_ahead();
    // Connected before any request exists, as while DynamoDB answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.connections() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection made ahead"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A second call while it is there makes no other.
    pool.client.connect_ahead();
    assert_eq!(relay_once(&pool.client, &pool.request).await, BROWSER);
    assert_eq!(pool.connections(), 1);
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_is_replaced() {
    let pool = Pool::new(true).await;

    for turn in 0..3 {
        if turn == 1 {
            pool.client.connect_ahead();
        }
        assert_eq!(
            relay_once(&pool.client, &pool.request).await,
            BROWSER,
            "turn {turn}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(pool.connections(), 3);
}

#[tokio::test]
async fn a_connection_made_ahead_that_the_upstream_closed_is_replaced() {
    let pool = Pool::new(true).await;

    // Made for a request that was then refused; the next one comes after the
    // upstream's keep-alive timeout.
    pool.client.connect_ahead();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.client.connect_ahead();
    assert_eq!(relay_once(&pool.client, &pool.request).await, BROWSER);
    // Again, with the next request right behind the closed connection's check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay_once(&pool.client, &pool.request).await, BROWSER);
    assert_eq!(pool.connections(), 3);
}

#[tokio::test]
async fn an_abandoned_answer_closes_its_upstream_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/chat", listener.local_addr().unwrap());
    // Answers with one token, then waits for more that never come: a model
    // still generating. Reports whether the client hung up.
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let _ = socket.read(&mut buf).await.unwrap();
        let event = "data: {\"token\": \"nam\"}\n\n";
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
             transfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
            event.len()
        );
        socket.write_all(reply.as_bytes()).await.unwrap();
        let hung_up = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
        matches!(hung_up, Ok(Ok(0)) | Ok(Err(_)))
    });
    let config = config(&url);
    let client = InferenceClient::new(&config).unwrap();
    let mut upstream = client.start(&request(&config), None).await.unwrap();
    assert!(upstream.chunk().await.unwrap().is_some());
    // A stop: the relay drops the answer mid-body.
    drop(upstream);
    assert!(server.await.unwrap(), "the upstream connection stayed open");
}
