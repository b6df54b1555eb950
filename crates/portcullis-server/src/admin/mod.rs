//! The admin listener: `/admin/v1/*` (authenticated by admin tokens), the OpenAPI document,
//! `/metrics`, `/healthz` and `/readyz`.

mod audit;
pub mod auth;
mod catalog;
mod config;
mod explain;
mod explain_certificate;
mod explanation;
mod extract;
mod keys;
#[cfg(test)]
mod openapi_check;
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
        .route("/admin/v1/auth/explain", post(explain::explain_credential))
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
    use http::StatusCode;
    use tower::ServiceExt;

    use super::openapi_check::{self, call, check_answer, document, is_described, operations, resolved};
    use super::*;

    async fn state() -> AdminState {
        crate::state::AppState::in_memory_for_tests(None).await.0.admin()
    }

    /// A tier with limits (a tier's answer carries them) and a model, so the catalog is not
    /// empty; the bootstrap token is [`openapi_check::TOKEN`].
    async fn catalog_router() -> Router {
        let config = "[limits]\ndefault_tier = \"pro\"\n\n[tiers.pro]\nrequests_per_minute = 60\nburst = 5\n\
                      tokens_per_day = 1000\nbudget_per_month = 2.5\nmodels = [\"m*\"]\n\n\
                      [[models]]\nname = \"m\"\nendpoints = [\"http://127.0.0.1:9\"]\n";
        let config = portcullis_config::Config::parse(config, |_| None).unwrap();
        let state = crate::state::AppState::in_memory_with_config_for_tests(config, Some(openapi_check::TOKEN)).await;
        router(state.0.admin())
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

    #[tokio::test]
    async fn every_operation_documents_a_schema_for_the_body_it_reads_and_for_each_answer() {
        let document = document();
        let router = catalog_router().await;
        let mut checked = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in operations(item) {
                let name = format!("{method} {path}");
                let responses = operation["responses"].as_object().unwrap_or_else(|| panic!("{name}: no responses"));
                for (status, response) in responses {
                    let content = resolved(&document, response)["content"].as_object();
                    let content = content.filter(|content| !content.is_empty());
                    for (media, body) in content.unwrap_or_else(|| panic!("{name}: the {status} answer has no content"))
                    {
                        assert!(
                            is_described(&document, &body["schema"]),
                            "{name}: the {status} {media} schema is empty"
                        );
                    }
                }
                // Every admin call but the document's reads its caller's token from the store.
                if !path.ends_with("openapi.json") {
                    assert!(responses.contains_key("503"), "{name}: the store being down is not documented");
                }
                // A malformed JSON body is a 400 where the operation reads one, and ignored elsewhere.
                let uri = path.replace("{id}", "key_x").replace("{name}", "acme");
                let (status, _) = call(&router, method, &uri, Some("{")).await;
                let reads_body = status == StatusCode::BAD_REQUEST;
                match operation.pointer("/requestBody/content/application~1json/schema") {
                    Some(schema) => {
                        assert!(reads_body, "{name} documents a body it does not read (answered {status})");
                        assert!(is_described(&document, schema), "{name}: its request body schema is empty");
                    }
                    None => assert!(!reads_body, "{name} reads a JSON body it does not document"),
                }
                checked += 1;
            }
        }
        assert!(checked >= 20, "the document lists every operation ({checked} found)");
    }

    #[tokio::test]
    async fn what_the_routes_answer_has_what_their_schemas_require_and_nothing_they_do_not_name() {
        let document = document();
        let router = catalog_router().await;
        let team = call(&router, "post", "/admin/v1/teams", Some(r#"{"name": "acme", "tier": "pro"}"#)).await;
        check_answer(&document, "/admin/v1/teams", "post", &team);
        let body = r#"{"name": "k", "team": "acme", "limits": {"max_concurrent": 2}, "expires_in": "1d"}"#;
        let key = call(&router, "post", "/admin/v1/keys", Some(body)).await;
        check_answer(&document, "/admin/v1/keys", "post", &key);
        let key_id = key.1["id"].as_str().unwrap().to_string();
        let secret = key.1["key"].as_str().unwrap().to_string();
        let explain = |credential: &str| serde_json::json!({ "credential": credential }).to_string();
        let explained = call(&router, "post", "/admin/v1/auth/explain", Some(&explain(&secret))).await;
        assert_eq!(
            (explained.0, &explained.1["accepted"]),
            (StatusCode::OK, &serde_json::json!(true)),
            "{}",
            explained.1
        );
        check_answer(&document, "/admin/v1/auth/explain", "post", &explained);
        let not_a_key =
            call(&router, "post", "/admin/v1/auth/explain", Some(&explain("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"))).await;
        assert_eq!(not_a_key.1["refused"]["code"], "invalid_api_key", "{}", not_a_key.1);
        check_answer(&document, "/admin/v1/auth/explain", "post", &not_a_key);
        let rotated = call(&router, "post", &format!("/admin/v1/keys/{key_id}/rotate"), None).await;
        check_answer(&document, "/admin/v1/keys/{id}/rotate", "post", &rotated);
        let token = call(&router, "post", "/admin/v1/tokens", Some(r#"{"name": "t", "role": "auditor"}"#)).await;
        check_answer(&document, "/admin/v1/tokens", "post", &token);
        // Refusals are documented too: a team that exists, a revoked key rotated, a key not there.
        let again = call(&router, "post", "/admin/v1/teams", Some(r#"{"name": "acme"}"#)).await;
        assert_eq!(again.0, StatusCode::CONFLICT);
        check_answer(&document, "/admin/v1/teams", "post", &again);
        call(&router, "post", &format!("/admin/v1/keys/{key_id}/revoke"), None).await;
        let revoked = call(&router, "post", &format!("/admin/v1/keys/{key_id}/rotate"), None).await;
        assert_eq!(revoked.0, StatusCode::CONFLICT);
        check_answer(&document, "/admin/v1/keys/{id}/rotate", "post", &revoked);
        let missing = call(&router, "get", "/admin/v1/keys/key_missing", None).await;
        check_answer(&document, "/admin/v1/keys/{id}", "get", &missing);

        let mut checked = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            let Some(get) = item.get("get") else { continue };
            if get.pointer("/responses/200/content/application~1json").is_none() {
                continue; // the export streams JSON Lines or CSV
            }
            let uri = path.replace("{id}", &key_id).replace("{name}", "acme");
            let answer = call(&router, "get", &uri, None).await;
            assert_eq!(answer.0, StatusCode::OK, "GET {uri}: {}", answer.1);
            check_answer(&document, path, "get", &answer);
            checked += 1;
        }
        assert!(checked >= 10, "every GET route with a JSON answer ({checked} found)");
    }
}
