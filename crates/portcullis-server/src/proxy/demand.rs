//! A request's worst case, and the body the model server gets so that the worst case holds.
//!
//! The prompt is bounded by the body's length: every token a model reads is at least one byte
//! of the request (byte-level and byte-fallback tokenizers), and the template tokens around each
//! message are fewer than the JSON around it. The completion is bounded by the cap Portcullis
//! makes sure the upstream gets: the client's `max_tokens`, or `limits.default_max_tokens`
//! written into the body when the client named none.

use bytes::{BufMut, Bytes, BytesMut};

use super::body::{Operation, ParsedRequest};

/// Tokens a chat template may add beyond the request's own bytes (BOS, generation prompt).
const TEMPLATE_SLACK: u64 = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Upper bound of the prompt tokens.
    pub prompt_bound: u64,
    /// Completion tokens the upstream may generate for each choice.
    pub completion_cap: u64,
    /// Upper bound of all tokens: prompt + cap × choices.
    pub worst_case_tokens: u64,
    /// What to send upstream.
    pub body: Bytes,
}

pub fn plan(request: &ParsedRequest, default_max_tokens: u64) -> Plan {
    let prompt_bound = request.body.len() as u64 + TEMPLATE_SLACK;
    if request.operation == Operation::Embeddings {
        return Plan { prompt_bound, completion_cap: 0, worst_case_tokens: prompt_bound, body: request.body.clone() };
    }
    let completion_cap = request.max_tokens.unwrap_or(default_max_tokens);
    let mut additions: Vec<(&str, String)> = Vec::new();
    if request.max_tokens.is_none() {
        additions.push(("max_tokens", completion_cap.to_string()));
    }
    if request.stream && !request.wants_stream_usage {
        additions.push(("stream_options", "{\"include_usage\":true}".to_string()));
    }
    // Prepending is safe only for fields the body does not have; a client's own
    // `stream_options` (without include_usage) needs a real edit. Rare, so the slow path is fine.
    let body = if additions.iter().any(|(name, _)| has_field(&request.body, name)) {
        set_fields(&request.body, &additions).unwrap_or_else(|| request.body.clone())
    } else {
        prepend_fields(&request.body, &additions)
    };
    let worst_case_tokens = prompt_bound.saturating_add(completion_cap.saturating_mul(request.choices));
    Plan { prompt_bound, completion_cap, worst_case_tokens, body }
}

/// Inserts `fields` (name, JSON value) right after the object's opening brace; the parser has
/// checked the body is an object with at least `model` in it, so a comma follows.
fn prepend_fields(body: &Bytes, fields: &[(&str, String)]) -> Bytes {
    if fields.is_empty() {
        return body.clone();
    }
    let Some(brace) = body.iter().position(|&b| b == b'{') else { return body.clone() };
    let extra: usize = fields.iter().map(|(name, value)| name.len() + value.len() + 4).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    out.put_slice(&body[..=brace]);
    for (name, value) in fields {
        out.put_u8(b'"');
        out.put_slice(name.as_bytes());
        out.put_slice(b"\":");
        out.put_slice(value.as_bytes());
        out.put_u8(b',');
    }
    out.put_slice(&body[brace + 1..]);
    out.freeze()
}

fn has_field(body: &[u8], name: &str) -> bool {
    let needle = format!("\"{name}\"");
    body.windows(needle.len()).any(|window| window == needle.as_bytes())
}

fn set_fields(body: &Bytes, fields: &[(&str, String)]) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object_mut()?;
    for (name, field) in fields {
        object.insert((*name).to_string(), serde_json::from_str(field).ok()?);
    }
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::proxy::body::parse;

    fn planned(operation: Operation, body: Value) -> (Plan, Value) {
        let request = parse(operation, Bytes::from(body.to_string())).unwrap();
        let plan = plan(&request, 100);
        let sent = serde_json::from_slice(&plan.body).unwrap();
        (plan, sent)
    }

    #[test]
    fn missing_cap_is_written_into_the_body_and_reserved() {
        let (plan, sent) =
            planned(Operation::Chat, json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(sent["max_tokens"], 100);
        assert_eq!(plan.completion_cap, 100);
        assert_eq!(plan.worst_case_tokens, plan.prompt_bound + 100);
    }

    #[test]
    fn the_clients_cap_and_choices_are_kept_and_multiplied() {
        let body = json!({"model": "m", "messages": [], "max_completion_tokens": 7, "n": 3});
        let (plan, sent) = planned(Operation::Chat, body.clone());
        assert_eq!(sent, body, "nothing to add");
        assert_eq!(plan.worst_case_tokens, plan.prompt_bound + 21);
    }

    #[test]
    fn streams_always_ask_the_upstream_for_usage() {
        let (_, sent) =
            planned(Operation::Chat, json!({"model": "m", "messages": [], "stream": true, "max_tokens": 5}));
        assert_eq!(sent["stream_options"]["include_usage"], true);
        let body = json!({"model": "m", "messages": [], "stream": true, "stream_options": {"include_usage": false}});
        let (_, sent) = planned(Operation::Chat, body);
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["max_tokens"], 100, "the default cap is written on the slow path too");
        let body = json!({"model": "m", "messages": [], "stream": true, "max_tokens": 5, "stream_options": {"include_usage": true}});
        let (plan, sent) = planned(Operation::Chat, body.clone());
        assert_eq!(sent, body);
        assert!(plan.body.len() as u64 + 16 == plan.prompt_bound);
    }

    #[test]
    fn embeddings_reserve_the_input_only() {
        let (plan, sent) = planned(Operation::Embeddings, json!({"model": "m", "input": "hello"}));
        assert_eq!(plan.completion_cap, 0);
        assert_eq!(plan.worst_case_tokens, plan.prompt_bound);
        assert!(sent.get("max_tokens").is_none());
    }

    #[test]
    fn prompt_bound_covers_the_real_token_count() {
        // Each token is at least one byte of the request, so the bound is never below the text.
        let text = "a b c d e f g h i j ".repeat(50);
        let (plan, _) = planned(Operation::Completions, json!({"model": "m", "prompt": text}));
        assert!(plan.prompt_bound >= text.len() as u64);
    }
}
