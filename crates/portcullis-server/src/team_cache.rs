//! Team records for the request path, from memory after the first lookup (see
//! [`crate::store_cache`] for freshness and outages).

use std::sync::Arc;
use std::time::Duration;

use portcullis_store::{StoreError, TeamRecord, TeamStore};

use crate::store_cache::StoreCache;

const CAPACITY: u64 = 100_000;

#[derive(Clone)]
pub struct TeamCache {
    entries: StoreCache<String, Option<Arc<TeamRecord>>>,
    store: Arc<dyn TeamStore>,
}

impl std::fmt::Debug for TeamCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamCache").field("entries", &self.entries).finish()
    }
}

impl TeamCache {
    pub fn new(store: Arc<dyn TeamStore>) -> TeamCache {
        TeamCache { entries: StoreCache::new(CAPACITY), store }
    }

    /// The team, or `None` if it does not exist; a cached answer older than `max_age` is read
    /// again.
    pub async fn get(&self, name: &str, max_age: Duration) -> Result<Option<Arc<TeamRecord>>, Arc<StoreError>> {
        let store = self.store.clone();
        let key = name.to_string();
        self.entries
            .get_or_fetch(key.clone(), max_age, |_| async move {
                match store.get_team(&key).await {
                    Ok(team) => Ok(Some(Arc::new(team))),
                    Err(StoreError::NotFound) => Ok(None),
                    Err(error) => Err(error),
                }
            })
            .await
    }

    pub async fn invalidate(&self, name: &str) {
        self.entries.invalidate(&name.to_string()).await;
    }

    /// Drops every cached team.
    pub fn invalidate_all(&self) {
        self.entries.invalidate_all();
    }
}
