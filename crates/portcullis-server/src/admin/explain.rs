//! `POST /admin/v1/auth/explain`: what the gateway makes of a credential — which kind it is,
//! whether it is accepted or exactly why not, the principal it becomes and the limits that apply
//! — without calling a model. Admins only: the answer says more than the proxy tells a caller.
//!
//! The credential is held as a [`Secret`] from the body on: it is never logged, echoed or put
//! in the call's audit record, which names the principal it resolved to instead.

use axum::Json;
use axum::extract::State;
use portcullis_auth::{SecretKind, SecretToken};
use portcullis_types::Secret;
use portcullis_types::admin::{AuthExplanation, ClaimMapping, CredentialKind, ExplainRequest, MappingSource, Refusal};
use time::OffsetDateTime;

use super::AdminState;
use super::auth::AdminCaller;
use super::explain_certificate::explain_certificate;
use super::explanation::{principal_explanation, refused};
use super::extract::ApiJson;
use super::refusal::audited;
use crate::error::ApiError;
use crate::principal::Principal;

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
