//! Configuration, read once per cold start from the environment (SPEC section 7).
//!
//! A missing or malformed setting fails the cold start with a message naming the
//! variable, so a bad deploy is visible in the first log line instead of as a 500
//! on some later request.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration: {0} is required but not set")]
    Missing(&'static str),
    #[error("configuration: {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Per-user limits on what reaches the upstream (`domain::limits` applies them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RATE_LIMIT_PER_MINUTE`: messages per user per clock minute.
    pub per_minute: u32,
    /// `DAILY_MESSAGE_QUOTA`: messages per user per UTC day.
    pub per_day: u32,
    /// `MAX_CONCURRENT_ANSWERS`: answers generating at once per user.
    pub concurrent: u32,
}

/// Server-side defaults for the inference parameters a request leaves null.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceDefaults {
    pub temperature: f64,
    pub max_tokens: u32,
    pub top_k: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub table_name: String,
    pub inference_url: String,
    pub internal_api_key: String,
    pub jwt_public_key_pem: String,
    pub jwt_issuer: String,
    pub defaults: InferenceDefaults,
    pub max_history: usize,
    pub max_token_budget: usize,
    pub allowed_origins: Vec<String>,
    /// Silence on the upstream after which the browser gets a `: ping` comment.
    pub ping_interval: Duration,
    /// Upper bound on one whole upstream exchange; kept below the function timeout
    /// so a partial answer can still be stored when the upstream never ends.
    pub inference_deadline: Duration,
    /// Time allowed to open the upstream connection.
    pub inference_connect_timeout: Duration,
    /// A live answer's text reaches DynamoDB at most this often; a function that
    /// dies loses at most this much of it. Also how often a generating function
    /// looks for a stop request.
    pub checkpoint_interval: Duration,
    /// A live answer with no checkpoint for this long is taken for dead (its
    /// function gone) and settled by the next request that meets it.
    pub live_stale_after: Duration,
    /// Per-user limits on what reaches the upstream.
    pub limits: Limits,
    /// A PEM bundle of the CA roots the upstream's certificate is checked
    /// against (`SSL_CERT_FILE`), instead of the built-in Mozilla roots.
    pub upstream_ca_file: Option<std::path::PathBuf>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| get(name).ok_or(ConfigError::Missing(name));

        let inference_url = required("INFERENCE_URL")?;
        match url::Url::parse(&inference_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(ConfigError::Invalid {
                    name: "INFERENCE_URL",
                    reason: "must be an absolute http(s) URL".into(),
                })
            }
        }
        let jwt_public_key_pem = required("JWT_PUBLIC_KEY")?.replace("\\n", "\n");
        if jsonwebtoken::DecodingKey::from_rsa_pem(jwt_public_key_pem.as_bytes()).is_err() {
            return Err(ConfigError::Invalid {
                name: "JWT_PUBLIC_KEY",
                reason: "must be an RSA public key in PEM form".into(),
            });
        }

        let temperature: f64 = parse_or("INFERENCE_DEFAULT_TEMPERATURE", get, 0.8)?;
        if !(0.0..=2.0).contains(&temperature) {
            return Err(invalid(
                "INFERENCE_DEFAULT_TEMPERATURE",
                "must be within 0..2",
            ));
        }
        let max_tokens: u32 = parse_or("INFERENCE_DEFAULT_MAX_TOKENS", get, 1024)?;
        if !(1..=4096).contains(&max_tokens) {
            return Err(invalid(
                "INFERENCE_DEFAULT_MAX_TOKENS",
                "must be within 1..4096",
            ));
        }
        let top_k: u32 = parse_or("INFERENCE_DEFAULT_TOP_K", get, 50)?;
        if top_k > 200 {
            return Err(invalid("INFERENCE_DEFAULT_TOP_K", "must be within 0..200"));
        }
        let max_history: usize = parse_or("MAX_CONVERSATION_HISTORY", get, 50)?;
        if !(1..=1000).contains(&max_history) {
            return Err(invalid(
                "MAX_CONVERSATION_HISTORY",
                "must be within 1..1000",
            ));
        }
        let max_token_budget: usize = parse_or("MAX_TOKEN_BUDGET", get, 6000)?;
        if max_token_budget == 0 {
            return Err(invalid("MAX_TOKEN_BUDGET", "must be positive"));
        }
        let ping_ms: u64 = parse_or("PING_INTERVAL_MS", get, 15_000)?;
        if ping_ms == 0 {
            return Err(invalid("PING_INTERVAL_MS", "must be positive"));
        }
        let deadline_s: u64 = parse_or("INFERENCE_DEADLINE_SECS", get, 270)?;
        if deadline_s == 0 {
            return Err(invalid("INFERENCE_DEADLINE_SECS", "must be positive"));
        }
        let connect_ms: u64 = parse_or("INFERENCE_CONNECT_TIMEOUT_MS", get, 10_000)?;
        if connect_ms == 0 {
            return Err(invalid("INFERENCE_CONNECT_TIMEOUT_MS", "must be positive"));
        }

        let checkpoint_ms: u64 = parse_or("CHECKPOINT_INTERVAL_MS", get, 1000)?;
        if !(50..=60_000).contains(&checkpoint_ms) {
            return Err(invalid(
                "CHECKPOINT_INTERVAL_MS",
                "must be within 50..60000",
            ));
        }
        let stale_ms: u64 = parse_or("LIVE_STALE_AFTER_MS", get, 30_000)?;
        if stale_ms < 3 * checkpoint_ms || stale_ms > 3_600_000 {
            return Err(invalid(
                "LIVE_STALE_AFTER_MS",
                "must be at least 3 x CHECKPOINT_INTERVAL_MS and at most 3600000",
            ));
        }

        let limits = Limits {
            per_minute: bounded("RATE_LIMIT_PER_MINUTE", get, 20, 1_000)?,
            per_day: bounded("DAILY_MESSAGE_QUOTA", get, 500, 10_000_000)?,
            concurrent: bounded("MAX_CONCURRENT_ANSWERS", get, 2, 100)?,
        };

        Ok(Config {
            table_name: required("TABLE_NAME")?,
            inference_url,
            internal_api_key: required("INTERNAL_API_KEY")?,
            jwt_public_key_pem,
            jwt_issuer: get("JWT_ISSUER").unwrap_or_else(|| "samosachaat-auth".to_owned()),
            defaults: InferenceDefaults {
                temperature,
                max_tokens,
                top_k,
            },
            max_history,
            max_token_budget,
            allowed_origins: get("ALLOWED_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            ping_interval: Duration::from_millis(ping_ms),
            inference_deadline: Duration::from_secs(deadline_s),
            inference_connect_timeout: Duration::from_millis(connect_ms),
            checkpoint_interval: Duration::from_millis(checkpoint_ms),
            live_stale_after: Duration::from_millis(stale_ms),
            upstream_ca_file: get("SSL_CERT_FILE").map(Into::into),
            limits,
        })
    }
}

fn invalid(name: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.to_owned(),
    }
}

/// A count within `1..=max`: zero would refuse everything, so it is refused.
fn bounded(
    name: &'static str,
    get: impl Fn(&'static str) -> Option<String>,
    default: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let value: u32 = parse_or(name, get, default)?;
    if !(1..=max).contains(&value) {
        return Err(ConfigError::Invalid {
            name,
            reason: format!("must be within 1..{max}"),
        });
    }
    Ok(value)
}

fn parse_or<T: std::str::FromStr>(
    name: &'static str,
    get: impl Fn(&'static str) -> Option<String>,
    default: T,
) -> Result<T, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|_| ConfigError::Invalid {
            name,
            reason: format!("cannot parse {raw:?}"),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A public key that only exists to satisfy the PEM check in tests.
    pub(crate) const TEST_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/jwt-public.pem");

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            ("TABLE_NAME", "chat".to_owned()),
            ("INFERENCE_URL", "http://127.0.0.1:8900/generate".to_owned()),
            ("INTERNAL_API_KEY", "k".to_owned()),
            ("JWT_PUBLIC_KEY", TEST_PUBLIC_KEY.to_owned()),
        ])
    }

    fn load(env: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|n| env.get(n).cloned())
    }

    #[test]
    fn defaults_apply() {
        let c = load(&base()).expect("valid config");
        assert_eq!(c.jwt_issuer, "samosachaat-auth");
        assert_eq!(c.defaults.max_tokens, 1024);
        assert_eq!(c.defaults.top_k, 50);
        assert_eq!(c.max_history, 50);
        assert_eq!(c.max_token_budget, 6000);
        assert_eq!(c.ping_interval, Duration::from_secs(15));
        assert_eq!(c.checkpoint_interval, Duration::from_secs(1));
        assert_eq!(c.live_stale_after, Duration::from_secs(30));
        assert_eq!(
            c.limits,
            Limits {
                per_minute: 20,
                per_day: 500,
                concurrent: 2
            }
        );
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("TABLE_NAME", None, "TABLE_NAME"),
            ("INFERENCE_URL", Some("not a url"), "INFERENCE_URL"),
            ("JWT_PUBLIC_KEY", Some("garbage"), "JWT_PUBLIC_KEY"),
            (
                "INFERENCE_DEFAULT_TOP_K",
                Some("201"),
                "INFERENCE_DEFAULT_TOP_K",
            ),
            (
                "INFERENCE_DEFAULT_TEMPERATURE",
                Some("hot"),
                "INFERENCE_DEFAULT_TEMPERATURE",
            ),
            (
                "MAX_CONVERSATION_HISTORY",
                Some("0"),
                "MAX_CONVERSATION_HISTORY",
            ),
            (
                "CHECKPOINT_INTERVAL_MS",
                Some("0"),
                "CHECKPOINT_INTERVAL_MS",
            ),
            (
                "CHECKPOINT_INTERVAL_MS",
                Some("-5"),
                "CHECKPOINT_INTERVAL_MS",
            ),
            (
                "CHECKPOINT_INTERVAL_MS",
                Some("fast"),
                "CHECKPOINT_INTERVAL_MS",
            ),
            ("LIVE_STALE_AFTER_MS", Some("2999"), "LIVE_STALE_AFTER_MS"),
            ("RATE_LIMIT_PER_MINUTE", Some("0"), "RATE_LIMIT_PER_MINUTE"),
            ("RATE_LIMIT_PER_MINUTE", Some("-1"), "RATE_LIMIT_PER_MINUTE"),
            (
                "RATE_LIMIT_PER_MINUTE",
                Some("lots"),
                "RATE_LIMIT_PER_MINUTE",
            ),
            (
                "RATE_LIMIT_PER_MINUTE",
                Some("1001"),
                "RATE_LIMIT_PER_MINUTE",
            ),
            ("DAILY_MESSAGE_QUOTA", Some("0"), "DAILY_MESSAGE_QUOTA"),
            ("DAILY_MESSAGE_QUOTA", Some("-500"), "DAILY_MESSAGE_QUOTA"),
            ("DAILY_MESSAGE_QUOTA", Some("1e3"), "DAILY_MESSAGE_QUOTA"),
            (
                "MAX_CONCURRENT_ANSWERS",
                Some("0"),
                "MAX_CONCURRENT_ANSWERS",
            ),
            (
                "MAX_CONCURRENT_ANSWERS",
                Some("-2"),
                "MAX_CONCURRENT_ANSWERS",
            ),
            (
                "MAX_CONCURRENT_ANSWERS",
                Some("two"),
                "MAX_CONCURRENT_ANSWERS",
            ),
            (
                "MAX_CONCURRENT_ANSWERS",
                Some("101"),
                "MAX_CONCURRENT_ANSWERS",
            ),
        ];
        for (name, value, expect) in cases {
            let mut env = base();
            match value {
                Some(v) => env.insert(name, (*v).to_owned()),
                None => env.remove(name),
            };
            let err = load(&env).expect_err(name).to_string();
            assert!(err.contains(expect), "{name}: {err}");
        }
    }

    #[test]
    fn origins_are_split_and_trimmed() {
        let mut env = base();
        env.insert(
            "ALLOWED_ORIGINS",
            "https://a.example/, https://b.example,".into(),
        );
        let c = load(&env).expect("valid config");
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }
}
