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
        let http = reqwest::Client::builder()
            .connect_timeout(config.inference_connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            // Streams are long and bounded by the relay's own deadline, so the
            // client has no whole-request timeout.
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

    /// Sends the request and waits for the response head.
    pub async fn start(&self, request: &InferenceRequest) -> Result<reqwest::Response, StartError> {
        let resp = self
            .http
            .post(self.url.clone())
            .header("x-internal-api-key", self.api_key.clone())
            .header(http::header::ACCEPT, "text/event-stream")
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
