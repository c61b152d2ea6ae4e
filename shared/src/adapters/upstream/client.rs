//! The client of the inference endpoint (SPEC section 4): its TLS, the request
//! sent, the response head awaited.

use std::time::Duration;

use http::HeaderValue;

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
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
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
    /// The upstream answered with this HTTP status (>= 400).
    Status(u16),
}

#[derive(Clone, Debug)]
pub struct InferenceClient {
    http: reqwest::Client,
    url: reqwest::Url,
    api_key: HeaderValue,
}

impl InferenceClient {
    pub fn new(config: &Config) -> Result<Self, String> {
        // Streams are long and bounded by the relay's own deadline, so the
        // client has no whole-request timeout.
        let http = reqwest::Client::builder()
            .connect_timeout(config.inference_connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .tls_backend_preconfigured(upstream_tls(config.upstream_ca_file.as_deref())?)
            .build()
            .map_err(|e| format!("inference client: {e}"))?;
        let url = reqwest::Url::parse(&config.inference_url)
            .map_err(|_| "configuration: INFERENCE_URL is invalid".to_owned())?;
        let mut api_key = HeaderValue::from_str(&config.internal_api_key).map_err(|_| {
            "configuration: INTERNAL_API_KEY is not a valid header value".to_owned()
        })?;
        api_key.set_sensitive(true);
        Ok(Self { http, url, api_key })
    }

    /// Sends the request and waits for the response head. `trace` (the
    /// invocation's X-Ray trace header) goes along as `X-Amzn-Trace-Id`, so the
    /// upstream's logs of this call can be found from the function's.
    pub async fn start(
        &self,
        request: &InferenceRequest,
        trace: Option<&str>,
    ) -> Result<reqwest::Response, StartError> {
        let mut builder = self
            .http
            .post(self.url.clone())
            .header("x-internal-api-key", self.api_key.clone())
            .header(http::header::ACCEPT, "text/event-stream");
        if let Some(trace) = trace.and_then(|t| HeaderValue::from_str(t).ok()) {
            builder = builder.header("x-amzn-trace-id", trace);
        }
        let resp = builder
            .json(request)
            .send()
            .await
            .map_err(|_| StartError::Unavailable)?;
        let status = resp.status();
        if status.is_client_error() || status.is_server_error() {
            return Err(StartError::Status(status.as_u16()));
        }
        Ok(resp)
    }
}
