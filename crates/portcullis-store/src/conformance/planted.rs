//! A key and an admin token with known secrets, for a backend's own tests (for instance, that no
//! secret ever reaches its files or tables). Both are hashed with plain SHA-256.

use portcullis_types::admin::{LimitOverrides, Role};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{NewAdminToken, NewKey};

/// Key `planted-key` whose secret is `secret`.
pub fn planted_key(secret: &str, now: OffsetDateTime) -> NewKey {
    NewKey {
        id: "planted-key".into(),
        name: "planted".into(),
        secret_hash: sha256(secret),
        display_prefix: display_prefix(secret),
        team: None,
        tier: Some("default".into()),
        models: vec![],
        scopes: vec![],
        allowed_cidrs: vec![],
        limits: LimitOverrides::default(),
        metadata: serde_json::json!({}),
        expires_at: None,
        capture_content: false,
        created_by: "test".into(),
        created_at: now,
    }
}

/// Admin token `planted-token` whose secret is `secret`.
pub fn planted_token(secret: &str, now: OffsetDateTime) -> NewAdminToken {
    NewAdminToken {
        id: "planted-token".into(),
        name: "planted".into(),
        secret_hash: sha256(secret),
        display_prefix: display_prefix(secret),
        role: Role::Admin,
        team: None,
        created_by: "test".into(),
        created_at: now,
    }
}

pub fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The part of a secret that is stored on purpose (the first 8 characters).
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(8).collect()
}
