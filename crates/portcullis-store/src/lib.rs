//! What Portcullis keeps: API keys (with their secret hashes), teams, admin tokens, hourly
//! usage roll-ups and the change log. The audit log's record and store trait belong to
//! `portcullis-audit`, which each backend also implements; its errors are [`StoreError`] too.
//!
//! The traits here hold no SQL types; each backend crate implements them with its own
//! migrations, and every backend must pass the conformance story (`conformance::run_story`,
//! compiled with the `conformance` feature, which backends enable for their tests only).

#[cfg(feature = "conformance")]
pub mod conformance;
mod records;
#[cfg(feature = "sql")]
pub mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

pub use records::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists: {0}")]
    Conflict(String),
    /// The store cannot do what was asked right now (down, restarting, locked, out of space):
    /// `what` says which part failed, and the driver's or runtime's error, when there is one, is
    /// the source (written once, by whoever prints the chain).
    #[error("store unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

/// The error under a [`StoreError::Unavailable`]: the driver's own, kept whole so that logs show
/// it and callers can look into it.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// Unavailable for a reason of the store's own, with no error under it.
    pub fn unavailable(what: impl Into<String>) -> StoreError {
        StoreError::Unavailable { what: what.into(), source: None }
    }

    /// Unavailable because of `source` (a driver's or the runtime's error).
    pub fn unavailable_because(what: impl Into<String>, source: impl Into<Cause>) -> StoreError {
        StoreError::Unavailable { what: what.into(), source: Some(source.into()) }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    async fn create_key(&self, key: NewKey) -> StoreResult<KeyRecord>;
    async fn get_key(&self, id: &str) -> StoreResult<KeyRecord>;
    /// The key one of whose secrets hashes to `hash`, if that secret is still on file.
    async fn find_key_by_secret(&self, hash: &[u8; 32]) -> StoreResult<Option<SecretMatch>>;
    async fn list_keys(&self, filter: &KeyFilter) -> StoreResult<Vec<KeyRecord>>;
    async fn update_key(&self, id: &str, patch: KeyPatch) -> StoreResult<KeyRecord>;
    /// Sets `revoked_at` (idempotent: a second revoke keeps the first time).
    async fn revoke_key(&self, id: &str, at: OffsetDateTime) -> StoreResult<KeyRecord>;
    /// Adds `rotation.new_secret` and ends every older secret at `rotation.old_valid_until`.
    async fn rotate_key(&self, id: &str, rotation: Rotation) -> StoreResult<KeyRecord>;
    /// Records use times gathered off the hot path.
    async fn touch_keys(&self, uses: &[(String, OffsetDateTime)]) -> StoreResult<()>;
}

#[async_trait]
pub trait TeamStore: Send + Sync + 'static {
    async fn create_team(&self, team: NewTeam) -> StoreResult<TeamRecord>;
    async fn get_team(&self, name: &str) -> StoreResult<TeamRecord>;
    async fn list_teams(&self) -> StoreResult<Vec<TeamRecord>>;
    async fn update_team(&self, name: &str, patch: TeamPatch) -> StoreResult<TeamRecord>;
}

#[async_trait]
pub trait AdminTokenStore: Send + Sync + 'static {
    async fn create_token(&self, token: NewAdminToken) -> StoreResult<AdminTokenRecord>;
    async fn find_token_by_secret(&self, hash: &[u8; 32]) -> StoreResult<Option<AdminTokenRecord>>;
    async fn list_tokens(&self) -> StoreResult<Vec<AdminTokenRecord>>;
    async fn revoke_token(&self, id: &str, at: OffsetDateTime) -> StoreResult<AdminTokenRecord>;
}

/// Usage per (hour, key, model), kept as sums. Usage outlives keys: it stays after a key is
/// revoked, and a key id need not be on file to be recorded.
///
/// Time ranges count whole hours: an hour is in `since..until` when it ends after `since` and
/// starts before `until`, so a `since` inside an hour takes that whole hour (a limiter seeded
/// from it errs towards counting more, never less).
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds each record to its (hour of `at`, `key_id`, `model`) row, creating the row if needed,
    /// all in one transaction: either the whole batch counts or none of it. Recording the same
    /// record twice counts it twice. A row keeps the first team it was given. A record's counts
    /// are stored saturated at [`USAGE_MAX`] ([`usage_count_to_column`]), and a row's counts
    /// stop at it too, instead of failing the batch.
    async fn record_usage(&self, batch: &[UsageRecord]) -> StoreResult<()>;
    /// Per key, the tokens and cost of the hours ending after `since`, ordered by key id.
    async fn usage_totals_since(&self, since: OffsetDateTime) -> StoreResult<Vec<UsageTotal>>;
    /// Sums per `query.group_by`, ordered by the grouping key (buckets oldest first; keys, models
    /// and teams by name, with the no-team row last). No matching usage is an empty list.
    async fn usage_report(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>>;
}

/// The most a usage count or sum reads as: 2⁶³ − 1, the largest value of the signed 64-bit
/// integers both backends keep counts in.
///
/// Usage reads never fail on what the rows hold (the start-up seeds the limiter from them): every
/// sum, of any number of rows, stops at `USAGE_MAX`; a stored value that is not a count (a
/// negative number, which the schema refuses, so only a damaged table can hold one; or a value
/// of another type) counts as the nearest count — 0 for a negative or non-numeric value — and
/// the backend logs a warning.
pub const USAGE_MAX: u64 = i64::MAX as u64;

/// A usage count as its column holds it: a signed 64-bit integer, saturated at [`USAGE_MAX`]. A
/// `u64` above it (a model server reporting 2⁶⁴ − 1 tokens) cannot be stored as it is.
pub fn usage_count_to_column(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A count or sum read back from a signed 64-bit integer; `None` for a negative value, which a
/// reader counts as 0 and logs (see [`USAGE_MAX`]).
pub fn usage_count_from_column(value: i64) -> Option<u64> {
    u64::try_from(value).ok()
}

/// `a + b` for usage counts, saturating at [`USAGE_MAX`].
pub fn usage_add(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(USAGE_MAX)
}

/// The start of the hour `at` falls in (UTC): the hour a usage record counts towards.
pub fn usage_hour(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_time(time::Time::from_hms(at.hour(), 0, 0).unwrap_or(time::Time::MIDNIGHT))
}

/// What an admin changed, named by what a replica caches it under; see [`ChangeLog`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// A key (by id): created, patched, revoked or rotated.
    Key(String),
    /// A team (by name): created or patched.
    Team(String),
    /// An admin token (by id): created or revoked.
    AdminToken(String),
}

/// One page of [`ChangeLog::changes_since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangePage {
    /// `(seq, change)` with `seq` above the asked cursor, in increasing `seq` order.
    pub changes: Vec<(u64, Change)>,
    /// True when changes after the asked cursor may have been pruned: the caller cannot know
    /// what it missed and must drop everything it cached.
    pub truncated: bool,
}

/// The record of admin changes that lets every replica drop stale cache entries.
///
/// Every mutation of a key, team or admin token (not `touch_keys`) appends its [`Change`] in the
/// same transaction as the mutation, so a change is visible exactly when the mutation is
/// committed. Each successful call appends exactly one change (even one that changed nothing,
/// such as a second revoke); a failed call appends none. Sequence numbers increase in commit order (a reader that saw `seq` n has seen
/// every change committed before it), which makes "everything after my cursor" a complete answer.
#[async_trait]
pub trait ChangeLog: Send + Sync + 'static {
    /// Changes after `after` (exclusive), oldest first, at most `limit`.
    async fn changes_since(&self, after: u64, limit: usize) -> StoreResult<ChangePage>;
    /// The newest `seq` (0 when there is none): where a new follower starts.
    async fn latest_change(&self) -> StoreResult<u64>;
    /// Deletes changes recorded before `before`; later `changes_since` calls with a cursor below
    /// the newest deleted seq report `truncated`. Seqs are never reused, so `latest_change`
    /// stays where it was. Returns how many were deleted.
    async fn prune_changes(&self, before: OffsetDateTime) -> StoreResult<u64>;
    /// Wakes (the value changes) whenever a change may have been committed by any process that
    /// shares the store, so followers need not wait for their next poll. `None` when the
    /// backend cannot notify; followers then rely on polling alone. A wake-up only means "read
    /// the log now": notifications can be missed (a lost connection; SQLite sees only changes
    /// made through the same store value), so followers also poll [`ChangeLog::changes_since`].
    fn change_notifications(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
}

/// The schema housekeeping every backend does.
#[async_trait]
pub trait Migrator: Send + Sync + 'static {
    /// Applies pending migrations; returns how many ran.
    async fn migrate(&self) -> StoreResult<usize>;
    /// Cheap round-trip for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
}

/// One backend seen through all its traits but the audit log's (which the server holds next to it);
/// cloned freely (every field is an `Arc`).
#[derive(Clone)]
pub struct Stores {
    pub keys: Arc<dyn KeyStore>,
    pub teams: Arc<dyn TeamStore>,
    pub tokens: Arc<dyn AdminTokenStore>,
    pub usage: Arc<dyn UsageStore>,
    pub changes: Arc<dyn ChangeLog>,
    pub migrator: Arc<dyn Migrator>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stores")
    }
}

impl Stores {
    /// All traits from one backend value.
    pub fn from_backend<B>(backend: Arc<B>) -> Stores
    where
        B: KeyStore + TeamStore + AdminTokenStore + UsageStore + ChangeLog + Migrator,
    {
        Stores {
            keys: backend.clone(),
            teams: backend.clone(),
            tokens: backend.clone(),
            usage: backend.clone(),
            changes: backend.clone(),
            migrator: backend,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_saturate_on_the_way_in_and_never_read_negative() {
        for (count, column) in [
            (0, 0),
            (1, 1),
            (USAGE_MAX, i64::MAX),
            (USAGE_MAX + 1, i64::MAX),
            (9_200_000_000_000_000_000, 9_200_000_000_000_000_000),
            (u64::MAX, i64::MAX),
        ] {
            assert_eq!(usage_count_to_column(count), column, "{count}");
        }
        assert_eq!(usage_count_from_column(i64::MAX), Some(USAGE_MAX));
        assert_eq!(usage_count_from_column(0), Some(0));
        assert_eq!(usage_count_from_column(-1), None);
        assert_eq!(usage_count_from_column(i64::MIN), None);
        assert_eq!(usage_add(USAGE_MAX, USAGE_MAX), USAGE_MAX);
        assert_eq!(usage_add(USAGE_MAX - 1, 1), USAGE_MAX);
        assert_eq!(usage_add(u64::MAX, u64::MAX), USAGE_MAX, "never above the largest stored count");
        assert_eq!(usage_add(2, 3), 5);
    }
}
