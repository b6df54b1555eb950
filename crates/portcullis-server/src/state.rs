//! The composition root: every shared component, built once at start, and the sub-states each
//! part of the server is given. Nothing but the server's start-up (and tests) names
//! [`AppState`]; the proxy, the admin API, the listeners and the background tasks each see only
//! their own sub-state.

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_audit::AuditStore;
use portcullis_audit::Redactor;
use portcullis_auth::SecretHasher;
use portcullis_config::{Live, Startup};
use portcullis_store::Stores;

use crate::admin::AdminState;
use crate::admin::auth::AdminAuth;
use crate::audit::Auditor;
use crate::authz::{AuthzState, Leases, Sinks};
use crate::certificate_cache::CertificateCache;
use crate::changes::Follower;
use crate::exchange::Recording;
use crate::health::Readiness;
use crate::key_cache::KeyCache;
use crate::lifecycle::Lifecycle;
use crate::limiter::LimiterHandle;
use crate::listener::SiteContext;
use crate::metrics::Metrics;
use crate::misuse::Misuse;
use crate::proxy::ProxyState;
use crate::proxy::ResponseIds;
use crate::reload::ReloadStatus;
use crate::runtime::{Runtime, SharedRuntime};
use crate::store::Backend;
use crate::team_cache::TeamCache;
use crate::usage::UsageRecorder;

#[derive(Clone)]
pub struct AppState {
    pub runtime: SharedRuntime,
    /// What the gateway was started with: a reload compares the file against this.
    pub startup: Arc<Startup>,
    /// When the running configuration was loaded, and how the last reload went.
    pub reloads: Arc<ReloadStatus>,
    pub stores: Stores,
    /// The audit log's store: for reading, verifying and retention (the writer holds its own).
    pub audit_store: Arc<dyn AuditStore>,
    pub keys: KeyCache,
    pub teams: TeamCache,
    /// Outlives reloads: counters must not reset when the configuration changes.
    pub limiter: LimiterHandle,
    pub recorder: UsageRecorder,
    pub misuse: Arc<Misuse>,
    pub auditor: Auditor,
    /// Built once at start from `audit.redact`.
    pub redactor: Arc<Redactor>,
    pub hasher: SecretHasher,
    /// The Responses API's id seal: one per process, shared by the proxies it builds.
    pub response_ids: ResponseIds,
    pub metrics: Arc<Metrics>,
    pub admin_auth: AdminAuth,
    pub lifecycle: Lifecycle,
    /// Unix seconds at start.
    pub started_at: i64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("runtime", &self.runtime).finish_non_exhaustive()
    }
}

impl AppState {
    /// The first argument is what [`portcullis_config::Config::split`] makes of the file.
    pub fn new(
        (startup, live): (Startup, Live),
        backend: Backend,
        bootstrap_token: Option<&str>,
        limiter: LimiterHandle,
        recorder: UsageRecorder,
        auditor: Auditor,
        redactor: Redactor,
    ) -> AppState {
        let Backend { stores, audit: audit_store } = backend;
        let hasher = SecretHasher::new(startup.security.key_pepper.as_ref().map(|pepper| pepper.expose().as_str()));
        let pepper = startup.security.key_pepper.as_ref().map(|pepper| pepper.expose().as_str());
        let response_ids = ResponseIds::new(pepper);
        let misuse = Arc::new(Misuse::new());
        let runtime = Arc::new(ArcSwap::from_pointee(Runtime::new(live, None)));
        let metrics = Arc::new(Metrics::new(runtime.clone(), limiter.clone(), auditor.stats().clone()));
        let keys = KeyCache::new(stores.keys.clone());
        let teams = TeamCache::new(stores.teams.clone());
        let admin_auth = AdminAuth::new(bootstrap_token, hasher.clone(), stores.tokens.clone());
        AppState {
            runtime,
            startup: Arc::new(startup),
            reloads: Arc::new(ReloadStatus::new(time::OffsetDateTime::now_utc())),
            stores,
            audit_store,
            keys,
            teams,
            limiter,
            recorder,
            misuse,
            auditor,
            redactor: Arc::new(redactor),
            hasher,
            response_ids,
            metrics,
            admin_auth,
            lifecycle: Lifecycle::default(),
            started_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        }
    }

    /// The current configuration and routes; hold the guard for one request at most.
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    pub fn proxy(&self) -> ProxyState {
        ProxyState::new(crate::proxy::Parts {
            runtime: self.runtime.clone(),
            stores: self.stores.clone(),
            keys: self.keys.clone(),
            certificates: CertificateCache::default(),
            teams: self.teams.clone(),
            limiter: self.limiter.clone(),
            recorder: self.recorder.clone(),
            misuse: self.misuse.clone(),
            auditor: self.auditor.clone(),
            redactor: self.redactor.clone(),
            hasher: self.hasher.clone(),
            response_ids: self.response_ids.clone(),
            metrics: self.metrics.clone(),
            readiness: self.readiness(),
            started_at: self.started_at,
        })
    }

    /// The registry of the authorizer's leases, whose expiry runs until `stop`; settled across
    /// the fleet when its limiter shares a Redis.
    pub fn leases(&self, stop: tokio_util::sync::CancellationToken) -> Leases {
        let sinks =
            Sinks { recorder: self.recorder.clone(), auditor: self.auditor.clone(), metrics: self.metrics.clone() };
        let length = self.startup.authz.lease.0;
        #[cfg(feature = "redis")]
        if let Some(channel) = self.limiter.fleet_channel(crate::authz::SETTLEMENT_CHANNEL) {
            let node = crate::audit::node_name(&self.startup.audit);
            return crate::authz::start_relayed_leases(channel, node, length, sinks, stop);
        }
        Leases::start(length, sinks, None, stop)
    }

    /// The authorizer's state: decisions are recorded through `context`, its listener's.
    pub fn authz(&self, leases: Leases, context: &SiteContext) -> AuthzState {
        let authz = &self.startup.authz;
        AuthzState::new(crate::authz::Parts {
            proxy: self.proxy(),
            leases,
            recording: context.recording.clone(),
            gateways: authz.gateways.clone(),
            // Validated as a header name when the configuration was read.
            model_header: http::HeaderName::from_bytes(authz.model_header.as_bytes())
                .unwrap_or(http::HeaderName::from_static("x-portcullis-model")),
            max_body_bytes: self.runtime().live.server.max_body_bytes,
        })
    }

    pub fn admin(&self) -> AdminState {
        AdminState::new(crate::admin::Parts {
            runtime: self.runtime.clone(),
            stores: self.stores.clone(),
            audit_store: self.audit_store.clone(),
            keys: self.keys.clone(),
            teams: self.teams.clone(),
            limiter: self.limiter.clone(),
            auth: self.admin_auth.clone(),
            reloads: self.reloads.clone(),
            metrics: self.metrics.clone(),
            readiness: self.readiness(),
            proxy_tls: self.startup.server.tls.clone(),
        })
    }

    /// What both listeners' connections and access logs share.
    pub fn site_context(&self) -> Arc<SiteContext> {
        let recording = Recording {
            auditor: self.auditor.clone(),
            metrics: self.metrics.clone(),
            lifecycle: self.lifecycle.clone(),
        };
        Arc::new(SiteContext {
            runtime: self.runtime.clone(),
            max_headers: self.startup.server.max_headers,
            redactor: self.redactor.clone(),
            recording: Arc::new(recording),
        })
    }

    pub fn change_follower(&self) -> Follower {
        Follower {
            log: self.stores.changes.clone(),
            runtime: self.runtime.clone(),
            keys: self.keys.clone(),
            teams: self.teams.clone(),
            metrics: self.metrics.clone(),
        }
    }

    fn readiness(&self) -> Readiness {
        Readiness {
            lifecycle: self.lifecycle.clone(),
            store: self.stores.migrator.clone(),
            limiter: self.limiter.clone(),
            audit: self.auditor.stats().clone(),
            runtime: self.runtime.clone(),
        }
    }
}

#[cfg(test)]
impl AppState {
    /// A state on a fresh in-memory SQLite store with the default configuration (and
    /// `bootstrap` as the bootstrap admin token); the store and the recorder's task come with it.
    pub async fn in_memory_for_tests(bootstrap: Option<&str>) -> (AppState, Stores, crate::usage::RecorderTask) {
        let config = portcullis_config::Config::parse("", |_| None).unwrap();
        AppState::in_memory_with_config_for_tests(config, bootstrap).await
    }

    /// [`AppState::in_memory_for_tests`] with `config`.
    pub async fn in_memory_with_config_for_tests(
        config: portcullis_config::Config,
        bootstrap: Option<&str>,
    ) -> (AppState, Stores, crate::usage::RecorderTask) {
        let backend = Backend::of(Arc::new(portcullis_store_sqlite::SqliteStore::open_in_memory().unwrap()));
        let stores = backend.stores.clone();
        stores.migrator.migrate().await.unwrap();
        let (recorder, task) = UsageRecorder::start(stores.usage.clone(), std::time::Duration::from_secs(3600));
        let state = AppState::for_tests(config, backend, bootstrap, recorder).await;
        (state, stores, task)
    }

    /// A state for in-process router tests: an in-memory limiter and an audit writer (its spill
    /// file in a fresh temporary directory) on `stores`.
    pub async fn for_tests(
        config: portcullis_config::Config,
        backend: Backend,
        bootstrap: Option<&str>,
        recorder: UsageRecorder,
    ) -> AppState {
        let spill = std::env::temp_dir().join(format!("portcullis-test-spill-{}.jsonl", ulid::Ulid::new()));
        let writer = portcullis_audit::WriterConfig::new("test-node", spill);
        let (handle, _writer_task) = portcullis_audit::AuditWriter::start(writer, backend.audit.clone()).await.unwrap();
        let limiter = LimiterHandle::memory();
        let redactor = Redactor::new(&config.audit.redact).unwrap();
        AppState::new(config.split(), backend, bootstrap, limiter, recorder, Auditor::new(handle), redactor)
    }
}
