//! Reading a server-sent-event stream as it passes: usage reports, generated chunks (and, for a
//! request that captures content, their text), and the one event Portcullis may remove (the
//! usage chunk the client did not ask for). Three kinds of stream are understood, each with its
//! own events ([`StreamKind`]).
//!
//! Events are relayed as slices of the frames they arrived in (no copy); only an event split
//! across frames is joined, and only its bytes.

use std::collections::VecDeque;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use portcullis_types::openai::Usage;
use serde::Deserialize;

use super::anthropic::AnthropicUsage;
use super::body::Operation;
use super::capture::{self, CapturedText};

/// What the scanner learned from the events seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamTally {
    /// Relayed events that carried generated text: one token each for servers that stream
    /// token by token (llama.cpp, vLLM, Ollama), a lower bound otherwise.
    pub content_events: u64,
    /// The `usage` object of the stream, if the upstream sent one.
    pub usage: Option<Usage>,
    /// Whether `data: [DONE]` went by.
    pub done: bool,
}

/// What a frame did to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Relaying goes on.
    Open,
    /// The content cap was crossed: the stream ends here.
    Capped,
    /// An event grew past the most one may hold without ending: the stream fails here.
    TooLarge,
    /// An event's data is not a JSON object (an HTML page, a bare string): the stream fails
    /// here, before that event.
    Invalid,
}

/// Whose events a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Chat and completions chunks: `choices[].delta`, and a usage chunk at the end.
    OpenAi,
    /// The Responses API: `response.*.delta` events, usage in `response.completed`.
    Responses,
    /// Anthropic's Messages API: `content_block_delta` events, the prompt's usage in
    /// `message_start` and the completion's in `message_delta`.
    Anthropic,
}

impl StreamKind {
    pub fn of(operation: Operation) -> StreamKind {
        match operation {
            Operation::Responses => StreamKind::Responses,
            Operation::Messages => StreamKind::Anthropic,
            _ => StreamKind::OpenAi,
        }
    }
}

#[derive(Debug)]
pub struct SseScanner {
    kind: StreamKind,
    /// Drop the usage-only chunk: the gateway asked for it, the client did not.
    strip_usage_chunk: bool,
    /// Bytes of an event whose end has not arrived yet.
    partial: BytesMut,
    /// How much of `partial` was searched for an event's end already.
    scanned: usize,
    /// The most bytes one event may hold.
    max_event_bytes: usize,
    pub tally: StreamTally,
    /// The generated text relayed so far; `None` unless the request captures content, so that
    /// other streams parse no content event.
    pub text: Option<CapturedText>,
    /// Prompt tokens an Anthropic `message_start` reported, until `message_delta` completes them.
    prompt_tokens: Option<u64>,
}

impl SseScanner {
    pub fn new(kind: StreamKind, strip_usage_chunk: bool, capture: bool, max_event_bytes: usize) -> SseScanner {
        SseScanner {
            kind,
            strip_usage_chunk,
            partial: BytesMut::new(),
            scanned: 0,
            max_event_bytes,
            tally: StreamTally::default(),
            text: capture.then(CapturedText::default),
            prompt_tokens: None,
        }
    }

    /// Takes one frame from upstream; pushes onto `out` the slices to relay, in order. Each
    /// complete event is inspected; `max_content_events` stops relaying content past that count.
    ///
    /// An event split across frames is gathered (each frame's bytes copied once) and searched only
    /// where it was not searched before, so an event that never ends costs its own length, not
    /// its length squared; past `max_event_bytes` it is [`Pushed::TooLarge`].
    pub fn push(&mut self, frame: Bytes, out: &mut VecDeque<Bytes>, max_content_events: Option<u64>) -> Pushed {
        let buffer = if self.partial.is_empty() {
            frame
        } else {
            self.partial.extend_from_slice(&frame);
            // Where the last search stopped, less two bytes: an end marker may straddle frames.
            if event_end(&self.partial[self.scanned.saturating_sub(2)..]).is_none() {
                self.scanned = self.partial.len();
                return self.check_size();
            }
            // The event that was waiting is complete: it and the rest of the frame go on as one
            // buffer (split off, not copied).
            self.scanned = 0;
            self.partial.split().freeze()
        };
        let mut start = 0;
        let mut kept_from = 0;
        while let Some(end) = event_end(&buffer[start..]).map(|len| start + len) {
            let event = &buffer[start..end];
            let mut capped = false;
            let keep = match self.inspect(event) {
                Kind::Invalid => {
                    if kept_from < start {
                        out.push_back(buffer.slice(kept_from..start));
                    }
                    return Pushed::Invalid;
                }
                Kind::UsageOnly => !self.strip_usage_chunk,
                Kind::Content => {
                    // Only relayed chunks count: the one past the cap is neither sent nor billed.
                    capped = max_content_events.is_some_and(|cap| self.tally.content_events >= cap);
                    if !capped {
                        self.tally.content_events += 1;
                        if let (Some(text), Some(data)) = (self.text.as_mut(), data_of(event)) {
                            capture::push_event_text(text, data);
                        }
                    }
                    !capped
                }
                Kind::Other => true,
            };
            if !keep {
                if kept_from < start {
                    out.push_back(buffer.slice(kept_from..start));
                }
                kept_from = end;
            }
            start = end;
            if capped {
                return Pushed::Capped;
            }
        }
        if kept_from < start {
            out.push_back(buffer.slice(kept_from..start));
        }
        if start < buffer.len() {
            self.partial.extend_from_slice(&buffer[start..]);
            self.scanned = self.partial.len();
            return self.check_size();
        }
        Pushed::Open
    }

    fn check_size(&self) -> Pushed {
        if self.partial.len() > self.max_event_bytes { Pushed::TooLarge } else { Pushed::Open }
    }

    fn inspect(&mut self, event: &[u8]) -> Kind {
        let Some(data) = data_of(event) else { return Kind::Other };
        if data == b"[DONE]" {
            self.tally.done = true;
            return Kind::Other;
        }
        // Checked by its first byte only: this is every relayed event's path.
        match data.iter().find(|byte| !byte.is_ascii_whitespace()) {
            None | Some(b'{') => {}
            Some(_) => return Kind::Invalid,
        }
        match self.kind {
            StreamKind::OpenAi => self.inspect_chunk(data),
            StreamKind::Responses => self.inspect_response_event(data),
            StreamKind::Anthropic => self.inspect_message_event(data),
        }
    }

    fn inspect_chunk(&mut self, data: &[u8]) -> Kind {
        // Parse only events that can carry usage; content is recognised without parsing.
        if USAGE_FIELD.find(data).is_some()
            && let Ok(chunk) = serde_json::from_slice::<ChunkUsage>(data)
            && let Some(usage) = chunk.usage
        {
            self.tally.usage = Some(usage);
            if chunk.choices.is_empty() {
                return Kind::UsageOnly;
            }
        }
        if has_text(data) { Kind::Content } else { Kind::Other }
    }

    /// Every `response.*.delta` event carries generated tokens (text, refusals, reasoning, tool
    /// arguments); the final `response.completed` (or `.incomplete`, `.failed`) the usage.
    fn inspect_response_event(&mut self, data: &[u8]) -> Kind {
        let kind = event_type(data);
        if kind.is_some_and(|kind| kind.ends_with(b".delta")) {
            return Kind::Content;
        }
        if USAGE_FIELD.find(data).is_some()
            && let Ok(event) = serde_json::from_slice::<ResponseEvent>(data)
            && let Some(usage) = event.response.and_then(|response| response.usage)
        {
            self.tally.usage = Some(usage);
        }
        Kind::Other
    }

    /// `content_block_delta` carries generated tokens; the usage comes in two halves, and is
    /// known only once `message_delta` brings the second (a stream cut before it is billed by
    /// what was relayed).
    fn inspect_message_event(&mut self, data: &[u8]) -> Kind {
        match event_type(data) {
            Some(b"content_block_delta") => Kind::Content,
            Some(b"message_start") => {
                if let Ok(event) = serde_json::from_slice::<MessageStart>(data) {
                    self.prompt_tokens = event.message.usage.and_then(|usage| usage.prompt_tokens());
                }
                Kind::Other
            }
            Some(b"message_delta") => {
                if let Ok(event) = serde_json::from_slice::<MessageDelta>(data)
                    && let Some(usage) = event.usage
                {
                    self.tally.usage = Some(Usage {
                        prompt_tokens: usage.prompt_tokens().or(self.prompt_tokens).unwrap_or_default(),
                        completion_tokens: usage.output_tokens().unwrap_or_default(),
                        total_tokens: 0,
                    });
                }
                Kind::Other
            }
            _ => Kind::Other,
        }
    }
}

enum Kind {
    Invalid,
    UsageOnly,
    Content,
    Other,
}

#[derive(Deserialize)]
struct ResponseEvent {
    response: Option<ResponseUsage>,
}

#[derive(Deserialize)]
struct ResponseUsage {
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct MessageStart {
    message: MessageUsage,
}

#[derive(Deserialize)]
struct MessageUsage {
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct MessageDelta {
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
}

/// Field names searched for in every event, with searchers built once (SIMD substring search:
/// every relayed event is scanned, so this is on the streaming hot path).
static USAGE_FIELD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static TEXT_FIELDS: LazyLock<[Finder<'static>; 2]> =
    LazyLock::new(|| [Finder::new(b"\"content\""), Finder::new(b"\"text\"")]);

static TYPE_FIELD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\""));

/// The value of the event's first `"type"` member, which Responses and Anthropic events put
/// first (read without parsing the event); `None` when it has none or it is escaped.
fn event_type(data: &[u8]) -> Option<&[u8]> {
    let after = &data[TYPE_FIELD.find(data)? + 6..];
    let value = after.iter().position(|byte| !byte.is_ascii_whitespace() && *byte != b':')?;
    let value = after[value..].strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', value)?;
    (value[end] == b'"').then_some(&value[..end])
}

/// Length of the first complete event (through its blank line), if one is complete.
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(newline) = memchr::memchr(b'\n', &bytes[at..]) {
        let line_end = at + newline + 1;
        match bytes.get(line_end) {
            Some(b'\n') => return Some(line_end + 1),
            Some(b'\r') if bytes.get(line_end + 1) == Some(&b'\n') => return Some(line_end + 2),
            _ => at = line_end,
        }
    }
    None
}

/// The payload of the event's `data:` line (single-line data, as OpenAI-compatible servers send).
fn data_of(event: &[u8]) -> Option<&[u8]> {
    let mut rest = event;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(data) = line.strip_prefix(b"data:") {
            return Some(data.strip_prefix(b" ").unwrap_or(data));
        }
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    None
}

/// Whether a chunk carries generated text: a `"content"` or `"text"` field holding a non-empty
/// string.
fn has_text(data: &[u8]) -> bool {
    TEXT_FIELDS.iter().any(|field| {
        let mut rest = data;
        while let Some(at) = field.find(rest) {
            rest = &rest[at + field.needle().len()..];
            let value = rest.iter().skip_while(|b| b.is_ascii_whitespace() || **b == b':');
            let mut value = value.copied();
            if value.next() == Some(b'"') && value.next().is_some_and(|b| b != b'"') {
                return true;
            }
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n";
    const HELLO: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n";
    const WORLD: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\": \" world\"}}]}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(frames: &[&str], strip: bool, cap: Option<u64>) -> (String, SseScanner, bool) {
        let mut scanner = SseScanner::new(StreamKind::OpenAi, strip, false, 1 << 20);
        let mut out = VecDeque::new();
        let mut capped = false;
        for frame in frames {
            capped = scanner.push(Bytes::copy_from_slice(frame.as_bytes()), &mut out, cap) == Pushed::Capped;
            if capped {
                break;
            }
        }
        let text = out.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        (text, scanner, capped)
    }

    #[test]
    fn relays_everything_and_reads_usage_when_the_client_asked() {
        let (text, scanner, _) = run(&[ROLE, HELLO, WORLD, USAGE, DONE], false, None);
        assert_eq!(text, [ROLE, HELLO, WORLD, USAGE, DONE].concat());
        assert_eq!(scanner.tally.content_events, 2);
        assert_eq!(scanner.tally.usage.unwrap().completion_tokens, 2);
        assert!(scanner.tally.done);
    }

    #[test]
    fn strips_only_the_usage_chunk_when_the_client_did_not_ask() {
        let frame = [HELLO, USAGE, DONE].concat();
        let (text, scanner, _) = run(&[ROLE, &frame], true, None);
        assert_eq!(text, [ROLE, HELLO, DONE].concat());
        assert_eq!(scanner.tally.usage.unwrap().prompt_tokens, 5, "usage is still read");
    }

    #[test]
    fn events_split_across_frames_are_joined() {
        let whole = [HELLO, USAGE, DONE].concat();
        let pieces: Vec<&str> = vec![&whole[..7], &whole[7..40], &whole[40..90], &whole[90..]];
        let (text, scanner, _) = run(&pieces, true, None);
        assert_eq!(text, [HELLO, DONE].concat());
        assert_eq!(scanner.tally.content_events, 1);
    }

    #[test]
    fn relaying_stops_past_the_cap() {
        let (text, scanner, capped) = run(&[ROLE, HELLO, WORLD, HELLO, DONE], false, Some(2));
        assert!(capped);
        assert_eq!(text, [ROLE, HELLO, WORLD].concat());
        assert_eq!(scanner.tally.content_events, 2, "the chunk past the cap is not counted");
    }

    #[test]
    fn text_is_gathered_only_when_capturing_and_only_from_relayed_chunks() {
        let (_, scanner, _) = run(&[ROLE, HELLO, WORLD, USAGE, DONE], false, None);
        assert_eq!(scanner.text, None);

        let mut scanner = SseScanner::new(StreamKind::OpenAi, true, true, 1 << 20);
        let mut out = VecDeque::new();
        let whole = [ROLE, HELLO, WORLD, HELLO, DONE].concat();
        for piece in [&whole[..30], &whole[30..]] {
            if scanner.push(Bytes::copy_from_slice(piece.as_bytes()), &mut out, Some(2)) == Pushed::Capped {
                break;
            }
        }
        let mut expected = CapturedText::default();
        expected.push("Hello world");
        assert_eq!(scanner.text, Some(expected), "the chunk past the cap was not relayed, so not recorded");
    }

    #[test]
    fn crlf_events_and_completion_text_fields_are_understood() {
        let event = "data: {\"choices\":[{\"text\":\"once\"}]}\r\n\r\n";
        let (text, scanner, _) = run(&[event], false, None);
        assert_eq!(text, event);
        assert_eq!(scanner.tally.content_events, 1);
    }

    #[test]
    fn frames_that_need_no_change_are_relayed_without_copy() {
        let frame = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n");
        let mut scanner = SseScanner::new(StreamKind::OpenAi, true, false, 1 << 20);
        let mut out = VecDeque::new();
        scanner.push(frame.clone(), &mut out, None);
        assert_eq!(out[0].as_ptr(), frame.as_ptr());
    }

    #[test]
    fn an_event_that_never_ends_is_refused_at_its_size_limit_and_costs_only_its_length() {
        let mut scanner = SseScanner::new(StreamKind::OpenAi, false, false, 64 * 1024);
        let mut out = VecDeque::new();
        assert_eq!(scanner.push(Bytes::from_static(HELLO.as_bytes()), &mut out, None), Pushed::Open);
        assert_eq!(scanner.push(Bytes::from_static(b"data: {\"choices\":\""), &mut out, None), Pushed::Open);
        let piece = Bytes::from(vec![b'x'; 1024]);
        let mut pushed = Pushed::Open;
        let mut frames = 0;
        while pushed == Pushed::Open {
            pushed = scanner.push(piece.clone(), &mut out, None);
            frames += 1;
        }
        assert_eq!((pushed, frames), (Pushed::TooLarge, 64), "refused once past 64 KiB");
        let relayed: Vec<u8> = out.iter().flat_map(|bytes| bytes.to_vec()).collect();
        assert_eq!(relayed, HELLO.as_bytes(), "the complete event before it was relayed");
        // A long event that does end, split into many frames, is relayed whole.
        let mut scanner = SseScanner::new(StreamKind::OpenAi, false, false, 1 << 20);
        let mut out = VecDeque::new();
        let long = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "y".repeat(100_000));
        for piece in long.as_bytes().chunks(997) {
            assert_eq!(scanner.push(Bytes::copy_from_slice(piece), &mut out, None), Pushed::Open);
        }
        let relayed: Vec<u8> = out.iter().flat_map(|bytes| bytes.to_vec()).collect();
        assert_eq!(relayed, long.as_bytes());
        assert_eq!(scanner.tally.content_events, 1);
    }

    #[test]
    fn an_event_whose_data_is_not_a_json_object_stops_the_stream_before_it() {
        let mut scanner = SseScanner::new(StreamKind::OpenAi, false, false, 1 << 20);
        let mut out = VecDeque::new();
        let frame = format!("{HELLO}: keep-alive comment\n\ndata:\n\ndata: <html>bad gateway</html>\n\n{WORLD}");
        assert_eq!(scanner.push(Bytes::from(frame), &mut out, None), Pushed::Invalid);
        let relayed: String = out.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert_eq!(relayed, format!("{HELLO}: keep-alive comment\n\ndata:\n\n"), "what came before it, not it");
        assert_eq!(scanner.tally.content_events, 1);
    }

    #[test]
    fn an_end_marker_split_across_frames_is_found() {
        let event = HELLO.as_bytes();
        for cut in [event.len() - 1, event.len() - 2] {
            let mut scanner = SseScanner::new(StreamKind::OpenAi, false, false, 1 << 20);
            let mut out = VecDeque::new();
            scanner.push(Bytes::copy_from_slice(&event[..cut]), &mut out, None);
            assert!(out.is_empty());
            scanner.push(Bytes::copy_from_slice(&event[cut..]), &mut out, None);
            let relayed: Vec<u8> = out.iter().flat_map(|bytes| bytes.to_vec()).collect();
            assert_eq!(relayed, event, "cut at {cut}");
        }
    }

    fn scan(kind: StreamKind, events: &[&str]) -> SseScanner {
        let mut scanner = SseScanner::new(kind, false, false, 1 << 20);
        let mut out = VecDeque::new();
        for event in events {
            assert_eq!(scanner.push(Bytes::from(event.to_string()), &mut out, None), Pushed::Open);
        }
        assert_eq!(out.iter().map(Bytes::len).sum::<usize>(), events.iter().map(|event| event.len()).sum::<usize>());
        scanner
    }

    #[test]
    fn responses_events_count_deltas_and_read_usage_from_the_completed_response() {
        let events = [
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
            "event: response.output_text.delta\ndata: {\"type\": \"response.output_text.delta\",\"delta\":\" there\"}\n\n",
            "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"text\":\"Hi there\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":9,\"output_tokens\":2,\"total_tokens\":11}}}\n\n",
        ];
        let scanner = scan(StreamKind::Responses, &events);
        assert_eq!(scanner.tally.content_events, 2);
        let usage = scanner.tally.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 2));
        assert_eq!(scan(StreamKind::Responses, &events[..4]).tally.usage, None, "cut before the end: no usage");
    }

    #[test]
    fn anthropic_usage_is_known_once_message_delta_completes_it() {
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ];
        let scanner = scan(StreamKind::Anthropic, &events);
        assert_eq!(scanner.tally.content_events, 1);
        let usage = scanner.tally.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (12, 3));
        let cut = scan(StreamKind::Anthropic, &events[..3]);
        assert_eq!((cut.tally.usage, cut.tally.content_events), (None, 1), "cut before message_delta");
    }

    #[test]
    fn anthropic_prompt_tokens_include_the_cached_ones() {
        // llama-server's events for a prompt of 11 tokens, 6 of them read from its cache.
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"content\":[],\"usage\":{\"cache_read_input_tokens\":6,\"input_tokens\":5,\"output_tokens\":0}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":8}}\n\n",
        ];
        let usage = scan(StreamKind::Anthropic, &events).tally.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 8));
        // A message_delta that states the whole usage again is believed as it states it.
        let restated = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"cache_read_input_tokens\":6,\"input_tokens\":5,\"output_tokens\":8}}\n\n";
        let usage = scan(StreamKind::Anthropic, &[events[0], restated]).tally.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 8));
    }

    #[test]
    fn an_events_type_is_read_where_it_lies() {
        assert_eq!(event_type(br#"{"type" : "message_start","x":1}"#), Some(&b"message_start"[..]));
        assert_eq!(event_type(br#"{"a":{"b":2}}"#), None);
        assert_eq!(event_type(br#"{"type":"a\"b"}"#), None);
    }
}
