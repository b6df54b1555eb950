//! The authorizer listener (`authz.listen`): for a gateway that forwards the traffic itself and
//! asks Portcullis whether each request may pass — with the proxy's callers, rules, limits and
//! audit (see [`check`]) — and reports afterwards what it used (see [`lease`]).
//!
//! - `/authz` and `/authz/nginx`: forward-auth over HTTP ([`forward_auth`]);
//! - `/authz/envoy/…`: Envoy's `ext_authz` over HTTP; Envoy's `ext_authz` and `ext_proc` over
//!   gRPC ([`envoy`]);
//! - `POST /authz/v1/usage`: usage reports ([`usage_report`]);
//! - `/healthz`, `/readyz`: as on the proxy.
//!
//! A usage report or an `ext_proc` observation is settled on the replica holding the lease
//! wherever it arrives (`relay`, when the fleet shares a Redis).

mod check;
mod envoy;
mod forward_auth;
mod lease;
#[cfg(feature = "redis")]
mod relay;
mod route;
mod state;
mod usage_report;

pub(crate) use envoy::GRPC_PATH_PREFIX;
pub use lease::{Leases, Sinks};
#[cfg(feature = "redis")]
pub use relay::{CHANNEL as SETTLEMENT_CHANNEL, start as start_relayed_leases};
pub use state::{AuthzState, Parts};

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{any, get, post};

use crate::error::ApiError;
use crate::health::{self, Readiness};

pub fn router(state: AuthzState) -> Router {
    Router::new()
        .route("/authz", any(forward_auth::as_is))
        .route("/authz/nginx", any(forward_auth::nginx))
        .route(&format!("{}/{{*path}}", envoy::http::PATH_PREFIX), any(envoy::http::check))
        .route("/authz/v1/usage", post(usage_report::report))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state.clone())
        .merge(envoy::grpc(state))
}

impl FromRef<AuthzState> for Readiness {
    fn from_ref(state: &AuthzState) -> Readiness {
        Readiness::from_ref(&state.proxy)
    }
}
