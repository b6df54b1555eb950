//! The stub's OpenAI Responses API: `POST /v1/responses` (plain, or streamed as `response.*`
//! events), and the stored responses a server keeps — `GET`/`DELETE /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items`, `POST /v1/responses/{id}/cancel`, and
//! `previous_response_id` naming one of them.
//!
//! A reply is made of the same [`reply_pieces`] as a chat reply; usage counts the words of
//! `input` (`input_tokens`) and the pieces (`output_tokens`), the cap is `max_output_tokens`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    Behaviour, RecordedRequest, Shared, StreamEnd, error_response, lock, model_of, reply_pieces, sse_response,
};
use super::{unix_now, word_count};

/// The answer to a Responses API request, or `None` when the request is for another API.
pub(super) fn route(
    shared: &Arc<Shared>,
    behaviour: &Behaviour,
    method: &Method,
    request: &RecordedRequest,
) -> Option<Response> {
    let (_, rest) = request.path.split_once("/v1/responses")?;
    let answer = match (method.clone(), rest.trim_start_matches('/').split('/').collect::<Vec<_>>().as_slice()) {
        (Method::POST, [""]) => create(shared, behaviour, request.body.as_ref()),
        (Method::GET, [id]) => {
            stored(shared, id).map_or_else(|| not_found(id), |stored| axum::Json(stored).into_response())
        }
        (Method::DELETE, [id]) => {
            lock(&shared.response_inputs).remove(*id);
            match lock(&shared.responses).remove(*id) {
                Some(_) => axum::Json(json!({"id": id, "object": "response", "deleted": true})).into_response(),
                None => not_found(id),
            }
        }
        (Method::POST, [id, "cancel"]) => match lock(&shared.responses).get_mut(*id) {
            Some(stored) => {
                stored["status"] = json!("cancelled");
                axum::Json(stored.clone()).into_response()
            }
            None => not_found(id),
        },
        (Method::GET, [id, "input_items"]) => match lock(&shared.response_inputs).get(*id) {
            Some(items) => axum::Json(json!({"object": "list", "data": items, "has_more": false})).into_response(),
            None => not_found(id),
        },
        _ => return None,
    };
    Some(answer)
}

fn stored(shared: &Shared, id: &str) -> Option<Value> {
    lock(&shared.responses).get(id).cloned()
}

fn not_found(id: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, "invalid_request_error", None, &format!("No response found with id '{id}'."))
}

fn create(shared: &Arc<Shared>, behaviour: &Behaviour, body: Option<&Value>) -> Response {
    let Some(body) = body.filter(|body| body.is_object()) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "the request body must be a JSON object",
        );
    };
    let previous = body.get("previous_response_id").and_then(Value::as_str);
    if let Some(previous) = previous
        && stored(shared, previous).is_none()
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("previous_response_not_found"),
            &format!("Previous response with id '{previous}' not found."),
        );
    }
    let model = model_of(body);
    let cap = body.get("max_output_tokens").and_then(Value::as_u64).filter(|_| !behaviour.ignore_max_tokens);
    let count = cap
        .map_or(behaviour.stream_chunks, |cap| behaviour.stream_chunks.min(usize::try_from(cap).unwrap_or(usize::MAX)));
    let pieces = reply_pieces(&model, count);
    let input_tokens = body.get("input").map_or(0, word_count).max(1);
    let usage = match behaviour.reported_usage {
        Some((input, output)) => {
            json!({"input_tokens": input, "output_tokens": output, "total_tokens": input.saturating_add(output)})
        }
        None => json!({"input_tokens": input_tokens, "output_tokens": count, "total_tokens": input_tokens + count}),
    };
    let number = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let id = format!("resp_stub{number}");
    let message_id = format!("msg_stub{number}");
    let text = pieces.concat();
    let message = |text: &str, status: &str| {
        json!({"type": "message", "id": message_id, "status": status, "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let mut response = json!({
        "id": id, "object": "response", "created_at": unix_now(), "status": "completed", "model": model,
        "previous_response_id": previous, "output": [message(&text, "completed")], "usage": usage,
    });
    if count < behaviour.stream_chunks {
        response["status"] = json!("incomplete");
        response["incomplete_details"] = json!({"reason": "max_output_tokens"});
    }
    if behaviour.omit_usage {
        response["usage"] = Value::Null;
    }
    if body.get("store").and_then(Value::as_bool) != Some(false) {
        lock(&shared.responses).insert(id.clone(), response.clone());
        let input = match body.get("input") {
            Some(Value::String(text)) => {
                json!([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}])
            }
            Some(other) => other.clone(),
            None => json!([]),
        };
        lock(&shared.response_inputs).insert(id.clone(), input);
    }
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return axum::Json(response).into_response();
    }

    let mut started = response.clone();
    started["status"] = json!("in_progress");
    started["output"] = json!([]);
    started["usage"] = Value::Null;
    let mut events = vec![
        ("response.created", json!({"response": started})),
        ("response.output_item.added", json!({"output_index": 0, "item": message("", "in_progress")})),
    ];
    events.extend(pieces.iter().map(|piece| {
        let delta = json!({"item_id": message_id, "output_index": 0, "content_index": 0, "delta": piece});
        ("response.output_text.delta", delta)
    }));
    events.push((
        "response.output_text.done",
        json!({"item_id": message_id, "output_index": 0, "content_index": 0, "text": text}),
    ));
    events.push(("response.output_item.done", json!({"output_index": 0, "item": message(&text, "completed")})));
    let finished = if count < behaviour.stream_chunks { "response.incomplete" } else { "response.completed" };
    events.push((finished, json!({"response": response})));
    let mut frames: Vec<Bytes> = events
        .into_iter()
        .enumerate()
        .map(|(sequence, (kind, event))| {
            // `type` first, as OpenAI sends it (and as gateways read it): the rest follows.
            let rest = event.to_string();
            let rest = rest.strip_prefix('{').unwrap_or(&rest);
            Bytes::from(format!("event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{sequence},{rest}\n\n"))
        })
        .collect();
    // Faults strike after the first delta: the stream is cut with text already relayed.
    let mut ending = if behaviour.hold_after_done { StreamEnd::Hold } else { StreamEnd::Close };
    if behaviour.reset_mid_stream {
        frames.truncate(3);
        ending = StreamEnd::Fail;
    } else if behaviour.invalid_event {
        frames.truncate(3);
        frames.push(Bytes::from_static(b"event: response.output_text.delta\ndata: <html>bad gateway</html>\n\n"));
    }
    let gate = lock(&shared.behaviour).gate.take();
    sse_response(Arc::clone(shared), frames, behaviour.chunk_gap, gate, ending)
}
