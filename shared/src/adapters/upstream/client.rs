//! The client of the inference endpoint (SPEC section 4): its TLS, its one
//! connection (kept alive from one answer to the next, or made ahead while
//! DynamoDB answers), the request sent, the response head awaited.
//!
//! A Lambda instance runs one invocation at a time, so one connection is all
//! it needs: this is HTTP/1.1 over `hyper`'s connection API, with the pool
//! reduced to one spare connection. What a general-purpose client did not
//! allow is [`InferenceClient::connect_ahead`]: the TCP connection and TLS
//! handshake are made while the function waits for its DynamoDB round trip,
//! instead of after it, before the upstream request can leave.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::{AbortHandle, JoinHandle};

use super::request::InferenceRequest;
use crate::foundation::config::Config;

/// The upstream client's TLS: trust in Mozilla's CA roots as `webpki-roots`
/// compiles them in (trust anchors ready to use, so a cold start decodes no
/// certificate), or in the PEM bundle `ca_file` (`SSL_CERT_FILE`) instead, for an
/// upstream behind a private CA. A bundle that cannot be read or holds no usable
/// root fails the cold start, naming the variable.
///
/// Reading the system bundle of about 140 roots was the largest cost of a cold
/// start left once the DynamoDB client trusted only the Amazon roots. The
/// compiled-in set moves with this crate's releases, not the OS image's.
fn upstream_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let unusable = || {
                format!(
                    "configuration: SSL_CERT_FILE holds no usable CA root ({})",
                    path.display()
                )
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|_| unusable())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| unusable())?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(unusable());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("inference client: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Why the upstream gave no stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// Connect failure, reset before headers, or timeout.
    Unavailable,
    /// The upstream answered with this HTTP status (not 2xx).
    Status(u16),
}

/// TCP keepalive on the upstream connection: a stream can be quiet for a long
/// time while the model thinks, and a peer that vanished is noticed within
/// about a minute instead of never.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_PROBES: u32 = 3;
/// Data the upstream has not acknowledged for this long ends the connection.
const UNACKNOWLEDGED: Duration = Duration::from_secs(30);

/// Where requests go, from `INFERENCE_URL`.
struct Target {
    host: String,
    port: u16,
    /// The `Host` header: the URL's host, and its port when not the default.
    authority: HeaderValue,
    /// The request target: path and query.
    path: String,
    /// For TLS: the name the certificate must carry.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// One HTTP/1.1 connection: its request half, and the task that drives it.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: AbortHandle,
}

/// The connection the next request uses.
enum Spare {
    /// Kept alive from an earlier exchange (usable once that one's body ended).
    Open(Connection),
    /// Being made ahead of the request ([`InferenceClient::connect_ahead`]).
    Connecting(JoinHandle<Result<Connection, StartError>>),
}

struct Shared {
    target: Target,
    api_key: HeaderValue,
    connect_timeout: Duration,
    spare: Mutex<Option<Spare>>,
}

#[derive(Clone)]
pub struct InferenceClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InferenceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceClient")
            .field("host", &self.shared.target.host)
            .field("port", &self.shared.target.port)
            .field("path", &self.shared.target.path)
            .finish_non_exhaustive()
    }
}

/// The upstream's answer: its status, and its body as it arrives.
pub struct Upstream {
    status: StatusCode,
    body: Incoming,
    /// The connection's task, ended if the body is dropped before its end, so
    /// an abandoned answer (a stop, a deadline, a browser gone) closes the
    /// connection and the upstream stops generating.
    driver: AbortHandle,
    ended: bool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("status", &self.status)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, hyper::Error> {
        while let Some(frame) = self.body.frame().await {
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        self.ended = true;
        Ok(None)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if !self.ended {
            self.driver.abort();
        }
    }
}

impl InferenceClient {
    pub fn new(config: &Config) -> Result<Self, String> {
        let invalid = || "configuration: INFERENCE_URL is invalid".to_owned();
        let url = url::Url::parse(&config.inference_url).map_err(|_| invalid())?;
        // As the URL writes it (an IPv6 literal in brackets), for `Host`.
        let url_host = url.host_str().ok_or_else(invalid)?;
        let port = url.port_or_known_default().ok_or_else(invalid)?;
        let authority = match url.port() {
            Some(port) => format!("{url_host}:{port}"),
            None => url_host.to_owned(),
        };
        // As resolved, and as the certificate names it.
        let host = url_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authority = HeaderValue::from_str(&authority).map_err(|_| invalid())?;
        let mut path = url.path().to_owned();
        if let Some(query) = url.query() {
            path.push('?');
            path.push_str(query);
        }
        let tls = match url.scheme() {
            "https" => {
                let config = upstream_tls(config.upstream_ca_file.as_deref())?;
                let name =
                    rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| invalid())?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            "http" => None,
            _ => return Err(invalid()),
        };
        let mut api_key = HeaderValue::from_str(&config.internal_api_key).map_err(|_| {
            "configuration: INTERNAL_API_KEY is not a valid header value".to_owned()
        })?;
        api_key.set_sensitive(true);
        Ok(Self {
            shared: Arc::new(Shared {
                target: Target {
                    host,
                    port,
                    authority,
                    path,
                    tls,
                },
                api_key,
                connect_timeout: config.inference_connect_timeout,
                spare: Mutex::new(None),
            }),
        })
    }

    /// Makes sure a connection is ready for the next [`start`](Self::start):
    /// the one kept alive from the last answer if it is still open, else a new
    /// one, connected in the background. Called before the DynamoDB round trip,
    /// so the connection and the TLS handshake are made while it runs. A
    /// request refused meanwhile leaves the connection for the next one.
    pub fn connect_ahead(&self) {
        let mut spare = self.shared.spare.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Spare::Connecting(task)) = spare.as_mut() {
            if !task.is_finished() {
                return;
            }
            // Made for an earlier request that was refused: it may have been
            // closed since, which only the connection itself can tell.
            *spare = match task.now_or_never() {
                Some(Ok(Ok(conn))) => Some(Spare::Open(conn)),
                _ => None,
            };
        }
        if let Some(Spare::Open(conn)) = spare.as_ref() {
            if !conn.sender.is_closed() {
                return;
            }
        }
        let shared = self.shared.clone();
        *spare = Some(Spare::Connecting(tokio::spawn(async move {
            connect(&shared).await
        })));
    }

    /// Sends the request and waits for the response head. `trace` (the
    /// invocation's X-Ray trace header) goes along as `X-Amzn-Trace-Id`, so the
    /// upstream's logs of this call can be found from the function's.
    pub async fn start(
        &self,
        request: &InferenceRequest,
        trace: Option<&str>,
    ) -> Result<Upstream, StartError> {
        let body = Bytes::from(serde_json::to_vec(request).map_err(|_| StartError::Unavailable)?);
        let target = &self.shared.target;
        let mut builder = http::Request::post(target.path.as_str())
            .header(HOST, target.authority.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .header("x-internal-api-key", self.shared.api_key.clone());
        if let Some(trace) = trace.and_then(|t| HeaderValue::from_str(t).ok()) {
            builder = builder.header("x-amzn-trace-id", trace);
        }
        let mut request = builder
            .body(Full::new(body))
            .map_err(|_| StartError::Unavailable)?;

        // A kept-alive connection the upstream closed while the instance was
        // idle can fail before the request is written: the request then comes
        // back, and goes once more on a new connection. A request that may
        // have been written is never sent twice.
        let (response, driver) = loop {
            let (mut conn, fresh) = match self.take_spare().await? {
                Some(spare) => spare,
                None => (connect(&self.shared).await?, true),
            };
            if conn.sender.ready().await.is_err() {
                if fresh {
                    return Err(StartError::Unavailable);
                }
                continue;
            }
            match conn.sender.try_send_request(request).await {
                Ok(response) => {
                    self.keep(conn.sender, conn.driver.clone());
                    break (response, conn.driver);
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(StartError::Unavailable),
                },
            }
        };
        let status = response.status();
        let upstream = Upstream {
            status,
            body: response.into_body(),
            driver,
            ended: false,
        };
        // Anything but a 2xx is no stream (a redirect is not followed).
        if !status.is_success() {
            return Err(StartError::Status(status.as_u16()));
        }
        Ok(upstream)
    }

    /// The spare connection if there is one that can still be used, and
    /// whether it was just made (waiting for one being made ahead, whose
    /// failure to connect is the request's). A spare that turns out closed is
    /// replaced by a new connection, once.
    async fn take_spare(&self) -> Result<Option<(Connection, bool)>, StartError> {
        let spare = self
            .shared
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Ok(match spare {
            Some(Spare::Open(conn)) if conn.sender.is_ready() => Some((conn, false)),
            // Closed, or still carrying an earlier answer's body.
            Some(Spare::Open(_)) | None => None,
            // Made ahead: it has carried nothing, so a failure before the
            // request is written leaves room for one more connection.
            Some(Spare::Connecting(task)) => match task.await {
                Ok(Ok(conn)) if !conn.sender.is_closed() => Some((conn, false)),
                Ok(Ok(_)) | Err(_) => None,
                Ok(Err(e)) => return Err(e),
            },
        })
    }

    /// Keeps the connection for the next request: it can carry one once this
    /// exchange's body has been read to its end.
    fn keep(&self, sender: SendRequest<Full<Bytes>>, driver: AbortHandle) {
        let mut spare = self.shared.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.is_none() {
            *spare = Some(Spare::Open(Connection { sender, driver }));
        }
    }
}

/// A new connection: TCP (each address in turn), TLS for `https`, the HTTP/1.1
/// handshake, all within the connect timeout.
async fn connect(shared: &Shared) -> Result<Connection, StartError> {
    tokio::time::timeout(shared.connect_timeout, connect_now(&shared.target))
        .await
        .map_err(|_| StartError::Unavailable)?
}

async fn connect_now(target: &Target) -> Result<Connection, StartError> {
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|_| StartError::Unavailable)?;
    let mut tcp = None;
    for addr in addrs {
        if let Ok(stream) = TcpStream::connect(addr).await {
            tcp = Some(stream);
            break;
        }
    }
    let tcp = tcp.ok_or(StartError::Unavailable)?;
    let _ = tcp.set_nodelay(true);
    let socket = socket2::SockRef::from(&tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let _ = socket.set_tcp_keepalive(&keepalive);
    let _ = socket.set_tcp_user_timeout(Some(UNACKNOWLEDGED));
    match &target.tls {
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|_| StartError::Unavailable)?;
            handshake(TokioIo::new(tls)).await
        }
        None => handshake(TokioIo::new(tcp)).await,
    }
}

async fn handshake<T>(io: T) -> Result<Connection, StartError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|_| StartError::Unavailable)?;
    // Ends when the connection closes (or is aborted: see `Upstream`).
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    })
    .abort_handle();
    Ok(Connection { sender, driver })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::config::tests::TEST_PUBLIC_KEY;

    fn client(url: &str) -> Result<InferenceClient, String> {
        let config = Config::from_lookup(|name| match name {
            "TABLE_NAME" => Some("chat".into()),
            "INFERENCE_URL" => Some(url.into()),
            "INTERNAL_API_KEY" => Some("internal".into()),
            "JWT_PUBLIC_KEY" => Some(TEST_PUBLIC_KEY.into()),
            _ => None,
        })
        .expect("config");
        InferenceClient::new(&config)
    }

    #[test]
    fn the_url_gives_the_address_the_host_header_and_the_request_target() {
        let table = [
            (
                "http://127.0.0.1:8000/generate",
                "127.0.0.1",
                8000,
                "127.0.0.1:8000",
                "/generate",
                false,
            ),
            (
                "https://infer.example.com/v1/chat?stream=1",
                "infer.example.com",
                443,
                "infer.example.com",
                "/v1/chat?stream=1",
                true,
            ),
            ("http://[::1]:9000/", "::1", 9000, "[::1]:9000", "/", false),
            (
                "https://infer.example.com:8443",
                "infer.example.com",
                8443,
                "infer.example.com:8443",
                "/",
                true,
            ),
        ];
        for (url, host, port, authority, path, tls) in table {
            let c = client(url).expect(url);
            let t = &c.shared.target;
            assert_eq!(
                (
                    t.host.as_str(),
                    t.port,
                    t.authority.to_str().unwrap(),
                    t.path.as_str(),
                    t.tls.is_some()
                ),
                (host, port, authority, path, tls),
                "{url}"
            );
        }
    }
}
