//! What a model server stored of the Responses API: `GET`/`DELETE /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items` and `POST /v1/responses/{id}/cancel`. The id is one
//! the gateway sealed for its caller (see [`super::response_ids`]): it names the model whose
//! servers hold the response, and opens for no one else — whose answer is the same 404 as an
//! id that never existed. Nothing is generated, so nothing is reserved or billed; each call is
//! audited like every other.

use std::sync::atomic::AtomicBool;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use portcullis_auth::Scope;
use portcullis_upstream::{ForwardRequest, UpstreamResponse};

use super::answer::MAX_CHECKED_BODY;
use super::authorize::may_use_model;
use super::body::Operation;
use super::inference::{edited, forwarded_headers, relayed_headers, upstream_error};
use super::rename::Rename;
use super::sealed::Sealing;
use super::{ProxyState, caller, refusal, team_of};
use crate::error::ApiError;
use crate::exchange::Exchange;
use crate::request_id::RequestId;

pub async fn get(
    state: State<ProxyState>,
    exchange: Exchange,
    id: Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    serve(state, exchange, id, (Method::GET, ""), request).await
}

pub async fn delete(
    state: State<ProxyState>,
    exchange: Exchange,
    id: Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    serve(state, exchange, id, (Method::DELETE, ""), request).await
}

pub async fn input_items(
    state: State<ProxyState>,
    exchange: Exchange,
    id: Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    serve(state, exchange, id, (Method::GET, "/input_items"), request).await
}

pub async fn cancel(
    state: State<ProxyState>,
    exchange: Exchange,
    id: Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    serve(state, exchange, id, (Method::POST, "/cancel"), request).await
}

async fn serve(
    State(state): State<ProxyState>,
    exchange: Exchange,
    Path(id): Path<String>,
    (method, suffix): (Method, &str),
    request: Request,
) -> Result<Response, ApiError> {
    let runtime = state.runtime();
    let live = &runtime.live;
    let (parts, _) = request.into_parts();
    let principal = caller(&state, &exchange, &parts.headers, Scope::Responses).await?;
    let unknown = || ApiError::NotFound { what: "response" };
    let opened = state.response_ids().open(&principal.id, &id).ok_or_else(unknown)?;
    let team = team_of(&state, live, &principal).await?;
    let tier = principal.tier(team.as_deref(), live);
    let model = opened.model;
    if !runtime.upstreams.contains(&model) || !may_use_model(live, &principal, tier, &model) {
        return Err(unknown());
    }
    exchange.note(|info| info.model = Some(model.clone()));
    let query = parts.uri.query().map(|query| format!("?{query}")).unwrap_or_default();
    let forward = ForwardRequest {
        method,
        model: model.clone(),
        path: format!("/v1/responses/{}{suffix}{query}", opened.upstream_id),
        headers: forwarded_headers(Operation::Responses, &parts.headers, parts.extensions.get::<RequestId>()),
        body: Bytes::new(),
        priority: 0,
    };
    // Only the model that served it holds it: no fallback.
    let upstream = runtime.upstreams.forward(forward, &|name: &str| name == model, &AtomicBool::new(false)).await;
    let UpstreamResponse { status, headers, body, endpoint, .. } = upstream.map_err(upstream_error)?;
    exchange.note(|info| info.upstream = Some(endpoint));
    if status == StatusCode::NOT_FOUND {
        return Err(unknown());
    }
    let mut headers = relayed_headers(&headers);
    if !status.is_success() {
        return Ok(refusal::answer(status, headers, body, &exchange).await);
    }
    let body = Limited::new(body, MAX_CHECKED_BODY)
        .collect()
        .await
        .map_err(|_| ApiError::UpstreamInvalid { what: "its body failed before it was complete" })?
        .to_bytes();
    let serving = live.model(&model);
    let rename =
        serving.and_then(|serving| Rename::new(serving.upstream_model(), &model, serving.expose_upstream_model));
    let sealing = Sealing { ids: state.response_ids().clone(), principal: principal.id.clone(), model };
    let body = match edited(&body, rename.as_ref(), Some(&sealing)) {
        Some(edited) => {
            headers.remove(header::CONTENT_LENGTH);
            edited
        }
        None => body,
    };
    let mut response = (status, body).into_response();
    *response.headers_mut() = headers;
    Ok(response)
}
