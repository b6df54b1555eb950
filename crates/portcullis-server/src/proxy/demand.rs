//! A request's worst case, and the body the model server gets so that the worst case holds.
//!
//! The prompt is bounded by the body's length: every token a model reads is at least one byte
//! of the request (byte-level and byte-fallback tokenizers), and the template tokens around each
//! message are fewer than the JSON around it. A model with a `tokenizer` may bound it tighter
//! (see `prompt`); the byte bound stays the most a model server's report is believed up to.
//! The completion is bounded by the cap Portcullis makes sure the upstream obeys: the smallest
//! cap the client named in any cap field, or `limits.default_max_tokens`, written into *every*
//! cap field the body has (a server reads the one it knows, and whichever it is, it holds the
//! reserved cap) and, when the body has none the model's server obeys, into the one its
//! dialect writes (see `dialect`).
//!
//! The same edit removes fields that steer a server or a proxy in front of it — where to send
//! the request, with which credential or headers — unless the model's `passthrough_fields`
//! allow them: a client must not redirect the gateway's traffic or credentials.

use bytes::{BufMut, Bytes, BytesMut};
use portcullis_types::openai::COMPLETION_CAP_FIELDS;
use serde_json::{Map, Value};

use super::body::ParsedRequest;
use super::dialect::Dialect;
use super::shape::Member;

/// Tokens a chat template may add beyond the request's own bytes (BOS, generation prompt).
pub(crate) const TEMPLATE_SLACK: u64 = 16;

/// Fields by which a client could steer a server or proxy (LiteLLM-style routers read them).
const STEERING_FIELDS: [&str; 12] = [
    "api_base",
    "api_key",
    "api_type",
    "api_version",
    "base_url",
    "custom_llm_provider",
    "deployment_id",
    "extra_body",
    "extra_headers",
    "extra_query",
    "headers",
    "organization",
];
/// Cloud-credential families (`aws_access_key_id`, `vertex_credentials`, …).
const STEERING_PREFIXES: [&str; 3] = ["aws_", "azure_", "vertex_"];
/// Provider-specific credentials and targets (`openai_api_key`, `ollama_base_url`, …).
const STEERING_SUFFIXES: [&str; 3] = ["_api_key", "_api_base", "_base_url"];

/// What shapes the forwarded body, from the model's configuration.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules<'a> {
    pub default_max_tokens: u64,
    pub dialect: Dialect<'a>,
    pub passthrough_fields: &'a [String],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Upper bound of the prompt tokens: the tokenizer's when one counted, else the bytes'.
    pub prompt_bound: u64,
    /// The bound by the body's bytes alone: a model server's report of the prompt is believed up
    /// to it, not cut short by a tighter count.
    pub byte_bound: u64,
    /// Completion tokens the upstream may generate for each choice.
    pub completion_cap: u64,
    /// Upper bound of all tokens: prompt + cap × choices.
    pub worst_case_tokens: u64,
    /// What to send upstream.
    pub body: Bytes,
}

/// The request's worst case and forwarded body; `counted_prompt` is a tokenizer's bound of the
/// prompt, if one counted it (never above the byte bound).
pub fn plan(request: &ParsedRequest, rules: BodyRules<'_>, counted_prompt: Option<u64>) -> Plan {
    // What bills no tokens reserves none either.
    let byte_bound = if request.operation.bills_tokens() { request.body.len() as u64 + TEMPLATE_SLACK } else { 0 };
    let prompt_bound = counted_prompt.map_or(byte_bound, |counted| counted.min(byte_bound));
    let generates = request.operation.generates();
    let completion_cap = if generates { request.max_tokens.unwrap_or(rules.default_max_tokens) } else { 0 };
    let cap_text = completion_cap.to_string();
    let needs_usage = request.stream
        && !request.wants_stream_usage
        && request.operation.asks_stream_usage()
        && rules.dialect.reports_stream_usage();
    let cap_field = request.operation.cap_field(rules.dialect.cap_field());
    // The server's own API field (Responses, Messages), or any the server obeys.
    let capped = if cap_field == rules.dialect.cap_field() {
        request.members.iter().any(|member| rules.dialect.obeys(member.raw_key(&request.body)))
    } else {
        request.has(cap_field)
    };

    let mut edit = Edit::default();
    for (index, member) in request.members.iter().enumerate() {
        let key = member.raw_key(&request.body);
        if is_steering(key) && !rules.passthrough_fields.iter().any(|allowed| allowed.as_bytes() == key) {
            tracing::debug!(field = request.key(member), "steering field removed from the request");
            edit.drop(index);
        } else if generates
            && COMPLETION_CAP_FIELDS.iter().any(|field| field.as_bytes() == key)
            && request.raw(member) != cap_text.as_bytes()
        {
            edit.replace(index, cap_text.clone());
        } else if needs_usage && key == b"stream_options" {
            edit.replace(index, with_usage(request.raw(member)));
        }
    }
    if generates && !capped {
        edit.add(cap_field, cap_text);
    }
    if needs_usage && !request.has("stream_options") {
        edit.add("stream_options", "{\"include_usage\":true}".to_string());
    }
    let body = edit.apply(&request.body, &request.members);
    let worst_case_tokens = prompt_bound.saturating_add(completion_cap.saturating_mul(request.choices));
    Plan { prompt_bound, byte_bound, completion_cap, worst_case_tokens, body }
}

fn is_steering(key: &[u8]) -> bool {
    STEERING_FIELDS.iter().any(|field| field.as_bytes() == key)
        || STEERING_PREFIXES.iter().any(|prefix| key.starts_with(prefix.as_bytes()))
        || STEERING_SUFFIXES.iter().any(|suffix| key.ends_with(suffix.as_bytes()))
}

/// The client's `stream_options` with `include_usage` turned on and the rest kept.
fn with_usage(raw: &[u8]) -> String {
    let mut options: Map<String, Value> = serde_json::from_slice(raw).unwrap_or_default();
    options.insert("include_usage".into(), Value::Bool(true));
    Value::Object(options).to_string()
}

/// Changes to a body's top-level members, applied in one copy (or none, when there are none).
#[derive(Default)]
struct Edit {
    /// By member index: `None` drops the member, `Some(value)` replaces its value.
    changes: Vec<(usize, Option<String>)>,
    additions: Vec<(&'static str, String)>,
}

impl Edit {
    fn drop(&mut self, index: usize) {
        self.changes.push((index, None));
    }

    fn replace(&mut self, index: usize, value: String) {
        self.changes.push((index, Some(value)));
    }

    fn add(&mut self, key: &str, value: String) {
        // Only known names are added (a cap field, `stream_options`); their JSON needs no escaping.
        let key = COMPLETION_CAP_FIELDS.iter().chain(["stream_options"].iter()).find(|known| **known == key);
        if let Some(key) = key {
            self.additions.push((key, value));
        }
    }

    fn apply(self, body: &Bytes, members: &[Member]) -> Bytes {
        if self.changes.is_empty() && self.additions.is_empty() {
            return body.clone();
        }
        let mut out = BytesMut::with_capacity(body.len() + 64);
        out.put_u8(b'{');
        let mut first = true;
        let mut separate = |out: &mut BytesMut| {
            if !std::mem::take(&mut first) {
                out.put_u8(b',');
            }
        };
        for (index, member) in members.iter().enumerate() {
            let change = self.changes.iter().find(|(changed, _)| *changed == index).map(|(_, change)| change);
            let value = match change {
                Some(None) => continue,
                Some(Some(value)) => value.as_bytes(),
                None => &body[member.value.clone()],
            };
            separate(&mut out);
            out.put_slice(&body[member.key_span.clone()]);
            out.put_u8(b':');
            out.put_slice(value);
        }
        for (key, value) in &self.additions {
            separate(&mut out);
            out.put_u8(b'"');
            out.put_slice(key.as_bytes());
            out.put_slice(b"\":");
            out.put_slice(value.as_bytes());
        }
        out.put_u8(b'}');
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::proxy::body::{Operation, parse};
    use portcullis_config::ModelServer;

    const RULES: BodyRules<'static> =
        BodyRules { default_max_tokens: 100, dialect: Dialect::of(ModelServer::Openai, None), passthrough_fields: &[] };

    fn planned_with(operation: Operation, body: Value, rules: BodyRules<'_>) -> (Plan, Value) {
        let request = parse(operation, Bytes::from(body.to_string()), 64).unwrap();
        let plan = plan(&request, rules, None);
        let sent = serde_json::from_slice(&plan.body).unwrap();
        (plan, sent)
    }

    fn planned(operation: Operation, body: Value) -> (Plan, Value) {
        planned_with(operation, body, RULES)
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
    fn a_body_that_needs_nothing_is_forwarded_as_it_came() {
        let text = r#"{"model":"m", "messages":[], "max_tokens": 7}"#;
        let request = parse(Operation::Chat, Bytes::from(text), 64).unwrap();
        assert_eq!(plan(&request, RULES, None).body, text.as_bytes());
    }

    #[test]
    fn every_cap_field_carries_the_reserved_cap() {
        let body = json!({"model": "m", "messages": [], "max_tokens": 1, "n_predict": 100000, "num_predict": 50});
        let (plan, sent) = planned(Operation::Chat, body);
        assert_eq!(plan.completion_cap, 1);
        assert_eq!((&sent["max_tokens"], &sent["n_predict"], &sent["num_predict"]), (&json!(1), &json!(1), &json!(1)));
        let (plan, sent) = planned(
            Operation::Chat,
            json!({"model": "m", "messages": [], "max_completion_tokens": 5, "max_tokens": 500}),
        );
        assert_eq!(plan.completion_cap, 5);
        assert_eq!((&sent["max_completion_tokens"], &sent["max_tokens"]), (&json!(5), &json!(5)));
        // A server that reads only another field still gets the cap in the one the model names.
        let rules = BodyRules { dialect: Dialect::of(ModelServer::Openai, Some("max_completion_tokens")), ..RULES };
        let (_, sent) = planned_with(Operation::Chat, json!({"model": "m", "messages": [], "n_predict": 9}), rules);
        assert_eq!((&sent["n_predict"], &sent["max_completion_tokens"]), (&json!(9), &json!(9)));
        assert!(sent.get("max_tokens").is_none());
    }

    #[test]
    fn choices_multiply_the_worst_case() {
        let (plan, _) =
            planned(Operation::Chat, json!({"model": "m", "messages": [], "max_tokens": 7, "n": 2, "best_of": 3}));
        assert_eq!(plan.worst_case_tokens, plan.prompt_bound + 21);
    }

    #[test]
    fn streams_always_ask_the_upstream_for_usage() {
        let (_, sent) =
            planned(Operation::Chat, json!({"model": "m", "messages": [], "stream": true, "max_tokens": 5}));
        assert_eq!(sent["stream_options"]["include_usage"], true);
        let body =
            json!({"model": "m", "messages": [], "stream": true, "stream_options": {"include_usage": false, "x": 1}});
        let (_, sent) = planned(Operation::Chat, body);
        assert_eq!(sent["stream_options"], json!({"include_usage": true, "x": 1}), "the client's other options stay");
        assert_eq!(sent["max_tokens"], 100);
        let body = json!({"model": "m", "messages": [], "stream": true, "max_tokens": 5, "stream_options": {"include_usage": true}});
        let (plan, sent) = planned(Operation::Chat, body.clone());
        assert_eq!(sent, body);
        assert!(plan.body.len() as u64 + 16 == plan.prompt_bound);
    }

    #[test]
    fn steering_fields_are_removed_unless_the_model_allows_them() {
        let body = json!({
            "model": "m", "messages": [], "max_tokens": 5, "api_base": "http://evil", "base_url": "x",
            "api_key": "sk-x", "extra_headers": {"a": "b"}, "aws_secret_access_key": "s", "openai_api_key": "k",
            "temperature": 0.5
        });
        let (_, sent) = planned(Operation::Chat, body);
        assert_eq!(sent, json!({"model": "m", "messages": [], "max_tokens": 5, "temperature": 0.5}));
        let allowed = ["api_base".to_string()];
        let rules = BodyRules { passthrough_fields: &allowed, ..RULES };
        let (_, sent) = planned_with(
            Operation::Embeddings,
            json!({"model": "m", "input": "x", "api_base": "b", "api_key": "k"}),
            rules,
        );
        assert_eq!(sent, json!({"model": "m", "input": "x", "api_base": "b"}));
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

    fn with_server(server: ModelServer) -> BodyRules<'static> {
        BodyRules { dialect: Dialect::of(server, None), ..RULES }
    }

    #[test]
    fn the_cap_goes_where_the_models_server_reads_it() {
        let chat = json!({"model": "m", "messages": []});
        let (_, sent) = planned_with(Operation::Chat, chat.clone(), with_server(ModelServer::Llamacpp));
        assert_eq!((&sent["n_predict"], sent.get("max_tokens")), (&json!(100), None));
        // llama.cpp reads max_tokens when n_predict is absent: nothing is added to it.
        let text = r#"{"model":"m","messages":[],"max_tokens":7}"#;
        let request = parse(Operation::Chat, Bytes::from(text), 64).unwrap();
        assert_eq!(plan(&request, with_server(ModelServer::Llamacpp), None).body, text.as_bytes());
        // vLLM ignores n_predict: its own field is added with the reserved cap.
        let body = json!({"model": "m", "messages": [], "n_predict": 9});
        let (plan, sent) = planned_with(Operation::Chat, body, with_server(ModelServer::Vllm));
        assert_eq!((plan.completion_cap, &sent["max_tokens"], &sent["n_predict"]), (9, &json!(9), &json!(9)));
        // vLLM obeys max_completion_tokens: a body with it needs no other.
        let body = json!({"model": "m", "messages": [], "max_completion_tokens": 4});
        let (_, sent) = planned_with(Operation::Chat, body.clone(), with_server(ModelServer::Vllm));
        assert_eq!(sent, body);
        // The APIs with a cap field of their own keep it, whatever the server.
        let body = json!({"model": "m", "input": "hi"});
        let (_, sent) = planned_with(Operation::Responses, body, with_server(ModelServer::Llamacpp));
        assert_eq!((&sent["max_output_tokens"], sent.get("n_predict")), (&json!(100), None));
    }

    #[test]
    fn a_server_that_streams_no_usage_is_not_asked_for_it() {
        let body = json!({"model": "m", "messages": [], "stream": true, "max_tokens": 5});
        let (_, sent) = planned_with(Operation::Chat, body.clone(), with_server(ModelServer::Tgi));
        assert_eq!(sent, body);
        let (_, sent) = planned_with(Operation::Chat, body, with_server(ModelServer::Ollama));
        assert_eq!(sent["stream_options"]["include_usage"], true);
    }

    #[test]
    fn a_counted_prompt_tightens_the_reservation_but_never_past_the_bytes() {
        let request = parse(Operation::Chat, Bytes::from(r#"{"model":"m","messages":[],"max_tokens":5}"#), 64).unwrap();
        let bytes = plan(&request, RULES, None);
        assert_eq!(bytes.prompt_bound, bytes.byte_bound);
        let counted = plan(&request, RULES, Some(20));
        assert_eq!((counted.prompt_bound, counted.byte_bound), (20, bytes.byte_bound));
        assert_eq!(counted.worst_case_tokens, 25);
        assert_eq!(plan(&request, RULES, Some(u64::MAX)).prompt_bound, bytes.byte_bound);
    }
}
