//! Everything a handler needs, built once per cold start.

use std::sync::Arc;

use crate::auth::Verifier;
use crate::config::Config;
use crate::inference::InferenceClient;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub inference: InferenceClient,
    pub verifier: Verifier,
}

impl AppState {
    /// Reads the configuration and builds the clients; an error names what is wrong.
    pub async fn from_env() -> Result<Arc<Self>, String> {
        let config = Config::from_env().map_err(|e| e.to_string())?;
        let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
        Self::new(config, dynamodb).map(Arc::new)
    }

    pub fn new(config: Config, dynamodb: aws_sdk_dynamodb::Client) -> Result<Self, String> {
        let verifier = Verifier::new(&config.jwt_public_key_pem, &config.jwt_issuer)
            .map_err(|_| "configuration: JWT_PUBLIC_KEY is invalid".to_owned())?;
        Ok(Self {
            store: Store::new(dynamodb, config.table_name.clone()),
            inference: InferenceClient::new(&config)?,
            verifier,
            config,
        })
    }
}
