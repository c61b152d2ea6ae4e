//! Everything a handler needs, built once per cold start.

use std::sync::Arc;

use crate::adapters::auth::Verifier;
use crate::adapters::metrics::{DynamoCounters, DynamoInterceptor};
use crate::adapters::store::{RetryTransactionConflicts, Store};
use crate::adapters::upstream::InferenceClient;
use crate::foundation::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub inference: InferenceClient,
    pub verifier: Verifier,
    /// The DynamoDB client's retries and throttles, for each invocation's metrics.
    pub dynamodb_counters: Arc<DynamoCounters>,
}

impl AppState {
    /// Reads the configuration and builds the clients; an error names what is wrong.
    ///
    /// The DynamoDB client's retries and timeouts are explicit, not the SDK's
    /// defaults (which move with the behavior version and set no attempt or
    /// operation timeout):
    /// - standard retry mode, 4 attempts, backoff with full jitter from 200 ms
    ///   (at most 0.2 + 0.4 + 0.8 s in all): throttling and 5xx/transport
    ///   failures are retried quickly enough that a user waiting for `done`
    ///   barely notices, and a throttled answer write gets four chances before
    ///   the stream ends `persist_failed`; so does a single-item write that met
    ///   a transaction in progress on its item ([`RetryTransactionConflicts`]);
    /// - 1 s to connect, 3 s per attempt (a DynamoDB call takes milliseconds; an
    ///   attempt that hangs is abandoned and retried instead of holding the
    ///   stream), 10 s per operation including retries and backoff;
    /// - no stalled-stream protection: it watches the throughput of request and
    ///   response bodies, which for DynamoDB are a few kilobytes sent and read
    ///   at once, and a stalled attempt already ends at its 3 s timeout. It cost
    ///   every request two more futures polled and timed.
    pub async fn from_env() -> Result<Arc<Self>, String> {
        use std::time::Duration;

        use aws_config::retry::RetryConfig;
        use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
        use aws_config::timeout::TimeoutConfig;

        let config = Config::from_env().map_err(|e| e.to_string())?;
        let mut aws = aws_config::defaults(aws_config::BehaviorVersion::latest());
        // Lambda gives the region and the execution role's credentials in the
        // environment, where the SDK's default chains look first. Taken from
        // there directly, the cold start skips building the rest of those chains
        // (an STS client for web identity, IMDS and profile providers): a third
        // of its instructions. Without them (a developer's profile) the default
        // chains apply.
        if let Some(region) = env_value("AWS_REGION") {
            aws = aws.region(aws_config::Region::new(region));
        }
        if env_value("AWS_ACCESS_KEY_ID").is_some() && env_value("AWS_SECRET_ACCESS_KEY").is_some()
        {
            aws = aws.credentials_provider(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            );
        }
        let aws = aws
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(4)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_attempt_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(10))
                    .build(),
            )
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .http_client(dynamodb_http_client(&endpoint_override())?)
            .load()
            .await;
        let counters = Arc::new(DynamoCounters::default());
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&aws)
                .interceptor(DynamoInterceptor(counters.clone()))
                .retry_classifier(RetryTransactionConflicts)
                .build(),
        );
        let mut state = Self::new(config, dynamodb)?;
        state.dynamodb_counters = counters;
        Ok(Arc::new(state))
    }

    pub fn new(config: Config, dynamodb: aws_sdk_dynamodb::Client) -> Result<Self, String> {
        let verifier = Verifier::new(&config.jwt_public_key_pem, &config.jwt_issuer)
            .map_err(|_| "configuration: JWT_PUBLIC_KEY is invalid".to_owned())?;
        Ok(Self {
            store: Store::new(dynamodb, config.table_name.clone()),
            inference: InferenceClient::new(&config)?,
            verifier,
            config,
            dynamodb_counters: Arc::default(),
        })
    }
}

/// Whether the endpoint is `https` outside AWS, so may chain to any system root.
fn needs_system_roots(endpoint: Option<&str>) -> bool {
    let host = endpoint
        .and_then(|url| url.strip_prefix("https://"))
        .map(|rest| rest.split(['/', ':']).next().unwrap_or_default());
    host.is_some_and(|h| !h.ends_with(".amazonaws.com") && !h.ends_with(".amazonaws.com.cn"))
}

/// The Amazon Trust Services roots, which every AWS service endpoint chains to.
const AMAZON_ROOTS: &str = include_str!("../../certs/amazon-trust-services.pem");

/// A variable of the environment that is set and not empty.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The DynamoDB endpoint set through the SDK's own variables, if any.
fn endpoint_override() -> Option<String> {
    ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(env_value)
}

/// The SDK's own HTTP client (its pooling, timeouts and transport-error
/// classification), trusting the five Amazon Trust Services roots instead of the
/// system bundle. Decoding the system bundle of about 140 roots was two thirds
/// of a cold start's instructions, and a DynamoDB endpoint never chains to the
/// other roots. An `https` endpoint override outside `amazonaws.com` (a
/// DynamoDB-compatible server of one's own) also gets the system roots.
fn dynamodb_http_client(
    endpoint: &Option<String>,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, String> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

    let trust = TrustStore::empty()
        .with_native_roots(needs_system_roots(endpoint.as_deref()))
        .with_pem_certificate(AMAZON_ROOTS.as_bytes());
    let tls = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| format!("configuration: DynamoDB TLS context: {e}"))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::rustls(CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_https_endpoint_outside_aws_adds_the_system_roots() {
        assert!(!needs_system_roots(None));
        assert!(!needs_system_roots(Some("http://127.0.0.1:8000")));
        assert!(!needs_system_roots(Some(
            "https://dynamodb.eu-west-1.amazonaws.com"
        )));
        assert!(!needs_system_roots(Some(
            "https://dynamodb-fips.us-east-1.amazonaws.com:443/"
        )));
        assert!(!needs_system_roots(Some(
            "https://dynamodb.cn-north-1.amazonaws.com.cn"
        )));
        assert!(needs_system_roots(Some(
            "https://ddb.internal.example:8443"
        )));
        assert!(needs_system_roots(Some(
            "https://amazonaws.com.example.org/"
        )));
    }

    #[test]
    fn the_amazon_bundle_holds_five_certificates_that_decode() {
        use base64::Engine as _;

        let blocks: Vec<&str> = AMAZON_ROOTS
            .split("-----BEGIN CERTIFICATE-----")
            .skip(1)
            .map(|b| b.split("-----END CERTIFICATE-----").next().unwrap())
            .collect();
        assert_eq!(blocks.len(), 5);
        for b64 in blocks {
            let clean: String = b64.split_whitespace().collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(clean)
                .unwrap();
            assert_eq!(der[0], 0x30, "a DER SEQUENCE");
        }
        assert!(dynamodb_http_client(&None).is_ok());
        assert!(dynamodb_http_client(&Some("https://ddb.example".into())).is_ok());
    }
}
