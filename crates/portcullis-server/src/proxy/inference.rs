//! `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`: the request phases in order.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use http::{HeaderMap, HeaderValue, header};
use portcullis_auth::Scope;
use portcullis_upstream::{ForwardRequest, UpstreamError};

use super::authorize::may_use_model;
use super::body::{self, Operation};
use super::{UNKNOWN_PEER, caller};
use crate::access_log::AccessInfo;
use crate::error::ApiError;
use crate::request_id::{self, RequestId};
use crate::state::AppState;

/// Client headers a model server may see. An allow-list: credentials, cookies and anything
/// else the client sent stay here.
const FORWARDED_HEADERS: [header::HeaderName; 3] = [header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

pub async fn chat(state: State<AppState>, request: Request) -> Response {
    handle(state, Operation::Chat, request).await
}

pub async fn completions(state: State<AppState>, request: Request) -> Response {
    handle(state, Operation::Completions, request).await
}

pub async fn embeddings(state: State<AppState>, request: Request) -> Response {
    handle(state, Operation::Embeddings, request).await
}

async fn handle(State(state): State<AppState>, operation: Operation, request: Request) -> Response {
    let mut info = AccessInfo::default();
    let result = serve(&state, operation, request, &mut info).await;
    info.respond(result)
}

async fn serve(
    state: &AppState,
    operation: Operation,
    request: Request,
    info: &mut AccessInfo,
) -> Result<Response, ApiError> {
    let runtime = state.runtime();
    let config = &runtime.config;
    let (parts, body) = request.into_parts();

    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(UNKNOWN_PEER, |info| info.0);
    let principal = caller(state, peer, &parts.headers, scope_of(operation), info).await?;

    let bytes = body::read(body, &parts.headers, config.server.max_body_bytes).await?;
    let parsed = body::parse(operation, bytes)?;
    if !runtime.upstreams.contains(&parsed.model) {
        return Err(ApiError::ModelNotFound { model: parsed.model });
    }
    // Only configured names become metric labels: clients cannot grow label sets at will.
    info.model = Some(parsed.model.clone());
    if !may_use_model(config, &principal, &parsed.model) {
        return Err(ApiError::ModelNotAllowed { model: parsed.model });
    }

    let forward = ForwardRequest {
        model: parsed.model,
        path: operation.path().to_string(),
        headers: forwarded_headers(&parts.headers, parts.extensions.get::<RequestId>()),
        body: parsed.body,
    };
    let may_use = |model: &str| may_use_model(config, &principal, model);
    let upstream = runtime.upstreams.forward(forward, &may_use).await.map_err(upstream_error)?;
    info.upstream = Some(upstream.endpoint);
    info.model = Some(upstream.model);

    let mut response = Response::new(Body::new(upstream.body));
    *response.status_mut() = upstream.status;
    *response.headers_mut() = upstream.headers;
    Ok(response)
}

fn scope_of(operation: Operation) -> Scope {
    match operation {
        Operation::Chat => Scope::Chat,
        Operation::Completions => Scope::Completions,
        Operation::Embeddings => Scope::Embeddings,
    }
}

fn forwarded_headers(client: &HeaderMap, request_id: Option<&RequestId>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(FORWARDED_HEADERS.len() + 1);
    for name in FORWARDED_HEADERS {
        if let Some(value) = client.get(&name) {
            headers.insert(name, value.clone());
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

fn upstream_error(error: UpstreamError) -> ApiError {
    tracing::warn!(%error, "upstream failed");
    match error {
        UpstreamError::Timeout { .. } => ApiError::UpstreamTimeout,
        UpstreamError::Overloaded { retry_after_secs } => ApiError::Overloaded { retry_after_secs },
        UpstreamError::UnknownModel => ApiError::Internal,
        UpstreamError::Unavailable { .. } => ApiError::UpstreamUnavailable,
    }
}
