//! `GET /admin/v1/config`: when the running configuration was loaded, how the last reload went,
//! and which settings wait for a restart. Any admin role may read it: it names fields, never
//! their values.

use axum::Json;
use axum::extract::State;
use portcullis_types::admin::ConfigStatusView;

use super::AdminState;
use super::auth::AdminCaller;

pub async fn status(State(state): State<AdminState>, _caller: AdminCaller) -> Json<ConfigStatusView> {
    Json(ConfigStatusView::clone(&state.reloads().view()))
}
