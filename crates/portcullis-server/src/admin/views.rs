//! Stored records as the admin API shows them, and store errors as API errors.

use portcullis_store::{AdminTokenRecord, KeyRecord, StoreError, TeamRecord};
use portcullis_types::admin::{KeyStatus, KeyView, TeamView, TokenView};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::principal::key_tier;

/// `team_tier` is the tier of the key's team as stored now: a key without a tier of its own is
/// shown on the tier it follows.
pub fn key_view(record: KeyRecord, team_tier: Option<&str>, default_tier: &str, now: OffsetDateTime) -> KeyView {
    let (tier, tier_source) = key_tier(record.tier.as_deref(), team_tier, default_tier);
    let tier = tier.to_string();
    let status = if record.revoked_at.is_some() {
        KeyStatus::Revoked
    } else if record.expires_at.is_some_and(|end| end <= now) {
        KeyStatus::Expired
    } else {
        KeyStatus::Active
    };
    KeyView {
        id: record.id,
        name: record.name,
        prefix: record.display_prefix,
        team: record.team,
        tier,
        tier_source,
        models: record.models,
        scopes: record.scopes,
        allowed_cidrs: record.allowed_cidrs,
        limits: record.limits,
        metadata: record.metadata,
        status,
        expires_at: record.expires_at,
        capture_content: record.capture_content,
        created_by: record.created_by,
        created_at: record.created_at,
        revoked_at: record.revoked_at,
        last_used_at: record.last_used_at,
    }
}

pub fn team_view(record: TeamRecord) -> TeamView {
    TeamView {
        name: record.name,
        tier: record.tier,
        limits: record.limits,
        metadata: record.metadata,
        capture_content: record.capture_content,
        created_at: record.created_at,
    }
}

pub fn token_view(record: AdminTokenRecord) -> TokenView {
    TokenView {
        id: record.id,
        name: record.name,
        prefix: record.display_prefix,
        role: record.role,
        team: record.team,
        created_by: record.created_by,
        created_at: record.created_at,
        revoked_at: record.revoked_at,
    }
}

/// For an insert of a `what` that refers to a `referenced` row (a key's or token's team): the
/// store answers NotFound when that row is missing, which is the `referenced` thing missing,
/// not the one being created.
pub fn insert_error(what: &'static str, referenced: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |error| match error {
        StoreError::NotFound => ApiError::NotFound { what: referenced },
        other => store_error(what)(other),
    }
}

/// `what` names the thing in a 404 ("key", "team", "token").
pub fn store_error(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |error| match error {
        StoreError::NotFound => ApiError::NotFound { what },
        StoreError::Conflict(message) => ApiError::Conflict { message: format!("{what} already exists: {message}") },
        StoreError::Unavailable { .. } | StoreError::Corrupt(_) => ApiError::from_store(&error, what),
    }
}
