//! Bodies of the admin API (`/admin/v1`). The server and the CLI both use these, so a field
//! renamed on one side is a compile error on the other.

mod explain;

pub use explain::{
    AuthExplanation, ClaimMapping, CredentialKind, ExplainRequest, ExplainedPrincipal, LimitStateView, MappingSource,
    Refusal, ScopeLimitsView, ScopeView,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// Limits a tier gives, or a team or key overrides. `None` means "no override" on a team or key
/// and "no such limit" on a tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_per_day: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_per_month: Option<f64>,
}

/// The largest money budget (`budget_per_day`, `budget_per_month` of a key, team, tier or the
/// gateway), in currency units: 9 223 372. Money is counted in exact integer pico-units
/// (10⁻¹² units) and stores sum usage in signed 64-bit columns, so `i64::MAX` pico-units
/// (9 223 372.036… units) is the most that is counted exactly everywhere, restarts included.
/// A larger budget is refused, never clamped.
pub const MAX_BUDGET: f64 = 9_223_372.0;

/// The largest `requests_per_minute`: 2^26 = 67 108 864, the most the shared (Redis) limiter
/// keeps exactly. A larger rate is refused, never clamped.
pub const MAX_REQUESTS_PER_MINUTE: u64 = 1 << 26;

/// The largest `tokens_per_minute`: 2^53 / 120 000 = 75 059 993 789, the most the shared
/// (Redis) limiter keeps exactly. A larger rate is refused, never clamped.
pub const MAX_TOKENS_PER_MINUTE: u64 = (1 << 53) / 120_000;

/// The largest `tokens_per_day` and `tokens_per_month`: `i64::MAX` = 9 223 372 036 854 775 807,
/// the most the stores sum (usage totals restore quotas after a restart).
pub const MAX_TOKEN_QUOTA: u64 = i64::MAX as u64;

/// A limit outside what Portcullis counts exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRangeError {
    /// The limit's field name (`budget_per_day`); callers prefix their own path.
    pub field: &'static str,
    /// What is wrong, the allowed range included (`"must be from 0 to 9223372 …"`).
    pub problem: String,
}

impl std::fmt::Display for LimitRangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

impl LimitOverrides {
    /// The first limit beyond its maximum ([`MAX_BUDGET`], [`MAX_REQUESTS_PER_MINUTE`],
    /// [`MAX_TOKENS_PER_MINUTE`], [`MAX_TOKEN_QUOTA`]), or a budget that is negative or not a
    /// number. `max_concurrent` has no maximum: every limiter counts it exactly.
    pub fn check_range(&self) -> Result<(), LimitRangeError> {
        let counts = [
            ("requests_per_minute", self.requests_per_minute, MAX_REQUESTS_PER_MINUTE),
            ("tokens_per_minute", self.tokens_per_minute, MAX_TOKENS_PER_MINUTE),
            ("tokens_per_day", self.tokens_per_day, MAX_TOKEN_QUOTA),
            ("tokens_per_month", self.tokens_per_month, MAX_TOKEN_QUOTA),
        ];
        for (field, value, max) in counts {
            if let Some(value) = value.filter(|value| *value > max) {
                return Err(LimitRangeError { field, problem: format!("must be at most {max}, not {value}") });
            }
        }
        for (field, value) in [("budget_per_day", self.budget_per_day), ("budget_per_month", self.budget_per_month)] {
            if let Some(value) = value.filter(|value| !(0.0..=MAX_BUDGET).contains(value)) {
                return Err(LimitRangeError {
                    field,
                    problem: format!("must be a number from 0 to {MAX_BUDGET} (currency units), not {value}"),
                });
            }
        }
        Ok(())
    }
}

/// Whether `c` is invisible or changes how the text around it is shown: a control character
/// (general category Cc), a format character (Cf: bidirectional embeddings, overrides, isolates
/// and marks, zero-width spaces and joiners, the word joiner and invisible operators, the byte
/// order mark, the soft hyphen, tag characters, …) or a line or paragraph separator (Zl, Zp).
/// Such characters make a name look like another one (`evil\u{202E}gnp.exe` shows as
/// `evilexe.png`), so admin-supplied display strings may not contain them.
///
/// The Cf ranges are Unicode 15.1's, with the unassigned U+2065 and U+E0000 inside them included.
pub fn is_hidden_char(c: char) -> bool {
    if c.is_control() {
        return true;
    }
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE007F
    )
}

/// The first [hidden](is_hidden_char) character of `text`, if any.
pub fn first_hidden_char(text: &str) -> Option<char> {
    text.chars().find(|c| is_hidden_char(*c))
}

/// An API key as the admin API shows it: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// The first characters of the secret (`pcl_AbCd…`), enough to recognise it, not to use it.
    pub prefix: String,
    pub team: Option<String>,
    /// The tier the key is on now: its own, else its team's, else `limits.default_tier`.
    pub tier: String,
    /// Where [`KeyView::tier`] comes from: only a key whose tier is not its own moves when its
    /// team's tier (or `limits.default_tier`) changes.
    pub tier_source: TierSource,
    pub models: Vec<String>,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    pub status: KeyStatus,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Whether the key's prompts and completions are recorded (redacted) in the audit log. Its
    /// team's setting applies too: either one turns capture on.
    #[serde(default)]
    pub capture_content: bool,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// Where a key's tier comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierSource {
    /// Given to the key itself (`tier` on create or update).
    Key,
    /// Its team's tier, followed as it changes.
    Team,
    /// `limits.default_tier`: neither the key nor its team has a tier.
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

/// `POST /admin/v1/keys`. Only `name` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Lifetime from now, as a duration string (`"30d"`); mutually exclusive with `expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOverrides>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Record the key's (redacted) prompts and completions in the audit log. Admins only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture_content: bool,
}

/// The answer to a create or rotate: the only time the secret is ever shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The secret. The key's public `id` is in the flattened view.
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

/// `PATCH /admin/v1/keys/{id}`: fields present are replaced; `null` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// `true` removes the expiry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_expiry: bool,
    /// `true` removes the key's own tier: it follows its team's (else `limits.default_tier`) again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inherit_tier: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOverrides>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Turns content capture on or off. Admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_content: Option<bool>,
}

/// `POST /admin/v1/keys/{id}/rotate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the old secret keeps working, as a duration string; `"0s"` ends it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamView {
    pub name: String,
    pub tier: Option<String>,
    pub limits: LimitOverrides,
    pub metadata: Value,
    /// Whether every key of the team has its prompts and completions recorded (redacted).
    #[serde(default)]
    pub capture_content: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTeamRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOverrides>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture_content: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeamRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOverrides>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_content: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Keys, teams and usage of one team only.
    TeamAdmin,
    /// Reads everything, changes nothing.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TeamAdmin => "team_admin",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "team_admin" => Some(Role::TeamAdmin),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub role: Role,
    pub team: Option<String>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// The answer to a token create: the only time the token is ever shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The secret. The token's public `id` is in the flattened view.
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// A tier as configured, for `GET /admin/v1/tiers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierView {
    pub name: String,
    #[serde(flatten)]
    pub limits: LimitOverrides,
    pub burst: Option<u64>,
    pub priority: i64,
    pub models: Vec<String>,
}

/// A configured model, for `GET /admin/v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    pub name: String,
    pub upstream_model: String,
    pub endpoints: Vec<EndpointView>,
    pub fallbacks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    pub url: String,
    pub healthy: bool,
    pub outstanding: u64,
}

/// `GET /admin/v1/config`: the running configuration's state. No setting's value is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatusView {
    /// When the running live settings were loaded: at start, or by the last reload that worked.
    #[serde(with = "time::serde::rfc3339")]
    pub loaded_at: OffsetDateTime,
    /// The last reload (SIGHUP) since start, if any.
    pub last_reload: Option<ReloadView>,
    /// Dotted paths of the settings whose value in the file (as last reloaded) differs from the
    /// one the gateway runs with: they take effect at the next restart. Empty when none.
    pub restart_required: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadView {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub outcome: ReloadOutcome,
    /// Why the file was refused (`outcome = "error"`): the field path and the problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The file was applied; its live settings are running.
    Ok,
    /// The file was refused; the running configuration is unchanged.
    Error,
}

/// `{"data": [...]}` around every list, with room for a cursor later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResponse<T> {
    pub data: Vec<T>,
}

/// One line of `GET /admin/v1/usage`. Only the grouping's own labels are present: `bucket` for
/// `hour` and `day`; `model` for `model`; `key_id` (and the key's `team`) for `key`; `team` for
/// `team`, where a line without `team` is the usage of keys in no team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    /// Start of the hour or day (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub bucket: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
    /// In the currency units of the configured prices.
    pub cost: f64,
    /// Requests whose token counts were estimated because the upstream reported none.
    pub estimated_requests: u64,
}

/// One audit record as `GET /admin/v1/audit` and its JSON Lines export show it: the stored
/// record's fields (absent ones as `null`), with `cost` in currency units next to the exact
/// `cost_pico` (10⁻¹² units) the record's hash covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    pub seq: u64,
    /// RFC 3339, UTC, to the millisecond, always three fractional digits.
    #[serde(with = "crate::millis")]
    pub ts: OffsetDateTime,
    pub node: String,
    /// `request`, `authz` (an authorizer's decision), `admin` or `security`.
    pub kind: String,
    #[serde(default)]
    pub request_id: Option<String>,
    /// `key`, `token` or `certificate`: what the caller presented.
    #[serde(default)]
    pub principal_kind: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub credential_id: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub admin_token_id: Option<String>,
    #[serde(default)]
    pub client_ip: Option<String>,
    /// Which gateway asked the authorizer: the name it gives itself (`nginx`, `caddy`…), else its
    /// address.
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    pub status: u16,
    /// `allow`, `deny` or `error` (allowed, but the model server failed).
    pub decision: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    pub stream: bool,
    pub latency_ms: u64,
    #[serde(default)]
    pub ttfb_ms: Option<u64>,
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    pub usage_estimated: bool,
    /// In the currency units of the configured prices (display only).
    #[serde(default)]
    pub cost: Option<f64>,
    #[serde(default)]
    pub cost_pico: Option<u64>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// A page of `GET /admin/v1/audit`: oldest first. `next_cursor`, when present, reads on after the
/// page's last record (send it back as `cursor`); it is `null` when the page is empty. A page
/// shorter than the `limit` asked for reached the end of what is stored so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    pub data: Vec<AuditView>,
    pub next_cursor: Option<String>,
}

/// `GET /admin/v1/audit/verify`: every node's chain checked from its first record (or from its
/// retention checkpoint). `ok` only when every chain verifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditVerifyView {
    pub ok: bool,
    pub nodes: Vec<AuditNodeVerifyView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditNodeVerifyView {
    pub node: String,
    /// Records whose hash was recomputed.
    pub records_checked: u64,
    /// The seq of the last record that verified: the checkpoint's seq, or 0, when none did.
    pub last_seq: u64,
    /// The seq of the retention checkpoint verification started from (`null`: from seq 1).
    #[serde(default)]
    pub from_checkpoint: Option<u64>,
    pub status: AuditChainStatus,
}

/// `"ok"`, or `{"break": {"seq": …, "problem": …}}` at the first record that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditChainStatus {
    Ok,
    Break { seq: u64, problem: AuditProblem },
}

/// What verification found at a break: a record whose hash no longer matches its content
/// (`edited`), a gap in the sequence (`deleted`), a record that does not belong there
/// (`inserted`), or records out of order (`reordered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditProblem {
    Edited,
    Deleted,
    Inserted,
    Reordered,
}

impl AuditProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditProblem::Edited => "edited",
            AuditProblem::Deleted => "deleted",
            AuditProblem::Inserted => "inserted",
            AuditProblem::Reordered => "reordered",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_zero_width_tag_and_separator_characters_are_hidden() {
        let hidden = concat!(
            "\u{0000}\u{0007}\u{001B}\u{007F}\u{0085}\u{009F}", // Cc
            "\u{00AD}",                                         // soft hyphen
            "\u{0600}\u{0605}\u{061C}\u{06DD}\u{070F}\u{0890}\u{08E2}\u{180E}",
            "\u{200B}\u{200C}\u{200D}\u{200E}\u{200F}", // zero-width, LRM, RLM
            "\u{2028}\u{2029}",                         // line and paragraph separators
            "\u{202A}\u{202B}\u{202C}\u{202D}\u{202E}", // embeddings and overrides
            "\u{2060}\u{2061}\u{2064}",                 // word joiner, invisible operators
            "\u{2066}\u{2067}\u{2068}\u{2069}",         // isolates
            "\u{206A}\u{206F}\u{FEFF}\u{FFF9}\u{FFFB}\u{110BD}\u{110CD}\u{13430}\u{1343F}",
            "\u{1BCA0}\u{1BCA3}\u{1D173}\u{1D17A}",
            "\u{E0001}\u{E0020}\u{E0041}\u{E007F}", // tags
        );
        for c in hidden.chars() {
            assert!(is_hidden_char(c), "U+{:04X} should be hidden", u32::from(c));
        }
    }

    #[test]
    fn visible_text_of_every_script_is_not_hidden() {
        let visible =
            "Az09 -_.:/@ café Zoë ß Ωμέγα кириллица עברית العربية हिन्दी 東京 한국어 ☕ 🙂 ﬁ \u{FE0F} \u{0301}";
        assert_eq!(first_hidden_char(visible), None);
        // The neighbours of each hidden range stay visible.
        let neighbours = "\u{00AC}\u{00AE}\u{0606}\u{200A}\u{2010}\u{2027}\u{202F}\u{205F}\u{2070}\u{FEFE}\u{FFFC}\u{E0080}\u{E0100}";
        for c in neighbours.chars() {
            assert!(!is_hidden_char(c), "U+{:04X} should be visible", u32::from(c));
        }
        assert_eq!(first_hidden_char("evil\u{202E}gnp.exe"), Some('\u{202E}'));
    }

    #[test]
    fn limits_within_their_maxima_pass_and_beyond_them_name_the_field() {
        let top = LimitOverrides {
            requests_per_minute: Some(MAX_REQUESTS_PER_MINUTE),
            tokens_per_minute: Some(MAX_TOKENS_PER_MINUTE),
            max_concurrent: Some(u64::MAX),
            tokens_per_day: Some(MAX_TOKEN_QUOTA),
            tokens_per_month: Some(MAX_TOKEN_QUOTA),
            budget_per_day: Some(MAX_BUDGET),
            budget_per_month: Some(0.0),
        };
        assert_eq!(top.check_range(), Ok(()));
        assert_eq!(LimitOverrides::default().check_range(), Ok(()));
        let field_of = |limits: LimitOverrides| limits.check_range().map_err(|error| error.field);
        assert_eq!(
            field_of(LimitOverrides { requests_per_minute: Some(MAX_REQUESTS_PER_MINUTE + 1), ..top.clone() }),
            Err("requests_per_minute")
        );
        assert_eq!(
            field_of(LimitOverrides { tokens_per_minute: Some(MAX_TOKENS_PER_MINUTE + 1), ..top.clone() }),
            Err("tokens_per_minute")
        );
        assert_eq!(field_of(LimitOverrides { tokens_per_day: Some(u64::MAX), ..top.clone() }), Err("tokens_per_day"));
        assert_eq!(
            field_of(LimitOverrides { tokens_per_month: Some(u64::MAX), ..top.clone() }),
            Err("tokens_per_month")
        );
        for bad in [MAX_BUDGET + 1.0, 18.5e6, 1e300, f64::INFINITY, f64::NAN, -0.01] {
            let limits = LimitOverrides { budget_per_month: Some(bad), ..top.clone() };
            assert_eq!(field_of(limits), Err("budget_per_month"), "{bad}");
        }
        let error = LimitOverrides { budget_per_day: Some(2e7), ..Default::default() }.check_range().unwrap_err();
        assert_eq!(
            error.to_string(),
            "budget_per_day must be a number from 0 to 9223372 (currency units), not 20000000"
        );
    }

    #[test]
    fn the_budget_maximum_is_exact_in_pico_units_and_below_i64_max() {
        let pico = MAX_BUDGET * 1e12;
        assert_eq!(pico, 9_223_372_000_000_000_000.0);
        assert!(pico < i64::MAX as f64);
        assert!((MAX_BUDGET + 1.0) * 1e12 > i64::MAX as f64, "no whole unit more would fit");
    }
}
