//! Follows the store's change log, so that a key revoked or a team changed through any replica's
//! admin API stops being served from this replica's caches.
//!
//! The store wakes the follower when a change is committed (PostgreSQL `LISTEN/NOTIFY`); the
//! follower then reads everything after its cursor. A lost notification (a dropped connection)
//! is caught by the poll every `store.change_poll`, and `store.cache_max_age` bounds what even a
//! stalled follower can leave cached. Changes made through this replica's own admin API are
//! invalidated by the handlers directly; seeing them again here costs one more cache miss.

use std::sync::Arc;

use portcullis_store::{Change, ChangeLog};
use portcullis_types::chain;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::key_cache::KeyCache;
use crate::metrics::Metrics;
use crate::runtime::SharedRuntime;
use crate::team_cache::TeamCache;

/// Changes read per store round trip; a longer backlog takes more round trips at once.
const PAGE: usize = 500;

/// What the follower reads (the change log, and `store.change_poll`) and what it invalidates.
pub struct Follower {
    pub log: Arc<dyn ChangeLog>,
    pub runtime: SharedRuntime,
    pub keys: KeyCache,
    pub teams: TeamCache,
    pub metrics: Arc<Metrics>,
}

/// Runs until `stop`: waits for a notification or the poll interval, then applies every change
/// after the cursor.
pub async fn follow(follower: Follower, mut cursor: u64, stop: CancellationToken) {
    let log = &follower.log;
    let mut notifications = log.change_notifications();
    let mut failing = false;
    loop {
        let poll = follower.runtime.load().live.store.change_poll.0;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
            () = notified(&mut notifications) => {}
        }
        loop {
            match log.changes_since(cursor, PAGE).await {
                Ok(page) => {
                    if failing {
                        tracing::info!("change log readable again");
                        failing = false;
                    }
                    if page.truncated {
                        tracing::warn!(cursor, "change log pruned past this replica's cursor: dropping all caches");
                        follower.keys.invalidate_all();
                        follower.teams.invalidate_all();
                    }
                    let full = page.changes.len() == PAGE;
                    for (seq, change) in page.changes {
                        apply(&follower, &change).await;
                        follower.metrics.change_applied();
                        cursor = seq;
                    }
                    if !full {
                        break;
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(error = %chain(&error), "change log unreadable; cached keys and teams age out by store.cache_max_age");
                        failing = true;
                    }
                    break;
                }
            }
        }
    }
}

async fn apply(follower: &Follower, change: &Change) {
    match change {
        Change::Key(id) => follower.keys.invalidate_key(id),
        Change::Team(name) => follower.teams.invalidate(name).await,
        // Admin tokens are looked up in the store on every admin call: nothing is cached.
        Change::AdminToken(_) => {}
    }
}

/// Resolves on the next notification; never, when the store has no notifications (or their
/// channel closed): the poll then does the work.
async fn notified(notifications: &mut Option<watch::Receiver<u64>>) {
    match notifications {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                *notifications = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
