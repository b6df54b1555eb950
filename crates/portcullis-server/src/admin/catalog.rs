//! `/admin/v1/tiers` and `/admin/v1/models`: what the configuration offers, read-only.

use axum::Json;
use axum::extract::State;
use portcullis_types::admin::{ListResponse, ModelView, TierView};

use super::AdminState;
use super::auth::AdminCaller;

pub async fn tiers(State(state): State<AdminState>, _caller: AdminCaller) -> Json<ListResponse<TierView>> {
    let runtime = state.runtime();
    let data = runtime
        .config
        .tiers
        .iter()
        .map(|(name, tier)| TierView {
            name: name.clone(),
            limits: tier.limits(),
            burst: tier.burst,
            priority: tier.priority,
            models: tier.models.clone(),
        })
        .collect();
    Json(ListResponse { data })
}

pub async fn models(State(state): State<AdminState>, _caller: AdminCaller) -> Json<ListResponse<ModelView>> {
    Json(ListResponse { data: state.runtime().upstreams.views() })
}
