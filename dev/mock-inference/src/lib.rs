//! A mock of the LLM inference endpoint (SPEC section 4) over real HTTP, for the
//! end-to-end tests and the local stack.
//!
//! Any `POST` outside `/__mock/` is an inference request, answered with an SSE
//! stream of `{"token": ..., "gpu": 0}` events and a final `{"done": true}`.
//! Tests script misbehaviour (delays, errors, drops, odd chunking) by registering
//! scenarios, matched by a substring of the last user message, through the control
//! API under `/__mock/`. See the crate README for the API.
//!
//! The HTTP/1.1 server is hand-written on a `TcpListener` because the scenarios need
//! byte-level control of the wire: chunk boundaries, bodies that end without their
//! last chunk, and connection resets before any response. Its wire module
//! (`http`) is public: the benchmark (`dev/bench`) reads HTTP/1.1 with it too.

pub mod http;
mod scenario;
mod state;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::http::{ReadError, Request};
use crate::scenario::{default_tokens, Ending, Scenario, ScenarioSpec};
use crate::state::{Recorded, Shared};

/// How long a client may take to send a whole request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// When set, inference requests must carry it in `X-Internal-API-Key`.
    pub api_key: Option<String>,
    /// Delay between events of streams that do not set their own.
    pub token_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_key: None,
            token_delay: Duration::from_millis(5),
        }
    }
}

/// Serves the mock on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, cfg: Config) {
    let shared = Arc::new(Shared::new(cfg));
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(handle_connection(stream, shared));
            }
            Err(err) => {
                // E.g. out of file descriptors: back off instead of spinning.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Streams are written in small, deliberately separate pieces: Nagle's algorithm
    // would merge them.
    if let Err(err) = stream.set_nodelay(true) {
        debug!(error = %err, "set_nodelay failed");
    }
    let mut conn = BufReader::new(stream);
    let req = match tokio::time::timeout(REQUEST_READ_TIMEOUT, http::read_request(&mut conn)).await
    {
        Ok(Ok(req)) => req,
        Ok(Err(ReadError::Closed)) => return,
        Ok(Err(ReadError::Bad(why))) => {
            warn!(why, "bad request");
            let mut stream = conn.into_inner();
            let body = json!({ "detail": why });
            if http::write_response(&mut stream, 400, JSON, body.to_string().as_bytes())
                .await
                .is_ok()
            {
                close(stream).await;
            }
            return;
        }
        Ok(Err(ReadError::Io(err))) => {
            debug!(error = %err, "reading request failed");
            return;
        }
        Err(_) => {
            debug!("timed out reading request");
            return;
        }
    };
    // The buffer can only hold bytes sent after the request, which a
    // `connection: close` server ignores.
    let mut stream = conn.into_inner();

    let result = if req.path.starts_with("/__mock/") {
        let (status, content_type, body) = control(&req, &shared);
        info!(method = %req.method, path = %req.path, status, "control request");
        http::write_response(&mut stream, status, content_type, &body).await
    } else if req.method == "POST" {
        return inference(stream, req, &shared).await;
    } else {
        let body = json!({ "detail": "method not allowed" }).to_string();
        http::write_response(&mut stream, 405, JSON, body.as_bytes()).await
    };
    match result {
        Ok(()) => close(stream).await,
        Err(err) => debug!(error = %err, "writing response failed"),
    }
}

const JSON: &str = "application/json";

/// Answers a control API request: (status, content type, body).
fn control(req: &Request, shared: &Shared) -> (u16, &'static str, Vec<u8>) {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/__mock/scenarios") => {
            let scenario = serde_json::from_slice::<ScenarioSpec>(&req.body)
                .map_err(|e| e.to_string())
                .and_then(Scenario::try_from);
            match scenario {
                Ok(scenario) => {
                    shared.add_scenario(scenario);
                    json_body(201, &json!({ "ok": true }))
                }
                Err(detail) => json_body(422, &json!({ "detail": detail })),
            }
        }
        ("GET", "/__mock/requests") => match req.query_param("match") {
            Ok(pattern) => json_body(200, &shared.requests_matching(pattern.as_deref())),
            Err(detail) => json_body(400, &json!({ "detail": detail })),
        },
        ("GET", "/__mock/health") => (200, "text/plain; charset=utf-8", b"ok".to_vec()),
        ("POST", "/__mock/reset") => {
            shared.reset();
            json_body(200, &json!({ "ok": true }))
        }
        (_, "/__mock/scenarios" | "/__mock/requests" | "/__mock/health" | "/__mock/reset") => {
            json_body(405, &json!({ "detail": "method not allowed" }))
        }
        _ => json_body(404, &json!({ "detail": "no such control endpoint" })),
    }
}

fn json_body(status: u16, value: &impl Serialize) -> (u16, &'static str, Vec<u8>) {
    match serde_json::to_vec(value) {
        Ok(body) => (status, JSON, body),
        Err(err) => {
            warn!(error = %err, "serializing a response failed");
            (500, JSON, br#"{"detail":"serialization failed"}"#.to_vec())
        }
    }
}

/// Handles one inference request, from recording it to the end of the stream.
async fn inference(mut stream: TcpStream, req: Request, shared: &Shared) {
    let body: Option<Value> = serde_json::from_slice(&req.body).ok();
    let last_user = body.as_ref().and_then(last_user_content);
    shared.record(Recorded::new(
        req.headers.clone(),
        body.clone()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&req.body).into_owned())),
        last_user.clone(),
    ));

    if let Some(key) = &shared.cfg.api_key {
        if req.header("x-internal-api-key") != Some(key.as_str()) {
            info!(path = %req.path, status = 401, "inference request with a bad api key");
            let body = json!({ "detail": "invalid api key" }).to_string();
            respond_and_close(stream, 401, body).await;
            return;
        }
    }
    if let Err(detail) = body.as_ref().ok_or("body is not JSON").and_then(check_body) {
        info!(path = %req.path, status = 422, detail, "malformed inference request");
        respond_and_close(stream, 422, json!({ "detail": detail }).to_string()).await;
        return;
    }

    let last_user = last_user.unwrap_or_default();
    let matched = shared.take_scenario(&last_user);
    info!(path = %req.path, scenario = matched.is_some(), "inference request");
    let scenario = matched.unwrap_or_else(Scenario::default_reply);

    tokio::time::sleep(scenario.headers_delay).await;
    if scenario.reset_before_headers {
        // SO_LINGER 0: closing sends RST instead of FIN.
        if let Err(err) = stream.set_zero_linger() {
            warn!(error = %err, "set_zero_linger failed");
        }
        return;
    }
    if let Some(status) = scenario.status {
        let body = json!({ "detail": format!("mock upstream error {status}") }).to_string();
        respond_and_close(stream, status, body).await;
        return;
    }

    let tokens = scenario
        .tokens
        .clone()
        .unwrap_or_else(|| default_tokens(&last_user));
    let pieces = scenario.render(&tokens);
    // Re-split byte pieces are paced by split_delay, whole events by token_delay.
    let delay = match scenario.chunk_bytes {
        Some(_) => scenario.split_delay,
        None => scenario.token_delay.unwrap_or(shared.cfg.token_delay),
    };
    if let Err(err) = stream_body(&mut stream, &pieces, scenario.first_token_delay, delay).await {
        debug!(error = %err, "client went away mid-stream");
        return;
    }
    match scenario.ending {
        Ending::Clean => {
            if http::write_last_chunk(&mut stream).await.is_ok() {
                close(stream).await;
            }
        }
        // Closing without the last chunk leaves the chunked body visibly
        // incomplete. A FIN (not a reset) makes sure the client still receives
        // every byte sent before it.
        Ending::Drop(_) => {
            let _ = stream.shutdown().await;
        }
        Ending::Hang(_) => wait_for_peer_close(&mut stream).await,
    }
}

async fn stream_body(
    stream: &mut TcpStream,
    pieces: &[Vec<u8>],
    first_delay: Duration,
    delay: Duration,
) -> std::io::Result<()> {
    http::write_stream_head(stream).await?;
    tokio::time::sleep(first_delay).await;
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        http::write_chunk(stream, piece).await?;
    }
    Ok(())
}

/// The content of the last message whose role is `user`.
fn last_user_content(body: &Value) -> Option<String> {
    body.get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Checks the shape the upstream requires: `messages`, a list of
/// `{"role": string, "content": string}`.
fn check_body(body: &Value) -> Result<(), &'static str> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages must be a list")?;
    let well_formed = messages.iter().all(|m| {
        m.get("role").is_some_and(Value::is_string)
            && m.get("content").is_some_and(Value::is_string)
    });
    if well_formed {
        Ok(())
    } else {
        Err("each message needs a string role and a string content")
    }
}

async fn respond_and_close(mut stream: TcpStream, status: u16, body: String) {
    match http::write_response(&mut stream, status, JSON, body.as_bytes()).await {
        Ok(()) => close(stream).await,
        Err(err) => debug!(error = %err, "writing response failed"),
    }
}

/// Ends a connection after a complete response: FIN, then wait (briefly) for the
/// client to close its side. Dropping a socket with unread input makes the kernel
/// send a reset, which can destroy the response before the client has read it.
async fn close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), wait_for_peer_close(&mut stream)).await;
}

/// Reads and discards input until the client closes the connection or it fails.
async fn wait_for_peer_close(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}
