//! Transparent TCP proxies that log what passes.
//!
//! - [`Proxy::dynamodb`] splits each connection into HTTP/1.1 exchanges and logs
//!   every one: its operation (`X-Amz-Target`), when the request's first byte
//!   arrived, when the reply's first byte came back, its status, and the capacity
//!   units it consumed (estimated from the items on the wire, see `capacity`);
//!   and when each connection was opened.
//! - [`Proxy::connections`] logs when each connection was accepted (`open`) and
//!   when its first byte arrived (`request`): enough for the upstream call.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::capacity::{self, Units};
use mock_inference::http::{self as wire, Framing};

use crate::http1::find;

/// What the connections proxy logs when it accepts a connection.
pub const OPEN: &str = "open";
/// What it logs when the first byte of a connection arrives.
pub const REQUEST: &str = "request";

/// One logged event of the connections proxy.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub what: &'static str,
}

/// One DynamoDB request and its reply.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The operation, e.g. `Query`.
    pub op: String,
    /// When the request's first byte arrived.
    pub sent: Instant,
    /// When the reply's first byte came back (`None`: no reply yet).
    pub replied: Option<Instant>,
    pub status: Option<u16>,
    pub units: Units,
    /// The kind of record it addressed: its key's `pk` up to the `#` (`CONV`,
    /// `LIMIT`, `IDEM`); empty for a transaction or batch.
    pub record: String,
    /// The request's JSON body until its reply has been read.
    request: Value,
}

/// The record kind of a single-item request (see [`Exchange::record`]).
fn record_of(request: &Value) -> String {
    let pk = request["Key"]["pk"]["S"]
        .as_str()
        .or_else(|| request["Item"]["pk"]["S"].as_str())
        .unwrap_or_default();
    pk.split('#').next().unwrap_or_default().to_owned()
}

#[derive(Default)]
struct Log {
    events: Vec<Logged>,
    exchanges: Vec<Exchange>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    accept: JoinHandle<()>,
}

#[derive(Clone, Copy)]
enum Mode {
    Exchanges,
    Connections,
}

impl Proxy {
    pub async fn dynamodb(upstream: SocketAddr) -> io::Result<Self> {
        Self::start(upstream, Mode::Exchanges).await
    }

    pub async fn connections(upstream: SocketAddr) -> io::Result<Self> {
        Self::start(upstream, Mode::Connections).await
    }

    async fn start(upstream: SocketAddr, mode: Mode) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Log::default()));
        let log2 = log.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                lock(&log2).events.push(Logged {
                    at: Instant::now(),
                    what: OPEN,
                });
                tokio::spawn(pipe(client, upstream, mode, log2.clone()));
            }
        });
        Ok(Self { addr, log, accept })
    }

    /// Connection events from `since` on, in order.
    pub fn since(&self, since: Instant) -> Vec<Logged> {
        let mut v: Vec<Logged> = lock(&self.log)
            .events
            .iter()
            .filter(|l| l.at >= since)
            .cloned()
            .collect();
        v.sort_by_key(|l| l.at);
        v
    }

    /// Exchanges whose request started from `since` on, in order.
    pub fn exchanges(&self, since: Instant) -> Vec<Exchange> {
        let mut v: Vec<Exchange> = lock(&self.log)
            .exchanges
            .iter()
            .filter(|x| x.sent >= since)
            .cloned()
            .collect();
        v.sort_by_key(|x| x.sent);
        v
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn pipe(client: TcpStream, upstream: SocketAddr, mode: Mode, log: Arc<Mutex<Log>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Indices (into the log) of this connection's requests awaiting their reply;
    // HTTP/1.1 answers in order.
    let waiting: Arc<Mutex<VecDeque<usize>>> = Arc::default();
    let (waiting2, log2) = (waiting.clone(), log.clone());
    let down = tokio::spawn(async move {
        let mut replies = Splitter::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Mode::Exchanges = mode {
                for reply in replies.feed(&buf[..n], Instant::now()).await {
                    let i = waiting2.lock().ok().and_then(|mut w| w.pop_front());
                    let mut log = lock(&log2);
                    if let Some(x) = i.and_then(|i| log.exchanges.get_mut(i)) {
                        x.replied = Some(reply.started);
                        x.status = reply.status();
                        let response = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                        x.units = capacity::estimate(&x.op, &x.request, &response);
                        x.request = Value::Null;
                    }
                }
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    });
    let mut requests = Splitter::default();
    let mut first = true;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = Instant::now();
        match mode {
            Mode::Exchanges => {
                for request in requests.feed(&buf[..n], at).await {
                    let op = request
                        .header("x-amz-target")
                        .map(|t| t.rsplit('.').next().unwrap_or(t).to_owned())
                        .unwrap_or_else(|| request.start.clone());
                    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                    let mut log = lock(&log);
                    log.exchanges.push(Exchange {
                        op,
                        sent: request.started,
                        replied: None,
                        status: None,
                        units: Units::default(),
                        record: record_of(&body),
                        request: body,
                    });
                    let i = log.exchanges.len() - 1;
                    drop(log);
                    if let Ok(mut w) = waiting.lock() {
                        w.push_back(i);
                    }
                }
            }
            Mode::Connections if first => lock(&log).events.push(Logged { at, what: REQUEST }),
            Mode::Connections => {}
        }
        first = false;
        if sw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = sw.shutdown().await;
    let _ = down.await;
}

/// One HTTP/1.1 message seen by the proxy.
struct Message {
    /// When its first byte arrived.
    started: Instant,
    /// The start line.
    start: String,
    headers: std::collections::BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The status of a response.
    fn status(&self) -> Option<u16> {
        self.start.split(' ').nth(1)?.parse().ok()
    }
}

/// Splits one direction of a connection into HTTP/1.1 messages with
/// `Content-Length` bodies (what the AWS SDK and DynamoDB Local send).
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
    started: Option<Instant>,
}

impl Splitter {
    async fn feed(&mut self, data: &[u8], at: Instant) -> Vec<Message> {
        let mut out = Vec::new();
        if data.is_empty() {
            return out;
        }
        if self.buf.is_empty() {
            self.started = Some(at);
        }
        self.buf.extend_from_slice(data);
        let mut line = Vec::new();
        while let Some(end) = find(&self.buf, b"\r\n\r\n") {
            let mut raw = &self.buf[..end + 4];
            let Ok(head) = wire::read_head(&mut raw, &mut line).await else {
                self.buf.clear();
                break;
            };
            let len = match head.framing() {
                Ok(Framing::Length(len)) => len,
                _ => 0,
            };
            if self.buf.len() < end + 4 + len {
                break;
            }
            let body = self.buf[end + 4..end + 4 + len].to_vec();
            self.buf.drain(..end + 4 + len);
            out.push(Message {
                started: self.started.unwrap_or(at),
                start: head.start.join(" "),
                headers: head.headers,
                body,
            });
            // What is left began arriving with this read.
            self.started = Some(at);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splitter_splits_requests_across_reads() {
        let mut s = Splitter::default();
        let t = Instant::now();
        let a = b"POST / HTTP/1.1\r\nX-Amz-Target: DynamoDB_20120810.Query\r\ncontent-length: 4\r\n\r\nab";
        let b = b"cdPOST / HTTP/1.1\r\nx-amz-target: DynamoDB_20120810.TransactWriteItems\r\nContent-Length: 2\r\n\r\nxy";
        let mut got = s.feed(a, t).await;
        assert!(got.is_empty());
        got.extend(s.feed(&b[..20], t).await);
        got.extend(s.feed(&b[20..], t).await);
        let targets: Vec<&str> = got
            .iter()
            .filter_map(|m| m.header("x-amz-target"))
            .collect();
        assert_eq!(
            targets,
            [
                "DynamoDB_20120810.Query",
                "DynamoDB_20120810.TransactWriteItems"
            ]
        );
        assert_eq!(got[0].body, b"abcd");
        assert_eq!(got[1].body, b"xy");
        assert!(s.buf.is_empty());
    }

    #[tokio::test]
    async fn splitter_reads_response_status() {
        let mut s = Splitter::default();
        let got = s
            .feed(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
                Instant::now(),
            )
            .await;
        assert_eq!(got[0].status(), Some(400));
    }
}
