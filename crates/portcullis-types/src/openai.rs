//! The parts of the OpenAI wire format that Portcullis itself produces or reads.

use serde::{Deserialize, Serialize};

/// Every request field a model server may read as the completion cap: OpenAI's two, llama.cpp's
/// `n_predict` (which it reads first), Ollama's `num_predict`, TGI's `max_new_tokens`, and the
/// Responses-style `max_output_tokens`.
pub const COMPLETION_CAP_FIELDS: [&str; 6] =
    ["max_tokens", "max_completion_tokens", "n_predict", "num_predict", "max_new_tokens", "max_output_tokens"];

/// `{"error": {...}}`, the body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
    pub param: Option<String>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
}

impl Model {
    pub fn new(id: impl Into<String>, created: i64) -> Self {
        Self { id: id.into(), object: "model".into(), created, owned_by: "portcullis".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

impl ModelList {
    pub fn new(data: Vec<Model>) -> Self {
        Self { object: "list".into(), data }
    }
}

/// Token counts as the upstream reports them in `usage`: OpenAI's chat and completions names,
/// or the Responses and Anthropic Messages APIs' `input_tokens` and `output_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}
