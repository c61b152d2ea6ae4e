//! Transparent TCP proxies that log what passes: the DynamoDB one logs every HTTP
//! request (its `X-Amz-Target` and when its first byte arrived), the inference one
//! logs when each connection was accepted (`open`) and when its first byte arrived
//! (`request`). The DynamoDB one also logs when each reply starts (`reply`) and
//! each connection it accepts (`open`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::http1::find;

/// What the DynamoDB proxy logs when the first bytes of a reply come back.
pub const REPLY: &str = "reply";
/// What both proxies log when they accept a connection.
pub const OPEN: &str = "open";

/// One logged request: when its first byte arrived and what it was.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub what: String,
}

pub struct Proxy {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Logged>>>,
    accept: JoinHandle<()>,
}

#[derive(Clone, Copy)]
enum Mode {
    /// Parse HTTP/1.1 requests and log each.
    Requests,
    /// Log the opening and the first byte of each connection.
    Connections,
}

impl Proxy {
    pub async fn dynamodb(upstream: SocketAddr) -> io::Result<Self> {
        Self::start(upstream, Mode::Requests).await
    }

    pub async fn connections(upstream: SocketAddr) -> io::Result<Self> {
        Self::start(upstream, Mode::Connections).await
    }

    async fn start(upstream: SocketAddr, mode: Mode) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                log2.lock().expect("lock").push(Logged {
                    at: Instant::now(),
                    what: OPEN.into(),
                });
                tokio::spawn(pipe(client, upstream, mode, log2.clone()));
            }
        });
        Ok(Self { addr, log, accept })
    }

    /// Everything logged from `since` on.
    pub fn since(&self, since: Instant) -> Vec<Logged> {
        let mut v: Vec<Logged> = self
            .log
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.at >= since)
            .cloned()
            .collect();
        v.sort_by_key(|l| l.at);
        v
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pipe(client: TcpStream, upstream: SocketAddr, mode: Mode, log: Arc<Mutex<Vec<Logged>>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when a request was logged; the next bytes from the server are its reply.
    let awaiting = Arc::new(AtomicBool::new(false));
    let (awaiting2, log2) = (awaiting.clone(), log.clone());
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if awaiting2.swap(false, Ordering::SeqCst) {
                log2.lock().expect("lock").push(Logged {
                    at: Instant::now(),
                    what: REPLY.into(),
                });
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    });
    let mut sniffer = Sniffer::default();
    let mut first = true;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = Instant::now();
        let logged = match mode {
            Mode::Requests => sniffer.feed(&buf[..n], at),
            Mode::Connections if first => vec![Logged {
                at,
                what: "request".into(),
            }],
            Mode::Connections => Vec::new(),
        };
        first = false;
        if !logged.is_empty() {
            if let Mode::Requests = mode {
                awaiting.store(true, Ordering::SeqCst);
            }
            log.lock().expect("lock").extend(logged);
        }
        if sw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = sw.shutdown().await;
    let _ = down.await;
}

/// Splits a client's byte stream into HTTP/1.1 requests (`Content-Length` bodies,
/// which is what the AWS SDK sends).
#[derive(Default)]
struct Sniffer {
    head: Vec<u8>,
    started: Option<Instant>,
    body_left: usize,
}

impl Sniffer {
    fn feed(&mut self, mut data: &[u8], at: Instant) -> Vec<Logged> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            self.started.get_or_insert(at);
            let before = self.head.len();
            self.head.extend_from_slice(data);
            let Some(end) = find(&self.head, b"\r\n\r\n") else {
                return out;
            };
            let text = String::from_utf8_lossy(&self.head[..end]).into_owned();
            let mut target = None;
            let mut len = 0;
            for line in text.split("\r\n").skip(1) {
                if let Some((n, v)) = line.split_once(':') {
                    match n.trim().to_ascii_lowercase().as_str() {
                        "x-amz-target" => target = Some(v.trim().to_owned()),
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            let request_line = text.lines().next().unwrap_or("").to_owned();
            out.push(Logged {
                at: self.started.take().unwrap_or(at),
                what: target
                    .map(|t| t.rsplit('.').next().unwrap_or(&t).to_owned())
                    .unwrap_or(request_line),
            });
            let consumed = end + 4 - before;
            self.head.clear();
            data = &data[consumed..];
            self.body_left = len;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffer_splits_requests_across_reads() {
        let mut s = Sniffer::default();
        let t = Instant::now();
        let a = b"POST / HTTP/1.1\r\nX-Amz-Target: DynamoDB_20120810.Query\r\ncontent-length: 4\r\n\r\nab";
        let b = b"cdPOST / HTTP/1.1\r\nx-amz-target: DynamoDB_20120810.TransactWriteItems\r\nContent-Length: 2\r\n\r\nxy";
        let mut got = s.feed(a, t);
        got.extend(s.feed(&b[..20], t));
        got.extend(s.feed(&b[20..], t));
        let names: Vec<&str> = got.iter().map(|l| l.what.as_str()).collect();
        assert_eq!(names, ["Query", "TransactWriteItems"]);
        assert_eq!(s.body_left, 0);
    }
}
