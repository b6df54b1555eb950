//! The stub's Anthropic Messages API (`/v1/messages`, plain and streamed with Anthropic's full
//! event sequence, and `/v1/messages/count_tokens`) and the server endpoints beyond inference:
//! rerank (`/v1/rerank`, TGI's `/rerank`), `/tokenize` and `/detokenize`.
//!
//! Like llama-server, a message's `usage` splits the prompt: half of its words (rounded down)
//! are reported as `cache_read_input_tokens`, the rest as `input_tokens`, so that a gateway
//! billing `input_tokens` alone bills too little.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    Behaviour, RecordedRequest, Shared, StreamEnd, error_response, lock, model_of, reply_pieces, sse_response,
};

/// The answer to a POST at one of these endpoints; `None` for any other path.
pub(super) fn answer(shared: &Arc<Shared>, behaviour: &Behaviour, request: &RecordedRequest) -> Option<Response> {
    let path = request.path.as_str();
    let endpoint: fn(&Arc<Shared>, &Behaviour, &Value) -> Response = if path.ends_with("/v1/messages") {
        message
    } else if path.ends_with("/v1/messages/count_tokens") {
        |_, _, body| axum::Json(json!({"input_tokens": prompt_words(body)})).into_response()
    } else if path.ends_with("/rerank") {
        rerank
    } else if path.ends_with("/tokenize") {
        |_, _, body| axum::Json(json!({"tokens": token_ids(body.get("content"))})).into_response()
    } else if path.ends_with("/detokenize") {
        detokenize
    } else {
        return None;
    };
    let Some(body) = request.body.as_ref().filter(|body| body.is_object()) else {
        let message = "the request body must be a JSON object";
        return Some(error_response(StatusCode::BAD_REQUEST, "invalid_request_error", None, message));
    };
    Some(endpoint(shared, behaviour, body))
}

/// Words of the prompt: the `system` prompt and every message's text.
fn prompt_words(body: &Value) -> usize {
    let system = body.get("system").map_or(0, super::word_count);
    (system + body.get("messages").map_or(0, super::word_count)).max(1)
}

/// `usage` as llama-server reports it: the prompt split between the cache and the rest.
fn usage(prompt: usize, output: usize) -> Value {
    let cached = prompt / 2;
    json!({"input_tokens": prompt - cached, "cache_read_input_tokens": cached, "output_tokens": output})
}

fn message(shared: &Arc<Shared>, behaviour: &Behaviour, body: &Value) -> Response {
    let model = model_of(body);
    let chunks = behaviour.stream_chunks;
    let cap = body.get("max_tokens").and_then(Value::as_u64).filter(|_| !behaviour.ignore_max_tokens);
    let count = cap.map_or(chunks, |cap| chunks.min(usize::try_from(cap).unwrap_or(usize::MAX)));
    let stop_reason = if count < chunks { "max_tokens" } else { "end_turn" };
    let prompt = prompt_words(body);
    let pieces = reply_pieces(&model, count);
    let id = format!("msg_stub_{}", shared.next_id.fetch_add(1, Ordering::SeqCst));

    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let mut reply = json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": pieces.concat()}],
            "stop_reason": stop_reason, "stop_sequence": null,
        });
        if !behaviour.omit_usage {
            reply["usage"] = usage(prompt, count);
        }
        return axum::Json(reply).into_response();
    }

    let mut start_usage = usage(prompt, 0);
    if behaviour.omit_usage {
        start_usage = json!({});
    }
    let mut events = vec![
        (
            "message_start",
            json!({"message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": start_usage,
            }}),
        ),
        ("content_block_start", json!({"index": 0, "content_block": {"type": "text", "text": ""}})),
        ("ping", json!({})),
    ];
    let first_delta = events.len();
    events.extend(pieces.iter().map(|piece| {
        let delta = json!({"index": 0, "delta": {"type": "text_delta", "text": piece}});
        ("content_block_delta", delta)
    }));
    events.push(("content_block_stop", json!({"index": 0})));
    let delta_usage = if behaviour.omit_usage { json!({}) } else { json!({"output_tokens": count}) };
    events.push((
        "message_delta",
        json!({"delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": delta_usage}),
    ));
    events.push(("message_stop", json!({})));
    let mut frames: Vec<Bytes> = events.iter().map(|(name, fields)| event(name, fields)).collect();
    let mut ending = StreamEnd::Close;
    if behaviour.reset_mid_stream {
        // Cut after the first generated piece.
        frames.truncate(first_delta + 1);
        ending = StreamEnd::Fail;
    }
    let gate = lock(&shared.behaviour).gate.take();
    sse_response(Arc::clone(shared), frames, behaviour.chunk_gap, gate, ending)
}

/// One SSE event of Anthropic's stream: its data names its `type` first, as Anthropic and
/// llama-server write it (gateways read it there without parsing the event).
fn event(name: &str, fields: &Value) -> Bytes {
    let fields = fields.to_string();
    let rest = fields.strip_prefix('{').unwrap_or("}");
    let separator = if rest == "}" { "" } else { "," };
    Bytes::from(format!("event: {name}\ndata: {{\"type\":\"{name}\"{separator}{rest}\n\n"))
}

/// Documents scored by the words they share with the query; `usage` counts every word read.
fn rerank(_: &Arc<Shared>, behaviour: &Behaviour, body: &Value) -> Response {
    let query = body.get("query").and_then(Value::as_str).unwrap_or_default();
    // llama.cpp and vLLM read `documents`, TGI `texts`.
    let documents: Vec<&str> = body
        .get("documents")
        .or_else(|| body.get("texts"))
        .and_then(Value::as_array)
        .map(|documents| documents.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let results: Vec<Value> = documents
        .iter()
        .enumerate()
        .map(|(index, document)| {
            let shared_words = document.split_whitespace().filter(|word| query.split_whitespace().any(|q| q == *word));
            json!({"index": index, "relevance_score": shared_words.count()})
        })
        .collect();
    let words =
        query.split_whitespace().count() + documents.iter().map(|doc| doc.split_whitespace().count()).sum::<usize>();
    let mut reply = json!({"model": model_of(body), "results": results});
    if !behaviour.omit_usage {
        reply["usage"] = json!({"prompt_tokens": words, "total_tokens": words});
    }
    axum::Json(reply).into_response()
}

/// One token a word, its id the word's length.
fn token_ids(content: Option<&Value>) -> Vec<usize> {
    content.and_then(Value::as_str).unwrap_or_default().split_whitespace().map(str::len).collect()
}

fn detokenize(_: &Arc<Shared>, _: &Behaviour, body: &Value) -> Response {
    let tokens = body.get("tokens").and_then(Value::as_array).map_or(0, Vec::len);
    axum::Json(json!({"content": vec!["tok"; tokens].join(" ")})).into_response()
}
