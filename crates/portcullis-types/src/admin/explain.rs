//! `POST /admin/v1/auth/explain`: what the gateway makes of a credential, without calling a model.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::TierSource;
use crate::Secret;

/// What to explain: an API key or an access token in `credential`, or a client certificate (PEM,
/// the client's own first, then any intermediates it sends) in `certificate`; exactly one.
/// Deserialize only: the credential never goes back out, and its `Debug` is redacted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    #[serde(default)]
    pub credential: Option<Secret<String>>,
    #[serde(default)]
    pub certificate: Option<String>,
}

/// What the gateway would do with a credential: whether it is accepted or exactly why not, and
/// for a credential it recognises the principal it becomes and the limits that apply. Never
/// holds the credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthExplanation {
    /// What the credential was taken for.
    pub kind: CredentialKind,
    pub accepted: bool,
    /// Why a request with it would be refused: the error code the proxy would answer with, and
    /// what exactly is wrong (in more words than the proxy tells the caller).
    #[serde(default)]
    pub refused: Option<Refusal>,
    /// The issuer that matched a token or certificate (its `iss`, or the CA).
    #[serde(default)]
    pub issuer: Option<String>,
    /// How a token's claims (or a certificate's fields) mapped to the principal, one line per
    /// principal field; empty for keys.
    #[serde(default)]
    pub claims: Vec<ClaimMapping>,
    /// The principal requests with the credential run as; also shown for a revoked or expired
    /// key, so that an operator sees which one it is.
    #[serde(default)]
    pub principal: Option<ExplainedPrincipal>,
    /// The limits that apply to it, by scope (its own, its team's, the global ones), with what is
    /// left of each now.
    #[serde(default)]
    pub limits: Vec<ScopeLimitsView>,
}

/// What a credential was taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A Portcullis API key (`pcl_…`), well-formed or not.
    Key,
    Token,
    Certificate,
    /// Nothing the gateway recognises.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The proxy's error code: `invalid_api_key`, `revoked_api_key`, `expired_api_key`,
    /// `invalid_token`…
    pub code: String,
    pub message: String,
}

/// One principal field and where its value came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimMapping {
    /// The principal field: `team`, `tier`, `models`, `scopes`, `subject`…
    pub field: String,
    /// The claim (or certificate field) it is read from.
    pub claim: String,
    /// The claim's value in the credential; `None` when it is absent.
    #[serde(default)]
    pub value: Option<Value>,
    /// What the field became.
    pub mapped: Value,
    pub source: MappingSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingSource {
    /// Taken from the claim.
    Claim,
    /// The claim was absent: the configured default.
    Default,
}

/// A principal as explain shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedPrincipal {
    /// `key_…`, `oidc:<issuer name>:<sub>` or `cert:…`: the id its usage, limits and audit
    /// records are kept under.
    pub id: String,
    /// `key`, `token` or `certificate`.
    pub kind: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    /// The token's `jti` or `sha256:` hash, a certificate's fingerprint.
    #[serde(default)]
    pub credential_id: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    pub tier: String,
    /// Where the tier comes from: the principal's own (a key's, or a token's claims), its team's,
    /// or `limits.default_tier`.
    pub tier_source: TierSource,
    pub models: Vec<String>,
    pub scopes: Vec<String>,
    /// Client addresses it may be used from; empty is anywhere.
    pub allowed_cidrs: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// The limits of one scope and where each stands, as `GET /v1/usage` shows them too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeLimitsView {
    pub scope: ScopeView,
    pub limits: Vec<LimitStateView>,
}

/// `{"kind": "key", "id": …}` (the caller's own limits, whatever its credential), `{"kind":
/// "team", "id": …}` or `{"kind": "global"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeView {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// One limit of a scope: tokens and requests as counts, money in currency units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitStateView {
    /// The limit's config name (`requests_per_minute`, `budget_per_day`…).
    pub limit: String,
    pub max: Value,
    pub used: Value,
    pub reserved: Value,
    pub remaining: Value,
    #[serde(default)]
    pub resets_in_ms: Option<u64>,
}
