//! What Portcullis keeps: API keys (with their secret hashes), teams and admin tokens.
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
        B: KeyStore + TeamStore + AdminTokenStore + Migrator,
    {
        Stores { keys: backend.clone(), teams: backend.clone(), tokens: backend.clone(), migrator: backend }
    }
}
