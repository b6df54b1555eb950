//! API key lookups: secret hash → principal, answered from memory after the first request.
//!
//! Misses go to the store once (concurrent misses for the same hash share that one lookup) and
//! unknown hashes are remembered too, so a flood of made-up keys cannot reach the store. Admin
//! changes invalidate a key's entries at once; a short time-to-live bounds staleness for
//! changes made elsewhere.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use moka::future::Cache;
use portcullis_auth::SecretHash;
use portcullis_store::{KeyStore, StoreError};
use time::OffsetDateTime;

use crate::principal::Principal;

const CAPACITY: u64 = 1_000_000;
const TIME_TO_LIVE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct KeyCache {
    entries: Cache<[u8; 32], Option<Arc<Principal>>>,
    store: Arc<dyn KeyStore>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("entries", &self.entries.entry_count()).finish()
    }
}

impl KeyCache {
    pub fn new(store: Arc<dyn KeyStore>) -> KeyCache {
        let entries =
            Cache::builder().max_capacity(CAPACITY).time_to_live(TIME_TO_LIVE).support_invalidation_closures().build();
        KeyCache { entries, store }
    }

    /// The principal whose secret hashes to `hash`, or `None` for an unknown secret.
    pub async fn lookup(&self, hash: &SecretHash) -> Result<Option<Arc<Principal>>, Arc<StoreError>> {
        let store = self.store.clone();
        let hash = *hash.as_bytes();
        self.entries
            .try_get_with(hash, async move {
                let found = store.find_key_by_secret(&hash).await?;
                Ok(found.and_then(|found| Principal::from_secret_match(&found)).map(Arc::new))
            })
            .await
    }

    /// Drops every cached secret of one key, so its next request sees the store's state.
    pub fn invalidate_key(&self, key_id: &str) {
        let key_id = key_id.to_string();
        // Only fails when invalidation closures are not enabled, which `new` always does.
        let _ = self.entries.invalidate_entries_if(move |_, principal| {
            principal.as_ref().is_some_and(|principal| principal.id == key_id)
        });
    }

    /// Keys used at or after `since` (unix seconds), with their last use, for the store.
    pub fn used_since(&self, since: i64) -> Vec<(String, OffsetDateTime)> {
        self.entries
            .iter()
            .filter_map(|(_, principal)| principal)
            .filter_map(|principal| {
                let used = principal.last_used.load(Ordering::Relaxed);
                let at = OffsetDateTime::from_unix_timestamp(used).ok()?;
                (used >= since).then(|| (principal.id.clone(), at))
            })
            .collect()
    }
}
