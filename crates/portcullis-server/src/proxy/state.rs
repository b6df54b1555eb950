//! What the proxy's handlers share: the parts of the server a model call reads, one `Arc` to
//! clone per request.

use std::sync::Arc;

use axum::extract::FromRef;
use portcullis_audit::Redactor;
use portcullis_auth::SecretHasher;
use portcullis_limits::Limiter;
use portcullis_store::Stores;

use super::response_ids::ResponseIds;
use crate::audit::Auditor;
use crate::certificate_cache::CertificateCache;
use crate::health::Readiness;
use crate::key_cache::KeyCache;
use crate::limiter::LimiterHandle;
use crate::metrics::Metrics;
use crate::misuse::Misuse;
use crate::runtime::{Runtime, SharedRuntime};
use crate::team_cache::TeamCache;
use crate::usage::UsageRecorder;

#[derive(Clone)]
pub struct ProxyState(Arc<Parts>);

/// The proxy's parts, as the server assembles them.
pub struct Parts {
    pub runtime: SharedRuntime,
    pub stores: Stores,
    pub keys: KeyCache,
    /// Client certificates mapped to callers (`[[auth.certificates]]`).
    pub certificates: CertificateCache,
    pub teams: TeamCache,
    pub limiter: LimiterHandle,
    pub recorder: UsageRecorder,
    pub misuse: Arc<Misuse>,
    pub auditor: Auditor,
    /// Built once at start from `audit.redact`; shared by every request that captures content.
    pub redactor: Arc<Redactor>,
    pub hasher: SecretHasher,
    /// Seals the Responses API's ids for their callers.
    pub response_ids: ResponseIds,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// Unix seconds at start: the `created` time of every model in `/v1/models`.
    pub started_at: i64,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState").field("runtime", &self.0.runtime).finish_non_exhaustive()
    }
}

impl ProxyState {
    pub fn new(parts: Parts) -> ProxyState {
        ProxyState(Arc::new(parts))
    }

    /// The current configuration and routes; hold the guard for one request at most.
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.0.runtime.load()
    }

    pub fn stores(&self) -> &Stores {
        &self.0.stores
    }

    pub fn keys(&self) -> &KeyCache {
        &self.0.keys
    }

    pub fn certificates(&self) -> &CertificateCache {
        &self.0.certificates
    }

    pub fn teams(&self) -> &TeamCache {
        &self.0.teams
    }

    pub fn limiter(&self) -> &Arc<dyn Limiter> {
        self.0.limiter.limiter()
    }

    pub fn recorder(&self) -> &UsageRecorder {
        &self.0.recorder
    }

    pub fn misuse(&self) -> &Misuse {
        &self.0.misuse
    }

    pub fn auditor(&self) -> &Auditor {
        &self.0.auditor
    }

    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.0.redactor
    }

    pub fn response_ids(&self) -> &ResponseIds {
        &self.0.response_ids
    }

    pub fn hasher(&self) -> &SecretHasher {
        &self.0.hasher
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn started_at(&self) -> i64 {
        self.0.started_at
    }
}

impl FromRef<ProxyState> for Readiness {
    fn from_ref(state: &ProxyState) -> Readiness {
        state.0.readiness.clone()
    }
}
