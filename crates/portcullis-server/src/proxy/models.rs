//! `GET /v1/models` and `GET /v1/models/{id}`: only what the caller may use.

use axum::Json;
use axum::extract::{Path, State};
use http::HeaderMap;
use portcullis_auth::Scope;
use portcullis_types::openai::{Model, ModelList};

use super::ProxyState;
use super::authorize::may_use_model;
use super::{caller, team_of};
use crate::error::ApiError;
use crate::exchange::Exchange;

pub async fn list(
    State(state): State<ProxyState>,
    exchange: Exchange,
    headers: HeaderMap,
) -> Result<Json<ModelList>, ApiError> {
    let principal = caller(&state, &exchange, &headers, Scope::Models).await?;
    let runtime = state.runtime();
    let team = team_of(&state, &runtime.live, &principal).await?;
    let tier = principal.tier(team.as_deref(), &runtime.live);
    let created = state.started_at();
    let data = runtime
        .upstreams
        .model_names()
        .filter(|name| may_use_model(&runtime.live, &principal, tier, name))
        .map(|name| Model::new(name, created))
        .collect();
    Ok(Json(ModelList::new(data)))
}

/// An unknown model and one the caller may not use get the same 404.
pub async fn get(
    State(state): State<ProxyState>,
    exchange: Exchange,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Model>, ApiError> {
    let principal = caller(&state, &exchange, &headers, Scope::Models).await?;
    let runtime = state.runtime();
    let team = team_of(&state, &runtime.live, &principal).await?;
    let tier = principal.tier(team.as_deref(), &runtime.live);
    if runtime.upstreams.contains(&id) && may_use_model(&runtime.live, &principal, tier, &id) {
        exchange.note(|info| info.model = Some(id.clone()));
        Ok(Json(Model::new(id, state.started_at())))
    } else {
        Err(ApiError::ModelNotFound { model: id })
    }
}
