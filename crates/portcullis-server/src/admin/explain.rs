//! `POST /admin/v1/auth/explain`: what the gateway makes of a credential — which kind it is,
//! whether it is accepted or exactly why not, the principal it becomes and the limits that apply
//! — without calling a model. Admins only: the answer says more than the proxy tells a caller.
//!
//! The credential is held as a [`Secret`] from the body on: it is never logged, echoed or put
//! in the call's audit record, which names the principal it resolved to instead.

use axum::Json;
use axum::extract::State;
use portcullis_auth::{SecretKind, SecretToken};
use portcullis_config::Live;
use portcullis_store::TeamRecord;
use portcullis_types::Secret;
use portcullis_types::admin::{
    AuthExplanation, ClaimMapping, CredentialKind, ExplainRequest, ExplainedPrincipal, MappingSource, Refusal,
};
use time::OffsetDateTime;

use super::AdminState;
use super::auth::AdminCaller;
use super::explain_certificate::explain_certificate;
use super::extract::ApiJson;
use super::refusal::audited;
use crate::caller_limits::scopes_for;
use crate::clock::unix_millis;
use crate::error::ApiError;
use crate::limit_view;
use crate::principal::{Credential, Principal, key_tier};

/// What the call's audit record names as its target when the credential resolved to no
/// principal.
const NO_PRINCIPAL: &str = "-";

pub async fn explain_credential(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiJson(request): ApiJson<ExplainRequest>,
) -> Result<Json<AuthExplanation>, ApiError> {
    let result = explain_for(&state, &caller, request).await;
    audited(&caller, "auth.explain", None, result)
}

async fn explain_for(
    state: &AdminState,
    caller: &AdminCaller,
    request: ExplainRequest,
) -> Result<Json<AuthExplanation>, ApiError> {
    caller.require_admin()?;
    let now = OffsetDateTime::now_utc();
    let explanation = match (&request.credential, &request.certificate) {
        (Some(credential), None) => explain(state, credential, now).await?,
        (None, Some(pem)) => explain_certificate(state, pem, now).await?,
        _ => {
            let message = "give exactly one of `credential` (a key or token) and `certificate` (PEM)";
            return Err(ApiError::bad_request(message, Some("credential")));
        }
    };
    let principal = explanation.principal.as_ref();
    let target = principal.map_or(NO_PRINCIPAL, |principal| principal.id.as_str());
    caller.record_action("auth.explain", target, principal.and_then(|principal| principal.team.as_deref())).await;
    Ok(Json(explanation))
}

/// The explanation of `credential` as the proxy would judge it at `now`. One branch per kind of
/// credential, each ending in [`principal_explanation`] for what it resolves to:
/// - an API key (`pcl_…`, well-formed or not): [`explain_key`];
/// - a token: the OIDC verifier's explanation (which issuer matched, how its claims mapped to a
///   [`portcullis_auth::ExternalIdentity`]) goes where anything else is refused below;
/// - a client certificate comes in a body field of its own (`certificate`) and goes to
///   [`explain_certificate`].
///
/// Errors only when the store cannot be read; a refused credential is an answer.
pub async fn explain(
    state: &AdminState,
    credential: &Secret<String>,
    now: OffsetDateTime,
) -> Result<AuthExplanation, ApiError> {
    let text = credential.expose().trim();
    if text.starts_with(SecretKind::ApiKey.prefix()) {
        return explain_key(state, text, now).await;
    }
    let tokens = state.runtime().tokens.clone();
    if !tokens.is_empty() {
        return explain_token(state, &tokens, text, now).await;
    }
    Ok(refused(
        CredentialKind::Unknown,
        "invalid_api_key",
        "not a Portcullis key and no token issuer is configured".into(),
    ))
}

/// A key as `proxy::authenticate` judges it: format and checksum, then the store, then revoked,
/// then expired. A revoked or expired key still shows its principal and limits.
async fn explain_key(state: &AdminState, text: &str, now: OffsetDateTime) -> Result<AuthExplanation, ApiError> {
    let secret = match SecretToken::parse(SecretKind::ApiKey, text) {
        Ok(secret) => secret,
        Err(problem) => {
            return Ok(refused(CredentialKind::Key, "invalid_api_key", format!("not a well-formed key: {problem}")));
        }
    };
    let hash = state.hasher().hash(&secret);
    let found = state
        .stores()
        .keys
        .find_key_by_secret(hash.as_bytes())
        .await
        .map_err(|error| ApiError::from_store(&error, "key lookup"))?;
    let Some(found) = found else {
        let message = "a well-formed key, but no key has this secret (never issued, or rotated out \
                       and its grace period over)";
        return Ok(refused(CredentialKind::Key, "invalid_api_key", message.into()));
    };
    let Some(principal) = Principal::from_secret_match(&found) else {
        let message = format!("key {}: its stored scopes or address list no longer parse", found.key.id);
        return Ok(refused(CredentialKind::Key, "invalid_api_key", message));
    };
    let refusal = if principal.revoked {
        Some(Refusal { code: "revoked_api_key".into(), message: format!("key {} is revoked", principal.id) })
    } else if principal.is_expired(now.unix_timestamp()) {
        Some(Refusal { code: "expired_api_key".into(), message: expiry_message(&principal) })
    } else {
        None
    };
    principal_explanation(state, CredentialKind::Key, &principal, refusal, now).await
}

/// A token as `proxy::authenticate` judges it (verified afresh, never from the cache): the
/// issuer that matched, each claim's mapping, then the principal and its limits — or the exact
/// refusal, with the code the proxy would answer.
async fn explain_token(
    state: &AdminState,
    tokens: &portcullis_oidc::Verifier,
    text: &str,
    now: OffsetDateTime,
) -> Result<AuthExplanation, ApiError> {
    let explained = tokens.explain(text).await;
    let claims: Vec<ClaimMapping> = explained.mapping.iter().map(claim_mapping).collect();
    match explained.outcome {
        Ok(identity) => {
            let issuer = identity.issuer.clone();
            let principal = Principal::from_identity(identity);
            let explanation = principal_explanation(state, CredentialKind::Token, &principal, None, now).await?;
            Ok(AuthExplanation { issuer: Some(issuer), claims, ..explanation })
        }
        Err(refusal) => {
            let code = if refusal.is_unavailable() { "auth_unavailable" } else { "invalid_token" };
            Ok(AuthExplanation {
                issuer: explained.issuer,
                claims,
                ..refused(CredentialKind::Token, code, refusal.to_string())
            })
        }
    }
}

fn claim_mapping(field: &portcullis_oidc::MappedField) -> ClaimMapping {
    let mapped = match field.field {
        // One value or none; the lists stay lists.
        "team" | "tier" => field.result.first().map_or(serde_json::Value::Null, |one| one.clone().into()),
        _ => field.result.clone().into(),
    };
    ClaimMapping {
        field: field.field.to_string(),
        claim: field.claim.clone().unwrap_or_default(),
        value: field.value.clone(),
        mapped,
        source: match field.source {
            portcullis_oidc::Source::Claim => MappingSource::Claim,
            portcullis_oidc::Source::Default => MappingSource::Default,
        },
    }
}

fn expiry_message(principal: &Principal) -> String {
    let at = principal.expires_at.and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok());
    match at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()) {
        Some(at) => format!("key {} expired at {at} (or the secret's rotation grace ended then)", principal.id),
        None => format!("key {} is expired", principal.id),
    }
}

/// The principal a credential resolved to, with its team's and the global limits, where each
/// stands now. Shared by every kind of credential.
pub async fn principal_explanation(
    state: &AdminState,
    kind: CredentialKind,
    principal: &Principal,
    refused: Option<Refusal>,
    now: OffsetDateTime,
) -> Result<AuthExplanation, ApiError> {
    let live = state.runtime().live.clone();
    let team = match &principal.team {
        Some(name) => state
            .teams()
            .get(name, live.store.cache_max_age.0)
            .await
            .map_err(|error| ApiError::from_store(&error, "team lookup"))?,
        None => None,
    };
    let scopes = scopes_for(&live, principal, team.as_deref());
    let limits = limit_view::snapshot(state.limiter().as_ref(), &scopes, unix_millis(now)).await;
    Ok(AuthExplanation {
        kind,
        accepted: refused.is_none(),
        refused,
        issuer: None,
        claims: Vec::new(),
        principal: Some(explained_principal(principal, team.as_deref(), &live)),
        limits,
    })
}

/// A principal as the explanation shows it, whatever credential it came from.
pub fn explained_principal(principal: &Principal, team: Option<&TeamRecord>, live: &Live) -> ExplainedPrincipal {
    let team_tier = team.and_then(|team| team.tier.as_deref());
    let (tier, tier_source) = key_tier(principal.own_tier.as_deref(), team_tier, &live.limits.default_tier);
    let (issuer, subject, credential_id) = match &principal.credential {
        Credential::Key => (None, None, None),
        Credential::External { issuer, subject, credential_id, .. } => {
            (Some(issuer.clone()), Some(subject.clone()), Some(credential_id.clone()))
        }
    };
    ExplainedPrincipal {
        id: principal.id.clone(),
        kind: principal.credential.principal_kind().name().to_string(),
        issuer,
        subject,
        credential_id,
        team: principal.team.clone(),
        tier: tier.to_string(),
        tier_source,
        models: principal.models.patterns().to_vec(),
        scopes: principal.scopes.names(),
        allowed_cidrs: principal.allowed_cidrs.to_strings(),
        expires_at: principal.expires_at.and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok()),
    }
}

/// A credential refused before it resolved to any principal.
pub fn refused(kind: CredentialKind, code: &str, message: String) -> AuthExplanation {
    AuthExplanation {
        kind,
        accepted: false,
        refused: Some(Refusal { code: code.to_string(), message }),
        issuer: None,
        claims: Vec::new(),
        principal: None,
        limits: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use portcullis_auth::{ExternalIdentity, IdentityKind, ModelGlobs, Scopes};
    use portcullis_types::admin::TierSource;

    use super::*;

    fn live() -> Live {
        let config = "[limits]\ndefault_tier = \"free\"\n\n[tiers.free]\nrequests_per_minute = 10\n\n\
                      [tiers.pro]\nrequests_per_minute = 600\n";
        portcullis_config::Config::parse(config, |_| None).unwrap().split().1
    }

    fn identity(tier: Option<&str>) -> ExternalIdentity {
        ExternalIdentity {
            kind: IdentityKind::Token,
            id: "oidc:corp:svc-ingest".into(),
            issuer: "https://idp.example".into(),
            subject: "svc-ingest".into(),
            credential_id: "jti-42".into(),
            team: Some("acme".into()),
            tier: tier.map(Into::into),
            models: ModelGlobs::new(vec!["smol*".into()]),
            scopes: Scopes::all(),
            expires_at: Some(1_800_000_000),
        }
    }

    fn team(tier: Option<&str>) -> TeamRecord {
        TeamRecord {
            name: "acme".into(),
            tier: tier.map(Into::into),
            limits: Default::default(),
            metadata: serde_json::json!({}),
            capture_content: false,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_token_principal_is_shown_with_its_issuer_subject_and_credential_id() {
        let live = live();
        let principal = Principal::from_identity(identity(Some("pro")));
        let shown = explained_principal(&principal, Some(&team(Some("free"))), &live);
        assert_eq!(
            shown,
            ExplainedPrincipal {
                id: "oidc:corp:svc-ingest".into(),
                kind: "token".into(),
                issuer: Some("https://idp.example".into()),
                subject: Some("svc-ingest".into()),
                credential_id: Some("jti-42".into()),
                team: Some("acme".into()),
                tier: "pro".into(),
                tier_source: TierSource::Key,
                models: vec!["smol*".into()],
                scopes: Scopes::all().names(),
                allowed_cidrs: Vec::new(),
                expires_at: Some(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()),
            }
        );
    }

    #[test]
    fn a_token_without_a_tier_follows_its_team_then_the_default() {
        let live = live();
        let principal = Principal::from_identity(identity(None));
        let shown = explained_principal(&principal, Some(&team(Some("pro"))), &live);
        assert_eq!((shown.tier.as_str(), shown.tier_source), ("pro", TierSource::Team));
        let shown = explained_principal(&principal, None, &live);
        assert_eq!((shown.tier.as_str(), shown.tier_source), ("free", TierSource::Default));
    }

    #[test]
    fn a_token_principal_has_its_own_limits_from_its_tier_and_its_teams() {
        let live = live();
        let principal = Principal::from_identity(identity(Some("pro")));
        let mut acme = team(None);
        acme.limits.requests_per_minute = Some(100);
        let scopes = scopes_for(&live, &principal, Some(&acme));
        let (scope, limits) = &scopes[0];
        assert_eq!(*scope, portcullis_limits::LimitScope::Key("oidc:corp:svc-ingest".into()));
        assert_eq!(limits.requests_per_minute, Some(600));
        let (scope, limits) = &scopes[1];
        assert_eq!(*scope, portcullis_limits::LimitScope::Team("acme".into()), "its team's limits, as a key's");
        assert_eq!(limits.requests_per_minute, Some(100));
    }
}
