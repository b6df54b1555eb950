//! Reading and checking an inference request body, without re-serialising it.

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::error::ApiError;

/// The three inference calls, and what each needs from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Chat,
    Completions,
    Embeddings,
}

impl Operation {
    pub fn path(self) -> &'static str {
        match self {
            Operation::Chat => "/v1/chat/completions",
            Operation::Completions => "/v1/completions",
            Operation::Embeddings => "/v1/embeddings",
        }
    }
}

/// Only the fields Portcullis acts on; everything else passes through untouched.
#[derive(Debug, Deserialize)]
struct Envelope {
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    messages: Option<Vec<IgnoredAny>>,
    prompt: Option<IgnoredAny>,
    input: Option<IgnoredAny>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u64>,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub operation: Operation,
    pub model: String,
    pub stream: bool,
    /// The client's own completion cap (`max_completion_tokens`, else `max_tokens`).
    pub max_tokens: Option<u64>,
    /// Choices asked for: each may generate up to the cap.
    pub choices: u64,
    /// Whether the client asked for the usage chunk of a stream.
    pub wants_stream_usage: bool,
    pub body: Bytes,
}

/// Reads at most `limit` bytes; a declared or actual larger body is a 413.
pub async fn read(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::RequestTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::RequestTooLarge { limit })
}

pub fn parse(operation: Operation, body: Bytes) -> Result<ParsedRequest, ApiError> {
    let envelope: Envelope = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("Invalid request body: {error}"), None))?;
    let model = envelope
        .model
        .filter(|model| !model.is_empty())
        .ok_or_else(|| ApiError::bad_request("You must provide a model parameter.", Some("model")))?;
    let missing = match operation {
        Operation::Chat => envelope.messages.is_none().then_some("messages"),
        Operation::Completions => envelope.prompt.is_none().then_some("prompt"),
        Operation::Embeddings => envelope.input.is_none().then_some("input"),
    };
    if let Some(field) = missing {
        return Err(ApiError::bad_request(format!("Missing required parameter: '{field}'."), Some(field)));
    }
    let stream = envelope.stream.unwrap_or(false);
    if stream && operation == Operation::Embeddings {
        return Err(ApiError::bad_request("Embeddings cannot be streamed.", Some("stream")));
    }
    let max_tokens = envelope.max_completion_tokens.or(envelope.max_tokens);
    if max_tokens == Some(0) {
        return Err(ApiError::bad_request("max_tokens must be at least 1.", Some("max_tokens")));
    }
    let choices = envelope.n.unwrap_or(1);
    if !(1..=128).contains(&choices) {
        return Err(ApiError::bad_request("n must be between 1 and 128.", Some("n")));
    }
    let wants_stream_usage = envelope.stream_options.and_then(|options| options.include_usage).unwrap_or(false);
    Ok(ParsedRequest { operation, model, stream, max_tokens, choices, wants_stream_usage, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chat(text: &str) -> Result<ParsedRequest, ApiError> {
        parse(Operation::Chat, Bytes::from(text.to_string()))
    }

    #[test]
    fn reads_model_and_stream_and_keeps_the_bytes() {
        let text = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],"x":1}"#;
        let parsed = parse_chat(text).unwrap();
        assert_eq!(parsed.model, "m");
        assert!(parsed.stream);
        assert_eq!(parsed.body, text.as_bytes());
    }

    #[test]
    fn each_malformation_is_a_bad_request_naming_its_parameter() {
        let param = |text: &str| match parse_chat(text) {
            Err(ApiError::BadRequest { param, .. }) => param,
            other => panic!("expected a bad request, got {other:?}"),
        };
        assert_eq!(param("{not json"), None);
        assert_eq!(param("[1,2]"), None);
        assert_eq!(param(r#"{"messages":[]}"#), Some("model"));
        assert_eq!(param(r#"{"model":"","messages":[]}"#), Some("model"));
        assert_eq!(param(r#"{"model":"m"}"#), Some("messages"));
        assert_eq!(param(r#"{"model":"m","messages":"hi"}"#), None);
        assert_eq!(param(r#"{"model":"m","messages":[],"stream":"yes"}"#), None);
    }

    #[test]
    fn embeddings_need_input_and_cannot_stream() {
        let parse_embed = |text: &str| parse(Operation::Embeddings, Bytes::from(text.to_string()));
        assert!(parse_embed(r#"{"model":"m","input":"a"}"#).is_ok());
        assert!(matches!(parse_embed(r#"{"model":"m"}"#), Err(ApiError::BadRequest { param: Some("input"), .. })));
        assert!(matches!(
            parse_embed(r#"{"model":"m","input":"a","stream":true}"#),
            Err(ApiError::BadRequest { param: Some("stream"), .. })
        ));
    }
}
