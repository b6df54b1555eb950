//! `GET /v1/models` and `GET /v1/models/{id}`: only what the caller may use.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::Response;
use http::HeaderMap;
use portcullis_auth::Scope;
use portcullis_types::openai::{Model, ModelList};

use super::authorize::may_use_model;
use super::caller;
use crate::access_log::AccessInfo;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, peer: ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    let mut info = AccessInfo::default();
    let result = async {
        let principal = caller(&state, peer.0, &headers, Scope::Models, &mut info).await?;
        let runtime = state.runtime();
        let created = state.started_at();
        let data = runtime
            .upstreams
            .model_names()
            .filter(|name| may_use_model(&runtime.config, &principal, name))
            .map(|name| Model::new(name, created))
            .collect();
        Ok::<_, ApiError>(Json(ModelList::new(data)))
    }
    .await;
    info.respond(result)
}

/// An unknown model and one the caller may not use get the same 404.
pub async fn get(
    State(state): State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut info = AccessInfo::default();
    let result = async {
        let principal = caller(&state, peer.0, &headers, Scope::Models, &mut info).await?;
        let runtime = state.runtime();
        if runtime.upstreams.contains(&id) && may_use_model(&runtime.config, &principal, &id) {
            info.model = Some(id.clone());
            Ok(Json(Model::new(id, state.started_at())))
        } else {
            Err(ApiError::ModelNotFound { model: id })
        }
    }
    .await;
    info.respond(result)
}
