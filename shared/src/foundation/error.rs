//! What can go wrong: in a request before its stream opens, and how each case
//! looks to the browser (a status and a `{"detail": ...}` body, SPEC section 2);
//! and in a call to the store, which a request error carries.

use http::StatusCode;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("not authenticated")]
    Unauthorized,
    /// Unknown conversation, malformed id, or another user's conversation: one
    /// answer for all three so existence never leaks.
    #[error("conversation not found")]
    NotFound,
    #[error("route not found")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large (limit 64 KiB)")]
    PayloadTooLarge,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// A per-user limit refused the request; `retry_after` in seconds.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after: u64 },
    #[error("storage unavailable")]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::Invalid(detail.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Store(StoreError::Throttled(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Retry-After` a refused request is told, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The `detail` the browser sees. Store failures never echo internals.
    pub fn detail(&self) -> String {
        match self {
            Self::Store(StoreError::Throttled(_)) => "storage busy, retry shortly".to_owned(),
            Self::Store(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// What can go wrong in a call to the store (the store classifies the
/// SDK's errors into these).
#[derive(Debug, Error)]
pub enum StoreError {
    /// The conversation is gone or is not the caller's (a condition failed).
    #[error("conversation not found")]
    NotFound,
    /// A conditional replacement lost: the conversation moved on.
    #[error("conflict")]
    Conflict,
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("store: {0}")]
    Other(String),
    #[error("corrupt item: {0}")]
    Corrupt(&'static str),
}
