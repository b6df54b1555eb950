//! What Portcullis keeps: API keys (with their secret hashes), teams, admin tokens and hourly
//! usage roll-ups.
//!
//! The traits here hold no SQL types; each backend crate implements them with its own
//! migrations, and every backend must pass [`conformance::run_story`].

pub mod conformance;
mod records;

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
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
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
    /// record twice counts it twice. A row keeps the first team it was given. Counts saturate
    /// at the backend's largest integer (at least 2⁶³ − 1) instead of failing the batch.
    async fn record_usage(&self, batch: &[UsageRecord]) -> StoreResult<()>;
    /// Per key, the tokens and cost of the hours ending after `since`, ordered by key id.
    async fn usage_totals_since(&self, since: OffsetDateTime) -> StoreResult<Vec<UsageTotal>>;
    /// Sums per `query.group_by`, ordered by the grouping key (buckets oldest first; keys, models
    /// and teams by name, with the no-team row last). No matching usage is an empty list.
    async fn usage_report(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>>;
}

/// The start of the hour `at` falls in (UTC): the hour a usage record counts towards.
pub fn usage_hour(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_time(time::Time::from_hms(at.hour(), 0, 0).unwrap_or(time::Time::MIDNIGHT))
}

/// The schema housekeeping every backend does.
#[async_trait]
pub trait Migrator: Send + Sync + 'static {
    /// Applies pending migrations; returns how many ran.
    async fn migrate(&self) -> StoreResult<usize>;
    /// Cheap round-trip for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
}

/// One backend seen through all its traits; cloned freely (every field is an `Arc`).
#[derive(Clone)]
pub struct Stores {
    pub keys: Arc<dyn KeyStore>,
    pub teams: Arc<dyn TeamStore>,
    pub tokens: Arc<dyn AdminTokenStore>,
    pub usage: Arc<dyn UsageStore>,
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
        B: KeyStore + TeamStore + AdminTokenStore + UsageStore + Migrator,
    {
        Stores {
            keys: backend.clone(),
            teams: backend.clone(),
            tokens: backend.clone(),
            usage: backend.clone(),
            migrator: backend,
        }
    }
}
