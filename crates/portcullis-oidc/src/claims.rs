//! Claims to identity: the issuer's mapping (claim names, defaults, allow-lists, scope map)
//! applied to a verified token's claims or an introspection answer, with a trace of each step
//! for `explain`.

use portcullis_auth::{ExternalIdentity, IdentityKind, ModelGlobs, Scope, Scopes};
use portcullis_config::OidcIssuerConfig;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::refusal::Refusal;

/// How one field of the identity was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedField {
    /// `team`, `tier`, `models` or `scopes`.
    pub field: &'static str,
    /// The configured claim name (or dotted path), if any.
    pub claim: Option<String>,
    /// The claim's value in the token, if present.
    pub value: Option<Value>,
    /// What the field became (empty: nothing, e.g. no team).
    pub result: Vec<String>,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Claim,
    Default,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Claim => "claim",
            Source::Default => "default",
        }
    }
}

/// Applies the mapping. `token` is the presented token (for the hash that names it when it has
/// no `jti`); `trace` receives each field's decision, up to the first refusal.
pub fn identity(
    issuer: &OidcIssuerConfig,
    claims: &Map<String, Value>,
    token: &str,
    expires_at: Option<i64>,
    trace: &mut Vec<MappedField>,
) -> Result<ExternalIdentity, Refusal> {
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        Some(Value::String(_)) | None => return Err(claim_error("sub", "is required")),
        Some(_) => return Err(claim_error("sub", "must be a string")),
    };
    let credential_id = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() => jti.clone(),
        _ => token_hash_id(token),
    };
    let team = team(issuer, claims, trace)?;
    let tier = tier(issuer, claims, trace)?;
    let models = models(issuer, claims, trace)?;
    let scopes = scopes(issuer, claims, trace)?;
    Ok(ExternalIdentity {
        kind: IdentityKind::Token,
        id: format!("oidc:{}:{subject}", issuer.name()),
        issuer: issuer.issuer.clone(),
        subject,
        credential_id,
        team,
        tier,
        models: ModelGlobs::new(models),
        scopes,
        expires_at,
    })
}

/// `sha256:` and the first 32 hex digits of the token's SHA-256: names the token in audit
/// records without being usable as it.
pub fn token_hash_id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..32])
}

fn team(
    issuer: &OidcIssuerConfig,
    claims: &Map<String, Value>,
    trace: &mut Vec<MappedField>,
) -> Result<Option<String>, Refusal> {
    let (claim, value) = lookup(issuer.claims.team.as_deref(), claims);
    let claimed = value.map(|value| single_string(value, "team", claim)).transpose()?;
    let result = match &claimed {
        Some(team) => {
            let allowed = match &issuer.allowed_teams {
                Some(globs) => ModelGlobs::new(globs.clone()).allows(team) && !globs.is_empty(),
                None => issuer.default_team.as_deref() == Some(team.as_str()),
            };
            push(trace, "team", claim, value, vec![team.clone()], Source::Claim);
            if !allowed {
                return Err(Refusal::NotAllowed { field: "team", value: team.clone() });
            }
            Some(team.clone())
        }
        None => {
            push(trace, "team", claim, None, issuer.default_team.iter().cloned().collect(), Source::Default);
            issuer.default_team.clone()
        }
    };
    Ok(result)
}

fn tier(
    issuer: &OidcIssuerConfig,
    claims: &Map<String, Value>,
    trace: &mut Vec<MappedField>,
) -> Result<Option<String>, Refusal> {
    let (claim, value) = lookup(issuer.claims.tier.as_deref(), claims);
    match value.map(|value| single_string(value, "tier", claim)).transpose()? {
        Some(tier) => {
            let allowed = match &issuer.allowed_tiers {
                Some(tiers) => tiers.contains(&tier),
                None => issuer.default_tier.as_deref() == Some(tier.as_str()),
            };
            push(trace, "tier", claim, value, vec![tier.clone()], Source::Claim);
            if !allowed {
                return Err(Refusal::NotAllowed { field: "tier", value: tier });
            }
            Ok(Some(tier))
        }
        None => {
            push(trace, "tier", claim, None, issuer.default_tier.iter().cloned().collect(), Source::Default);
            Ok(issuer.default_tier.clone())
        }
    }
}

fn models(
    issuer: &OidcIssuerConfig,
    claims: &Map<String, Value>,
    trace: &mut Vec<MappedField>,
) -> Result<Vec<String>, Refusal> {
    let (claim, value) = lookup(issuer.claims.models.as_deref(), claims);
    match value {
        Some(value) => {
            let models = string_list(value, "models", claim)?;
            push(trace, "models", claim, Some(value), models.clone(), Source::Claim);
            Ok(models)
        }
        None => {
            let models = issuer.default_models.clone().unwrap_or_default();
            push(trace, "models", claim, None, models.clone(), Source::Default);
            Ok(models)
        }
    }
}

fn scopes(
    issuer: &OidcIssuerConfig,
    claims: &Map<String, Value>,
    trace: &mut Vec<MappedField>,
) -> Result<Scopes, Refusal> {
    let (claim, value) = lookup(issuer.claims.scopes.as_deref(), claims);
    let (names, source) = match value {
        Some(value) => {
            let mut names = Vec::new();
            for token_scope in string_list(value, "scopes", claim)? {
                match issuer.scope_map.get(&token_scope) {
                    Some(mapped) => names.extend(mapped.iter().cloned()),
                    None if token_scope.parse::<Scope>().is_ok() => names.push(token_scope),
                    None => {}
                }
            }
            (names, Source::Claim)
        }
        None => match &issuer.default_scopes {
            Some(defaults) => (defaults.clone(), Source::Default),
            None => (Scopes::all().names(), Source::Default),
        },
    };
    // Every name here is a Portcullis scope already (validated config, or filtered above).
    let scopes =
        Scopes::parse(&names).map_err(|_| claim_error(claim.unwrap_or("scopes"), "maps to an unknown scope"))?;
    push(trace, "scopes", claim, value, scopes.names(), source);
    Ok(scopes)
}

/// A claim by name, else by dotted path through nested objects (`realm_access.roles`). The
/// whole name is tried first: namespaced claims such as `https://example.com/team` have dots.
fn lookup<'a, 'c>(name: Option<&'a str>, claims: &'c Map<String, Value>) -> (Option<&'a str>, Option<&'c Value>) {
    let Some(name) = name else { return (None, None) };
    let found = claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |value, part| value.as_object()?.get(part))
    });
    (Some(name), found.filter(|value| !value.is_null()))
}

fn single_string(value: &Value, field: &'static str, claim: Option<&str>) -> Result<String, Refusal> {
    match value {
        Value::String(text) if !text.is_empty() => Ok(text.clone()),
        _ => Err(claim_error(claim.unwrap_or(field), "must be a non-empty string")),
    }
}

/// An array of strings, or one space-separated string (as OAuth's `scope`).
fn string_list(value: &Value, field: &'static str, claim: Option<&str>) -> Result<Vec<String>, Refusal> {
    match value {
        Value::String(text) => Ok(text.split_whitespace().map(str::to_string).collect()),
        Value::Array(items) => {
            items.iter().map(|item| item.as_str().map(str::to_string)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                claim_error(claim.unwrap_or(field), "must be an array of strings or a space-separated string")
            })
        }
        _ => Err(claim_error(claim.unwrap_or(field), "must be an array of strings or a space-separated string")),
    }
}

fn claim_error(claim: &str, problem: &'static str) -> Refusal {
    Refusal::InvalidClaim { claim: claim.to_string(), problem }
}

fn push(
    trace: &mut Vec<MappedField>,
    field: &'static str,
    claim: Option<&str>,
    value: Option<&Value>,
    result: Vec<String>,
    source: Source,
) {
    trace.push(MappedField { field, claim: claim.map(str::to_string), value: value.cloned(), result, source });
}
