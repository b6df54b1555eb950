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
    /// The key's own tier. `None`: it follows its team's tier, else `limits.default_tier`,
    /// looked up on every request (so a team moved to another tier takes its keys along).
    pub tier: Option<String>,
    pub models: Vec<String>,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    pub expires_at: Option<OffsetDateTime>,
    /// Record (redacted) prompts and completions of this key's requests in the audit log.
    pub capture_content: bool,
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
    /// The key's own tier, or `None` to follow its team's (see [`KeyRecord::tier`]).
    pub tier: Option<String>,
    pub models: Vec<String>,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    pub expires_at: Option<OffsetDateTime>,
    pub capture_content: bool,
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

/// Fields present are replaced. `expires_at: Some(None)` removes the expiry; `tier: Some(None)`
/// the key's own tier (it follows its team's again).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub tier: Option<Option<String>>,
    pub models: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub allowed_cidrs: Option<Vec<String>>,
    pub limits: Option<LimitOverrides>,
    pub metadata: Option<Value>,
    pub expires_at: Option<Option<OffsetDateTime>>,
    pub capture_content: Option<bool>,
}

impl KeyPatch {
    /// `key` with each field the patch carries replaced.
    pub fn apply_to(self, mut key: KeyRecord) -> KeyRecord {
        let KeyPatch { name, tier, models, scopes, allowed_cidrs, limits, metadata, expires_at, capture_content } =
            self;
        key.name = name.unwrap_or(key.name);
        key.tier = tier.unwrap_or(key.tier);
        key.models = models.unwrap_or(key.models);
        key.scopes = scopes.unwrap_or(key.scopes);
        key.allowed_cidrs = allowed_cidrs.unwrap_or(key.allowed_cidrs);
        key.limits = limits.unwrap_or(key.limits);
        key.metadata = metadata.unwrap_or(key.metadata);
        key.expires_at = expires_at.unwrap_or(key.expires_at);
        key.capture_content = capture_content.unwrap_or(key.capture_content);
        key
    }
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
    /// Record (redacted) prompts and completions of every key of the team in the audit log.
    pub capture_content: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTeam {
    pub name: String,
    pub tier: Option<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    pub capture_content: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeamPatch {
    pub tier: Option<String>,
    pub limits: Option<LimitOverrides>,
    pub metadata: Option<Value>,
    pub capture_content: Option<bool>,
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

/// One settled request's usage (or several aggregated by the recorder), attributed to the hour
/// it ended in. Stores keep hourly roll-ups: only the hour of `at` is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub at: OffsetDateTime,
    pub key_id: String,
    /// The key's team when the request ran.
    pub team: Option<String>,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost in millionths of a millionth of a currency unit (10⁻¹² units), so sums stay exact.
    pub cost_pico: u64,
    /// How many of `requests` had their token counts estimated (the upstream reported none).
    pub estimated_requests: u64,
}

/// Sum per key (with its team) since a time, for seeding the limiter's day/month counters at
/// start-up. `tokens` is prompt plus completion tokens. Like every usage sum, both figures stop
/// at [`crate::USAGE_MAX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTotal {
    pub key_id: String,
    pub team: Option<String>,
    pub tokens: u64,
    pub cost_pico: u64,
}

/// A usage report: the hours overlapping `since..until` (see [`crate::UsageStore::usage_report`]),
/// narrowed by the filters given, summed per `group_by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
    pub group_by: UsageGrouping,
}

/// What a usage report sums by. `Hour` and `Day` buckets start on the hour and at midnight UTC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UsageGrouping {
    Hour,
    #[default]
    Day,
    Model,
    Key,
    Team,
}

impl UsageGrouping {
    pub const ALL: [UsageGrouping; 5] =
        [UsageGrouping::Hour, UsageGrouping::Day, UsageGrouping::Model, UsageGrouping::Key, UsageGrouping::Team];

    pub fn as_str(self) -> &'static str {
        match self {
            UsageGrouping::Hour => "hour",
            UsageGrouping::Day => "day",
            UsageGrouping::Model => "model",
            UsageGrouping::Key => "key",
            UsageGrouping::Team => "team",
        }
    }

    pub fn parse(text: &str) -> Option<UsageGrouping> {
        UsageGrouping::ALL.into_iter().find(|grouping| grouping.as_str() == text)
    }
}

/// One line of a usage report. Only the grouping's own fields are set: `bucket` for `Hour` and
/// `Day`; `model` for `Model`; `key_id` and the key's `team` for `Key`; `team` for `Team` (where
/// `None` is the usage of keys in no team). Each sum stops at [`crate::USAGE_MAX`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub bucket: Option<OffsetDateTime>,
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_pico: u64,
    pub estimated_requests: u64,
}
