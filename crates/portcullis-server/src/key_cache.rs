//! API key lookups: secret hash → principal, answered from memory after the first request.
//!
//! Misses go to the store once (concurrent misses for the same hash share that one lookup) and
//! unknown hashes are remembered too, so a flood of made-up keys cannot reach the store. Admin
//! changes invalidate a key's entries at once, on this replica directly and on the others through
//! the change log; `store.cache_max_age` bounds staleness should a change notice be lost, and a
//! cached key keeps working while the store is down (see [`crate::store_cache`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_auth::SecretHash;
use portcullis_store::{KeyStore, StoreError};
use time::OffsetDateTime;

use crate::principal::Principal;
use crate::store_cache::StoreCache;

const CAPACITY: u64 = 1_000_000;

#[derive(Clone)]
pub struct KeyCache {
    entries: StoreCache<[u8; 32], Option<Arc<Principal>>>,
    store: Arc<dyn KeyStore>,
    /// Use times of entries dropped before they were written back (a key revoked right after
    /// a request): the next write-back takes them. Touched only when entries are invalidated.
    dropped_uses: Arc<Mutex<HashMap<String, i64>>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("entries", &self.entries).finish()
    }
}

impl KeyCache {
    pub fn new(store: Arc<dyn KeyStore>) -> KeyCache {
        KeyCache { entries: StoreCache::new(CAPACITY), store, dropped_uses: Arc::default() }
    }

    /// The principal whose secret hashes to `hash`, or `None` for an unknown secret; a cached
    /// answer older than `max_age` is read again.
    pub async fn lookup(
        &self,
        hash: &SecretHash,
        max_age: Duration,
    ) -> Result<Option<Arc<Principal>>, Arc<StoreError>> {
        let hash = *hash.as_bytes();
        self.entries
            .get_or_fetch(hash, max_age, |old| {
                // A refreshed entry keeps the use time not yet written back.
                let last_used = old.and_then(Option::as_ref).map(|old| old.last_used.load(Ordering::Relaxed));
                let store = self.store.clone();
                async move {
                    let found = store.find_key_by_secret(&hash).await?;
                    let principal = found.and_then(|found| Principal::from_secret_match(&found));
                    if let (Some(principal), Some(used)) = (&principal, last_used) {
                        principal.last_used.fetch_max(used, Ordering::Relaxed);
                    }
                    Ok(principal.map(Arc::new))
                }
            })
            .await
    }

    /// Drops every cached secret of one key, so its next request sees the store's state.
    pub fn invalidate_key(&self, key_id: &str) {
        self.keep_uses(|principal| principal.id == key_id);
        let key_id = key_id.to_string();
        self.entries.invalidate_matching(move |principal| principal.as_ref().is_some_and(|p| p.id == key_id));
    }

    /// Drops every cached key.
    pub fn invalidate_all(&self) {
        self.keep_uses(|_| true);
        self.entries.invalidate_all();
    }

    /// Keeps the use times of the entries about to be dropped for the next write-back.
    fn keep_uses(&self, dropping: impl Fn(&Principal) -> bool) {
        let mut kept = self.dropped_uses.lock().unwrap_or_else(PoisonError::into_inner);
        for principal in self.entries.values().flatten().filter(|principal| dropping(principal)) {
            let used = principal.last_used.load(Ordering::Relaxed);
            kept.entry(principal.id.clone()).and_modify(|at| *at = (*at).max(used)).or_insert(used);
        }
    }

    /// Keys used at or after `since` (unix seconds), with their last use, for the store —
    /// those still cached and those dropped since the last call.
    pub fn used_since(&self, since: i64) -> Vec<(String, OffsetDateTime)> {
        let dropped = std::mem::take(&mut *self.dropped_uses.lock().unwrap_or_else(PoisonError::into_inner));
        let cached = self.entries.values().flatten().map(|principal| {
            let used = principal.last_used.load(Ordering::Relaxed);
            (principal.id.clone(), used)
        });
        dropped
            .into_iter()
            .chain(cached)
            .filter(|(_, used)| *used >= since)
            .filter_map(|(id, used)| Some((id, OffsetDateTime::from_unix_timestamp(used).ok()?)))
            .collect()
    }
}
