//! Just enough HTTP/1.1 for the benchmark's own servers and clients: message heads,
//! `Content-Length` and chunked bodies, with the arrival time of every piece.
//!
//! Times are taken when the `read` that completed a piece returned, so they are
//! what a server in the function's place (Lambda's Runtime API) would see.

use std::io;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Larger heads are refused (the Runtime API client's are well under 1 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// A request or response head.
#[derive(Debug, Clone)]
pub struct Head {
    /// `[method, target, version]` of a request, `[version, status, reason]` of a response.
    pub start: [String; 3],
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    /// When the first byte of this message arrived.
    pub first_byte: Instant,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> io::Result<usize> {
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v.trim().parse().map_err(|_| bad("bad content-length")),
        }
    }
}

/// A body as it arrived: each chunk (or the whole `Content-Length` body) with the
/// time its last byte was read.
#[derive(Debug, Default, Clone)]
pub struct Body {
    pub chunks: Vec<(Instant, Vec<u8>)>,
    pub trailers: Vec<(String, String)>,
}

pub fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A buffered reader of HTTP/1.1 messages.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    last_read: Instant,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            last_read: Instant::now(),
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes; `false` on end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 16 * 1024, 0);
        let n = self.inner.read(&mut self.buf[len..]).await;
        self.last_read = Instant::now();
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e);
            }
        };
        self.buf.truncate(len + n);
        Ok(n > 0)
    }

    /// The next message head; `None` on a clean end of stream before it.
    pub async fn head(&mut self) -> io::Result<Option<Head>> {
        let mut first_byte = (!self.pending().is_empty()).then_some(self.last_read);
        let end = loop {
            if let Some(i) = find(self.pending(), b"\r\n\r\n") {
                break i;
            }
            if self.pending().len() > MAX_HEAD {
                return Err(bad("head too large"));
            }
            if !self.fill().await? {
                if self.pending().is_empty() {
                    return Ok(None);
                }
                return Err(bad("end of stream inside a head"));
            }
            first_byte.get_or_insert(self.last_read);
        };
        let text = std::str::from_utf8(&self.pending()[..end])
            .map_err(|_| bad("head is not UTF-8"))?
            .to_owned();
        self.pos += end + 4;
        let mut lines = text.split("\r\n");
        let mut start = lines.next().unwrap_or("").splitn(3, ' ');
        let start = [(); 3].map(|()| start.next().unwrap_or("").to_owned());
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Some(Head {
            start,
            headers,
            first_byte: first_byte.unwrap_or(self.last_read),
        }))
    }

    /// The body of a request (`Content-Length`, chunked, or none).
    pub async fn request_body(&mut self, head: &Head) -> io::Result<Body> {
        if head.chunked() {
            self.chunked(|_, _| {}).await
        } else {
            let len = head.content_length()?;
            self.exact(len).await
        }
    }

    /// The body of a response; `on_chunk` sees every piece as it arrives.
    pub async fn response_body(
        &mut self,
        head: &Head,
        on_chunk: impl FnMut(Instant, &[u8]),
    ) -> io::Result<Body> {
        if head.chunked() {
            self.chunked(on_chunk).await
        } else if head.header("content-length").is_some() {
            let len = head.content_length()?;
            self.exact(len).await
        } else {
            // Until the connection closes.
            let mut body = Body::default();
            loop {
                if !self.pending().is_empty() {
                    body.chunks.push((self.last_read, self.pending().to_vec()));
                    self.pos = self.buf.len();
                }
                if !self.fill().await? {
                    return Ok(body);
                }
            }
        }
    }

    async fn exact(&mut self, len: usize) -> io::Result<Body> {
        let mut body = Body::default();
        if len == 0 {
            return Ok(body);
        }
        while self.pending().len() < len {
            if !self.fill().await? {
                return Err(bad("end of stream inside a body"));
            }
        }
        body.chunks
            .push((self.last_read, self.pending()[..len].to_vec()));
        self.pos += len;
        Ok(body)
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(self.pending(), b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending()[..i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.pending().len() > MAX_HEAD {
                return Err(bad("line too long"));
            }
            if !self.fill().await? {
                return Err(bad("end of stream inside a chunked body"));
            }
        }
    }

    async fn chunked(&mut self, mut on_chunk: impl FnMut(Instant, &[u8])) -> io::Result<Body> {
        let mut body = Body::default();
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                loop {
                    let line = self.line().await?;
                    if line.is_empty() {
                        return Ok(body);
                    }
                    if let Some((n, v)) = line.split_once(':') {
                        body.trailers
                            .push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
            }
            while self.pending().len() < size + 2 {
                if !self.fill().await? {
                    return Err(bad("end of stream inside a chunk"));
                }
            }
            let data = self.pending()[..size].to_vec();
            if &self.pending()[size..size + 2] != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
            self.pos += size + 2;
            on_chunk(self.last_read, &data);
            body.chunks.push((self.last_read, data));
        }
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
