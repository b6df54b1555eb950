//! Rows as the server sees them: plain Rust values, no SQL types.

use portcullis_types::admin::{LimitOverrides, Role};
use serde_json::Value;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub display_prefix: String,
    pub team: Option<String>,
    pub tier: String,
    pub models: Vec<String>,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    pub expires_at: Option<OffsetDateTime>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub secret_hash: [u8; 32],
    pub display_prefix: String,
    pub team: Option<String>,
    pub tier: String,
    pub models: Vec<String>,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    pub expires_at: Option<OffsetDateTime>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
}

/// A stored key found by one of its secrets, with that secret's own end (set by a rotation).
#[derive(Debug, Clone, PartialEq)]
pub struct SecretMatch {
    pub key: KeyRecord,
    pub secret_valid_until: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyFilter {
    pub team: Option<String>,
    pub include_revoked: bool,
}

/// Fields present are replaced. `expires_at: Some(None)` removes the expiry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub tier: Option<String>,
    pub models: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub allowed_cidrs: Option<Vec<String>>,
    pub limits: Option<LimitOverrides>,
    pub metadata: Option<Value>,
    pub expires_at: Option<Option<OffsetDateTime>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub new_secret: [u8; 32],
    pub new_display_prefix: String,
    pub old_valid_until: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TeamRecord {
    pub name: String,
    pub tier: Option<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTeam {
    pub name: String,
    pub tier: Option<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeamPatch {
    pub tier: Option<String>,
    pub limits: Option<LimitOverrides>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminTokenRecord {
    pub id: String,
    pub name: String,
    pub display_prefix: String,
    pub role: Role,
    pub team: Option<String>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAdminToken {
    pub id: String,
    pub name: String,
    pub secret_hash: [u8; 32],
    pub display_prefix: String,
    pub role: Role,
    pub team: Option<String>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
}
