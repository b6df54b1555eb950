//! Team records for the request path, from memory after the first lookup.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use portcullis_store::{StoreError, TeamRecord, TeamStore};

const CAPACITY: u64 = 100_000;
/// Bounds how stale a team changed elsewhere may be; changes made here invalidate at once.
const TIME_TO_LIVE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct TeamCache {
    entries: Cache<String, Option<Arc<TeamRecord>>>,
    store: Arc<dyn TeamStore>,
}

impl std::fmt::Debug for TeamCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamCache").field("entries", &self.entries.entry_count()).finish()
    }
}

impl TeamCache {
    pub fn new(store: Arc<dyn TeamStore>) -> TeamCache {
        TeamCache { entries: Cache::builder().max_capacity(CAPACITY).time_to_live(TIME_TO_LIVE).build(), store }
    }

    /// The team, or `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<TeamRecord>>, Arc<StoreError>> {
        let store = self.store.clone();
        let key = name.to_string();
        self.entries
            .try_get_with(key.clone(), async move {
                match store.get_team(&key).await {
                    Ok(team) => Ok(Some(Arc::new(team))),
                    Err(StoreError::NotFound) => Ok(None),
                    Err(error) => Err(error),
                }
            })
            .await
    }

    pub async fn invalidate(&self, name: &str) {
        self.entries.invalidate(name).await;
    }
}
