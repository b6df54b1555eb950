//! Picks the store backend from `store.url`.

use std::path::Path;
use std::sync::Arc;

use portcullis_config::{StoreConfig, StoreLocation};
use portcullis_store::Stores;
use portcullis_store_sqlite::SqliteStore;

use crate::StartError;

/// A store this binary can open.
enum Backend<'a> {
    Sqlite(&'a Path),
    #[cfg(feature = "postgres")]
    Postgres(&'a str),
}

/// `store.url` read, refused when this binary was built without its backend or this host lacks
/// what it needs (see [`crate::check_backends`]).
fn locate(config: &StoreConfig) -> Result<Backend<'_>, StartError> {
    let location = config.location().map_err(|why| StartError::Config(format!("store.url {why}")))?;
    location.check_host().map_err(StartError::Config)?;
    match location {
        StoreLocation::Sqlite(path) => Ok(Backend::Sqlite(path)),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => Ok(Backend::Postgres(url)),
        #[cfg(not(feature = "postgres"))]
        StoreLocation::Postgres(_) => Err(StartError::NotBuilt { setting: "store.url", feature: "postgres" }),
    }
}

pub fn check(config: &StoreConfig) -> Result<(), StartError> {
    locate(config).map(drop)
}

/// `sqlite://relative/or/absolute/path.db` (also `sqlite:path.db`), or `postgres://…` /
/// `postgresql://…` (any libpq-style URL).
pub fn open(config: &StoreConfig) -> Result<Stores, StartError> {
    let opening = StartError::store("opening the store");
    match locate(config)? {
        Backend::Sqlite(path) => {
            let store = SqliteStore::open(path).map_err(opening)?;
            Ok(Stores::from_backend(Arc::new(store)))
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres(url) => {
            use portcullis_store_postgres::{PostgresOptions, PostgresStore};
            let options = PostgresOptions { pool_size: config.pool_size as usize, ..PostgresOptions::default() };
            let store = PostgresStore::connect(url, options).map_err(opening)?;
            Ok(Stores::from_backend(Arc::new(store)))
        }
    }
}
