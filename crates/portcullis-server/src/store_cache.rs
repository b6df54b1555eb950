//! A read-through cache of store records for the request path: answered from memory, bounded in
//! age, and still serving while the store is down.
//!
//! - **Misses** go to the store once: concurrent misses for one key share a single lookup.
//! - **Changes** reach the cache as invalidations (admin handlers on this replica, the change
//!   log for the others). An entry older than `max_age` is read again on its next use, which
//!   bounds how long a change whose notification was lost can stay unseen. The caller passes
//!   `max_age` with each lookup (`store.cache_max_age`, live), so a reload changes it at once.
//! - **Refreshes** are done by the first request that finds an entry too old; requests arriving
//!   during that one lookup get the entry as it was (it is at most a lookup's time staler).
//! - **Outages**: when the store is unreachable (`StoreError::Unavailable`) an entry that is too
//!   old keeps serving until the store is back. Entries never seen still fail: what this replica
//!   has not verified, it does not let in.
//! - **Races**: an invalidation that lands while a lookup is in flight may concern what that
//!   lookup read, so the lookup's result is stored already stale and the next use reads again.

use portcullis_types::chain;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;
use portcullis_store::{StoreError, StoreResult};

pub struct StoreCache<K, V> {
    entries: Cache<K, Arc<Entry<V>>>,
    /// Bumped by every invalidation; see the module docs on races.
    generation: Arc<AtomicU64>,
}

struct Entry<V> {
    value: V,
    /// `None` = stale from the start (an invalidation raced its lookup).
    fetched_at: Option<Instant>,
    refreshing: AtomicBool,
}

impl<K, V> Clone for StoreCache<K, V> {
    fn clone(&self) -> Self {
        StoreCache { entries: self.entries.clone(), generation: self.generation.clone() }
    }
}

impl<K, V> std::fmt::Debug for StoreCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCache").field("entries", &self.entries.entry_count()).finish()
    }
}

impl<K, V> StoreCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(capacity: u64) -> StoreCache<K, V> {
        let entries = Cache::builder().max_capacity(capacity).support_invalidation_closures().build();
        StoreCache { entries, generation: Arc::new(AtomicU64::new(0)) }
    }

    /// The cached value of `key` if it is younger than `max_age`, else what `fetch` reads.
    /// `fetch` is handed the entry it refreshes, if any, so that per-entry state (a key's last
    /// use) can be carried over.
    pub async fn get_or_fetch<F, Fut>(&self, key: K, max_age: Duration, fetch: F) -> Result<V, Arc<StoreError>>
    where
        F: FnOnce(Option<&V>) -> Fut,
        Fut: Future<Output = StoreResult<V>> + Send,
    {
        let Some(entry) = self.entries.get(&key).await else {
            let generation = self.generation.load(Ordering::Acquire);
            let fetched = self.entries.try_get_with(key, async { Ok(self.entry(fetch(None).await?, generation)) });
            return fetched.await.map(|entry| entry.value.clone());
        };
        let fresh = entry.fetched_at.is_some_and(|at| at.elapsed() < max_age);
        if fresh || entry.refreshing.swap(true, Ordering::AcqRel) {
            return Ok(entry.value.clone());
        }
        let generation = self.generation.load(Ordering::Acquire);
        match fetch(Some(&entry.value)).await {
            Ok(value) => {
                self.entries.insert(key, self.entry(value.clone(), generation)).await;
                Ok(value)
            }
            Err(error @ StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %chain(&error), "store unreachable: serving a cached entry past its maximum age");
                entry.refreshing.store(false, Ordering::Release);
                Ok(entry.value.clone())
            }
            Err(error) => {
                entry.refreshing.store(false, Ordering::Release);
                Err(Arc::new(error))
            }
        }
    }

    /// Drops `key`'s entry.
    pub async fn invalidate(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(key).await;
    }

    /// Drops every entry whose value matches.
    pub fn invalidate_matching(&self, matches: impl Fn(&V) -> bool + Send + Sync + 'static) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Only fails when invalidation closures are not enabled, which `new` always does.
        let _ = self.entries.invalidate_entries_if(move |_, entry| matches(&entry.value));
    }

    /// Drops everything (the change log could not say what changed).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
    }

    /// Every cached value.
    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.entries.iter().map(|(_, entry)| entry.value.clone())
    }

    fn entry(&self, value: V, generation: u64) -> Arc<Entry<V>> {
        let raced = self.generation.load(Ordering::Acquire) != generation;
        Arc::new(Entry { value, fetched_at: (!raced).then(Instant::now), refreshing: AtomicBool::new(false) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn counting(reads: &Arc<AtomicUsize>, answer: StoreResult<u32>) -> impl Future<Output = StoreResult<u32>> {
        reads.fetch_add(1, Ordering::SeqCst);
        std::future::ready(answer)
    }

    #[tokio::test]
    async fn a_fresh_entry_is_served_from_memory() {
        let max_age = Duration::from_secs(60);
        let cache = StoreCache::new(10);
        let reads = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            assert_eq!(cache.get_or_fetch("k", max_age, |_| counting(&reads, Ok(1))).await.ok(), Some(1));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_old_entry_is_read_again_and_handed_to_the_fetch() {
        let max_age = Duration::from_millis(20);
        let cache = StoreCache::new(10);
        let reads = Arc::new(AtomicUsize::new(0));
        cache.get_or_fetch("k", max_age, |_| counting(&reads, Ok(1))).await.ok();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut seen = None;
        let value = cache
            .get_or_fetch("k", max_age, |old| {
                seen = old.copied();
                counting(&reads, Ok(2))
            })
            .await;
        assert_eq!((value.ok(), seen, reads.load(Ordering::SeqCst)), (Some(2), Some(1), 2));
    }

    #[tokio::test]
    async fn an_old_entry_keeps_serving_while_the_store_is_unreachable() {
        let max_age = Duration::from_millis(20);
        let cache = StoreCache::new(10);
        let reads = Arc::new(AtomicUsize::new(0));
        cache.get_or_fetch("k", max_age, |_| counting(&reads, Ok(1))).await.ok();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let down = || Err(StoreError::unavailable("down"));
        assert_eq!(cache.get_or_fetch("k", max_age, |_| counting(&reads, down())).await.ok(), Some(1));
        // Not marked as refreshing forever: the next use tries the store again.
        assert_eq!(cache.get_or_fetch("k", max_age, |_| counting(&reads, Ok(3))).await.ok(), Some(3));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_entry_never_seen_fails_while_the_store_is_unreachable() {
        let max_age = Duration::from_secs(60);
        let cache: StoreCache<&str, u32> = StoreCache::new(10);
        let result =
            cache.get_or_fetch("k", max_age, |_| std::future::ready(Err(StoreError::unavailable("down")))).await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn other_errors_are_not_hidden_by_an_old_entry() {
        let max_age = Duration::from_millis(20);
        let cache = StoreCache::new(10);
        let reads = Arc::new(AtomicUsize::new(0));
        cache.get_or_fetch("k", max_age, |_| counting(&reads, Ok(1))).await.ok();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let corrupt = Err(StoreError::Corrupt("bad row".into()));
        assert!(cache.get_or_fetch("k", max_age, |_| counting(&reads, corrupt)).await.is_err());
    }

    #[tokio::test]
    async fn invalidation_forces_a_new_read() {
        let max_age = Duration::from_secs(60);
        let cache = StoreCache::new(10);
        let reads = Arc::new(AtomicUsize::new(0));
        cache.get_or_fetch("a", max_age, |_| counting(&reads, Ok(1))).await.ok();
        cache.get_or_fetch("b", max_age, |_| counting(&reads, Ok(10))).await.ok();
        cache.invalidate(&"a").await;
        assert_eq!(cache.get_or_fetch("a", max_age, |_| counting(&reads, Ok(2))).await.ok(), Some(2));
        cache.invalidate_matching(|value| *value == 10);
        assert_eq!(cache.get_or_fetch("b", max_age, |_| counting(&reads, Ok(11))).await.ok(), Some(11));
        cache.invalidate_all();
        assert_eq!(cache.get_or_fetch("a", max_age, |_| counting(&reads, Ok(3))).await.ok(), Some(3));
        assert_eq!(reads.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_lookup_raced_by_an_invalidation_is_stored_stale() {
        let max_age = Duration::from_secs(60);
        let cache = StoreCache::new(10);
        let racing = cache.clone();
        let value = cache
            .get_or_fetch("k", max_age, |_| async move {
                // The change lands while the old state is being read.
                racing.invalidate(&"k").await;
                Ok(1)
            })
            .await;
        assert_eq!(value.ok(), Some(1));
        let reads = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.get_or_fetch("k", max_age, |_| counting(&reads, Ok(2))).await.ok(), Some(2));
    }
}
