//! DynamoDB keeps its clients' connections open between requests; moto answers
//! every request with `Connection: close`. Against moto directly, each of a
//! send's DynamoDB requests pays a TCP connect and close in the function
//! process, which a deployed function (whose SDK pool reuses its connections to
//! DynamoDB) does not. This front keeps the function's connections open as
//! DynamoDB does, and passes each request to moto on a connection of its own.
//! Its own work runs in the benchmark process, not in the measured function's.
//! `bench --dynamodb-connections close` measures without it.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::http1::{Body, Head, Reader};

pub struct Front {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Front {
    pub async fn start(moto: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, moto));
            }
        });
        Ok(Self { addr, accept })
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Serves one client connection, one request at a time (HTTP/1.1 without
/// pipelining, as the SDK sends), until the client closes it.
async fn serve(client: TcpStream, moto: SocketAddr) {
    let _ = client.set_nodelay(true);
    let (read, mut write) = client.into_split();
    let mut requests = Reader::new(read);
    while let Ok(Some(head)) = requests.head().await {
        let Ok(body) = requests.request_body(&head).await else {
            return;
        };
        let reply = match exchange(moto, &head, &body).await {
            Ok(reply) => reply,
            Err(_) => b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".to_vec(),
        };
        if write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// One request to moto on a new connection; its reply framed to keep the
/// client's connection open.
async fn exchange(moto: SocketAddr, head: &Head, body: &Body) -> io::Result<Vec<u8>> {
    let upstream = TcpStream::connect(moto).await?;
    upstream.set_nodelay(true)?;
    let (read, mut write) = upstream.into_split();
    write.write_all(&message(&head.start, head, body)).await?;
    let mut replies = Reader::new(read);
    let reply = replies
        .head()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "moto closed"))?;
    let reply_body = replies.response_body(&reply, |_, _| {}).await?;
    Ok(message(&reply.start, &reply, &reply_body))
}

/// A message with `Content-Length` framing and without `Connection`,
/// `Transfer-Encoding` or `Keep-Alive` headers.
fn message(start: &[String; 3], head: &Head, body: &Body) -> Vec<u8> {
    let data: Vec<u8> = body.chunks.iter().flat_map(|(_, c)| c.clone()).collect();
    let mut text = format!("{} {} {}\r\n", start[0], start[1], start[2]);
    for (name, value) in &head.headers {
        if matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            continue;
        }
        let _ = write!(text, "{name}: {value}\r\n");
    }
    let _ = write!(text, "content-length: {}\r\n\r\n", data.len());
    let mut out = text.into_bytes();
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A server that answers one request per connection, then closes it, as
    /// moto does.
    async fn closing_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = conn.into_split();
                    let mut reader = Reader::new(read);
                    let head = reader.head().await.unwrap().unwrap();
                    let body = reader.request_body(&head).await.unwrap();
                    let len: usize = body.chunks.iter().map(|c| c.1.len()).sum();
                    let reply = format!("{{\"got\":{len}}}");
                    let _ = write
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{reply}",
                                reply.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn two_requests_share_one_client_connection_and_each_gets_its_reply() {
        let (moto, accepted) = closing_server().await;
        let front = Front::start(moto).await.unwrap();
        let mut conn = TcpStream::connect(front.addr).await.unwrap();
        let mut got = Vec::new();
        for body in ["{}", "{\"a\":1}"] {
            let request = format!(
                "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(request.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(got[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", got[0]);
        assert!(!got[0].to_ascii_lowercase().contains("connection: close"));
        assert!(got[0].ends_with("{\"got\":2}"), "{}", got[0]);
        assert!(got[1].ends_with("{\"got\":7}"), "{}", got[1]);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
