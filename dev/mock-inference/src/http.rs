//! Just enough HTTP/1.1 for the dev tools that need byte-level control of the
//! wire: this mock server, and the benchmark (`dev/bench`), whose Runtime API,
//! clients and proxies read messages piece by piece to time them.
//!
//! Reading: message heads (start line, headers with names lower-cased), bodies
//! framed by `Content-Length` or `Transfer-Encoding: chunked` (one chunk at a
//! time, trailers included), whole requests with limits. Writing: the mock's
//! responses, which always carry `connection: close`, so there is no keep-alive
//! state to get wrong.

use std::collections::BTreeMap;
use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest accepted request line or header line, in bytes (CRLF included).
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines (or chunked trailer lines) accepted in one request.
const MAX_HEADERS: usize = 100;
/// Largest accepted request body.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One parsed HTTP request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The target without its query string, e.g. `/generate`.
    pub path: String,
    /// The raw (still percent-encoded) query string, without the `?`.
    pub query: Option<String>,
    /// Header names lower-cased; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The first query parameter called `name`, percent-decoded (`+` is a space).
    ///
    /// `Err` when its value does not decode to UTF-8.
    pub fn query_param(&self, name: &str) -> Result<Option<String>, &'static str> {
        let Some(query) = &self.query else {
            return Ok(None);
        };
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(key).as_deref() == Some(name) {
                return percent_decode(value)
                    .map(Some)
                    .ok_or("query parameter is not valid percent-encoded UTF-8");
            }
        }
        Ok(None)
    }
}

/// Why no request (or message) could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection before sending anything: nothing to answer.
    Closed,
    /// Malformed, unsupported or oversized request: answer 400 and close.
    Bad(&'static str),
    /// The connection failed while reading.
    Io(io::Error),
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
            ReadError::Bad(what) => io::Error::new(io::ErrorKind::InvalidData, what),
            ReadError::Io(e) => e,
        }
    }
}

/// The head of a request or a response.
#[derive(Debug, Clone)]
pub struct Head {
    /// `[method, target, version]` of a request, `[version, status, reason]` of
    /// a response (the reason may hold spaces; missing parts are empty).
    pub start: [String; 3],
    /// Header names lower-cased; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
}

/// How a message's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(usize),
    /// Neither: a request has no body, a response's runs to the end of the stream.
    Unframed,
}

impl Head {
    /// The value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn framing(&self) -> Result<Framing, ReadError> {
        if let Some(te) = self.header("transfer-encoding") {
            // Chunked must be the last (here: the only meaningful) coding.
            let last = te.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(ReadError::Bad("unsupported transfer-encoding"));
            }
            Ok(Framing::Chunked)
        } else if let Some(len) = self.header("content-length") {
            parse_content_length(len).map(Framing::Length)
        } else {
            Ok(Framing::Unframed)
        }
    }
}

/// One piece of a chunked body.
#[derive(Debug)]
pub enum Chunk {
    Data(Vec<u8>),
    /// The last chunk, with the trailer fields.
    End(BTreeMap<String, String>),
}

/// Reads one message head (start line and headers); `Closed` when the stream
/// ends before its first byte. `line` is a scratch buffer.
pub async fn read_head<S>(conn: &mut S, line: &mut Vec<u8>) -> Result<Head, ReadError>
where
    S: AsyncBufRead + Unpin,
{
    if read_line(conn, line).await? == 0 {
        return Err(ReadError::Closed);
    }
    let start_line = String::from_utf8_lossy(trim_eol(line)).into_owned();
    let mut parts = start_line.splitn(3, ' ');
    let start = [(); 3].map(|()| parts.next().unwrap_or("").to_owned());
    let headers = read_headers(conn, line).await?;
    Ok(Head { start, headers })
}

/// Reads the next piece of a chunked body.
pub async fn read_chunk<S>(conn: &mut S, line: &mut Vec<u8>) -> Result<Chunk, ReadError>
where
    S: AsyncBufRead + Unpin,
{
    if read_line(conn, line).await? == 0 {
        return Err(ReadError::Bad("connection closed inside a chunked body"));
    }
    let size_line = String::from_utf8_lossy(trim_eol(line));
    // Chunk extensions (`;name=value`) are allowed and ignored.
    let size = size_line.split(';').next().unwrap_or("").trim();
    let size = usize::from_str_radix(size, 16).map_err(|_| ReadError::Bad("bad chunk size"))?;
    if size == 0 {
        return Ok(Chunk::End(read_headers(conn, line).await?));
    }
    if size > MAX_BODY {
        return Err(ReadError::Bad("chunk too large"));
    }
    let mut data = vec![0; size];
    conn.read_exact(&mut data).await.map_err(eof_is_bad)?;
    read_line(conn, line).await?;
    if !trim_eol(line).is_empty() || line.is_empty() {
        return Err(ReadError::Bad("chunk data not followed by CRLF"));
    }
    Ok(Chunk::Data(data))
}

/// Reads a body of `len` bytes.
pub async fn read_exact_body<S>(conn: &mut S, len: usize) -> Result<Vec<u8>, ReadError>
where
    S: AsyncBufRead + Unpin,
{
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await.map_err(eof_is_bad)?;
    Ok(body)
}

/// Reads one request from `conn`.
///
/// `conn` is also written to: a client that sent `Expect: 100-continue` (curl does,
/// for large bodies) waits for the interim response before sending its body.
pub async fn read_request<S>(conn: &mut S) -> Result<Request, ReadError>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    let Head { start, headers } = read_head(conn, &mut line).await?;
    let [method, target, version] = start;
    if method.is_empty()
        || target.is_empty()
        || method.contains(char::is_whitespace)
        || target.contains(char::is_whitespace)
        || version.contains(char::is_whitespace)
    {
        return Err(ReadError::Bad("malformed request line"));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad("unsupported HTTP version"));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target, None),
    };
    let head = Head {
        start: Default::default(),
        headers,
    };

    if head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(ReadError::Io)?;
        conn.flush().await.map_err(ReadError::Io)?;
    }

    let body = match head.framing()? {
        Framing::Chunked => {
            let mut body = Vec::new();
            loop {
                match read_chunk(conn, &mut line).await? {
                    Chunk::Data(data) if data.len() > MAX_BODY - body.len() => {
                        return Err(ReadError::Bad("request body too large"))
                    }
                    Chunk::Data(data) => body.extend_from_slice(&data),
                    Chunk::End(_) => break body,
                }
            }
        }
        Framing::Length(len) => read_exact_body(conn, len).await?,
        Framing::Unframed => Vec::new(),
    };

    Ok(Request {
        method,
        path,
        query,
        headers: head.headers,
        body,
    })
}

/// Reads header lines up to and including the empty line that ends them.
async fn read_headers<S>(
    conn: &mut S,
    line: &mut Vec<u8>,
) -> Result<BTreeMap<String, String>, ReadError>
where
    S: AsyncBufRead + Unpin,
{
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..=MAX_HEADERS {
        if read_line(conn, line).await? == 0 {
            return Err(ReadError::Bad("connection closed inside the headers"));
        }
        let text = trim_eol(line);
        if text.is_empty() {
            return Ok(headers);
        }
        let text = String::from_utf8_lossy(text);
        let Some((name, value)) = text.split_once(':') else {
            return Err(ReadError::Bad("malformed header line"));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(ReadError::Bad("malformed header name"));
        }
        let name = name.to_ascii_lowercase();
        let value = value.trim();
        headers
            .entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    Err(ReadError::Bad("too many header lines"))
}

fn parse_content_length(value: &str) -> Result<usize, ReadError> {
    // Repeated headers were joined with ", "; they must all agree.
    let mut values = value.split(',').map(str::trim);
    let first = values.next().unwrap_or("");
    if values.any(|v| v != first) {
        return Err(ReadError::Bad("conflicting content-length headers"));
    }
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReadError::Bad("bad content-length"));
    }
    match first.parse::<usize>() {
        Ok(len) if len <= MAX_BODY => Ok(len),
        _ => Err(ReadError::Bad("request body too large")),
    }
}

/// Reads one line (through `\n`) into `buf`, which is cleared first; returns the
/// number of bytes read, 0 at end of stream.
async fn read_line<S>(conn: &mut S, buf: &mut Vec<u8>) -> Result<usize, ReadError>
where
    S: AsyncBufRead + Unpin,
{
    buf.clear();
    let n = (&mut *conn)
        .take(MAX_LINE)
        .read_until(b'\n', buf)
        .await
        .map_err(ReadError::Io)?;
    if n > 0 && buf.last() != Some(&b'\n') {
        return Err(if n as u64 >= MAX_LINE {
            ReadError::Bad("line too long")
        } else {
            ReadError::Bad("connection closed mid-line")
        });
    }
    Ok(n)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn eof_is_bad(err: io::Error) -> ReadError {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        ReadError::Bad("connection closed inside the body")
    } else {
        ReadError::Io(err)
    }
}

/// Decodes `%XX` escapes and `+` (as space); `None` on a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The standard reason phrase of a status code ("" when unknown: it is optional).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Writes a complete response with a `Content-Length` body, then flushes.
pub async fn write_response<W>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

/// Writes the head of a 200 `text/event-stream` response with a chunked body.
pub async fn write_stream_head<W>(w: &mut W) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    w.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .await?;
    w.flush().await
}

/// Writes `data` as one HTTP chunk (in a single write) and flushes it.
///
/// Empty data is skipped: an empty chunk would end the body.
pub async fn write_chunk<W>(w: &mut W, data: &[u8]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out).await?;
    w.flush().await
}

/// Writes the last chunk, ending a chunked body cleanly.
pub async fn write_last_chunk<W>(w: &mut W) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    w.write_all(b"0\r\n\r\n").await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(raw).await.map_err(ReadError::Io)?;
        client.shutdown().await.map_err(ReadError::Io)?;
        let mut server = BufReader::new(server);
        read_request(&mut server).await
    }

    #[tokio::test]
    async fn parses_content_length_request() {
        let req = parse(b"POST /gen?match=a%20b+c HTTP/1.1\r\nHost: x\r\nX-Key: K\r\nx-key: L\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .expect("request");
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/gen");
        assert_eq!(req.header("x-key"), Some("K, L"));
        assert_eq!(req.body, b"{}");
        assert_eq!(
            req.query_param("match").ok().flatten().as_deref(),
            Some("a b c")
        );
        assert_eq!(req.query_param("other").ok().flatten(), None);
    }

    #[tokio::test]
    async fn parses_chunked_request() {
        let req = parse(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
        )
        .await
        .expect("request");
        assert_eq!(req.body, b"abcde");
    }

    #[tokio::test]
    async fn rejects_malformed_requests() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x",
        ] {
            assert!(
                matches!(parse(raw).await, Err(ReadError::Bad(_))),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(matches!(parse(b"").await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn reads_response_heads_chunks_and_trailers() {
        let raw: &[u8] = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;e=1\r\nabc\r\n0\r\nLambda-Runtime-Function-Error-Type: E\r\n\r\n";
        let mut conn = BufReader::new(raw);
        let mut line = Vec::new();
        let head = read_head(&mut conn, &mut line).await.expect("head");
        assert_eq!(head.start, ["HTTP/1.1", "404", "Not Found"]);
        assert_eq!(head.framing().expect("framing"), Framing::Chunked);
        assert!(
            matches!(read_chunk(&mut conn, &mut line).await, Ok(Chunk::Data(d)) if d == b"abc")
        );
        match read_chunk(&mut conn, &mut line).await {
            Ok(Chunk::End(trailers)) => assert_eq!(
                trailers
                    .get("lambda-runtime-function-error-type")
                    .map(String::as_str),
                Some("E")
            ),
            other => panic!("expected the last chunk, got {other:?}"),
        }
        assert!(matches!(
            read_head(&mut conn, &mut line).await,
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%C3%A9+b").as_deref(), Some("aé b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%C3"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
