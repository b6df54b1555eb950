//! Picks the store backend from `store.url`.

use std::path::Path;
use std::sync::Arc;

use portcullis_audit::AuditStore;
use portcullis_config::{StoreLocation, StoreStartup};
use portcullis_store::{AdminTokenStore, ChangeLog, KeyStore, Migrator, Stores, TeamStore, UsageStore};
use portcullis_store_sqlite::SqliteStore;

use crate::StartError;

/// A store this binary can open.
enum Location<'a> {
    Sqlite(&'a Path),
    #[cfg(feature = "postgres")]
    Postgres(&'a str),
}

/// `store.url` read, refused when this binary was built without its backend or this host lacks
/// what it needs (see [`crate::check_backends`]).
fn locate(config: &StoreStartup) -> Result<Location<'_>, StartError> {
    let location = config.location().map_err(|why| StartError::Config(format!("store.url {why}")))?;
    location.check_host().map_err(StartError::Config)?;
    match location {
        StoreLocation::Sqlite(path) => Ok(Location::Sqlite(path)),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => Ok(Location::Postgres(url)),
        #[cfg(not(feature = "postgres"))]
        StoreLocation::Postgres(_) => Err(StartError::NotBuilt { setting: "store.url", feature: "postgres" }),
    }
}

pub fn check(config: &StoreStartup) -> Result<(), StartError> {
    locate(config).map(drop)
}

/// `sqlite://relative/or/absolute/path.db` (also `sqlite:path.db`), or `postgres://…` /
/// `postgresql://…` (any libpq-style URL).
pub fn open(config: &StoreStartup) -> Result<Backend, StartError> {
    let opening = StartError::store("opening the store");
    match locate(config)? {
        Location::Sqlite(path) => {
            let store = SqliteStore::open(path).map_err(opening)?;
            Ok(Backend::of(Arc::new(store)))
        }
        #[cfg(feature = "postgres")]
        Location::Postgres(url) => {
            use portcullis_store_postgres::{PostgresOptions, PostgresStore};
            let options = PostgresOptions { pool_size: config.pool_size as usize, ..PostgresOptions::default() };
            let store = PostgresStore::connect(url, options).map_err(opening)?;
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
