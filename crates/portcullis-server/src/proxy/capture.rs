//! Content capture for keys and teams that opted in: the prompt of an admitted request and the
//! completion relayed for it become the audit record's `content`, redacted, then cut to size.
//!
//! None of this runs for a caller that did not opt in: only a capturing request has its body
//! parsed for text, and only its response has its generated text gathered.

use std::sync::Arc;

use portcullis_audit::Redactor;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Most bytes of each text (prompt, completion) a record keeps, before the truncation mark.
pub const STORED_LIMIT: usize = 32 * 1024;
/// Most bytes of each text gathered and redacted. Redaction may shorten a text (a long token
/// becomes a short mark), so more than [`STORED_LIMIT`] is read; but not megabytes, which would
/// stall the request's task on regexes.
const GATHER_LIMIT: usize = 8 * STORED_LIMIT;
/// Ends a text that did not fit.
pub const TRUNCATED: &str = "…[TRUNCATED]";

/// What a capturing request carries from admission to its settlement.
#[derive(Debug)]
pub struct Capture {
    redactor: Arc<Redactor>,
    prompt: CapturedText,
}

impl Capture {
    /// Capture for a request whose key or team opted in; `body` is the request's JSON.
    pub fn new(redactor: Arc<Redactor>, body: &[u8]) -> Capture {
        Capture { redactor, prompt: prompt_text(body) }
    }

    /// The record's `content`: `{"prompt": …, "completion": …}` as JSON text, each redacted and
    /// cut to [`STORED_LIMIT`]. No `completion` when none was gathered (embeddings).
    pub fn content(&self, completion: Option<&CapturedText>) -> String {
        let mut content = Map::new();
        content.insert("prompt".into(), Value::String(self.prompt.stored(&self.redactor)));
        if let Some(completion) = completion {
            content.insert("completion".into(), Value::String(completion.stored(&self.redactor)));
        }
        Value::Object(content).to_string()
    }
}

/// Text gathered for capture: at most [`GATHER_LIMIT`] bytes, and whether more was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedText {
    text: String,
    cut: bool,
}

impl CapturedText {
    /// Appends as much of `piece` as fits.
    pub fn push(&mut self, piece: &str) {
        let room = GATHER_LIMIT - self.text.len();
        if piece.len() <= room {
            self.text.push_str(piece);
        } else {
            self.text.push_str(&piece[..floor_char_boundary(piece, room)]);
            self.cut = true;
        }
    }

    /// Appends `piece` on a line of its own.
    fn push_line(&mut self, piece: &str) {
        if !self.text.is_empty() {
            self.push("\n");
        }
        self.push(piece);
    }

    pub fn is_full(&self) -> bool {
        self.cut
    }

    /// Redacted first, then cut: a cut could leave the start of a secret that no rule
    /// recognises anymore (twelve digits of a card number are no card number).
    fn stored(&self, redactor: &Redactor) -> String {
        let redacted = redactor.redact(&self.text);
        if redacted.len() <= STORED_LIMIT && !self.cut {
            return redacted.into_owned();
        }
        let keep = floor_char_boundary(&redacted, STORED_LIMIT);
        format!("{}{TRUNCATED}", &redacted[..keep])
    }
}

/// The prompt's text, one piece per line: each message's `content` (a string, or the `text` of
/// its parts), then `prompt` and `input` (a string or a list of strings; token ids are no text).
fn prompt_text(body: &[u8]) -> CapturedText {
    let mut text = CapturedText::default();
    // The body has been parsed once already, so this only fails for a body that changed shape.
    let Ok(request) = serde_json::from_slice::<Value>(body) else { return text };
    for message in request.get("messages").and_then(Value::as_array).into_iter().flatten() {
        push_texts(&mut text, message.get("content"));
    }
    for field in ["prompt", "input"] {
        push_texts(&mut text, request.get(field));
    }
    text
}

/// A string, or each string (or part's `text`) of a list.
fn push_texts(text: &mut CapturedText, value: Option<&Value>) {
    match value {
        Some(Value::String(piece)) => text.push_line(piece),
        Some(Value::Array(items)) => {
            for item in items {
                if let Some(piece) = item.as_str().or_else(|| item.get("text").and_then(Value::as_str)) {
                    text.push_line(piece);
                }
            }
        }
        _ => {}
    }
}

/// Only `choices` is read; any other field is skipped unparsed.
#[derive(Deserialize)]
struct Choices {
    #[serde(default)]
    choices: Vec<Value>,
}

/// The generated text of a JSON answer: each choice's `message.content` (chat) or `text`
/// (completions), one per line. Empty when the body is not such an answer (or was too large to
/// keep whole).
pub fn completion_text(body: &[u8]) -> CapturedText {
    let mut text = CapturedText::default();
    if let Ok(answer) = serde_json::from_slice::<Choices>(body) {
        for piece in answer.choices.iter().filter_map(|choice| choice_text(choice, "/message/content")) {
            text.push_line(piece);
        }
    }
    text
}

/// Appends the generated text of one stream event (`data` is its JSON): each choice's
/// `delta.content` (chat) or `text` (completions), as the client saw it.
pub fn push_event_text(text: &mut CapturedText, data: &[u8]) {
    if text.is_full() {
        return;
    }
    if let Ok(chunk) = serde_json::from_slice::<Choices>(data) {
        for piece in chunk.choices.iter().filter_map(|choice| choice_text(choice, "/delta/content")) {
            text.push(piece);
        }
    }
}

fn choice_text<'a>(choice: &'a Value, chat_pointer: &str) -> Option<&'a str> {
    choice.pointer(chat_pointer).and_then(Value::as_str).or_else(|| choice.get("text").and_then(Value::as_str))
}

/// The largest char boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len())).rev().find(|&index| text.is_char_boundary(index)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(body: &str) -> Capture {
        Capture::new(Arc::new(Redactor::new(&["ACME-[0-9]{6}".into()]).unwrap()), body.as_bytes())
    }

    fn content(capture: &Capture, completion: Option<&CapturedText>) -> Value {
        serde_json::from_str(&capture.content(completion)).unwrap()
    }

    fn gathered(text: &str) -> CapturedText {
        let mut gathered = CapturedText::default();
        gathered.push(text);
        gathered
    }

    #[test]
    fn chat_prompts_join_string_contents_and_text_parts() {
        let body = r#"{"model":"m","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"look at"},{"type":"image_url","image_url":{"url":"x"}},
                                      {"type":"text","text":"this"}]},
            {"role":"assistant","content":null}]}"#;
        assert_eq!(prompt_text(body.as_bytes()).text, "be brief\nlook at\nthis");
    }

    #[test]
    fn completion_and_embedding_prompts_take_strings_but_not_token_ids() {
        assert_eq!(prompt_text(br#"{"model":"m","prompt":"once upon"}"#).text, "once upon");
        assert_eq!(prompt_text(br#"{"model":"m","prompt":["a","b"]}"#).text, "a\nb");
        assert_eq!(prompt_text(br#"{"model":"m","input":[[1,2,3]]}"#).text, "");
        assert_eq!(prompt_text(br#"{"model":"m","input":"embed me"}"#).text, "embed me");
    }

    #[test]
    fn json_answers_give_message_content_or_text_per_choice() {
        let chat = br#"{"choices":[{"message":{"role":"assistant","content":"one"}},
                                    {"message":{"content":"two"}}],"usage":{}}"#;
        assert_eq!(completion_text(chat).text, "one\ntwo");
        assert_eq!(completion_text(br#"{"choices":[{"text":"done"}]}"#).text, "done");
        assert_eq!(completion_text(br#"{"choices":[{"message":{"tool_calls":[]}}]}"#).text, "");
        assert_eq!(completion_text(b"{\"choices\":[{\"text\":\"cut sh").text, "", "a partial body has no text");
    }

    #[test]
    fn stream_events_concatenate_deltas_and_texts() {
        let mut text = CapturedText::default();
        push_event_text(&mut text, br#"{"choices":[{"delta":{"role":"assistant","content":"Hel"}}]}"#);
        push_event_text(&mut text, br#"{"choices":[{"delta":{"content":"lo"}}]}"#);
        push_event_text(&mut text, br#"{"choices":[{"text":"!"}]}"#);
        push_event_text(&mut text, br#"{"choices":[{"delta":{}}]}"#);
        assert_eq!(text.text, "Hello!");
    }

    #[test]
    fn both_texts_are_redacted_with_built_in_and_custom_rules() {
        // A key-shaped string built at run time, so no key-shaped literal sits in the source.
        let key = format!("pcl_{}", "0123456789abcdefghijABCDEFGHIJ01234567");
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":
            "mail bob@example.com, card 4111 1111 1111 1111, key {key}, order ACME-123456"}}]}}"#
        );
        let capture = capture(&body);
        let content = content(&capture, Some(&gathered("sure, bob@example.com")));
        let prompt = content["prompt"].as_str().unwrap();
        assert_eq!(
            prompt,
            "mail [REDACTED:email], card [REDACTED:card], key [REDACTED:api_key], order [REDACTED:custom]"
        );
        assert_eq!(content["completion"], "sure, [REDACTED:email]");
    }

    #[test]
    fn embeddings_record_no_completion() {
        let content = content(&capture(r#"{"model":"m","input":"x"}"#), None);
        assert_eq!(content, serde_json::json!({"prompt": "x"}));
    }

    #[test]
    fn long_texts_are_cut_at_the_stored_limit_and_marked() {
        let long = "é".repeat(STORED_LIMIT);
        let content = content(&capture(r#"{"model":"m","input":"short"}"#), Some(&gathered(&long)));
        let completion = content["completion"].as_str().unwrap();
        let kept = completion.strip_suffix(TRUNCATED).expect("marked as truncated");
        assert_eq!(kept.len(), STORED_LIMIT, "two-byte characters fill the limit exactly");
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(content["prompt"], "short", "a short text is not marked");

        let mut huge = CapturedText::default();
        huge.push(&"x".repeat(GATHER_LIMIT - 1));
        huge.push("yy");
        assert!(huge.is_full());
        assert_eq!(huge.text.len(), GATHER_LIMIT);
    }

    #[test]
    fn a_secret_at_the_cut_is_redacted_whole_rather_than_half_kept() {
        let filler = "x ".repeat((STORED_LIMIT - 8) / 2);
        let capture = capture(r#"{"model":"m","input":"-"}"#);
        let content = content(&capture, Some(&gathered(&format!("{filler}4111 1111 1111 1111"))));
        let completion = content["completion"].as_str().unwrap();
        assert!(!completion.contains("4111"), "no part of the card survives the cut");
        assert!(completion.ends_with(TRUNCATED));
    }
}
