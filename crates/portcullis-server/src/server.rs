//! Start-up, background work, reload and graceful shutdown.

use portcullis_types::chain;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_auth::{SecretKind, SecretToken};
use portcullis_config::Config;
use portcullis_store::{NewAdminToken, Stores};
use portcullis_types::Secret;
use portcullis_types::admin::Role;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::auth::{AdminAuth, MIN_BOOTSTRAP_TOKEN_LEN};
use crate::listener::{self, Listening, Site};
use crate::state::{AppState, Runtime, Stage};
use portcullis_audit::{AuditWriter, Durability, Redactor, WriterConfig, WriterTask};
use portcullis_config::AuditDurability;

use crate::audit::Auditor;
use crate::limiter::LimiterBackend;
use crate::usage::{RecorderTask, UsageRecorder};
use crate::{StartError, admin, changes, limits, proxy, store};

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
    generated_admin_token: Option<Secret<String>>,
    recorder_task: RecorderTask,
    audit_task: WriterTask,
    /// Where the change follower starts; see [`crate::changes`].
    change_cursor: u64,
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
        crate::check_backends(&config.store, &config.limits)?;
        // `Config::parse` has compiled these already: only a config built some other way fails here.
        let redactor = Redactor::new(&config.audit.redact)
            .map_err(|error| StartError::Setting { setting: "audit.redact", source: error.into() })?;
        let stores = store::open(&config.store)?;
        let applied = stores.migrator.migrate().await.map_err(StartError::store("migrating the store"))?;
        if applied > 0 {
            tracing::info!(applied, "store migrations applied");
        }
        let proxy = bind(config.server.listen)?;
        let admin = bind(config.admin.listen)?;
        let limiter = LimiterBackend::from_config(&config.limits).await?;
        let change_cursor =
            stores.changes.latest_change().await.map_err(StartError::store("reading the change log"))?;
        limits::seed_from_usage(limiter.limiter().as_ref(), stores.usage.as_ref(), OffsetDateTime::now_utc())
            .await
            .map_err(StartError::store("seeding the limiter from recorded usage"))?;
        let (recorder, recorder_task) = UsageRecorder::start(stores.usage.clone(), USAGE_FLUSH_INTERVAL);
        let (audit_handle, audit_task) =
            AuditWriter::start(writer_config(&config), stores.audit.clone()).await.map_err(StartError::Audit)?;
        let auditor = Auditor::new(audit_handle);
        let admin_auth = AdminAuth::new(bootstrap_token.as_deref());
        let state = AppState::new(config, stores.clone(), admin_auth, limiter, recorder, auditor, redactor);
        let generated_admin_token = match bootstrap_token {
            Some(_) => None,
            None => first_admin_token(&stores, &state).await?,
        };
        Ok(Server { state, proxy, admin, generated_admin_token, recorder_task, audit_task, change_cursor })
    }

    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn take_generated_admin_token(&mut self) -> Option<Secret<String>> {
        self.generated_admin_token.take()
    }

    /// Starts accepting on both listeners.
    pub fn serve(self) -> RunningServer {
        let stop = CancellationToken::new();
        let config = self.state.runtime().config.clone();
        let caps = ConnectionCaps::for_open_files(&config, open_files_limit());
        let server = &config.server;
        let proxy_listening = Listening::new(server, caps.proxy, server.max_connections_per_client);
        let admin_listening = Listening::new(server, caps.admin, config.admin.max_connections_per_client);
        let proxy_site = Site { name: "proxy", router: proxy::router(self.state.clone()), state: self.state.clone() };
        let cut = CancellationToken::new();
        let proxy =
            tokio::spawn(listener::accept_until(self.proxy, proxy_site, proxy_listening, stop.clone(), cut.clone()));
        let admin_site = Site { name: "admin", router: admin::router(self.state.clone()), state: self.state.clone() };
        let admin =
            tokio::spawn(listener::accept_until(self.admin, admin_site, admin_listening, stop.clone(), cut.clone()));
        let flusher = tokio::spawn(housekeeping(self.state.clone(), stop.clone()));
        let follower = tokio::spawn(changes::follow(self.state.clone(), self.change_cursor, stop.clone()));
        RunningServer {
            state: self.state,
            stop,
            cut,
            proxy,
            admin,
            flusher,
            follower,
            recorder_task: self.recorder_task,
            audit_task: self.audit_task,
        }
    }
}

fn writer_config(config: &Config) -> WriterConfig {
    let audit = &config.audit;
    let mut writer = WriterConfig::new(node_name(config), &audit.spill_file);
    writer.durability = durability(config);
    writer.file_sink = audit.file.as_ref().map(Into::into);
    writer.stdout_sink = audit.stdout;
    writer
}

fn durability(config: &Config) -> Durability {
    match config.audit.durability {
        AuditDurability::Async => Durability::Async,
        AuditDurability::Sync => Durability::Sync,
    }
}

/// `audit.node`, else the host name: one hash chain per running node.
fn node_name(config: &Config) -> String {
    config.audit.node.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "portcullis".to_string())
    })
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
    fn for_open_files(config: &Config, open_files: u64) -> ConnectionCaps {
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
        secret_hash: *state.hasher().hash(&secret).as_bytes(),
        display_prefix: secret.display_prefix(),
        role: Role::Admin,
        team: None,
        created_by: "portcullis".into(),
        created_at: OffsetDateTime::now_utc(),
    };
    stores.tokens.create_token(token).await.map_err(StartError::store("creating the first admin token"))?;
    Ok(Some(Secret::new(secret.expose().to_string())))
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
    flusher: JoinHandle<()>,
    follower: JoinHandle<()>,
    recorder_task: RecorderTask,
    audit_task: WriterTask,
}

impl RunningServer {
    /// Swaps in a new configuration: models, tiers, limits and timeouts take effect for the next
    /// request; in-flight requests finish on the old routes. Listener addresses, request-head
    /// limits, the store, the key pepper and the redaction rules are fixed at start; changing them
    /// is reported and ignored.
    pub fn reload(&self, config: Config) -> Vec<&'static str> {
        let current = self.state.runtime().config.clone();
        let (new, old) = (&config.server, &current.server);
        // Request-head limits are set on the accept loops when they start.
        let fixed_at_start = [
            ("server.listen", new.listen != old.listen),
            ("server.max_header_bytes", new.max_header_bytes != old.max_header_bytes),
            ("server.max_headers", new.max_headers != old.max_headers),
            ("server.header_read_timeout", new.header_read_timeout != old.header_read_timeout),
            ("server.idle_timeout", new.idle_timeout != old.idle_timeout),
            ("server.body_read_timeout", new.body_read_timeout != old.body_read_timeout),
            ("server.min_body_rate", new.min_body_rate != old.min_body_rate),
            ("server.max_connections", new.max_connections != old.max_connections),
            ("server.max_connections_per_client", new.max_connections_per_client != old.max_connections_per_client),
            ("server.http2_keepalive_interval", new.http2_keepalive_interval != old.http2_keepalive_interval),
            (
                "server.http2_max_concurrent_streams",
                new.http2_max_concurrent_streams != old.http2_max_concurrent_streams,
            ),
            ("admin.max_connections", config.admin.max_connections != current.admin.max_connections),
            (
                "admin.max_connections_per_client",
                config.admin.max_connections_per_client != current.admin.max_connections_per_client,
            ),
            ("admin.listen", config.admin.listen != current.admin.listen),
            ("store.url", config.store.url != current.store.url),
            ("security.key_pepper", config.security.key_pepper != current.security.key_pepper),
            ("audit.redact", config.audit.redact != current.audit.redact),
        ];
        let ignored = fixed_at_start.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect();
        self.state.swap_runtime(Runtime::new(config));
        ignored
    }

    /// Begins a shutdown without stopping anything: `/readyz` answers 503 and HTTP/1 answers
    /// close their connections, while the listeners keep accepting (for `server.drain_delay`,
    /// which the caller waits out before [`RunningServer::shutdown`]).
    pub fn start_draining(&self) {
        self.state.enter(Stage::Draining);
    }

    /// `server.drain_delay` as it is now.
    pub fn drain_delay(&self) -> std::time::Duration {
        self.state.runtime().config.server.drain_delay.0
    }

    /// Stops accepting, reports not-ready, and waits for in-flight requests (streams included)
    /// up to `server.shutdown_timeout`; then cuts what is left. Returns whether everything
    /// finished in time.
    pub async fn shutdown(self) -> bool {
        self.state.enter(Stage::Stopping);
        self.stop.cancel();
        let deadline = self.state.runtime().config.server.shutdown_timeout.0;
        let (proxy, admin) = (self.proxy.await, self.admin.await);
        let drained = match (proxy, admin) {
            (Ok(proxy), Ok(admin)) => {
                let (drained_proxy, drained_admin) =
                    tokio::join!(listener::drain(&proxy, deadline), listener::drain(&admin, deadline));
                if !(drained_proxy && drained_admin) {
                    // Out of time: cut what is left, so that its requests still settle and are
                    // recorded (as cut at shutdown) before the writers drain below.
                    tracing::warn!("shutdown_timeout reached; cutting the requests still running");
                    self.state.enter(Stage::Cutting);
                    self.cut.cancel();
                    let _ = tokio::join!(
                        listener::drain(&proxy, listener::CUT_GRACE),
                        listener::drain(&admin, listener::CUT_GRACE)
                    );
                }
                drained_proxy && drained_admin
            }
            _ => false,
        };
        let _ = self.flusher.await;
        let _ = self.follower.await;
        self.state.limiter_backend().drain().await;
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
        let uses = state.keys().used_since(since);
        if !uses.is_empty()
            && let Err(error) = state.stores().keys.touch_keys(&uses).await
        {
            tracing::warn!(error = %chain(&error), "could not record key use times");
        }
        since = now.unix_timestamp();
        state.limiter_backend().evict_idle(proxy::unix_millis(now));
        prune_changes(&state, now).await;
        if let Some(retention) = state.runtime().config.audit.retention {
            match state.stores().audit.delete_audit_before(now - retention.0).await {
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
    if let Err(error) = state.stores().changes.prune_changes(now - CHANGE_RETENTION).await {
        tracing::warn!(error = %chain(&error), "change log pruning failed");
    }
}
