//! Everything a handler needs, built once per cold start.

use std::sync::Arc;

use crate::auth::Verifier;
use crate::config::Config;
use crate::inference::InferenceClient;
use crate::metrics::{DynamoCounters, DynamoInterceptor};
use crate::store::Store;

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
    ///   the stream ends `persist_failed`;
    /// - 1 s to connect, 3 s per attempt (a DynamoDB call takes milliseconds; an
    ///   attempt that hangs is abandoned and retried instead of holding the
    ///   stream), 10 s per operation including retries and backoff.
    pub async fn from_env() -> Result<Arc<Self>, String> {
        use std::time::Duration;

        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;

        let config = Config::from_env().map_err(|e| e.to_string())?;
        let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
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
            .load()
            .await;
        let counters = Arc::new(DynamoCounters::default());
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&aws)
                .interceptor(DynamoInterceptor(counters.clone()))
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
