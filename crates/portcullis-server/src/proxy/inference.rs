//! Every model call (`POST /v1/chat/completions`, `/v1/messages`, `/v1/rerank`…): the request
//! phases in order.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use http_body_util::Full;
use portcullis_config::{DEFAULT_MAX_EVENT_BYTES, Live};
use portcullis_limits::Price;
use portcullis_types::chain;
use portcullis_upstream::{ForwardRequest, UpstreamError, UpstreamResponse};

use super::ProxyState;
use super::admit::{self, price};
use super::answer::{self, Answer};
use super::anthropic;
use super::authorize::may_use_model;
use super::body::{self, Operation, ParsedRequest};
use super::meter::{Metered, OnFinish, StreamOptions};
use super::rename::Rename;
use super::rewrite::Rewritten;
use super::sealed::{self, Sealing};
use super::settle::Settlement;
use super::sse::StreamKind;
use super::{caller, capture, refusal, team_of};
use crate::caller_limits;
use crate::error::ApiError;
use crate::exchange::{AuditAtBodyEnd, Exchange};
use crate::request_id::{self, RequestId};

/// Client headers a model server may see. An allow-list: credentials, cookies and anything
/// else the client sent stay here.
const FORWARDED_HEADERS: [header::HeaderName; 3] = [header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

/// Model-server headers a client may see. An allow-list too: the server's name and version,
/// its cookies, its authentication challenges and whatever internals it adds stay here.
const RELAYED_HEADERS: [header::HeaderName; 4] =
    [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::CACHE_CONTROL, header::RETRY_AFTER];

/// The route that serves `operation`.
pub fn route(operation: Operation) -> MethodRouter<ProxyState> {
    post(move |state, exchange, request| serve(state, operation, exchange, request))
}

async fn serve(
    State(state): State<ProxyState>,
    operation: Operation,
    exchange: Exchange,
    request: Request,
) -> Result<Response, ApiError> {
    let runtime = state.runtime();
    let live = &runtime.live;
    let (parts, body) = request.into_parts();

    let principal = caller(&state, &exchange, &parts.headers, operation.scope()).await?;
    let team = team_of(&state, live, &principal).await?;
    let team = team.as_deref();
    let mut reading = body::Reading::start(body, &parts.headers, live.server.max_body_bytes)?;
    let (entered, bytes) = match reading.ready()? {
        Some(bytes) => (None, bytes),
        // The body is still coming: its concurrency slot is taken before it is waited for.
        None => (Some(admit::enter(&state, live, &principal, team).await?), reading.rest().await?),
    };
    let parsed = body::parse(operation, bytes, live.server.max_json_depth)?;
    if !runtime.upstreams.contains(&parsed.model) {
        return Err(ApiError::ModelNotFound { model: parsed.model });
    }
    let Some(upstream_path) = upstream_path(live, &parsed.model, operation) else {
        return Err(ApiError::NotServed { model: parsed.model, path: operation.path() });
    };
    // Only configured names become metric labels: clients cannot grow label sets at will.
    exchange.note(|info| {
        info.model = Some(parsed.model.clone());
        info.stream = parsed.stream;
    });
    let tier = principal.tier(team, live);
    if !may_use_model(live, &principal, tier, &parsed.model) {
        return Err(ApiError::ModelNotAllowed { model: parsed.model });
    }
    // A stored response's id is the caller's own, or no id at all.
    let (parsed, seal_for) = match operation {
        Operation::Responses => {
            let ids = state.response_ids();
            let parsed = sealed::open_previous(ids, &principal.id, parsed, live.server.max_json_depth)?;
            (parsed, Some((ids.clone(), principal.id.clone())))
        }
        _ => (parsed, None),
    };

    let admitted = admit::admit(&state, live, &principal, team, entered, &parsed, exchange.clone()).await?;
    let forward = ForwardRequest {
        method: http::Method::POST,
        model: parsed.model.clone(),
        path: upstream_path.to_string(),
        headers: forwarded_headers(operation, &parts.headers, parts.extensions.get::<RequestId>()),
        body: admitted.plan.body.clone(),
        priority: admitted.priority,
    };
    let may_use = |model: &str| may_use_model(live, &principal, tier, model);
    let sent = admitted.settlement.sent_flag();
    let mut response = match runtime.upstreams.forward(forward, &may_use, sent).await {
        Ok(upstream) => {
            exchange.note(|info| {
                info.upstream = Some(upstream.endpoint.clone());
                info.model = Some(upstream.model.clone());
            });
            if upstream.status.is_success() {
                let sealing =
                    seal_for.map(|(ids, principal)| Sealing { ids, principal, model: upstream.model.clone() });
                let relayed = Relayed { completion_cap: admitted.plan.completion_cap, sealing };
                relay(upstream, &parsed, relayed, admitted.settlement, live, &exchange).await
            } else {
                // The model server refused (4xx) or failed (5xx): nothing was generated.
                admitted.settlement.nothing_used();
                let UpstreamResponse { status, headers, body, .. } = upstream;
                refusal::answer(status, relayed_headers(&headers), body, &exchange).await
            }
        }
        Err(error) => {
            admitted.settlement.nothing_used();
            upstream_error(error).into_response()
        }
    };
    caller_limits::insert_headers(response.headers_mut(), &admitted.rate_headers);
    Ok(response)
}

/// What an answer is relayed with besides its request: the completion cap reserved for it, and
/// for the Responses API whose ids it shows.
struct Relayed {
    completion_cap: u64,
    sealing: Option<Sealing>,
}

/// The upstream's successful answer on its way to the client, metered so that the request
/// settles with its real usage when the body ends, whichever way it ends. A non-streamed answer
/// is checked first (see [`answer`]); one that is not what it claims is a 502, billed nothing.
async fn relay(
    upstream: UpstreamResponse,
    request: &ParsedRequest,
    Relayed { completion_cap, sealing }: Relayed,
    mut settlement: Settlement,
    live: &Live,
    exchange: &Exchange,
) -> Response {
    let UpstreamResponse { status, headers, body, model, .. } = upstream;
    let mut headers = relayed_headers(&headers);
    let is_event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    let streamed = request.stream && is_event_stream;
    // A fallback bills at its own price.
    let serving = live.model(&model);
    let price = serving.map_or(Price::FREE, price);
    let rename = serving
        .and_then(|serving| Rename::new(serving.upstream_model(), &request.model, serving.expose_upstream_model));
    settlement.served_by(model, price, streamed);
    // What generates no text (embeddings, say) has only its input captured.
    let capture = settlement.captures() && request.operation.generates();
    let body = if streamed {
        // The stream may lose its usage chunk on the way: its length is no longer known.
        headers.remove(header::CONTENT_LENGTH);
        let cap = completion_cap.saturating_mul(request.choices);
        let max_event_bytes = live.model(&request.model).map_or(DEFAULT_MAX_EVENT_BYTES, |model| model.max_event_bytes);
        let options = StreamOptions {
            kind: StreamKind::of(request.operation),
            strip_usage_chunk: request.operation.asks_stream_usage() && !request.wants_stream_usage,
            cap: Some(cap),
            capture,
            max_event_bytes,
        };
        let metered = Metered::stream(body, options, settle_at_end(settlement));
        let renamed = match rename {
            Some(rename) => Body::new(Rewritten::new(metered, rename)),
            None => Body::new(metered),
        };
        match sealing {
            Some(sealing) => Body::new(Rewritten::new(renamed, sealing.stream())),
            None => renamed,
        }
    } else {
        match answer::gather(request.operation, &headers, body).await {
            Ok(Answer::Whole { body, usage }) => {
                let completion = capture.then(|| capture::completion_text(&body));
                let body = match edited(&body, rename.as_ref(), sealing.as_ref()) {
                    Some(edited) => {
                        headers.remove(header::CONTENT_LENGTH);
                        edited
                    }
                    None => body,
                };
                Body::new(Metered::json(Full::new(body), usage, completion, settle_at_end(settlement)))
            }
            Ok(Answer::Large(body)) => Body::new(Metered::json(body, None, None, settle_at_end(settlement))),
            Err(unfit) => {
                settlement.nothing_used();
                tracing::warn!(?unfit, "model server's answer refused");
                exchange.note(|info| info.reason = Some(unfit.reason().to_string()));
                return ApiError::from(unfit).into_response();
            }
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(AuditAtBodyEnd);
    response
}

/// Whether the model's config opens `operation` to its callers (see [`upstream_path`]).
pub(crate) fn serves(live: &Live, model: &str, operation: Operation) -> bool {
    upstream_path(live, model, operation).is_some()
}

/// Where the model's server serves `operation`, if the model's config opens it: the inference
/// APIs are always open, at the client's path; the server's other endpoints only where the
/// model names them, at the path its kind of server (`models[].server`) serves them on.
fn upstream_path(live: &Live, model: &str, operation: Operation) -> Option<&'static str> {
    let Some(api) = operation.extra_api() else { return Some(operation.path()) };
    let server = live.model(model).filter(|model| model.extra_apis.contains(&api))?.server;
    match operation {
        Operation::Rerank => server.rerank_path(),
        Operation::Detokenize => server.detokenize_path(),
        _ => server.tokenize_path(),
    }
}

/// A JSON answer with the client's model name and (Responses API) sealed ids; `None` when
/// neither changed it.
pub(super) fn edited(body: &[u8], rename: Option<&Rename>, sealing: Option<&Sealing>) -> Option<Bytes> {
    let renamed = rename.and_then(|rename| rename.apply(body));
    let sealed = sealing.and_then(|sealing| sealing.json(renamed.as_deref().unwrap_or(body)));
    sealed.or(renamed)
}

/// Settles the request when its metered body ends.
fn settle_at_end(settlement: Settlement) -> OnFinish {
    Box::new(move |outcome| settlement.finish(outcome))
}

pub(super) fn relayed_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(RELAYED_HEADERS.len() + 8);
    for name in RELAYED_HEADERS {
        if let Some(value) = upstream.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    headers
}

pub(super) fn forwarded_headers(operation: Operation, client: &HeaderMap, request_id: Option<&RequestId>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(FORWARDED_HEADERS.len() + 3);
    let anthropic: &[header::HeaderName] = if operation.is_anthropic() { &anthropic::FORWARDED_HEADERS } else { &[] };
    for name in FORWARDED_HEADERS.iter().chain(anthropic) {
        if let Some(value) = client.get(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    if let Some(id) = request_id {
        headers.insert(request_id::HEADER, id.0.clone());
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    headers
}

pub(super) fn upstream_error(error: UpstreamError) -> ApiError {
    tracing::warn!(error = %chain(&error), "upstream failed");
    match error {
        UpstreamError::Timeout { .. } => ApiError::UpstreamTimeout,
        UpstreamError::Overloaded { retry_after_secs } => ApiError::Overloaded { retry_after_secs },
        UpstreamError::Exhausted { .. } => ApiError::Overloaded { retry_after_secs: 1 },
        UpstreamError::Resting { retry_after_secs, .. } => ApiError::UpstreamResting { retry_after_secs },
        UpstreamError::UnknownModel => ApiError::Internal,
        UpstreamError::Unavailable { .. } => ApiError::UpstreamUnavailable,
    }
}
