//! `/admin/v1/tiers` and `/admin/v1/models`: what the configuration offers, read-only.

use axum::Json;
use axum::extract::State;
use portcullis_types::admin::{ListResponse, ModelView, TierView};

use super::AdminState;
use super::auth::AdminCaller;
use crate::routes;

pub async fn tiers(State(state): State<AdminState>, _caller: AdminCaller) -> Json<ListResponse<TierView>> {
    let runtime = state.runtime();
    let data = runtime
        .live
        .tiers
        .iter()
        .map(|(name, tier)| TierView {
            name: name.clone(),
            limits: tier.limits.clone(),
            burst: tier.burst,
            priority: tier.priority,
            models: tier.models.patterns().to_vec(),
        })
        .collect();
    Json(ListResponse { data })
}

pub async fn models(State(state): State<AdminState>, _caller: AdminCaller) -> Json<ListResponse<ModelView>> {
    Json(ListResponse { data: state.runtime().upstreams.statuses().into_iter().map(routes::view).collect() })
}
