//! Picks the store backend from `store.url`.

use std::path::Path;
use std::sync::Arc;

use portcullis_store::Stores;
use portcullis_store_sqlite::SqliteStore;

use crate::StartError;

/// `sqlite://relative/or/absolute/path.db` (also `sqlite:path.db`).
pub fn open(url: &str) -> Result<Stores, StartError> {
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(StartError::Store("store.url names no SQLite file".into()));
        }
        let store = SqliteStore::open(Path::new(path)).map_err(|error| StartError::Store(error.to_string()))?;
        return Ok(Stores::from_backend(Arc::new(store)));
    }
    let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
    Err(StartError::Store(format!("store.url scheme {scheme:?} is not supported by this build; use sqlite://")))
}
