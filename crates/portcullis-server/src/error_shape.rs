//! The shape an error is written in is the route's, not the error's: Anthropic's Messages API
//! answers `{"type":"error","error":{"type":…,"message":…}}` with Anthropic's type names, so that
//! its SDK raises its own exceptions; every other route keeps the OpenAI shape the error was
//! rendered in. The Anthropic type is read off the status (as Anthropic defines its types), so no
//! second error table exists to drift from the first.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use portcullis_types::openai::ErrorBody;
use serde::Serialize;

/// Whose error shape a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    OpenAi,
    Anthropic,
}

impl ErrorShape {
    /// The shape of the proxy route at `path` (without its query).
    pub fn of_path(path: &str) -> ErrorShape {
        match path {
            "/v1/messages" | "/v1/messages/count_tokens" => ErrorShape::Anthropic,
            _ => ErrorShape::OpenAi,
        }
    }

    /// Rewrites an error response's body, written in the OpenAI shape as `error`, into this
    /// shape; status and headers (`Retry-After`, `x-request-id`, …) stay.
    pub fn rewrite(self, response: &mut Response, error: &ErrorBody) {
        if self == ErrorShape::Anthropic {
            let body = self.render(response.status(), error);
            // The router stated the first body's length.
            response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            *response.body_mut() = Body::from(body);
        }
    }

    /// `error`, answered with `status`, in this shape.
    pub fn render(self, status: StatusCode, error: &ErrorBody) -> Bytes {
        match self {
            ErrorShape::OpenAi => Bytes::from(serde_json::to_vec(error).unwrap_or_default()),
            ErrorShape::Anthropic => anthropic_body(status, &error.error.message),
        }
    }
}

/// Anthropic's error type for an answer with `status` (its documented status table).
pub fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    }
}

/// `{"type":"error","error":{"type":…,"message":…}}`.
pub fn anthropic_body(status: StatusCode, message: &str) -> Bytes {
    anthropic_error(anthropic_type(status), message)
}

/// An Anthropic error object of `kind`, as answered and as sent in a stream's `error` event.
pub fn anthropic_error(kind: &str, message: &str) -> Bytes {
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: Detail<'a>,
    }
    #[derive(Serialize)]
    struct Detail<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        message: &'a str,
    }
    let envelope = Envelope { kind: "error", error: Detail { kind, message } };
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_types_follow_the_status_as_anthropic_documents_them() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (405, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
        ] {
            assert_eq!(anthropic_type(StatusCode::from_u16(status).unwrap()), kind, "{status}");
        }
    }

    #[test]
    fn only_the_messages_routes_speak_anthropic() {
        assert_eq!(ErrorShape::of_path("/v1/messages"), ErrorShape::Anthropic);
        assert_eq!(ErrorShape::of_path("/v1/messages/count_tokens"), ErrorShape::Anthropic);
        assert_eq!(ErrorShape::of_path("/v1/chat/completions"), ErrorShape::OpenAi);
        assert_eq!(ErrorShape::of_path("/v1/messages/other"), ErrorShape::OpenAi);
    }

    #[test]
    fn the_body_is_anthropics_envelope() {
        let body: serde_json::Value =
            serde_json::from_slice(&anthropic_body(StatusCode::TOO_MANY_REQUESTS, "slow \"down\"")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow \"down\""}})
        );
    }
}
