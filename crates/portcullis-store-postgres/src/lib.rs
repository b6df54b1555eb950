//! PostgreSQL backend for the Portcullis store traits, for fleets of gateway replicas sharing one
//! database.
//!
//! # What is stored where
//! - `teams`, `api_keys`, `api_key_secrets` (SHA-256 hashes only, never a secret; a rotated key
//!   keeps its older secrets until their end) and `admin_tokens` (hash in the row).
//! - `usage_hourly`: one row per (hour, key, model), added to by upsert.
//! - `audit_log` (one column per record field) and `audit_checkpoints` (per node, the last record
//!   retention deleted).
//! - `changes` (one row per admin mutation) and `changes_pruned` (the newest seq pruning deleted).
//! - `schema_migrations`: the versions applied (see [`Migrator`](portcullis_store::Migrator)).
//!
//! Encodings match the SQLite backend, so both pass the same conformance story: times are
//! BIGINT unix seconds (audit `ts`: milliseconds), lists, limits and metadata are JSON text (as
//! given, so nothing JSONB would refuse or reorder), every text column sorts bytewise
//! (`COLLATE "C"`, as SQLite does), and the audit log's unsigned fields are `NUMERIC(20,0)` so
//! any `u64` reads back exactly and sorts as a number. Usage counts are BIGINT and saturate at
//! `i64::MAX`. Every statement is parameterised.
//!
//! # Connections
//! A [`deadpool_postgres`] pool, created empty: [`PostgresStore::connect`] succeeds while the
//! server is down, so the gateway starts and reports itself degraded. A call that cannot get a
//! connection within [`PostgresOptions::connect_timeout`] fails with
//! [`StoreError::Unavailable`]; a connection the server closed is dropped on its next checkout and
//! replaced, so the store recovers by itself when the server is back.
//!
//! # Why the advisory locks
//! - Migrations: every replica runs `migrate` at start-up, possibly at the same moment. Each
//!   migration's transaction first takes `pg_advisory_xact_lock(MIGRATION_LOCK)`, then checks
//!   `schema_migrations`, so exactly one replica applies each migration and the others wait, then
//!   skip it.
//! - The change log: a follower reads "everything after my cursor", which is only complete if a
//!   change with a smaller seq can never become visible after one with a larger seq. Identity
//!   values are handed out when the insert runs, not at commit, so a mutation takes
//!   `pg_advisory_xact_lock(CHANGES_LOCK)` just before inserting its change and holds it to
//!   commit: seq order is then commit order. Admin changes are rare, so the serialisation is
//!   cheap.
//! - Audit retention takes its lock exclusively and appends take it shared, so a replayed batch
//!   cannot slip records in behind a checkpoint that retention is moving.
//!
//! # Change notifications
//! A mutation also runs `NOTIFY portcullis_changes, '<seq>'` in its transaction; PostgreSQL
//! delivers it only on commit, in commit order. [`ChangeLog::change_notifications`] hands out
//! receivers of one watch channel per store, fed by one background task (started on the first
//! call) that keeps a dedicated connection in `LISTEN portcullis_changes` and sends each
//! notified seq. When that connection drops, the task reconnects with backoff (at most a second
//! between attempts) and, once listening again, wakes every receiver: notifications sent while it
//! was away are lost. A follower therefore treats a wake-up only as "read the log now" and also
//! polls `changes_since` on a timer, which bounds how stale it can get when notifications are
//! missed. Changes committed through this store wake its receivers directly too.
//!
//! TLS is not supported yet: connections are plain TCP or Unix sockets.
//!
//! [`ChangeLog::change_notifications`]: portcullis_store::ChangeLog::change_notifications

mod audit;
mod changes;
mod codec;
mod error;
mod keys;
mod listener;
mod migrations;
mod sql;
mod teams;
mod tokens;
mod usage;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Transaction};
use portcullis_store::{Change, StoreError, StoreResult};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{db_err, pool_err};

/// How the store connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Most connections the pool opens (the listener's connection is extra). At least 1.
    pub pool_size: usize,
    /// How long a call waits to connect (or for a free connection) before it fails with
    /// [`StoreError::Unavailable`]; also how long sent data may go unacknowledged before a
    /// connection counts as dead.
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions { pool_size: 16, connect_timeout: Duration::from_secs(5) }
    }
}

/// The PostgreSQL store; cheap to clone (clones share the pool and the notification listener).
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// For the listener's dedicated connection.
    listener_config: tokio_postgres::Config,
    /// The newest change seq known to be committed; receivers wake when it is sent.
    changed: watch::Sender<u64>,
    /// The `LISTEN` task, started by the first `change_notifications` call.
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The task would otherwise hold its connection open for as long as the runtime runs.
        if let Some(task) = self.listener.lock().ok().and_then(|mut listener| listener.take()) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PostgresStore")
            .field("pool_size", &status.max_size)
            .field("open_connections", &status.size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store for the database at `url` (`postgres://user@host:port/db?...` or the key=value
    /// form). Connects lazily: fails only on an unusable URL or options, never because the server
    /// is down.
    pub fn connect(url: &str, options: PostgresOptions) -> StoreResult<PostgresStore> {
        if options.pool_size == 0 {
            return Err(StoreError::unavailable("postgres pool_size must be at least 1"));
        }
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|err| StoreError::unavailable_because("invalid PostgreSQL URL", err))?;
        if config.get_hosts().is_empty() {
            return Err(StoreError::unavailable("invalid PostgreSQL URL: no host"));
        }
        config.connect_timeout(options.connect_timeout);
        // A server that vanished without closing the socket is noticed within the timeout on a
        // busy connection, and by keepalives on an idle one (the listener's).
        config.tcp_user_timeout(options.connect_timeout);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        // Named, unless the URL names them, so operators can tell the listener in pg_stat_activity.
        let mut listener_config = config.clone();
        if config.get_application_name().is_none() {
            config.application_name("portcullis");
            listener_config.application_name("portcullis-changes");
        }

        // Fast recycling: a connection whose socket closed reports itself closed, and is replaced.
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|err| StoreError::unavailable_because("cannot build the postgres pool", err))?;
        let inner = Inner { pool, listener_config, changed: watch::Sender::new(0), listener: Mutex::new(None) };
        Ok(PostgresStore { inner: Arc::new(inner) })
    }

    /// A pooled connection, or `Unavailable` within the connect timeout.
    async fn client(&self) -> StoreResult<Object> {
        self.inner.pool.get().await.map_err(pool_err)
    }

    /// Ends an admin mutation: appends `change` to the log in `tx`, in commit order (see the
    /// crate docs), notifies listeners on commit, commits, and wakes this store's receivers.
    async fn commit_change(&self, tx: Transaction<'_>, change: &Change) -> StoreResult<()> {
        let seq = changes::append(&tx, change).await?;
        tx.commit().await.map_err(db_err)?;
        changes::saw(&self.inner.changed, seq);
        Ok(())
    }
}
