//! HTTP/1.1 for the benchmark's own servers and clients, timed: message heads,
//! `Content-Length` and chunked bodies with the arrival time of every piece. The
//! wire format itself is `mock_inference::http`'s (one HTTP/1 reader for `dev/`).
//!
//! Times are taken when the `read` that completed a piece returned, so they are
//! what a server in the function's place (Lambda's Runtime API) would see.

use std::collections::BTreeMap;
use std::io;
use std::time::Instant;

use mock_inference::http::{self as wire, Chunk, Framing};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// A request or response head, with the arrival of its first byte.
#[derive(Debug, Clone)]
pub struct Head {
    /// `[method, target, version]` of a request, `[version, status, reason]` of a response.
    pub start: [String; 3],
    /// Names lowercased.
    pub headers: BTreeMap<String, String>,
    /// When the first byte of this message arrived.
    pub first_byte: Instant,
    framing: Framing,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A body as it arrived: each chunk (or the whole `Content-Length` body) with the
/// time its last byte was read.
#[derive(Debug, Default, Clone)]
pub struct Body {
    pub chunks: Vec<(Instant, Vec<u8>)>,
    pub trailers: Vec<(String, String)>,
}

/// A buffered reader of HTTP/1.1 messages over `mock_inference::http`'s wire
/// functions, stamping each piece with the time the read that completed it
/// returned.
pub struct Reader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    last_read: Instant,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner: BufReader::with_capacity(16 * 1024, inner),
            line: Vec::new(),
            last_read: Instant::now(),
        }
    }

    /// The next message head; `None` on a clean end of stream before it.
    pub async fn head(&mut self) -> io::Result<Option<Head>> {
        let first_byte = if self.inner.buffer().is_empty() {
            if self.inner.fill_buf().await?.is_empty() {
                return Ok(None);
            }
            Instant::now()
        } else {
            // Arrived with the read that completed the previous piece.
            self.last_read
        };
        let head = wire::read_head(&mut self.inner, &mut self.line).await?;
        self.last_read = Instant::now();
        Ok(Some(Head {
            framing: head.framing()?,
            start: head.start,
            headers: head.headers,
            first_byte,
        }))
    }

    /// The body of a request (`Content-Length`, chunked, or none).
    pub async fn request_body(&mut self, head: &Head) -> io::Result<Body> {
        match head.framing {
            Framing::Unframed => Ok(Body::default()),
            _ => self.response_body(head, |_, _| {}).await,
        }
    }

    /// The body of a response; `on_chunk` sees every piece as it arrives.
    pub async fn response_body(
        &mut self,
        head: &Head,
        mut on_chunk: impl FnMut(Instant, &[u8]),
    ) -> io::Result<Body> {
        let mut body = Body::default();
        match head.framing {
            Framing::Length(0) => {}
            Framing::Length(len) => {
                let data = wire::read_exact_body(&mut self.inner, len).await?;
                self.last_read = Instant::now();
                body.chunks.push((self.last_read, data));
            }
            Framing::Chunked => loop {
                let chunk = wire::read_chunk(&mut self.inner, &mut self.line).await?;
                self.last_read = Instant::now();
                match chunk {
                    Chunk::Data(data) => {
                        on_chunk(self.last_read, &data);
                        body.chunks.push((self.last_read, data));
                    }
                    Chunk::End(trailers) => {
                        body.trailers = trailers.into_iter().collect();
                        break;
                    }
                }
            },
            // Until the connection closes.
            Framing::Unframed => loop {
                let data = self.inner.fill_buf().await?.to_vec();
                self.last_read = Instant::now();
                if data.is_empty() {
                    break;
                }
                self.inner.consume(data.len());
                on_chunk(self.last_read, &data);
                body.chunks.push((self.last_read, data));
            },
        }
        Ok(body)
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes in arrival order with the arrival time of each piece, to time an event
/// by the moment its last byte arrived.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    pub bytes: Vec<u8>,
    /// End offset (exclusive) and arrival time of each piece.
    pieces: Vec<(usize, Instant)>,
}

impl Timeline {
    pub fn push(&mut self, at: Instant, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.bytes.extend_from_slice(data);
        self.pieces.push((self.bytes.len(), at));
    }

    pub fn from_chunks(chunks: &[(Instant, Vec<u8>)]) -> Self {
        let mut t = Self::default();
        for (at, data) in chunks {
            t.push(*at, data);
        }
        t
    }

    /// When the byte at `offset` arrived.
    pub fn time_of(&self, offset: usize) -> Option<Instant> {
        let i = self.pieces.partition_point(|&(end, _)| end <= offset);
        self.pieces.get(i).map(|&(_, at)| at)
    }

    /// Arrival times of each occurrence of `needle` at or after `from` (the time its
    /// last byte arrived).
    pub fn times_of(&self, needle: &[u8], from: usize) -> Vec<Instant> {
        let mut out = Vec::new();
        let mut at = from;
        while let Some(i) = self.bytes.get(at..).and_then(|b| find(b, needle)) {
            let end = at + i + needle.len();
            if let Some(t) = self.time_of(end - 1) {
                out.push(t);
            }
            at = end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reads_chunked_bodies_and_trailers() {
        let raw: &[u8] = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\n\r\n\
            3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nLambda-Runtime-Function-Error-Type: E\r\n\r\n\
            GET /y HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        let mut r = Reader::new(raw);
        let head = r.head().await.expect("read").expect("head");
        assert_eq!(head.start[0], "POST");
        assert_eq!(head.start[1], "/x");
        assert_eq!(head.header("host"), Some("a"));
        let body = r.request_body(&head).await.expect("body");
        let data: Vec<&[u8]> = body.chunks.iter().map(|(_, d)| d.as_slice()).collect();
        assert_eq!(data, [&b"abc"[..], b"de"]);
        assert_eq!(
            body.trailers,
            [(
                "lambda-runtime-function-error-type".to_owned(),
                "E".to_owned()
            )]
        );
        let head = r.head().await.expect("read").expect("head");
        assert_eq!(head.start[1], "/y");
        let body = r.request_body(&head).await.expect("body");
        assert_eq!(body.chunks[0].1, b"hi");
        assert!(r.head().await.expect("read").is_none());
    }

    #[test]
    fn timeline_times_events_by_their_last_byte() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        let t2 = t0 + Duration::from_millis(2);
        let mut t = Timeline::default();
        t.push(t0, b"prelude\0\0data: {\"to");
        t.push(t1, b"ken\":\"a\"}\n\ndata: {\"token\":\"b\"}");
        t.push(t2, b"\n\n");
        assert_eq!(t.times_of(b"\"token\"", 0), [t1, t1]);
        assert_eq!(t.time_of(0), Some(t0));
        assert_eq!(t.time_of(t.bytes.len()), None);
        assert!(t.times_of(b"\"token\"", t.bytes.len()).is_empty());
    }
}
