//! The admin listener: `/admin/v1/*` (authenticated by admin tokens), the OpenAPI document,
//! `/metrics`, `/healthz` and `/readyz`.

mod audit;
pub mod auth;
mod catalog;
mod config;
mod extract;
mod keys;
mod plan;
mod refusal;
mod state;
mod teams;
mod tokens;
mod usage;
mod validate;
mod views;

pub use state::{AdminState, Parts};

use axum::Router;
use axum::routing::{get, post};
use http::header;

use crate::error::ApiError;
use crate::health;

/// The admin API's OpenAPI 3.1 description; a test checks it lists every route below.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The accept loop adds the request id and the access log around it (see `listener::access_log`).
/// Every `/admin/v1` handler takes an `AdminCaller`, so a request without a valid admin token
/// never reaches one.
/// `/metrics` and the health routes are unauthenticated (for scrapers and orchestrators):
/// bind the admin listener to a private address.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/v1/keys", get(keys::list).post(keys::create))
        .route("/admin/v1/keys/{id}", get(keys::get).patch(keys::update).delete(keys::revoke))
        .route("/admin/v1/keys/{id}/revoke", post(keys::revoke))
        .route("/admin/v1/keys/{id}/rotate", post(keys::rotate))
        .route("/admin/v1/teams", get(teams::list).post(teams::create))
        .route("/admin/v1/teams/{name}", get(teams::get).patch(teams::update))
        .route("/admin/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/admin/v1/tokens/{id}/revoke", post(tokens::revoke))
        .route("/admin/v1/tiers", get(catalog::tiers))
        .route("/admin/v1/models", get(catalog::models))
        .route("/admin/v1/config", get(config::status))
        .route("/admin/v1/usage", get(usage::report))
        .route("/admin/v1/audit", get(audit::query))
        .route("/admin/v1/audit/export", get(audit::export))
        .route("/admin/v1/audit/verify", get(audit::verify))
        .route("/admin/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

async fn metrics(axum::extract::State(state): axum::extract::State<AdminState>) -> impl axum::response::IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics().render())
}

/// Helpers shared by the admin handlers' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use portcullis_types::admin::Role;
    use serde::de::DeserializeOwned;

    use super::auth::AdminCaller;
    use crate::error::ApiError;

    pub fn caller(role: Role, team: Option<&str>) -> AdminCaller {
        AdminCaller { token_id: "tok_test".into(), role, team: team.map(Into::into), exchange: None }
    }

    pub fn admin() -> AdminCaller {
        caller(Role::Admin, None)
    }

    /// `pairs` as the query extractor of `path` reads them.
    pub fn ask<T: DeserializeOwned>(path: &str, pairs: &[(&str, &str)]) -> T {
        let text: Vec<String> =
            pairs.iter().map(|(name, value)| format!("{name}={}", value.replace('+', "%2B"))).collect();
        let uri: http::Uri = format!("{path}?{}", text.join("&")).parse().unwrap();
        axum::extract::Query::<T>::try_from_uri(&uri).unwrap().0
    }

    pub fn param_of(error: ApiError) -> Option<&'static str> {
        match error {
            ApiError::BadRequest { param, .. } => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    async fn state() -> AdminState {
        crate::state::AppState::in_memory_for_tests(None).await.0.admin()
    }

    /// Every operation the OpenAPI document lists is routed, and every one of them but the
    /// document itself is closed to a caller without an admin token.
    #[tokio::test]
    async fn every_documented_operation_exists_and_requires_an_admin_token() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let router = router(state().await);
        let mut checked = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in ["get", "post", "patch", "delete"].into_iter().filter(|m| item.get(*m).is_some()) {
                let uri = path.replace("{id}", "key_x").replace("{name}", "acme");
                let request = http::Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap();
                let status = router.clone().oneshot(request).await.unwrap().status().as_u16();
                let expected = if path.ends_with("openapi.json") { 200 } else { 401 };
                assert_eq!(status, expected, "{method} {path}");
                checked += 1;
            }
        }
        assert!(checked >= 17, "the document lists every operation ({checked} found)");
    }
}
