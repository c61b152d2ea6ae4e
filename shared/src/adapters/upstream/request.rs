//! What the upstream receives (SPEC section 4): the turns and the inference
//! parameters, the request's own or the server's defaults.

use serde::Serialize;

use crate::foundation::config::InferenceDefaults;
use crate::foundation::role::Role;

/// Inference parameters of a send or regenerate; `None` means the server default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatParams {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub top_k: Option<u32>,
    pub thinking_mode: bool,
    pub force_web_search: bool,
}

/// One turn as the upstream receives it: role and content only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

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
