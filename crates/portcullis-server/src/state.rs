//! Shared state. Read-mostly: the live settings and the model routes built from them sit behind
//! one `ArcSwap`, so a reload swaps them together and a request sees all-old or all-new. The
//! startup settings the gateway runs with sit beside it, fixed until a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use arc_swap::ArcSwap;
use portcullis_audit::Redactor;
use portcullis_auth::SecretHasher;
use portcullis_config::{Live, Startup};
use portcullis_store::Stores;
use portcullis_upstream::Upstreams;

use portcullis_limits::Limiter;

use crate::limiter::LimiterBackend;

use crate::admin::auth::AdminAuth;
use crate::audit::Auditor;
use crate::key_cache::KeyCache;
use crate::metrics::Metrics;
use crate::misuse::Misuse;
use crate::reload::ReloadStatus;
use crate::team_cache::TeamCache;
use crate::usage::UsageRecorder;

/// Everything that changes on reload.
#[derive(Debug)]
pub struct Runtime {
    pub live: Arc<Live>,
    pub upstreams: Arc<Upstreams>,
}

impl Runtime {
    /// Builds the model routes for `live` (and starts their health checks).
    pub fn new(live: Live) -> Runtime {
        let upstreams = Arc::new(crate::routes::upstreams(&live.models));
        Runtime { live: Arc::new(live), upstreams }
    }
}

/// The stages of a shutdown, in order (see `RunningServer::shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serving = 0,
    /// Still accepting for `server.drain_delay`, but telling balancers and clients to go.
    Draining = 1,
    /// No longer accepting; in-flight requests finish within `server.shutdown_timeout`.
    Stopping = 2,
    /// Out of time: the connections still open are cut.
    Cutting = 3,
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
    /// What the gateway was started with: a reload compares the file against this.
    startup: Startup,
    /// When the running configuration was loaded, and how the last reload went.
    reloads: ReloadStatus,
    stores: Stores,
    keys: KeyCache,
    teams: TeamCache,
    /// Outlives reloads: counters must not reset when the configuration changes.
    limiter: LimiterBackend,
    recorder: UsageRecorder,
    misuse: Misuse,
    auditor: Auditor,
    /// Built once at start from `audit.redact`; shared by every request that captures content.
    redactor: Arc<Redactor>,
    hasher: SecretHasher,
    metrics: Metrics,
    admin_auth: AdminAuth,
    /// Where a shutdown has got to: a [`Stage`], only ever moved forward.
    stage: AtomicU8,
    /// Unix seconds at start: the `created` time of every model in `/v1/models`.
    started_at: i64,
}

impl AppState {
    /// The first argument is what [`portcullis_config::Config::split`] makes of the file.
    pub fn new(
        (startup, live): (Startup, Live),
        stores: Stores,
        admin_auth: AdminAuth,
        limiter: LimiterBackend,
        recorder: UsageRecorder,
        auditor: Auditor,
        redactor: Redactor,
    ) -> AppState {
        let hasher = SecretHasher::new(startup.security.key_pepper.as_ref().map(|pepper| pepper.expose().as_str()));
        let runtime = Arc::new(ArcSwap::from_pointee(Runtime::new(live)));
        let metrics = Metrics::new(runtime.clone(), limiter.clone(), auditor.stats().clone());
        let keys = KeyCache::new(stores.keys.clone());
        let teams = TeamCache::new(stores.teams.clone());
        AppState {
            inner: Arc::new(Inner {
                runtime,
                startup,
                reloads: ReloadStatus::new(time::OffsetDateTime::now_utc()),
                stores,
                keys,
                teams,
                limiter,
                recorder,
                misuse: Misuse::new(),
                auditor,
                redactor: Arc::new(redactor),
                hasher,
                metrics,
                admin_auth,
                stage: AtomicU8::new(Stage::Serving as u8),
                started_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            }),
        }
    }

    /// The startup settings the gateway runs with.
    pub fn startup(&self) -> &Startup {
        &self.inner.startup
    }

    pub fn reloads(&self) -> &ReloadStatus {
        &self.inner.reloads
    }

    /// The current live settings and routes; hold the guard for one request at most.
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
        self.inner.limiter.limiter()
    }

    pub fn limiter_backend(&self) -> &LimiterBackend {
        &self.inner.limiter
    }

    pub fn recorder(&self) -> &UsageRecorder {
        &self.inner.recorder
    }

    pub fn auditor(&self) -> &Auditor {
        &self.inner.auditor
    }

    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.inner.redactor
    }

    pub fn misuse(&self) -> &Misuse {
        &self.inner.misuse
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

    /// Moves the shutdown on to `stage` (never back).
    pub fn enter(&self, stage: Stage) {
        self.inner.stage.fetch_max(stage as u8, Ordering::SeqCst);
    }

    /// Not ready: `/readyz` answers 503 and HTTP/1 answers close their connection.
    pub fn is_draining(&self) -> bool {
        self.inner.stage.load(Ordering::SeqCst) >= Stage::Draining as u8
    }

    /// The listeners have stopped accepting: open connections close once idle.
    pub fn is_stopping(&self) -> bool {
        self.inner.stage.load(Ordering::SeqCst) >= Stage::Stopping as u8
    }

    /// The drain ran out of time: what is still open is cut (and settled, and recorded).
    pub fn is_cut(&self) -> bool {
        self.inner.stage.load(Ordering::SeqCst) >= Stage::Cutting as u8
    }
}

#[cfg(test)]
impl AppState {
    /// A state on a fresh in-memory SQLite store with the default configuration (and
    /// `bootstrap` as the bootstrap admin token); the store and the recorder's task come with it.
    pub async fn in_memory_for_tests(bootstrap: Option<&str>) -> (AppState, Stores, crate::usage::RecorderTask) {
        let backend = portcullis_store_sqlite::SqliteStore::open_in_memory().unwrap();
        let stores = Stores::from_backend(Arc::new(backend));
        stores.migrator.migrate().await.unwrap();
        let config = portcullis_config::Config::parse("", |_| None).unwrap();
        let (recorder, task) = UsageRecorder::start(stores.usage.clone(), std::time::Duration::from_secs(3600));
        let state = AppState::for_tests(config, stores.clone(), AdminAuth::new(bootstrap), recorder).await;
        (state, stores, task)
    }

    /// A state for in-process router tests: an in-memory limiter and an audit writer (its spill
    /// file in a fresh temporary directory) on `stores`.
    pub async fn for_tests(
        config: portcullis_config::Config,
        stores: Stores,
        admin_auth: AdminAuth,
        recorder: UsageRecorder,
    ) -> AppState {
        let spill = std::env::temp_dir().join(format!("portcullis-test-spill-{}.jsonl", ulid::Ulid::new()));
        let writer = portcullis_audit::WriterConfig::new("test-node", spill);
        let (handle, _writer_task) = portcullis_audit::AuditWriter::start(writer, stores.audit.clone()).await.unwrap();
        let limiter = LimiterBackend::memory();
        let redactor = Redactor::new(&config.audit.redact).unwrap();
        AppState::new(config.split(), stores, admin_auth, limiter, recorder, Auditor::new(handle), redactor)
    }
}
