//! What a model server's response says it used, read as Envoy streams it past: the `usage` of a
//! JSON answer (gathered up to [`MAX_JSON_BYTES`]), or of an event stream's usage chunk (read
//! event by event as the proxy reads its own streams, across chunk boundaries).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use portcullis_config::DEFAULT_MAX_EVENT_BYTES;
use portcullis_types::openai::Usage;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::super::lease::{Reported, Settled};
use crate::proxy::body::Operation;
use crate::proxy::reported_usage;
use crate::proxy::sse::{Pushed, SseScanner, StreamKind};

/// A JSON answer larger than this is not gathered: its usage stays unknown (charged in full).
pub const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;

/// One response being read.
#[derive(Debug)]
pub enum ResponseUsage {
    /// The model server refused or failed (not 2xx): nothing was generated.
    Refused,
    /// A JSON answer to `operation`, gathered until it ends; `None` once it grew past
    /// [`MAX_JSON_BYTES`].
    Json { gathered: Option<BytesMut>, operation: Operation },
    /// An event stream; `lost` once it stopped being one the scanner can follow (an event too
    /// large, or not JSON): what was read before stands.
    Events { scanner: Box<SseScanner>, lost: bool },
}

impl ResponseUsage {
    /// For a response to `operation` with `status` and `content_type` (from its head).
    pub fn new(status: Option<u16>, content_type: Option<&[u8]>, operation: Operation) -> ResponseUsage {
        if status.is_some_and(|status| !(200..300).contains(&status)) {
            return ResponseUsage::Refused;
        }
        let is_event_stream = content_type.is_some_and(|value| value.starts_with(b"text/event-stream"));
        if is_event_stream {
            let scanner = Box::new(SseScanner::new(StreamKind::of(operation), false, false, DEFAULT_MAX_EVENT_BYTES));
            ResponseUsage::Events { scanner, lost: false }
        } else {
            ResponseUsage::Json { gathered: Some(BytesMut::new()), operation }
        }
    }

    /// Takes the next piece of the body.
    pub fn push(&mut self, chunk: Bytes) {
        match self {
            ResponseUsage::Refused => {}
            ResponseUsage::Json { gathered, .. } => {
                if let Some(buffer) = gathered {
                    if buffer.len() + chunk.len() > MAX_JSON_BYTES {
                        *gathered = None;
                    } else {
                        buffer.extend_from_slice(&chunk);
                    }
                }
            }
            ResponseUsage::Events { lost: true, .. } => {}
            ResponseUsage::Events { scanner, lost } => {
                // The events are only read here, not relayed: what the scanner would relay (slices
                // of `chunk`) is dropped at once.
                let mut relayed = VecDeque::new();
                match scanner.push(chunk, &mut relayed, None) {
                    Pushed::Open | Pushed::Capped => {}
                    Pushed::TooLarge | Pushed::Invalid => *lost = true,
                }
            }
        }
    }

    /// The usage the response reported, if it did (a JSON answer's only once it is whole).
    pub fn usage(&self) -> Option<Usage> {
        match self {
            ResponseUsage::Refused => None,
            ResponseUsage::Json { gathered, operation } => {
                #[derive(Deserialize)]
                struct Answer<'a> {
                    #[serde(borrow)]
                    usage: Option<&'a RawValue>,
                }
                let answer = serde_json::from_slice::<Answer>(gathered.as_ref()?).ok()?;
                reported_usage(*operation, answer.usage)
            }
            ResponseUsage::Events { scanner, .. } => scanner.tally.usage,
        }
    }

    /// How the lease settles when the response ended (`complete`) or its stream broke off.
    /// `None`: nothing is known — the lease is left to expire, charged in full.
    pub fn settlement(&self, complete: bool) -> Option<Settled> {
        let reported = self
            .usage()
            .map(|usage| Reported { prompt_tokens: usage.prompt_tokens, completion_tokens: usage.completion_tokens });
        match (self, reported) {
            (ResponseUsage::Refused, _) => Some(Settled::ObservedRefusal),
            (_, Some(reported)) => Some(Settled::Observed(reported)),
            (_, None) if complete => Some(Settled::ObservedWithoutUsage),
            (_, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = r#"{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}"#;

    fn read(usage: &mut ResponseUsage, body: &str, cuts: &[usize]) {
        let mut from = 0;
        for &cut in cuts.iter().chain([body.len()].iter()) {
            usage.push(Bytes::copy_from_slice(&body.as_bytes()[from..cut]));
            from = cut;
        }
    }

    #[test]
    fn a_json_answer_settles_with_its_usage_once_whole() {
        let body = format!(r#"{{"choices":[{{"message":{{"content":"hi"}}}}],"usage":{USAGE}}}"#);
        let mut usage = ResponseUsage::new(Some(200), Some(b"application/json"), Operation::Chat);
        read(&mut usage, &body, &[5, 40]);
        let observed = Settled::Observed(Reported { prompt_tokens: 12, completion_tokens: 7 });
        assert_eq!(usage.settlement(true), Some(observed));
        // Cut short: nothing whole was seen.
        let mut cut = ResponseUsage::new(Some(200), None, Operation::Chat);
        cut.push(Bytes::copy_from_slice(&body.as_bytes()[..40]));
        assert_eq!(cut.settlement(false), None, "left to expire");
        assert_eq!(cut.settlement(true), Some(Settled::ObservedWithoutUsage));
    }

    #[test]
    fn an_event_stream_settles_with_its_usage_chunk_across_chunk_boundaries() {
        let body = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"hi\"}}}}]}}\n\ndata: {{\"choices\":[],\"usage\":{USAGE}}}\n\ndata: [DONE]\n\n"
        );
        let mut usage = ResponseUsage::new(Some(200), Some(b"text/event-stream; charset=utf-8"), Operation::Chat);
        read(&mut usage, &body, &[10, 60, 75, 90]);
        let observed = Settled::Observed(Reported { prompt_tokens: 12, completion_tokens: 7 });
        assert_eq!(usage.settlement(true), Some(observed));
        // Seen, then the stream broke: what was seen settles.
        assert_eq!(usage.settlement(false), Some(observed));
    }

    #[test]
    fn an_anthropic_answer_is_billed_its_whole_prompt_and_a_count_nothing() {
        let body = r#"{"content":[],"usage":{"cache_read_input_tokens":6,"input_tokens":5,"output_tokens":8}}"#;
        let mut usage = ResponseUsage::new(Some(200), Some(b"application/json"), Operation::Messages);
        read(&mut usage, body, &[]);
        let observed = Settled::Observed(Reported { prompt_tokens: 11, completion_tokens: 8 });
        assert_eq!(usage.settlement(true), Some(observed));
        let mut counted = ResponseUsage::new(Some(200), Some(b"application/json"), Operation::CountTokens);
        read(&mut counted, r#"{"input_tokens":11}"#, &[]);
        let nothing = Settled::Observed(Reported { prompt_tokens: 0, completion_tokens: 0 });
        assert_eq!(counted.settlement(true), Some(nothing));
    }

    #[test]
    fn a_refusal_uses_nothing_and_an_oversized_answer_is_not_gathered() {
        let refused = ResponseUsage::new(Some(429), Some(b"application/json"), Operation::Chat);
        assert_eq!(refused.settlement(true), Some(Settled::ObservedRefusal));
        let mut large = ResponseUsage::new(Some(200), Some(b"application/json"), Operation::Chat);
        large.push(Bytes::from(vec![b' '; MAX_JSON_BYTES]));
        large.push(Bytes::from(format!(r#"{{"usage":{USAGE}}}"#)));
        assert!(matches!(large, ResponseUsage::Json { gathered: None, .. }));
        assert_eq!(large.settlement(true), Some(Settled::ObservedWithoutUsage));
    }

    #[test]
    fn a_stream_that_stops_being_events_keeps_what_it_showed() {
        let mut usage = ResponseUsage::new(Some(200), Some(b"text/event-stream"), Operation::Chat);
        read(&mut usage, &format!("data: {{\"choices\":[],\"usage\":{USAGE}}}\n\ndata: <html>\n\n"), &[]);
        assert!(matches!(usage, ResponseUsage::Events { lost: true, .. }));
        assert_eq!(usage.usage().map(|usage| usage.completion_tokens), Some(7));
    }
}
