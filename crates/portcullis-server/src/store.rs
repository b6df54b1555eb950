//! Picks the store backend from `store.url`.

use std::sync::Arc;

use portcullis_audit::AuditStore;
use portcullis_config::{StoreLocation, StoreStartup};
use portcullis_store::{AdminTokenStore, ChangeLog, KeyStore, Migrator, Stores, TeamStore, UsageStore};
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_store_sqlite::SqliteStore;

use crate::StartError;

/// `sqlite://relative/or/absolute/path.db` (also `sqlite:path.db`), or `postgres://…` /
/// `postgresql://…` (any libpq-style URL).
pub fn open(config: &StoreStartup) -> Result<Backend, StartError> {
    let location = config.location().map_err(|why| StartError::Store(format!("store.url {why}")))?;
    location.check_host().map_err(StartError::Store)?;
    match location {
        StoreLocation::Sqlite(path) => {
            let store = SqliteStore::open(path).map_err(|error| StartError::Store(error.to_string()))?;
            Ok(Backend::of(Arc::new(store)))
        }
        StoreLocation::Postgres(url) => {
            let options = PostgresOptions { pool_size: config.pool_size as usize, ..PostgresOptions::default() };
            let store = PostgresStore::connect(url, options).map_err(|error| StartError::Store(error.to_string()))?;
            Ok(Backend::of(Arc::new(store)))
        }
    }
}

/// The configured backend through every trait it implements: the store crate's and the audit log's
/// (which `portcullis-audit` owns). Cloned freely.
#[derive(Clone)]
pub struct Backend {
    pub stores: Stores,
    pub audit: Arc<dyn AuditStore>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backend")
    }
}

impl Backend {
    pub fn of<B>(backend: Arc<B>) -> Backend
    where
        B: KeyStore + TeamStore + AdminTokenStore + UsageStore + ChangeLog + Migrator + AuditStore,
    {
        Backend { stores: Stores::from_backend(backend.clone()), audit: backend }
    }
}
