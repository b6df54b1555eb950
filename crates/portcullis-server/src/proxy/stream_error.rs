//! The error event that ends a stream whose model server failed after it began — an error the
//! client can read, and then the end: never `[DONE]`, never a `finish_reason`, never a cut
//! connection (its SDK would retry, generating twice). It takes the shape of the stream's own
//! API, so that the client's SDK reads it as that API's error: OpenAI chunks carry an `error`
//! object, the Responses API has its `error` event, Anthropic's Messages API its `error` event
//! with a typed `error`.

use bytes::Bytes;
use portcullis_types::openai::{ErrorBody, ErrorDetail};
use serde_json::json;

use super::sse::StreamKind;

/// The event, for a stream of `kind`, that says the model server failed (`code`, `message`).
pub fn event(kind: StreamKind, code: &str, message: String) -> Bytes {
    let (name, data) = match kind {
        StreamKind::OpenAi => {
            let body = ErrorBody {
                error: ErrorDetail { message, kind: "upstream_error".into(), code: Some(code.into()), param: None },
            };
            (None, serde_json::to_string(&body).unwrap_or_default())
        }
        StreamKind::Responses => {
            (Some("error"), json!({"type": "error", "code": code, "message": message, "param": null}).to_string())
        }
        StreamKind::Anthropic => {
            let error = crate::error_shape::anthropic_error("api_error", &message);
            (Some("error"), String::from_utf8_lossy(&error).into_owned())
        }
    };
    match name {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(event: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(event).unwrap();
        let line = text.lines().find_map(|line| line.strip_prefix("data: ")).unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn each_api_reads_the_failure_in_its_own_shape() {
        let openai = event(StreamKind::OpenAi, "upstream_failed_mid_stream", "gone".into());
        assert!(openai.starts_with(b"data: "));
        assert_eq!(data(&openai)["error"]["code"], "upstream_failed_mid_stream");

        let responses = event(StreamKind::Responses, "upstream_failed_mid_stream", "gone".into());
        assert!(responses.starts_with(b"event: error\ndata: "));
        let body = data(&responses);
        assert_eq!((body["type"].as_str(), body["code"].as_str()), (Some("error"), Some("upstream_failed_mid_stream")));
        assert_eq!(body["message"], "gone");

        let anthropic = event(StreamKind::Anthropic, "upstream_failed_mid_stream", "gone".into());
        assert_eq!(data(&anthropic)["error"]["type"], "api_error");
    }
}
