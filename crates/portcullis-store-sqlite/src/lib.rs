//! SQLite backend for the Portcullis store traits.
//!
//! One connection behind a mutex: SQLite allows one writer at a time anyway, and the gateway's
//! hot path reads through caches. Every call runs on tokio's blocking pool so a slow disk never
//! stalls an async worker. A database file also gets a second connection, on a thread of its
//! own, for the audit log's batches (see [`background`]).
//!
//! Admin mutations append to the `changes` table in their own transaction (see [`ChangeLog`]);
//! SQLite cannot notify other processes, so [`ChangeLog::change_notifications`] only wakes on
//! changes committed through this store (and its clones). Followers in other processes poll.
//!
//! [`ChangeLog`]: portcullis_store::ChangeLog
//! [`ChangeLog::change_notifications`]: portcullis_store::ChangeLog::change_notifications

mod audit;
mod background;
mod changes;
mod codec;
mod error;
mod figures;
mod keys;
mod migrations;
mod teams;
mod tokens;
mod usage;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_store::{Change, StoreError, StoreResult};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::watch;

use crate::background::Background;
use crate::error::db_err;

/// The SQLite store; cheap to clone (all clones share the connections).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Audit batches; `None` for an in-memory database, which a second connection would not see.
    background: Option<Background>,
    /// The newest change seq committed through this store, for `change_notifications`.
    changed: Arc<watch::Sender<u64>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, in WAL mode.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let conn = open_file(path)?;
        let background = Background::start(open_file(path)?, path)?;
        Ok(SqliteStore::with(conn, Some(background)))
    }

    /// A private database that lives as long as the store; for tests.
    pub fn open_in_memory() -> StoreResult<SqliteStore> {
        let conn = Connection::open_in_memory().map_err(db_err)?;
        configure(&conn)?;
        Ok(SqliteStore::with(conn, None))
    }

    fn with(conn: Connection, background: Option<Background>) -> SqliteStore {
        SqliteStore { conn: Arc::new(Mutex::new(conn)), background, changed: Arc::new(watch::Sender::new(0)) }
    }

    /// Runs `op` with the connection on the blocking pool.
    async fn call<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().map_err(|_| StoreError::unavailable("sqlite connection poisoned by a panic"))?;
            op(&mut conn)
        });
        task.await.map_err(|err| StoreError::unavailable_because("sqlite task failed", err))?
    }

    /// Runs `op` in a write transaction, committed only if `op` succeeds.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.call(|conn| in_transaction(conn, op)).await
    }

    /// [`SqliteStore::write`] on the background connection, if there is one.
    async fn write_in_background<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        match &self.background {
            Some(background) => background.call(|conn| in_transaction(conn, op)).await,
            None => self.write(op).await,
        }
    }

    /// Runs an admin mutation `op` in a write transaction and appends the [`Change`] it names in
    /// the same transaction; after the commit, wakes `change_notifications`. A failing `op`
    /// commits nothing and so appends nothing.
    async fn mutate<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<(T, Change)> + Send + 'static,
    {
        let changed = Arc::clone(&self.changed);
        self.call(move |conn| {
            let (value, seq) = in_transaction(conn, |tx| {
                let (value, change) = op(tx)?;
                Ok((value, changes::append(tx, &change)?))
            })?;
            // Still under the connection lock, so the values sent only ever grow.
            changed.send_replace(seq);
            Ok(value)
        })
        .await
    }
}

/// Opens the database file in WAL mode (which lets readers in other processes, backups and the
/// CLI, work during writes).
fn open_file(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)
        .map_err(|err| StoreError::unavailable_because(format!("cannot open {}", path.display()), err))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(db_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::unavailable(format!("sqlite refused WAL mode (got {mode})")));
    }
    // NORMAL is durable in WAL mode except for the last commits on power loss.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(db_err)?;
    configure(&conn)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> StoreResult<()> {
    conn.pragma_update(None, "foreign_keys", "ON").map_err(db_err)?;
    figures::register(conn).map_err(db_err)?;
    // Another connection holding the write lock makes us wait, not fail.
    conn.busy_timeout(Duration::from_millis(5000)).map_err(db_err)
}

/// Runs `op` in a write transaction, committed only if `op` succeeds. IMMEDIATE takes the write
/// lock up front, so a read-then-write never hits SQLITE_BUSY halfway.
fn in_transaction<T>(conn: &mut Connection, op: impl FnOnce(&Transaction<'_>) -> StoreResult<T>) -> StoreResult<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
    let value = op(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(value)
}
