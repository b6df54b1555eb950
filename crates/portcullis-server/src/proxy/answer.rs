//! A model server's successful, non-streamed answer is believed only when it is one: JSON (by
//! its content type, when it names one), and of the operation's shape — an object with a
//! `choices` array (chat, completions), a `data` array (embeddings), an `output` array
//! (responses), a `content` array (messages), and so on. An HTML page, an error
//! object or anything else sent with a 200 is not relayed: the client gets a 502, nothing is
//! billed (nothing reached it), and the audit record says what was wrong.
//!
//! The answer is gathered whole before its head goes out, up to [`MAX_CHECKED_BODY`]; a larger
//! one (a big embeddings batch) is checked by its first byte only, relayed as it comes, and
//! billed as estimated.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use portcullis_types::openai::Usage;
use portcullis_upstream::{UpstreamBody, UpstreamBodyError};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::anthropic::AnthropicUsage;
use super::body::Operation;
use crate::error::ApiError;

/// Answers up to this size are gathered and checked whole.
pub const MAX_CHECKED_BODY: usize = 16 * 1024 * 1024;

/// A successful answer, ready to relay.
pub enum Answer {
    /// Gathered and checked; its `usage`, if it reported a readable one.
    Whole { body: Bytes, usage: Option<Usage> },
    /// Past [`MAX_CHECKED_BODY`]: the frames gathered so far, then the rest as it comes.
    Large(Prefixed),
}

/// Why an answer was not relayed.
#[derive(Debug)]
pub enum Unfit {
    /// Its content type is not JSON.
    NotJson,
    /// JSON, or not, but not the operation's answer.
    Shape,
    /// Its body failed before it was complete.
    Failed(UpstreamBodyError),
}

impl Unfit {
    /// For the audit record's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Unfit::NotJson => "upstream_not_json",
            Unfit::Shape => "upstream_wrong_shape",
            Unfit::Failed(_) => "upstream_failed_mid_body",
        }
    }
}

impl From<Unfit> for ApiError {
    fn from(unfit: Unfit) -> ApiError {
        match unfit {
            Unfit::NotJson => ApiError::UpstreamInvalid { what: "it is not JSON" },
            Unfit::Shape => ApiError::UpstreamInvalid { what: "it is not an answer to this request" },
            Unfit::Failed(UpstreamBodyError::IdleTimeout { .. } | UpstreamBodyError::TotalTimeout { .. }) => {
                ApiError::UpstreamTimeout
            }
            Unfit::Failed(UpstreamBodyError::Upstream(_)) => {
                ApiError::UpstreamInvalid { what: "its body failed before it was complete" }
            }
        }
    }
}

/// Gathers and checks `body`, a successful answer to `operation` with `headers`.
pub async fn gather(operation: Operation, headers: &HeaderMap, body: UpstreamBody) -> Result<Answer, Unfit> {
    if !is_json(headers) {
        return Err(Unfit::NotJson);
    }
    // Boxed, so that a large answer can be relayed on from where gathering stopped.
    let mut body = Box::pin(body);
    let mut frames = VecDeque::new();
    let mut size = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Unfit::Failed)?.into_data() else { continue };
        size += data.len();
        frames.push_back(data);
        if size > MAX_CHECKED_BODY {
            let first = frames.iter().flat_map(|frame| frame.iter()).find(|byte| !byte.is_ascii_whitespace());
            if first != Some(&b'{') {
                return Err(Unfit::Shape);
            }
            return Ok(Answer::Large(Prefixed { head: frames, rest: body }));
        }
    }
    // Copied only when it came in several frames.
    let whole = if frames.len() == 1 {
        frames.pop_front().unwrap_or_default()
    } else {
        let mut whole = bytes::BytesMut::with_capacity(size);
        frames.iter().for_each(|frame| whole.extend_from_slice(frame));
        whole.freeze()
    };
    let usage = checked(operation, &whole)?;
    Ok(Answer::Whole { body: whole, usage })
}

/// No content type (some servers send none), `application/json` or `application/*+json`.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return true };
    let Ok(value) = value.to_str() else { return false };
    let media_type = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    media_type == "application/json" || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

/// The answer's `usage`, if `body` has the operation's shape. A `usage` of the wrong shape is
/// not a reason to refuse the answer: it is billed as estimated instead.
fn checked(operation: Operation, body: &[u8]) -> Result<Option<Usage>, Unfit> {
    let shaped = |answer: &Shape| match operation {
        Operation::Chat | Operation::Completions => answer.choices.is_some(),
        Operation::Embeddings => answer.data.is_some(),
        Operation::Responses => answer.output.is_some(),
        Operation::Messages => answer.content.is_some_and(|content| content.get().starts_with('[')),
        Operation::CountTokens => answer.input_tokens.is_some(),
        Operation::Rerank => answer.results.is_some(),
        Operation::Tokenize => answer.tokens.is_some(),
        Operation::Detokenize => answer.content.is_some_and(|content| content.get().starts_with('"')),
    };
    // TGI answers rerank and tokenize with a bare array (of scores, of tokens), and no usage.
    if matches!(operation, Operation::Rerank | Operation::Tokenize)
        && serde_json::from_slice::<Vec<IgnoredAny>>(body).is_ok()
    {
        return Ok(reported_usage(operation, None));
    }
    let answer: Shape = serde_json::from_slice(body).map_err(|_| Unfit::Shape)?;
    if !shaped(&answer) {
        return Err(Unfit::Shape);
    }
    Ok(reported_usage(operation, answer.usage))
}

/// What an answer to `operation` says its request used (its `usage`), in the terms it is
/// billed in.
pub(crate) fn reported_usage(operation: Operation, usage: Option<&RawValue>) -> Option<Usage> {
    // A count of tokens (count_tokens, tokenize) is no use of them: nothing to bill.
    if !operation.bills_tokens() {
        return Some(Usage::default());
    }
    let usage = usage?.get();
    match operation {
        Operation::Messages => serde_json::from_str::<AnthropicUsage>(usage).ok().map(|usage| usage.usage()),
        // vLLM's rerank reports its input as `total_tokens` alone.
        Operation::Rerank => serde_json::from_str::<Usage>(usage)
            .ok()
            .map(|usage| Usage { prompt_tokens: usage.prompt_tokens.max(usage.total_tokens), ..usage }),
        _ => serde_json::from_str::<Usage>(usage).ok(),
    }
}

/// The members of an answer its operation is recognised by; `usage` is read on its own, so
/// that an unreadable one leaves the answer relayed.
#[derive(Deserialize)]
struct Shape<'a> {
    choices: Option<Vec<IgnoredAny>>,
    data: Option<Vec<IgnoredAny>>,
    output: Option<Vec<IgnoredAny>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    input_tokens: Option<u64>,
    results: Option<Vec<IgnoredAny>>,
    tokens: Option<Vec<IgnoredAny>>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
}

/// A body whose first frames were already read: those, then the rest.
pub struct Prefixed {
    head: VecDeque<Bytes>,
    rest: Pin<Box<UpstreamBody>>,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        this.rest.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head: usize = self.head.iter().map(Bytes::len).sum();
        let mut hint = self.rest.size_hint();
        hint.set_lower(hint.lower().saturating_add(head as u64));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(head as u64));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_operations_own_shape_is_an_answer() {
        let chat = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}"#;
        assert_eq!(checked(Operation::Chat, chat).unwrap().unwrap().completion_tokens, 1);
        assert!(matches!(checked(Operation::Embeddings, chat), Err(Unfit::Shape)), "embeddings answer with data");
        let embeddings = br#"{"data":[{"embedding":[0.5]}],"usage":{"prompt_tokens":2,"total_tokens":2}}"#;
        assert_eq!(checked(Operation::Embeddings, embeddings).unwrap().unwrap().prompt_tokens, 2);
        for unfit in [
            &b"<html><body>502 Bad Gateway</body></html>"[..],
            br#"{"error":{"message":"overloaded"}}"#,
            br#"{"choices":"none"}"#,
            br#"["choices"]"#,
            br#"{"choices":[]"#,
        ] {
            assert!(matches!(checked(Operation::Chat, unfit), Err(Unfit::Shape)), "{}", String::from_utf8_lossy(unfit));
        }
    }

    #[test]
    fn each_api_is_billed_by_its_own_usage() {
        let message = br#"{"content":[{"type":"text","text":"hi"}],"usage":{"cache_read_input_tokens":6,"input_tokens":5,"output_tokens":8}}"#;
        let usage = checked(Operation::Messages, message).unwrap().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 8), "cached prompt tokens count");
        let rerank = br#"{"results":[{"index":0,"relevance_score":0.9}],"usage":{"total_tokens":14}}"#;
        assert_eq!(checked(Operation::Rerank, rerank).unwrap().unwrap().prompt_tokens, 14);
        // Counting tokens uses none.
        let counted = br#"{"input_tokens":11}"#;
        assert_eq!(checked(Operation::CountTokens, counted).unwrap(), Some(Usage::default()));
        let tokens = br#"{"tokens":[1,2,3]}"#;
        assert_eq!(checked(Operation::Tokenize, tokens).unwrap(), Some(Usage::default()));
        // TGI's bare arrays: a rerank is then billed by its input's size.
        assert_eq!(checked(Operation::Rerank, br#"[{"index":0,"score":0.9}]"#).unwrap(), None);
        assert!(checked(Operation::Tokenize, br#"[{"id":1,"text":"a"}]"#).unwrap().is_some());
        assert!(matches!(checked(Operation::Chat, b"[1]"), Err(Unfit::Shape)));
    }

    #[test]
    fn an_unreadable_usage_leaves_the_answer_relayed_and_estimated() {
        let answer = br#"{"choices":[],"usage":{"prompt_tokens":-1,"completion_tokens":"many"}}"#;
        assert_eq!(checked(Operation::Chat, answer).unwrap(), None);
    }

    #[test]
    fn json_content_types_are_recognised() {
        let with = |value: &'static str| HeaderMap::from_iter([(header::CONTENT_TYPE, value.parse().unwrap())]);
        assert!(is_json(&HeaderMap::new()), "no content type: judged by the body");
        for json in
            ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"]
        {
            assert!(is_json(&with(json)), "{json}");
        }
        for other in ["text/html; charset=utf-8", "text/plain", "text/event-stream", "application/jsonp"] {
            assert!(!is_json(&with(other)), "{other}");
        }
    }
}
