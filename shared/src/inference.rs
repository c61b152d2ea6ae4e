//! The client of the inference endpoint (SPEC section 4).

use std::time::Duration;

use http::HeaderValue;
use serde::Serialize;

use crate::api::ChatParams;
use crate::config::{Config, InferenceDefaults};
use crate::prompt::Turn;

/// The JSON body the upstream receives.
#[derive(Debug, Clone, Serialize)]
pub struct InferenceRequest {
    pub messages: Vec<Turn>,
    pub temperature: f64,
    pub max_tokens: u32,
    pub top_k: u32,
    pub force_web_search: bool,
}

impl InferenceRequest {
    pub fn new(messages: Vec<Turn>, params: &ChatParams, defaults: &InferenceDefaults) -> Self {
        Self {
            messages,
            temperature: params.temperature.unwrap_or(defaults.temperature),
            max_tokens: params.max_tokens.unwrap_or(defaults.max_tokens),
            top_k: params.top_k.unwrap_or(defaults.top_k),
            force_web_search: params.force_web_search,
        }
    }
}

/// Where the system's PEM bundle of CA roots is looked for when `SSL_CERT_FILE`
/// is not set: the bundle files `rustls-native-certs` probes (through
/// `openssl-probe`) on Linux, in its order; Amazon Linux 2023's is the third.
const ROOT_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// The system's CA roots, read from its PEM bundle with a plain base64 decoder.
///
/// reqwest's default verifier loads the same bundle through `rustls-native-certs`,
/// whose constant-time base64 decoding was 40 % of a cold start's instructions
/// (callgrind; the AWS SDK's client decodes the bundle once more). Roots are
/// public, so constant time buys nothing here. `None` keeps reqwest's default:
/// when `SSL_CERT_DIR` names a directory of roots (not read here), when no
/// bundle is found, or when a block does not decode.
fn system_roots() -> Option<Vec<reqwest::Certificate>> {
    use base64::Engine as _;

    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    if std::env::var_os("SSL_CERT_DIR").is_some() {
        return None;
    }
    let path = match std::env::var_os("SSL_CERT_FILE") {
        Some(file) => std::path::PathBuf::from(file),
        None => ROOT_BUNDLES
            .iter()
            .map(std::path::Path::new)
            .find(|p| p.is_file())?
            .to_owned(),
    };
    let pem = std::fs::read_to_string(path).ok()?;
    let mut roots = Vec::new();
    let mut rest = pem.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start + BEGIN.len()..];
        let end = block.find(END)?;
        let b64: Vec<u8> = block[..end]
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        roots.push(reqwest::Certificate::from_der(&der).ok()?);
        rest = &block[end + END.len()..];
    }
    (!roots.is_empty()).then_some(roots)
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
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(config.inference_connect_timeout)
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(60))
            // Streams are long and bounded by the relay's own deadline, so the
            // client has no whole-request timeout.
        };
        let http = system_roots()
            .and_then(|roots| builder().tls_certs_only(roots).build().ok())
            .map_or_else(|| builder().build(), Ok)
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
