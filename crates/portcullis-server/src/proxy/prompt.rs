//! A prompt's bound by its model's tokenizer: the tokens of its text, an allowance per message
//! for the chat template, and the template's own tokens.
//!
//! Why it stays an upper bound of what the model server reports (zero overspend rests on it):
//! the server renders the messages through its chat template and tokenizes the result. Special
//! tokens (`<start_of_turn>`, `<|im_start|>`) split that rendering into the messages' own texts
//! and the template's markers. The texts are counted here, by the same tokenizer, joined by a
//! newline: the newline is counted too, and a merge across it or any difference at a message's
//! edges is worth a token or two, well inside [`MESSAGE_TOKENS`]. The markers around a message
//! (start, role, newline, end, newline) take four to six tokens in the common templates (Gemma,
//! ChatML, Llama 3), which [`MESSAGE_TOKENS`] also covers; the role's name is in the counted
//! text. The rest — BOS and the generation prompt — fits in `TEMPLATE_SLACK`, and what a
//! template adds beyond that (a default system prompt) is the model's `template_tokens`.
//! Templates only drop or trim text, never repeat it. What a template renders from structure
//! (tools, tool calls, images, JSON schemas) is not plain text and has no such argument, so a
//! request carrying any keeps the byte bound.

use portcullis_config::ModelConfig;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::{Operation, ParsedRequest};
use super::demand::TEMPLATE_SLACK;
use crate::runtime::Runtime;

/// Template tokens allowed around each message (see the module documentation).
pub(crate) const MESSAGE_TOKENS: u64 = 8;

/// Top-level members that only steer generation: they add nothing to the rendered prompt.
const NEUTRAL_MEMBERS: [&str; 28] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n_predict",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "stop",
    "stop_sequences",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "metadata",
    "store",
    "encoding_format",
    "dimensions",
    "cache_prompt",
    "echo",
];

/// The prompt's text and how many messages (or inputs) it came in.
#[derive(Debug, PartialEq, Eq)]
pub struct PromptText {
    pub text: String,
    pub pieces: u64,
}

/// `request`'s prompt bound by `model`'s tokenizer, when it has one that answers and the
/// prompt is plain text; never above the byte bound (the caller takes the smaller).
pub async fn counted_bound(runtime: &Runtime, model: Option<&ModelConfig>, request: &ParsedRequest) -> Option<u64> {
    let model = model.filter(|model| model.tokenizer.is_some())?;
    let prompt = text_of(request)?;
    let tokens = runtime.prompts.count(&runtime.upstreams, model, &prompt.text).await?;
    Some(bound(tokens, prompt.pieces, model.template_tokens))
}

/// The bound from a count: see the module documentation.
pub fn bound(text_tokens: u64, pieces: u64, template_tokens: u64) -> u64 {
    text_tokens
        .saturating_add(pieces.saturating_mul(MESSAGE_TOKENS))
        .saturating_add(TEMPLATE_SLACK)
        .saturating_add(template_tokens)
}

/// The plain text of `request`'s prompt, or `None` when it holds anything a template renders
/// from structure (or a member this reading does not know).
pub fn text_of(request: &ParsedRequest) -> Option<PromptText> {
    let mut prompt = Gathered::default();
    for member in &request.members {
        let key = request.key(member);
        let raw = request.raw(member);
        match (request.operation, key) {
            (_, key) if NEUTRAL_MEMBERS.contains(&key) => {}
            (Operation::Chat | Operation::Messages, "messages") => prompt.messages(raw)?,
            (Operation::Messages, "system") | (Operation::Responses, "instructions") => prompt.content(raw)?,
            (Operation::Responses, "input") => prompt.input(raw)?,
            (Operation::Completions, "prompt") | (Operation::Embeddings, "input") => prompt.strings(raw)?,
            _ => return None,
        }
    }
    (prompt.pieces > 0).then_some(PromptText { text: prompt.text, pieces: prompt.pieces })
}

#[derive(Default)]
struct Gathered {
    text: String,
    pieces: u64,
}

/// A chat message with nothing but text in it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message<'a> {
    #[serde(borrow)]
    role: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    /// The Responses API's item type; only `message` items are plain text.
    #[serde(default, rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// A content part: only text parts are plain text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

impl Gathered {
    fn push(&mut self, text: &str) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(text);
    }

    fn messages(&mut self, raw: &[u8]) -> Option<()> {
        let messages: Vec<Message<'_>> = serde_json::from_slice(raw).ok()?;
        for message in messages {
            if message.kind.as_deref().is_some_and(|kind| kind != "message") {
                return None;
            }
            self.pieces += 1;
            self.push(&message.role);
            if let Some(name) = &message.name {
                self.push(name);
            }
            if let Some(content) = message.content {
                self.texts(content.get().as_bytes())?;
            }
        }
        Some(())
    }

    /// A message's content, or a system prompt: a string or a list of text parts.
    fn content(&mut self, raw: &[u8]) -> Option<()> {
        self.pieces += 1;
        self.texts(raw)
    }

    fn texts(&mut self, raw: &[u8]) -> Option<()> {
        if raw.first() == Some(&b'[') {
            let parts: Vec<Part<'_>> = serde_json::from_slice(raw).ok()?;
            for part in parts {
                if !matches!(&*part.kind, "text" | "input_text" | "output_text") {
                    return None;
                }
                self.push(&part.text);
            }
        } else if raw != b"null" {
            let text: std::borrow::Cow<'_, str> = serde_json::from_slice(raw).ok()?;
            self.push(&text);
        }
        Some(())
    }

    /// The Responses API's input: a string or a list of messages.
    fn input(&mut self, raw: &[u8]) -> Option<()> {
        if raw.first() == Some(&b'[') { self.messages(raw) } else { self.content(raw) }
    }

    /// A completion prompt or embeddings input: a string or a list of strings, one piece each.
    fn strings(&mut self, raw: &[u8]) -> Option<()> {
        if raw.first() == Some(&b'[') {
            let texts: Vec<std::borrow::Cow<'_, str>> = serde_json::from_slice(raw).ok()?;
            for text in texts {
                self.pieces += 1;
                self.push(&text);
            }
            Some(())
        } else {
            self.content(raw)
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::{Value, json};

    use super::*;
    use crate::proxy::body::parse;

    fn text(operation: Operation, body: Value) -> Option<PromptText> {
        text_of(&parse(operation, Bytes::from(body.to_string()), 64).unwrap())
    }

    #[test]
    fn chat_text_is_every_role_and_content_one_message_a_piece() {
        let body = json!({"model": "m", "max_tokens": 5, "temperature": 0.2, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "héllo"}, {"type": "text", "text": "again"}]},
        ]});
        let prompt = text(Operation::Chat, body).unwrap();
        assert_eq!(prompt, PromptText { text: "system\nBe brief.\nuser\nhéllo\nagain".into(), pieces: 2 });
    }

    #[test]
    fn what_a_template_renders_from_structure_keeps_the_byte_bound() {
        let user = json!({"role": "user", "content": "hi"});
        let tools = json!({"model": "m", "messages": [user], "tools": [{"type": "function"}]});
        assert_eq!(text(Operation::Chat, tools), None);
        let image = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
        assert_eq!(text(Operation::Chat, image), None);
        let calls = json!({"model": "m", "messages": [{"role": "assistant", "content": null, "tool_calls": []}]});
        assert_eq!(text(Operation::Chat, calls), None);
        let unknown = json!({"model": "m", "messages": [user], "chat_template_kwargs": {}});
        assert_eq!(text(Operation::Chat, unknown), None);
    }

    #[test]
    fn each_api_gives_its_prompt() {
        let prompt = text(Operation::Completions, json!({"model": "m", "prompt": "Once"})).unwrap();
        assert_eq!(prompt, PromptText { text: "Once".into(), pieces: 1 });
        let prompt = text(Operation::Embeddings, json!({"model": "m", "input": ["a", "b"]})).unwrap();
        assert_eq!(prompt, PromptText { text: "a\nb".into(), pieces: 2 });
        let body =
            json!({"model": "m", "max_tokens": 9, "system": "Terse.", "messages": [{"role": "user", "content": "hi"}]});
        let prompt = text(Operation::Messages, body).unwrap();
        // Members in the order of the body (`json!` sorts them).
        assert_eq!(prompt, PromptText { text: "user\nhi\nTerse.".into(), pieces: 2 });
        let body = json!({"model": "m", "instructions": "Terse.", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]});
        assert_eq!(text(Operation::Responses, body).unwrap().pieces, 2);
        assert_eq!(text(Operation::Completions, json!({"model": "m", "prompt": [1, 2]})), None, "token ids");
        assert_eq!(text(Operation::Rerank, json!({"model": "m", "query": "q", "documents": []})), None);
    }

    #[test]
    fn the_bound_adds_the_template_allowances() {
        assert_eq!(bound(10, 2, 0), 10 + 2 * MESSAGE_TOKENS + TEMPLATE_SLACK);
        assert_eq!(bound(10, 2, 30), 10 + 2 * MESSAGE_TOKENS + TEMPLATE_SLACK + 30);
        assert_eq!(bound(u64::MAX, 2, 0), u64::MAX);
    }
}
