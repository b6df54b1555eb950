//! Reading and checking an inference request body, without re-serialising it: its shape, its
//! envelope, and every field that bounds what it may generate.

use axum::body::Body;
use bytes::Bytes;
use futures_util::FutureExt;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::Frame;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;

use portcullis_auth::Scope;
use portcullis_config::ExtraApi;

use super::shape::{self, Member, ShapeError};

use crate::error::ApiError;
use crate::listener::BodyTooSlow;

/// The model calls the proxy serves, and what each needs from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Chat,
    Completions,
    Embeddings,
    /// OpenAI's Responses API.
    Responses,
    /// Anthropic's Messages API.
    Messages,
    /// Anthropic's `count_tokens`: the prompt's size, nothing generated.
    CountTokens,
    Rerank,
    Tokenize,
    Detokenize,
}

impl Operation {
    pub const ALL: [Operation; 9] = [
        Operation::Chat,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Responses,
        Operation::Messages,
        Operation::CountTokens,
        Operation::Rerank,
        Operation::Tokenize,
        Operation::Detokenize,
    ];

    /// The operation a client's path (without its query) calls, if any.
    pub fn at(path: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|operation| operation.path() == path)
    }

    /// The path the client calls.
    pub fn path(self) -> &'static str {
        match self {
            Operation::Chat => "/v1/chat/completions",
            Operation::Completions => "/v1/completions",
            Operation::Embeddings => "/v1/embeddings",
            Operation::Responses => "/v1/responses",
            Operation::Messages => "/v1/messages",
            Operation::CountTokens => "/v1/messages/count_tokens",
            Operation::Rerank => "/v1/rerank",
            Operation::Tokenize => "/v1/tokenize",
            Operation::Detokenize => "/v1/detokenize",
        }
    }

    /// The scope a credential needs for it.
    pub fn scope(self) -> Scope {
        match self {
            Operation::Chat => Scope::Chat,
            Operation::Completions => Scope::Completions,
            Operation::Embeddings => Scope::Embeddings,
            Operation::Responses => Scope::Responses,
            Operation::Messages | Operation::CountTokens => Scope::Messages,
            Operation::Rerank => Scope::Rerank,
            Operation::Tokenize | Operation::Detokenize => Scope::Tokenize,
        }
    }

    /// Whether the model generates text for it (and so may be capped, streamed and billed for
    /// completion tokens).
    pub fn generates(self) -> bool {
        matches!(self, Operation::Chat | Operation::Completions | Operation::Responses | Operation::Messages)
    }

    /// Whether it is Anthropic's API (its headers forwarded, its error shape answered).
    pub fn is_anthropic(self) -> bool {
        matches!(self, Operation::Messages | Operation::CountTokens)
    }

    /// Whether the tokens it reports are billed. Counting tokens (count_tokens, tokenize,
    /// detokenize) uses none: such a call reserves and bills no tokens, only the request.
    pub fn bills_tokens(self) -> bool {
        !matches!(self, Operation::CountTokens | Operation::Tokenize | Operation::Detokenize)
    }

    /// Whether its streams carry usage only when `stream_options.include_usage` asks for it
    /// (chat and completions); the other APIs always report it.
    pub fn asks_stream_usage(self) -> bool {
        matches!(self, Operation::Chat | Operation::Completions)
    }

    /// The field its completion cap goes in when the body names none: its API's own, else the
    /// one the model's server reads.
    pub fn cap_field(self, configured: &str) -> &str {
        match self {
            Operation::Responses => "max_output_tokens",
            Operation::Messages => "max_tokens",
            _ => configured,
        }
    }

    /// The optional server endpoint it is, which a model must open before it is served.
    pub fn extra_api(self) -> Option<ExtraApi> {
        match self {
            Operation::Rerank => Some(ExtraApi::Rerank),
            Operation::Tokenize | Operation::Detokenize => Some(ExtraApi::Tokenize),
            _ => None,
        }
    }

    /// The body member that carries the prompt, required in every request.
    pub fn prompt_field(self) -> &'static str {
        match self {
            Operation::Chat | Operation::Messages | Operation::CountTokens => "messages",
            Operation::Completions => "prompt",
            Operation::Embeddings | Operation::Responses => "input",
            Operation::Rerank => "query",
            Operation::Tokenize => "content",
            Operation::Detokenize => "tokens",
        }
    }

    /// Members other servers' dialects carry the prompt in instead (vLLM tokenizes a `prompt`
    /// or `messages`, TGI its `inputs`).
    pub fn other_prompt_fields(self) -> &'static [&'static str] {
        match self {
            Operation::Tokenize => &["prompt", "messages", "inputs"],
            _ => &[],
        }
    }
}

/// `stream_options`, of which only `include_usage` matters here.
#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Portcullis reserves the smallest cap the client sent in any of these and writes that into
/// all of them (see `demand`), so no server can read a larger one.
use portcullis_types::openai::COMPLETION_CAP_FIELDS as CAP_FIELDS;

/// Fields that multiply what one request generates: each choice may reach the cap.
const CHOICE_FIELDS: [&str; 2] = ["n", "best_of"];

/// Objects some servers read generation settings from (Ollama's `options`, TGI's
/// `parameters`): a cap inside one could not be rewritten safely, so it is refused.
const NESTED_SETTINGS: [&str; 3] = ["options", "parameters", "generation_config"];

/// Most choices one request may ask for.
const MAX_CHOICES: u64 = 128;

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub operation: Operation,
    pub model: String,
    pub stream: bool,
    /// The smallest completion cap the client named, in any of [`CAP_FIELDS`].
    pub max_tokens: Option<u64>,
    /// Choices the model server will generate (`n`, `best_of`): each may generate up to the cap.
    pub choices: u64,
    /// Whether the client asked for the usage chunk of a stream.
    pub wants_stream_usage: bool,
    pub body: Bytes,
    /// The body's top-level members, for editing it without re-serialising.
    pub members: Vec<Member>,
}

impl ParsedRequest {
    /// The raw JSON of a top-level member.
    pub fn raw(&self, member: &Member) -> &[u8] {
        &self.body[member.value.clone()]
    }

    /// A top-level member's key.
    pub fn key<'a>(&'a self, member: &'a Member) -> &'a str {
        member.key(&self.body)
    }

    /// Whether the body has a top-level member named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.members.iter().any(|member| member.raw_key(&self.body) == name.as_bytes())
    }
}

/// A request body being read, at most `limit` bytes: a declared or actual larger body is a 413,
/// one that arrives too slowly a 408, a broken one (a malformed chunk, a connection cut short) a
/// 400.
pub struct Reading {
    body: Body,
    parts: Vec<Bytes>,
    size: usize,
    limit: usize,
}

impl Reading {
    pub fn start(body: Body, headers: &HeaderMap, limit: usize) -> Result<Reading, ApiError> {
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::RequestTooLarge { limit });
        }
        Ok(Reading { body, parts: Vec::new(), size: 0, limit })
    }

    /// Takes what has arrived, without waiting for more: the whole body if it is all there
    /// (most bodies arrive with their head), else `None` and [`Reading::rest`] waits for it.
    pub fn ready(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            match self.body.frame().now_or_never() {
                None => return Ok(None),
                Some(None) => return Ok(Some(self.joined())),
                Some(Some(frame)) => self.take(frame)?,
            }
        }
    }

    /// The rest of the body, for as long as its deadlines allow.
    pub async fn rest(mut self) -> Result<Bytes, ApiError> {
        while let Some(frame) = self.body.frame().await {
            self.take(frame)?;
        }
        Ok(self.joined())
    }

    fn take(&mut self, frame: Result<Frame<Bytes>, axum::Error>) -> Result<(), ApiError> {
        let Ok(data) = frame.map_err(|error| read_error(&error))?.into_data() else { return Ok(()) };
        self.size += data.len();
        if self.size > self.limit {
            return Err(ApiError::RequestTooLarge { limit: self.limit });
        }
        self.parts.push(data);
        Ok(())
    }

    /// The body in one piece; copied only when it came in several frames.
    fn joined(&mut self) -> Bytes {
        match self.parts.len() {
            1 => self.parts.pop().unwrap_or_default(),
            _ => Bytes::from(std::mem::take(&mut self.parts).concat()),
        }
    }
}

fn read_error(error: &axum::Error) -> ApiError {
    // The cause sits under the layers of body wrappers: look down the chain.
    let error: &(dyn std::error::Error + 'static) = error;
    if std::iter::successors(Some(error), |error| error.source()).any(|cause| cause.is::<BodyTooSlow>()) {
        ApiError::RequestTimeout
    } else {
        ApiError::MalformedRequest { message: "the request body could not be read".into() }
    }
}

/// Checks the body's shape (see [`shape`], which validates it as JSON) and reads what admission
/// and routing need from its top-level members, each parsed on its own.
pub fn parse(operation: Operation, body: Bytes, max_depth: usize) -> Result<ParsedRequest, ApiError> {
    let members = shape::members(&body, max_depth).map_err(shape_error)?;
    // `null` is as good as absent, as in the OpenAI API.
    let member = |name: &str| {
        members
            .iter()
            .map(|member| (member.raw_key(&body), &body[member.value.clone()]))
            .find_map(|(key, raw)| (key == name.as_bytes() && raw != b"null").then_some(raw))
    };
    let model = member("model")
        .map(|raw| {
            string(raw).ok_or_else(|| ApiError::bad_request("The model parameter must be a string.", Some("model")))
        })
        .transpose()?
        .filter(|model| !model.is_empty())
        .ok_or_else(|| ApiError::bad_request("You must provide a model parameter.", Some("model")))?;
    let required = operation.prompt_field();
    let prompt = member(required);
    if prompt.is_none() && !operation.other_prompt_fields().iter().any(|field| member(field).is_some()) {
        return Err(ApiError::bad_request(format!("Missing required parameter: '{required}'."), Some(required)));
    }
    if required == "messages" && prompt.is_some_and(|raw| raw.first() != Some(&b'[')) {
        return Err(ApiError::bad_request("'messages' must be an array.", Some("messages")));
    }
    let stream = match member("stream") {
        None | Some(b"false") => false,
        Some(b"true") => true,
        Some(_) => return Err(ApiError::bad_request("'stream' must be a boolean.", Some("stream"))),
    };
    if stream && !operation.generates() {
        return Err(ApiError::bad_request(format!("{} cannot be streamed.", operation.path()), Some("stream")));
    }
    let stream_options: Option<StreamOptions> = member("stream_options")
        .map(serde_json::from_slice)
        .transpose()
        .map_err(|error| ApiError::bad_request(format!("Invalid stream_options: {error}"), Some("stream_options")))?;
    let (max_tokens, choices) = caps(&body, &members)?;
    if operation == Operation::Messages && max_tokens.is_none() {
        return Err(ApiError::bad_request("max_tokens: Field required", Some("max_tokens")));
    }
    let wants_stream_usage = stream_options.and_then(|options| options.include_usage).unwrap_or(false);
    Ok(ParsedRequest { operation, model, stream, max_tokens, choices, wants_stream_usage, body, members })
}

/// The smallest cap named and the number of choices; each must be a positive whole number.
fn caps(body: &[u8], members: &[Member]) -> Result<(Option<u64>, u64), ApiError> {
    let is_one_of = |key: &[u8], names: &[&str]| names.iter().any(|name| name.as_bytes() == key);
    let mut cap: Option<u64> = None;
    let mut choices = 1;
    for member in members {
        let key = member.raw_key(body);
        let raw = &body[member.value.clone()];
        if is_one_of(key, &CAP_FIELDS) {
            if let Some(value) = positive_integer(raw, member.key(body), u64::MAX)? {
                cap = Some(cap.map_or(value, |cap| cap.min(value)));
            }
        } else if is_one_of(key, &CHOICE_FIELDS) {
            if let Some(value) = positive_integer(raw, member.key(body), MAX_CHOICES)? {
                choices = choices.max(value);
            }
        } else if is_one_of(key, &NESTED_SETTINGS) && raw.first() == Some(&b'{') {
            let key = member.key(body);
            let settings: serde_json::Map<String, Value> = serde_json::from_slice(raw)
                .map_err(|error| invalid_field(key.to_string(), format!("'{key}' is not a valid object: {error}")))?;
            if let Some(nested) = CAP_FIELDS.iter().find(|field| settings.contains_key(**field)) {
                return Err(invalid_field(
                    format!("{key}.{nested}"),
                    format!("'{key}.{nested}' is not supported; set the completion cap with 'max_tokens'."),
                ));
            }
        }
    }
    Ok((cap, choices))
}

/// A JSON string's text; read in place when it has no escape (most model names).
fn string(raw: &[u8]) -> Option<String> {
    match raw {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => std::str::from_utf8(inner).ok().map(str::to_string),
        _ => serde_json::from_slice(raw).ok(),
    }
}

/// A member that must be a whole number in `1..=max`, or `null` (as if absent).
fn positive_integer(raw: &[u8], key: &str, max: u64) -> Result<Option<u64>, ApiError> {
    if raw == b"null" {
        return Ok(None);
    }
    // Plain digits are most of what arrives; anything else (`1e3`, `5.0`) goes through serde.
    let plain = (!raw.is_empty() && raw.len() <= 19 && raw.iter().all(u8::is_ascii_digit))
        .then(|| raw.iter().fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0')));
    match plain.map_or_else(|| serde_json::from_slice::<u64>(raw), Ok) {
        Ok(value) if (1..=max).contains(&value) => Ok(Some(value)),
        _ if max == u64::MAX => {
            Err(invalid_field(key.to_string(), format!("'{key}' must be a whole number of at least 1.")))
        }
        _ => Err(invalid_field(key.to_string(), format!("'{key}' must be a whole number from 1 to {max}."))),
    }
}

fn invalid_field(param: String, message: String) -> ApiError {
    ApiError::InvalidField { message, param }
}

fn shape_error(error: ShapeError) -> ApiError {
    let in_member = |member: &Option<String>| member.as_ref().map(|m| format!(" in '{m}'")).unwrap_or_default();
    match error {
        ShapeError::InvalidUtf8 { member } => {
            let message = format!("The request body is not valid UTF-8{}.", in_member(&member));
            match member {
                Some(param) => invalid_field(param, message),
                None => ApiError::bad_request(message, None),
            }
        }
        ShapeError::NotAnObject => ApiError::bad_request("The request body must be a JSON object.", None),
        ShapeError::Malformed { member } => {
            ApiError::bad_request(format!("The request body is not valid JSON{}.", in_member(&member)), None)
        }
        ShapeError::TooDeep { member, limit } => {
            let message = format!("'{member}' is nested deeper than {limit} levels.");
            invalid_field(member, message)
        }
        ShapeError::LoneSurrogate { member } => {
            let message = format!("'{member}' holds an unpaired UTF-16 surrogate escape.");
            invalid_field(member, message)
        }
        ShapeError::NumberOutOfRange { member } => {
            let message = format!("'{member}' holds a number beyond the range of a double.");
            invalid_field(member, message)
        }
        ShapeError::Duplicate { member } => {
            let message = format!("'{member}' appears more than once.");
            invalid_field(member, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chat(text: &str) -> Result<ParsedRequest, ApiError> {
        parse(Operation::Chat, Bytes::from(text.to_string()), 64)
    }

    #[test]
    fn a_tokenize_prompt_may_come_in_any_servers_member() {
        let parse_tokenize = |text: &str| parse(Operation::Tokenize, Bytes::from(text.to_string()), 64);
        for body in [r#"{"model":"m","content":"a"}"#, r#"{"model":"m","prompt":"a"}"#, r#"{"model":"m","inputs":"a"}"#]
        {
            assert!(parse_tokenize(body).is_ok(), "{body}");
        }
        assert!(parse_tokenize(r#"{"model":"m","text":"a"}"#).is_err());
        // Only tokenize reads other members: a chat still needs its messages.
        assert!(parse(Operation::Chat, Bytes::from(r#"{"model":"m","prompt":"a"}"#), 64).is_err());
    }

    #[test]
    fn reads_model_and_stream_and_keeps_the_bytes() {
        let text = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],"x":1}"#;
        let parsed = parse_chat(text).unwrap();
        assert_eq!(parsed.model, "m");
        assert!(parsed.stream);
        assert_eq!(parsed.body, text.as_bytes());
    }

    #[test]
    fn each_malformation_is_a_bad_request_naming_its_parameter() {
        let param = |text: &str| match parse_chat(text) {
            Err(ApiError::BadRequest { param, .. }) => param,
            other => panic!("expected a bad request, got {other:?}"),
        };
        assert_eq!(param("{not json"), None);
        assert_eq!(param("[1,2]"), None);
        assert_eq!(param(r#"{"messages":[]}"#), Some("model"));
        assert_eq!(param(r#"{"model":"","messages":[]}"#), Some("model"));
        assert_eq!(param(r#"{"model":"m"}"#), Some("messages"));
        assert_eq!(param(r#"{"model":"m","messages":"hi"}"#), Some("messages"));
        assert_eq!(param(r#"{"model":"m","messages":[],"stream":"yes"}"#), Some("stream"));
        assert_eq!(param(r#"{"model":7,"messages":[]}"#), Some("model"));
        assert_eq!(param(r#"{"model":"m","messages":[],"stream_options":3}"#), Some("stream_options"));
        assert_eq!(param(r#"{"model":"m","messages":null}"#), Some("messages"));
        for broken in [
            r#"{"model":"m","messages":[tru]}"#,
            r#"{"model":"m","messages":[01]}"#,
            r#"{"model":"m","messages":["\q"]}"#,
        ] {
            assert_eq!(param(broken), None, "{broken}");
        }
    }

    #[test]
    fn embeddings_need_input_and_cannot_stream() {
        let parse_embed = |text: &str| parse(Operation::Embeddings, Bytes::from(text.to_string()), 64);
        assert!(parse_embed(r#"{"model":"m","input":"a"}"#).is_ok());
        assert!(matches!(parse_embed(r#"{"model":"m"}"#), Err(ApiError::BadRequest { param: Some("input"), .. })));
        assert!(matches!(
            parse_embed(r#"{"model":"m","input":"a","stream":true}"#),
            Err(ApiError::BadRequest { param: Some("stream"), .. })
        ));
    }

    fn field_error(text: &str) -> String {
        match parse_chat(text) {
            Err(ApiError::InvalidField { param, .. }) => param,
            other => panic!("expected a field error for {text}, got {other:?}"),
        }
    }

    #[test]
    fn the_smallest_cap_in_any_cap_field_is_the_clients_cap() {
        let cap = |text: &str| parse_chat(text).unwrap().max_tokens;
        assert_eq!(cap(r#"{"model":"m","messages":[]}"#), None);
        assert_eq!(cap(r#"{"model":"m","messages":[],"max_tokens":1,"n_predict":100000}"#), Some(1));
        assert_eq!(cap(r#"{"model":"m","messages":[],"max_completion_tokens":5,"max_tokens":500}"#), Some(5));
        assert_eq!(cap(r#"{"model":"m","messages":[],"num_predict":7,"max_new_tokens":9}"#), Some(7));
        assert_eq!(cap(r#"{"model":"m","messages":[],"max_tokens":null}"#), None);
    }

    #[test]
    fn caps_and_choices_must_be_positive_whole_numbers() {
        for bad in [r#""100""#, "-1", "0", "1.5", "true", "1e9999", "{}"] {
            assert_eq!(
                field_error(&format!(r#"{{"model":"m","messages":[],"n_predict":{bad}}}"#)),
                "n_predict",
                "{bad}"
            );
        }
        assert_eq!(field_error(r#"{"model":"m","messages":[],"n":129}"#), "n");
        assert_eq!(parse_chat(r#"{"model":"m","messages":[],"n":2,"best_of":5}"#).unwrap().choices, 5);
    }

    #[test]
    fn caps_hidden_in_nested_settings_are_refused() {
        assert_eq!(
            field_error(r#"{"model":"m","messages":[],"options":{"num_predict":100000}}"#),
            "options.num_predict"
        );
        assert_eq!(
            field_error(r#"{"model":"m","messages":[],"parameters":{"max_new_tokens":9}}"#),
            "parameters.max_new_tokens"
        );
        assert!(parse_chat(r#"{"model":"m","messages":[],"options":{"temperature":0.1}}"#).is_ok());
    }

    #[test]
    fn hostile_shapes_are_refused_naming_the_member() {
        let deep = format!(r#"{{"model":"m","messages":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(field_error(&deep), "messages");
        let mut invalid = br#"{"model":"m","messages":[{"content":""#.to_vec();
        invalid.push(0xFF);
        invalid.extend_from_slice(br#""}]}"#);
        match parse(Operation::Chat, Bytes::from(invalid), 64) {
            Err(ApiError::InvalidField { param, .. }) => assert_eq!(param, "messages"),
            other => panic!("{other:?}"),
        }
        assert_eq!(field_error(r#"{"model":"m","messages":[],"max_tokens":1,"max_tokens":2}"#), "max_tokens");
    }
}
