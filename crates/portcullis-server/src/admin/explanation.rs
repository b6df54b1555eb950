//! What `auth explain` answers, whatever the credential: the principal it resolved to (as the
//! proxy would run it) with the limits that apply and where they stand, or a refusal before any
//! principal. The key, token and certificate branches all end here.

use portcullis_config::Live;
use portcullis_store::TeamRecord;
use portcullis_types::admin::{AuthExplanation, CredentialKind, ExplainedPrincipal, Refusal};
use time::OffsetDateTime;

use super::AdminState;
use crate::caller_limits::scopes_for;
use crate::clock::unix_millis;
use crate::error::ApiError;
use crate::limit_view;
use crate::principal::{Credential, Principal, key_tier};

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
