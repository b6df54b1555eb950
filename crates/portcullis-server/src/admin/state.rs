//! What the admin API's handlers share.

use std::sync::Arc;

use axum::extract::FromRef;
use portcullis_audit::AuditStore;
use portcullis_auth::SecretHasher;
use portcullis_config::TlsConfig;
use portcullis_limits::Limiter;
use portcullis_store::Stores;

use super::auth::AdminAuth;
use crate::health::Readiness;
use crate::key_cache::KeyCache;
use crate::limiter::LimiterHandle;
use crate::metrics::Metrics;
use crate::reload::ReloadStatus;
use crate::runtime::{Runtime, SharedRuntime};
use crate::team_cache::TeamCache;

#[derive(Clone)]
pub struct AdminState(Arc<Parts>);

/// The admin API's parts, as the server assembles them.
pub struct Parts {
    pub runtime: SharedRuntime,
    pub stores: Stores,
    pub audit_store: Arc<dyn AuditStore>,
    /// The proxy's caches: a change made here drops what they hold at once.
    pub keys: KeyCache,
    pub teams: TeamCache,
    /// Read only: where a credential's limits stand, for its explanation.
    pub limiter: LimiterHandle,
    pub auth: AdminAuth,
    /// How the running configuration came to be, for `GET /admin/v1/config`.
    pub reloads: Arc<ReloadStatus>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// The proxy listener's TLS files (`server.tls`), for explaining a client certificate.
    pub proxy_tls: Option<TlsConfig>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").field("runtime", &self.0.runtime).finish_non_exhaustive()
    }
}

impl AdminState {
    pub fn new(parts: Parts) -> AdminState {
        AdminState(Arc::new(parts))
    }

    /// The current configuration and routes; hold the guard for one request at most.
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.0.runtime.load()
    }

    pub fn stores(&self) -> &Stores {
        &self.0.stores
    }

    /// The audit log's store: for reading and verifying (the writer holds its own).
    pub fn audit_store(&self) -> &Arc<dyn AuditStore> {
        &self.0.audit_store
    }

    pub fn keys(&self) -> &KeyCache {
        &self.0.keys
    }

    pub fn teams(&self) -> &TeamCache {
        &self.0.teams
    }

    pub fn limiter(&self) -> &Arc<dyn Limiter> {
        self.0.limiter.limiter()
    }

    pub fn proxy_tls(&self) -> Option<&TlsConfig> {
        self.0.proxy_tls.as_ref()
    }

    pub fn hasher(&self) -> &SecretHasher {
        self.0.auth.hasher()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn reloads(&self) -> &ReloadStatus {
        &self.0.reloads
    }
}

impl FromRef<AdminState> for AdminAuth {
    fn from_ref(state: &AdminState) -> AdminAuth {
        state.0.auth.clone()
    }
}

impl FromRef<AdminState> for Readiness {
    fn from_ref(state: &AdminState) -> Readiness {
        state.0.readiness.clone()
    }
}
