//! Start-up, background work, reload and graceful shutdown.

use portcullis_types::chain;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_auth::{SecretKind, SecretToken};
use portcullis_config::{AuditStartup, Config, ConfigError, Startup};
use portcullis_store::{NewAdminToken, Stores};
use portcullis_types::Secret;
use portcullis_types::admin::Role;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::auth::MIN_BOOTSTRAP_TOKEN_LEN;
use crate::lifecycle::Stage;
use crate::listener::{self, Listening, Site, Tls, TlsError};
use crate::listener_kind::ListenerKind;
use crate::runtime::Runtime;
use crate::state::AppState;
use portcullis_audit::{AuditWriter, Durability, Redactor, WriterConfig, WriterTask};
use portcullis_config::AuditDurability;

use crate::audit::Auditor;
use crate::authz::Leases;
use crate::limiter::LimiterHandle;
use crate::usage::{RecorderTask, UsageRecorder};
use crate::{StartError, admin, authz, caller_limits, changes, clock, proxy, store};

/// How often settled usage is written to the store: the most a crash can lose.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long the change log keeps a change: far longer than any replica's follower can lag
/// while it still runs (a replica further behind drops its whole cache instead).
const CHANGE_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How often key use times are written back and idle limiter state is dropped.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);

/// A server whose store is ready and whose listeners are bound, not yet serving.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    proxy: TcpListener,
    admin: TcpListener,
    /// `authz.listen`, when the authorizer is on.
    authz: Option<TcpListener>,
    generated_admin_token: Option<Secret<String>>,
    recorder_task: RecorderTask,
    audit_task: WriterTask,
    /// Where the change follower starts; see [`crate::changes`].
    change_cursor: u64,
    tls: TlsListeners,
}

impl Server {
    /// Opens and migrates the store, makes sure an admin token exists, binds both listeners.
    ///
    /// `bootstrap_token` is `PORTCULLIS_ADMIN_TOKEN`. Without it, and with no admin token on
    /// file, a fresh `pct_` admin token is created; [`Server::take_generated_admin_token`]
    /// hands it out once.
    pub async fn bind(config: Config, bootstrap_token: Option<String>) -> Result<Server, StartError> {
        if bootstrap_token.as_ref().is_some_and(|token| token.len() < MIN_BOOTSTRAP_TOKEN_LEN) {
            return Err(StartError::Config(format!(
                "PORTCULLIS_ADMIN_TOKEN must be at least {MIN_BOOTSTRAP_TOKEN_LEN} characters"
            )));
        }
        let (startup, live) = config.split();
        crate::check_backends(&startup)?;
        // `Config::parse` has compiled these already: only a config built some other way fails here.
        let redactor = Redactor::new(&startup.audit.redact)
            .map_err(|error| StartError::Setting { setting: "audit.redact", source: error.into() })?;
        let backend = store::open(&startup.store)?;
        let stores = backend.stores.clone();
        let applied = stores.migrator.migrate().await.map_err(StartError::store("migrating the store"))?;
        if applied > 0 {
            tracing::info!(applied, "store migrations applied");
        }
        let tls = TlsListeners::load(&startup)?;
        let proxy = bind(startup.server.listen)?;
        let admin = bind(startup.admin.listen)?;
        let authz = startup.authz.listen.map(bind).transpose()?;
        let limiter = LimiterHandle::from_config(&startup.limits).await?;
        let change_cursor =
            stores.changes.latest_change().await.map_err(StartError::store("reading the change log"))?;
        caller_limits::seed_from_usage(limiter.limiter().as_ref(), stores.usage.as_ref(), OffsetDateTime::now_utc())
            .await
            .map_err(StartError::store("seeding the limiter from recorded usage"))?;
        let (recorder, recorder_task) = UsageRecorder::start(stores.usage.clone(), USAGE_FLUSH_INTERVAL);
        let (audit_handle, audit_task) = AuditWriter::start(writer_config(&startup.audit), backend.audit.clone())
            .await
            .map_err(StartError::Audit)?;
        let auditor = Auditor::new(audit_handle);
        let settings = (startup, live);
        let state = AppState::new(settings, backend, bootstrap_token.as_deref(), limiter, recorder, auditor, redactor);
        let generated_admin_token = match bootstrap_token {
            Some(_) => None,
            None => first_admin_token(&stores, &state).await?,
        };
        Ok(Server { state, proxy, admin, authz, generated_admin_token, recorder_task, audit_task, change_cursor, tls })
    }

    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The authorizer's address, when `authz.listen` is set.
    pub fn authz_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.authz.as_ref().map(TcpListener::local_addr)
    }

    pub fn take_generated_admin_token(&mut self) -> Option<Secret<String>> {
        self.generated_admin_token.take()
    }

    /// Starts accepting on both listeners.
    pub fn serve(self) -> RunningServer {
        let stop = CancellationToken::new();
        let startup = self.state.startup.clone();
        let caps = ConnectionCaps::for_open_files(&startup, open_files_limit());
        let server = &startup.server;
        let proxy_listening =
            Listening::new(server, caps.proxy, server.max_connections_per_client, self.tls.proxy.clone());
        let admin_listening =
            Listening::new(server, caps.admin, startup.admin.max_connections_per_client, self.tls.admin.clone());
        let context = self.state.site_context();
        let proxy_site = Site {
            kind: ListenerKind::Proxy,
            router: proxy::router(self.state.proxy()),
            context: context.clone(),
            grpc_streams: None,
        };
        let cut = CancellationToken::new();
        let proxy =
            tokio::spawn(listener::accept_until(self.proxy, proxy_site, proxy_listening, stop.clone(), cut.clone()));
        let admin_site = Site {
            kind: ListenerKind::Admin,
            router: admin::router(self.state.admin()),
            context: context.clone(),
            grpc_streams: None,
        };
        let admin =
            tokio::spawn(listener::accept_until(self.admin, admin_site, admin_listening, stop.clone(), cut.clone()));
        let authz = self.authz.map(|listener| {
            let leases = self.state.leases(stop.clone());
            let site = Site {
                kind: ListenerKind::Authz,
                router: authz::router(self.state.authz(leases.clone(), &context)),
                context,
                grpc_streams: Some(authz::GRPC_PATH_PREFIX),
            };
            // Gateways hold many connections for many clients: no per-address cap.
            let listening = Listening::new(server, startup.authz.max_connections, 0, self.tls.authz.clone());
            let accepting = tokio::spawn(listener::accept_until(listener, site, listening, stop.clone(), cut.clone()));
            Authorizer { accepting, leases }
        });
        let flusher = tokio::spawn(housekeeping(self.state.clone(), stop.clone()));
        let follower = tokio::spawn(changes::follow(self.state.change_follower(), self.change_cursor, stop.clone()));
        RunningServer {
            state: self.state,
            stop,
            cut,
            proxy,
            admin,
            authz,
            flusher,
            follower,
            recorder_task: self.recorder_task,
            audit_task: self.audit_task,
            tls: self.tls,
        }
    }
}

/// The listeners' TLS material, reloaded together.
#[derive(Debug)]
pub(crate) struct TlsListeners {
    proxy: Option<Arc<Tls>>,
    admin: Option<Arc<Tls>>,
    authz: Option<Arc<Tls>>,
}

impl TlsListeners {
    pub(crate) fn load(startup: &Startup) -> Result<TlsListeners, StartError> {
        let load = |setting: &'static str, files: Option<&portcullis_config::TlsConfig>| {
            files
                .map(|files| Tls::load(setting, files).map(Arc::new))
                .transpose()
                .map_err(|error| StartError::Setting { setting, source: error.into() })
        };
        Ok(TlsListeners {
            proxy: load("server.tls", startup.server.tls.as_ref())?,
            admin: load("admin.tls", startup.admin.tls.as_ref())?,
            authz: load("authz.tls", startup.authz.tls.as_ref())?,
        })
    }

    /// Reads every listener's files again; installs them only if all are good.
    fn reload(&self) -> Result<(), TlsError> {
        let listeners = [&self.proxy, &self.admin, &self.authz];
        let prepared = listeners
            .iter()
            .filter_map(|tls| tls.as_ref())
            .map(|tls| tls.prepare().map(|prepared| (tls, prepared)))
            .collect::<Result<Vec<_>, _>>()?;
        for (tls, prepared) in prepared {
            tls.install(prepared);
        }
        Ok(())
    }
}

fn writer_config(audit: &AuditStartup) -> WriterConfig {
    let mut writer = WriterConfig::new(crate::audit::node_name(audit), &audit.spill_file);
    writer.durability = durability(audit);
    writer.file_sink = audit.file.as_ref().map(Into::into);
    writer.stdout_sink = audit.stdout;
    writer
}

fn durability(audit: &AuditStartup) -> Durability {
    match audit.durability {
        AuditDurability::Async => Durability::Async,
        AuditDurability::Sync => Durability::Sync,
    }
}

/// Descriptors kept for everything but client connections: the store's pool, Redis, the audit
/// files, health checks, listeners, logs.
const RESERVED_FILES: u64 = 256;

/// How many connections each listener may hold so that a flood of clients can never take the
/// descriptors the admin listener and the upstream connections need: every proxied connection
/// may need one upstream connection too, so the proxy gets at most half of what is left after
/// the admin listener's cap and [`RESERVED_FILES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnectionCaps {
    proxy: usize,
    admin: usize,
}

impl ConnectionCaps {
    fn for_open_files(config: &Startup, open_files: u64) -> ConnectionCaps {
        let admin = config.admin.max_connections;
        let left = open_files.saturating_sub(RESERVED_FILES + admin as u64);
        let fits = usize::try_from(left / 2).unwrap_or(usize::MAX).max(1);
        let proxy = config.server.max_connections.min(fits);
        if proxy < config.server.max_connections {
            tracing::warn!(
                configured = config.server.max_connections,
                effective = proxy,
                open_files,
                "server.max_connections lowered to fit the open-files limit (raise `ulimit -n` to allow more)"
            );
        }
        ConnectionCaps { proxy, admin }
    }
}

/// The open-files limit, raised to its hard limit first (a server needs many descriptors, and
/// the soft limit is often a desktop's 1024).
fn open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(error = %chain(&error), "could not read the open-files limit; assuming 1024");
            1024
        }
    }
}

/// Pending connections the kernel may queue: a burst of clients connecting at once must not
/// overflow the queue and wait a second for a SYN retransmit (tokio's default is 1024; the
/// kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    socket
        .and_then(|socket| {
            // A restart must not wait for the previous process's sockets in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(LISTEN_BACKLOG)
        })
        .map_err(|source| StartError::Bind { address, source })
}

/// Creates the first admin token when none exists, so a fresh install is manageable at once.
async fn first_admin_token(stores: &Stores, state: &AppState) -> Result<Option<Secret<String>>, StartError> {
    let existing = stores.tokens.list_tokens().await.map_err(StartError::store("reading the admin tokens"))?;
    if existing.iter().any(|token| token.role == Role::Admin && token.revoked_at.is_none()) {
        return Ok(None);
    }
    let secret = SecretToken::generate(SecretKind::AdminToken);
    let token = NewAdminToken {
        id: format!("tok_{}", ulid::Ulid::new()),
        name: "first admin".into(),
        secret_hash: *state.hasher.hash(&secret).as_bytes(),
        display_prefix: secret.display_prefix(),
        role: Role::Admin,
        team: None,
        created_by: "portcullis".into(),
        created_at: OffsetDateTime::now_utc(),
    };
    stores.tokens.create_token(token).await.map_err(StartError::store("creating the first admin token"))?;
    Ok(Some(Secret::new(secret.expose().to_string())))
}

/// The authorizer listener's accept loop, and the leases its decisions opened.
#[derive(Debug)]
struct Authorizer {
    accepting: JoinHandle<listener::Accepted>,
    leases: Leases,
}

/// A serving instance: reload it, or shut it down.
#[derive(Debug)]
pub struct RunningServer {
    state: AppState,
    stop: CancellationToken,
    /// Ends what is still open when the drain runs out of time.
    cut: CancellationToken,
    proxy: JoinHandle<listener::Accepted>,
    admin: JoinHandle<listener::Accepted>,
    authz: Option<Authorizer>,
    flusher: JoinHandle<()>,
    follower: JoinHandle<()>,
    recorder_task: RecorderTask,
    audit_task: WriterTask,
    tls: TlsListeners,
}

impl RunningServer {
    /// Applies a new configuration file: every live setting (models, tiers, limits, security
    /// thresholds, timeouts, …) takes effect for the next request, while in-flight requests
    /// finish on the old routes. Returns the dotted paths of the startup settings whose new value
    /// differs from the one the gateway runs with (not from the previous file, so reverting a
    /// change clears it): they wait for a restart.
    ///
    /// The listeners' TLS files are read again from the paths they started with; new handshakes
    /// use them, open connections keep theirs. If one cannot be used, nothing of the reload
    /// applies and the refusal is recorded as for an invalid file.
    pub fn reload(&self, config: Config) -> Result<Vec<String>, TlsError> {
        if let Err(error) = self.tls.reload() {
            self.state.reloads.refused(OffsetDateTime::now_utc(), &error.to_string());
            return Err(error);
        }
        let (startup, live) = config.split();
        let restart_required = self.state.startup.restart_required(&startup);
        let runtime = Runtime::new(live, Some(&self.state.runtime.load()));
        self.state.runtime.store(Arc::new(runtime));
        self.state.reloads.applied(OffsetDateTime::now_utc(), restart_required.clone());
        Ok(restart_required)
    }

    /// Records a reload whose file was refused; the running configuration stays.
    pub fn reload_refused(&self, error: &ConfigError) {
        self.state.reloads.refused(OffsetDateTime::now_utc(), &error.to_string());
    }

    /// Begins a shutdown without stopping anything: `/readyz` answers 503 and HTTP/1 answers
    /// close their connections, while the listeners keep accepting (for `server.drain_delay`,
    /// which the caller waits out before [`RunningServer::shutdown`]).
    pub fn start_draining(&self) {
        self.state.lifecycle.enter(Stage::Draining);
    }

    /// `server.drain_delay` as it is now.
    pub fn drain_delay(&self) -> std::time::Duration {
        self.state.runtime().live.server.drain_delay.0
    }

    /// Stops accepting, reports not-ready, and waits for in-flight requests (streams included)
    /// up to `server.shutdown_timeout`; then cuts what is left. Returns whether everything
    /// finished in time.
    pub async fn shutdown(self) -> bool {
        self.state.lifecycle.enter(Stage::Stopping);
        self.stop.cancel();
        let deadline = self.state.runtime().live.server.shutdown_timeout.0;
        let (proxy, admin) = (self.proxy.await, self.admin.await);
        // The authorizer's requests are quick checks: it drains beside the others, and its open
        // leases are charged once the last check is decided.
        let authz = match self.authz {
            Some(Authorizer { accepting, leases }) => accepting.await.ok().map(|accepted| (accepted, leases)),
            None => None,
        };
        let authz_accepted = authz.as_ref().map(|(accepted, _)| accepted);
        let drain_authz = |deadline| async move {
            match authz_accepted {
                Some(accepted) => listener::drain(accepted, deadline).await,
                None => true,
            }
        };
        let drained = match (proxy, admin) {
            (Ok(proxy), Ok(admin)) => {
                let (drained_proxy, drained_admin, drained_authz) = tokio::join!(
                    listener::drain(&proxy, deadline),
                    listener::drain(&admin, deadline),
                    drain_authz(deadline)
                );
                if !(drained_proxy && drained_admin && drained_authz) {
                    // Out of time: cut what is left, so that its requests still settle and are
                    // recorded (as cut at shutdown) before the writers drain below.
                    tracing::warn!("shutdown_timeout reached; cutting the requests still running");
                    self.state.lifecycle.enter(Stage::Cutting);
                    self.cut.cancel();
                    let _ = tokio::join!(
                        listener::drain(&proxy, listener::CUT_GRACE),
                        listener::drain(&admin, listener::CUT_GRACE)
                    );
                }
                drained_proxy && drained_admin && drained_authz
            }
            _ => false,
        };
        if let Some((_, leases)) = &authz {
            leases.close_all();
        }
        let _ = self.flusher.await;
        let _ = self.follower.await;
        self.state.limiter.drain().await;
        // Last: every request that ended has settled and handed its usage to the recorder.
        if let Err(error) = self.recorder_task.shutdown().await {
            tracing::error!(error = %chain(&error), "usage not fully written at shutdown");
        }
        // Every request has ended and submitted its record: drain the writer.
        if let Err(error) = self.audit_task.shutdown().await {
            tracing::error!(error = %chain(&error), "audit log not fully written at shutdown");
        }
        drained
    }
}

/// Every so often, and once more on shutdown: writes key use times back, forgets limiter state
/// that is as good as new (so the limiter holds only recently active callers), and deletes
/// audit records past `audit.retention`.
async fn housekeeping(state: AppState, stop: CancellationToken) {
    let mut since = 0;
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(HOUSEKEEPING_INTERVAL) => false,
            () = stop.cancelled() => true,
        };
        let now = OffsetDateTime::now_utc();
        let uses = state.keys.used_since(since);
        if !uses.is_empty()
            && let Err(error) = state.stores.keys.touch_keys(&uses).await
        {
            tracing::warn!(error = %chain(&error), "could not record key use times");
        }
        since = now.unix_timestamp();
        state.limiter.evict_idle(clock::unix_millis(now));
        prune_changes(&state, now).await;
        if let Some(retention) = state.runtime().live.audit.retention {
            match state.audit_store.delete_audit_before(now - retention.0).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "audit records past retention deleted"),
                Err(error) => tracing::warn!(error = %chain(&error), "audit retention failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// Deletes changes older than [`CHANGE_RETENTION`]. Every replica does it; the deletes are
/// idempotent and cheap.
async fn prune_changes(state: &AppState, now: OffsetDateTime) {
    if let Err(error) = state.stores.changes.prune_changes(now - CHANGE_RETENTION).await {
        tracing::warn!(error = %chain(&error), "change log pruning failed");
    }
}
