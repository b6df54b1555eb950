//! Picks the store backend from `store.url`.

use std::sync::Arc;

use portcullis_config::{StoreLocation, StoreStartup};
use portcullis_store::Stores;
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_store_sqlite::SqliteStore;

use crate::StartError;

/// `sqlite://relative/or/absolute/path.db` (also `sqlite:path.db`), or `postgres://…` /
/// `postgresql://…` (any libpq-style URL).
pub fn open(config: &StoreStartup) -> Result<Stores, StartError> {
    let location = config.location().map_err(|why| StartError::Store(format!("store.url {why}")))?;
    location.check_host().map_err(StartError::Store)?;
    match location {
        StoreLocation::Sqlite(path) => {
            let store = SqliteStore::open(path).map_err(|error| StartError::Store(error.to_string()))?;
            Ok(Stores::from_backend(Arc::new(store)))
        }
        StoreLocation::Postgres(url) => {
            let options = PostgresOptions { pool_size: config.pool_size as usize, ..PostgresOptions::default() };
            let store = PostgresStore::connect(url, options).map_err(|error| StartError::Store(error.to_string()))?;
            Ok(Stores::from_backend(Arc::new(store)))
        }
    }
}
