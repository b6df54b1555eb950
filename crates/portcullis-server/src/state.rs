//! Shared state. Read-mostly: the configuration and the model routes built from it sit behind
//! one `ArcSwap`, so a reload swaps them together and a request sees all-old or all-new.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use portcullis_auth::SecretHasher;
use portcullis_config::Config;
use portcullis_store::Stores;
use portcullis_upstream::Upstreams;

use portcullis_limits::Limiter;

use crate::admin::auth::AdminAuth;
use crate::key_cache::KeyCache;
use crate::metrics::Metrics;
use crate::team_cache::TeamCache;
use crate::usage::UsageRecorder;

/// Everything that changes on reload.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub upstreams: Arc<Upstreams>,
}

impl Runtime {
    /// Builds the model routes for `config` (and starts their health checks).
    pub fn new(config: Config) -> Runtime {
        let upstreams = Arc::new(Upstreams::new(&config.models));
        Runtime { config: Arc::new(config), upstreams }
    }
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("runtime", &self.inner.runtime).finish_non_exhaustive()
    }
}

struct Inner {
    runtime: Arc<ArcSwap<Runtime>>,
    stores: Stores,
    keys: KeyCache,
    teams: TeamCache,
    /// Outlives reloads: counters must not reset when the configuration changes.
    limiter: Arc<dyn Limiter>,
    recorder: UsageRecorder,
    hasher: SecretHasher,
    metrics: Metrics,
    admin_auth: AdminAuth,
    draining: AtomicBool,
    /// Unix seconds at start: the `created` time of every model in `/v1/models`.
    started_at: i64,
}

impl AppState {
    pub fn new(
        config: Config,
        stores: Stores,
        admin_auth: AdminAuth,
        limiter: Arc<dyn Limiter>,
        recorder: UsageRecorder,
    ) -> AppState {
        let hasher = SecretHasher::new(config.security.key_pepper.as_ref().map(|pepper| pepper.expose().as_str()));
        let runtime = Arc::new(ArcSwap::from_pointee(Runtime::new(config)));
        let metrics = Metrics::new(runtime.clone());
        let keys = KeyCache::new(stores.keys.clone());
        let teams = TeamCache::new(stores.teams.clone());
        AppState {
            inner: Arc::new(Inner {
                runtime,
                stores,
                keys,
                teams,
                limiter,
                recorder,
                hasher,
                metrics,
                admin_auth,
                draining: AtomicBool::new(false),
                started_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            }),
        }
    }

    /// The current configuration and routes; hold the guard for one request at most.
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.inner.runtime.load()
    }

    pub fn swap_runtime(&self, runtime: Runtime) {
        self.inner.runtime.store(Arc::new(runtime));
    }

    pub fn stores(&self) -> &Stores {
        &self.inner.stores
    }

    pub fn keys(&self) -> &KeyCache {
        &self.inner.keys
    }

    pub fn teams(&self) -> &TeamCache {
        &self.inner.teams
    }

    pub fn limiter(&self) -> &Arc<dyn Limiter> {
        &self.inner.limiter
    }

    pub fn recorder(&self) -> &UsageRecorder {
        &self.inner.recorder
    }

    pub fn hasher(&self) -> &SecretHasher {
        &self.inner.hasher
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn admin_auth(&self) -> &AdminAuth {
        &self.inner.admin_auth
    }

    pub fn started_at(&self) -> i64 {
        self.inner.started_at
    }

    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}
