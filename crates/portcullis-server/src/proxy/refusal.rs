//! What the client hears when the model server answers with an error. The model server's own
//! words are not relayed blindly: its authentication failure is the gateway's problem, not the
//! client's key's; a failure's body may carry its secrets; and only an error in the API's own
//! shape is worth passing on.
//!
//! - **401 / 403**: the model's own credential was refused — 502 `upstream_error`; the client's
//!   key is fine, and its SDK must not raise an authentication error.
//! - **5xx**: the same status with an OpenAI error of our own; the body stays here.
//! - **other 4xx**: the model server's error when it is OpenAI- or Anthropic-shaped (re-encoded:
//!   only `message`, `type`, `code` and `param` pass, in the route's error shape), otherwise one
//!   of ours, with the same status.
//!
//! The upstream status is in the request's audit record either way (`reason`
//! `upstream_status_NNN`).

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use portcullis_types::openai::{ErrorBody, ErrorDetail};
use portcullis_upstream::UpstreamBody;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::exchange::Exchange;

/// Most bytes of an error body read to judge its shape.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The answer to the client for an upstream error `status`; `headers` are the allow-listed ones.
pub async fn answer(status: StatusCode, headers: HeaderMap, body: UpstreamBody, exchange: &Exchange) -> Response {
    tracing::warn!(status = status.as_u16(), "model server answered with an error");
    exchange.note(|info| info.reason = Some(format!("upstream_status_{}", status.as_u16())));
    let relayed = if status.is_client_error() && !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        openai_error(body).await
    } else {
        None
    };
    let mut response = match relayed {
        Some(error) => {
            let mut response = (status, axum::Json(error.clone())).into_response();
            // For a route that speaks another error shape (see `error_shape`).
            response.extensions_mut().insert(error);
            response
        }
        None => ApiError::UpstreamStatus { status: status.as_u16() }.into_response(),
    };
    if let Some(retry_after) = headers.get(header::RETRY_AFTER).filter(|_| !status.is_client_error()) {
        response.headers_mut().insert(header::RETRY_AFTER, retry_after.clone());
    }
    response
}

/// The body as an OpenAI error, if that is what it is (at most [`MAX_ERROR_BODY`] bytes).
async fn openai_error(body: UpstreamBody) -> Option<ErrorBody> {
    let bytes = http_body_util::Limited::new(body, MAX_ERROR_BODY).collect().await.ok()?.to_bytes();
    let loose: LooseError = serde_json::from_slice(&bytes).ok()?;
    let text = |value: Option<Value>| match value {
        Some(Value::String(text)) => Some(text),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    };
    Some(ErrorBody {
        error: ErrorDetail {
            message: loose.error.message,
            kind: loose.error.kind.unwrap_or_else(|| "invalid_request_error".into()),
            code: text(loose.error.code),
            param: text(loose.error.param),
        },
    })
}

/// An error as model servers write it: `code` may be a number (llama.cpp), `type` may be absent.
#[derive(Deserialize)]
struct LooseError {
    error: LooseDetail,
}

#[derive(Deserialize)]
struct LooseDetail {
    message: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<Value>,
    param: Option<Value>,
}
