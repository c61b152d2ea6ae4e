//! The benchmark's own minimal Lambda Runtime API: what Lambda's service side does
//! for a function process, on 127.0.0.1.
//!
//! - `GET /2018-06-01/runtime/invocation/next` long-polls for the next event and
//!   answers it with the `Lambda-Runtime-*` headers;
//! - `POST .../invocation/{id}/response` takes the response, buffered or streamed
//!   (`Lambda-Runtime-Function-Response-Mode: streaming`: a chunked body of a JSON
//!   prelude, 8 NUL bytes, then the body, with error trailers), recording when
//!   each chunk arrived: that is when Lambda would pass it on to the browser;
//! - `POST .../invocation/{id}/error` and `POST /2018-06-01/runtime/init/error`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::http1::{find, Reader, Timeline};

const NEXT: &str = "/2018-06-01/runtime/invocation/next";
const INVOCATION: &str = "/2018-06-01/runtime/invocation/";
const INIT_ERROR: &str = "/2018-06-01/runtime/init/error";
const ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:send";

/// What the function process told the Runtime API outside an invocation.
#[derive(Debug)]
pub enum Poll {
    /// A `GET .../next` arrived (the time of its first byte).
    Next(Instant),
    InitError(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Response,
    Error,
}

/// One finished invocation as the Runtime API saw it.
#[derive(Debug)]
pub struct Invoked {
    /// When the event was handed to the function (the `next` answer was written).
    pub released: Instant,
    /// When the response (or error) body was complete.
    pub finished: Instant,
    pub kind: Kind,
    pub streaming: bool,
    pub chunks: Vec<(Instant, Vec<u8>)>,
    pub trailers: Vec<(String, String)>,
}

impl Invoked {
    /// A streamed response split into its prelude and its body timeline; the
    /// offset is where the body starts.
    pub fn stream(&self) -> Result<(serde_json::Value, Timeline, usize), String> {
        let timeline = Timeline::from_chunks(&self.chunks);
        if self.kind != Kind::Response || !self.streaming {
            return Err(format!(
                "expected a streamed response, got {:?} (streaming {}): {}",
                self.kind,
                self.streaming,
                String::from_utf8_lossy(&timeline.bytes)
            ));
        }
        if let Some((_, v)) = self
            .trailers
            .iter()
            .find(|(n, _)| n == "lambda-runtime-function-error-type")
        {
            return Err(format!("mid-stream error trailer: {v}"));
        }
        let split = find(&timeline.bytes, &[0; 8]).ok_or("no prelude delimiter in the stream")?;
        let prelude = serde_json::from_slice(&timeline.bytes[..split])
            .map_err(|e| format!("prelude is not JSON: {e}"))?;
        Ok((prelude, timeline, split + 8))
    }
}

struct Pending {
    id: String,
    event: Vec<u8>,
    reply: oneshot::Sender<Invoked>,
}

struct Shared {
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>,
    in_flight: Mutex<HashMap<String, (Instant, oneshot::Sender<Invoked>)>>,
    polls: mpsc::UnboundedSender<Poll>,
}

pub struct RuntimeApi {
    pub addr: SocketAddr,
    queue: mpsc::UnboundedSender<Pending>,
    polls: tokio::sync::Mutex<mpsc::UnboundedReceiver<Poll>>,
    seq: AtomicU64,
    accept: JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let (polls_tx, polls) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: tokio::sync::Mutex::new(queue_rx),
            in_flight: Mutex::new(HashMap::new()),
            polls: polls_tx,
        });
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Ok(Self {
            addr,
            queue,
            polls: tokio::sync::Mutex::new(polls),
            seq: AtomicU64::new(0),
            accept,
        })
    }

    /// Waits for the function's next poll (or its init error).
    pub async fn poll(&self, within: Duration) -> Result<Instant, String> {
        let mut polls = self.polls.lock().await;
        match tokio::time::timeout(within, polls.recv()).await {
            Ok(Some(Poll::Next(at))) => Ok(at),
            Ok(Some(Poll::InitError(e))) => Err(format!("init error: {e}")),
            Ok(None) => Err("runtime API closed".into()),
            Err(_) => Err(format!("no poll within {within:?}")),
        }
    }

    /// Queues `event`; the function gets it on its next poll.
    pub async fn invoke(&self, event: Vec<u8>, within: Duration) -> Result<Invoked, String> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("bench-{n:08}-{}", uuid::Uuid::new_v4());
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Pending { id, event, reply })
            .map_err(|_| "runtime API closed")?;
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(invoked)) => Ok(invoked),
            Ok(Err(_)) => Err("invocation dropped".into()),
            Err(_) => Err(format!("no response within {within:?}")),
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut reader = Reader::new(r);
    loop {
        let Ok(Some(head)) = reader.head().await else {
            return;
        };
        let Ok(body) = reader.request_body(&head).await else {
            return;
        };
        let finished = Instant::now();
        let method = head.start[0].as_str();
        let path = head.start[1].as_str();
        let written = if method == "GET" && path == NEXT {
            let _ = shared.polls.send(Poll::Next(head.first_byte));
            let pending = shared.queue.lock().await.recv().await;
            let Some(p) = pending else {
                return;
            };
            let deadline = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                + 300_000;
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 lambda-runtime-aws-request-id: {id}\r\n\
                 lambda-runtime-deadline-ms: {deadline}\r\n\
                 lambda-runtime-invoked-function-arn: {ARN}\r\n\
                 lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0\r\n\
                 content-length: {len}\r\n\r\n",
                id = p.id,
                len = p.event.len(),
            )
            .into_bytes();
            out.extend_from_slice(&p.event);
            let released = Instant::now();
            shared
                .in_flight
                .lock()
                .expect("lock")
                .insert(p.id, (released, p.reply));
            w.write_all(&out).await
        } else if let Some(rest) = path.strip_prefix(INVOCATION).filter(|_| method == "POST") {
            let (id, kind) = match rest.rsplit_once('/') {
                Some((id, "response")) => (id, Kind::Response),
                Some((id, "error")) => (id, Kind::Error),
                _ => ("", Kind::Error),
            };
            let entry = shared.in_flight.lock().expect("lock").remove(id);
            match entry {
                Some((released, reply)) => {
                    let _ = reply.send(Invoked {
                        released,
                        finished,
                        kind,
                        streaming: head
                            .header("lambda-runtime-function-response-mode")
                            .is_some_and(|m| m.eq_ignore_ascii_case("streaming")),
                        chunks: body.chunks,
                        trailers: body.trailers,
                    });
                    respond(&mut w, "202 Accepted", r#"{"status":"OK"}"#).await
                }
                None => {
                    respond(
                        &mut w,
                        "400 Bad Request",
                        r#"{"errorType":"InvalidRequestID"}"#,
                    )
                    .await
                }
            }
        } else if method == "POST" && path == INIT_ERROR {
            let text: Vec<u8> = body.chunks.into_iter().flat_map(|(_, d)| d).collect();
            let _ = shared
                .polls
                .send(Poll::InitError(String::from_utf8_lossy(&text).into_owned()));
            respond(&mut w, "202 Accepted", r#"{"status":"OK"}"#).await
        } else {
            respond(&mut w, "404 Not Found", r#"{"errorType":"NotFound"}"#).await
        };
        if written.is_err() {
            return;
        }
    }
}

async fn respond(w: &mut (impl AsyncWriteExt + Unpin), status: &str, body: &str) -> io::Result<()> {
    let out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(out.as_bytes()).await
}
