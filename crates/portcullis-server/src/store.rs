//! Picks the store backend from `store.url`.

use std::path::Path;
use std::sync::Arc;

use portcullis_config::StoreConfig;
use portcullis_store::Stores;
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_store_sqlite::SqliteStore;

use crate::StartError;

/// `sqlite://relative/or/absolute/path.db` (also `sqlite:path.db`), or `postgres://…` /
/// `postgresql://…` (any libpq-style URL).
pub fn open(config: &StoreConfig) -> Result<Stores, StartError> {
    let url = config.url.expose();
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(StartError::Store("store.url names no SQLite file".into()));
        }
        let store = SqliteStore::open(Path::new(path)).map_err(|error| StartError::Store(error.to_string()))?;
        return Ok(Stores::from_backend(Arc::new(store)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = PostgresOptions { pool_size: config.pool_size as usize, ..PostgresOptions::default() };
        let store = PostgresStore::connect(url, options).map_err(|error| StartError::Store(error.to_string()))?;
        return Ok(Stores::from_backend(Arc::new(store)));
    }
    let scheme = url.split_once(':').map_or(url.as_str(), |(scheme, _)| scheme);
    Err(StartError::Store(format!("store.url scheme {scheme:?} is not supported; use sqlite:// or postgres://")))
}
