//! The authenticated caller, as every later phase sees it.

use std::sync::atomic::{AtomicI64, Ordering};

use portcullis_audit::{AuditEvent, PrincipalKind};
use portcullis_auth::{CidrList, ExternalIdentity, IdentityKind, ModelGlobs, Scopes};
use portcullis_config::Live;
use portcullis_store::{SecretMatch, TeamRecord};
use portcullis_types::admin::{LimitOverrides, TierSource};

/// Who is calling and what their credential allows. Built once per cached key (or verified
/// token), shared by every request that presents it.
#[derive(Debug)]
pub struct Principal {
    /// `key_…` for API keys, [`ExternalIdentity::id`] for tokens and certificates: the scope of
    /// the caller's own limits, usage and misuse counts.
    pub id: String,
    pub credential: Credential,
    pub team: Option<String>,
    /// The key's own tier; `None` follows its team's (see [`Principal::tier`]).
    pub own_tier: Option<String>,
    pub models: ModelGlobs,
    pub scopes: Scopes,
    pub allowed_cidrs: CidrList,
    /// The key's own limit overrides (its tier gives the rest).
    pub limits: LimitOverrides,
    /// The key opted in to content capture (its team may have, too).
    pub capture_content: bool,
    pub revoked: bool,
    /// Unix seconds after which the credential no longer works: the key's own expiry, or the
    /// end of a rotated-out secret's grace period, whichever is first.
    pub expires_at: Option<i64>,
    /// Unix seconds of the last request, flushed to the store in the background.
    pub last_used: AtomicI64,
}

impl Principal {
    /// A principal from a stored key; `None` if the stored lists no longer parse (then the key is
    /// unusable rather than more permissive than intended).
    pub fn from_secret_match(found: &SecretMatch) -> Option<Principal> {
        let key = &found.key;
        let expires_at =
            [key.expires_at, found.secret_valid_until].into_iter().flatten().map(|at| at.unix_timestamp()).min();
        Some(Principal {
            id: key.id.clone(),
            credential: Credential::Key,
            team: key.team.clone(),
            own_tier: key.tier.clone(),
            models: ModelGlobs::new(key.models.clone()),
            scopes: Scopes::parse(&key.scopes).ok()?,
            allowed_cidrs: CidrList::parse(&key.allowed_cidrs).ok()?,
            limits: key.limits.clone(),
            capture_content: key.capture_content,
            revoked: key.revoked_at.is_some(),
            expires_at,
            last_used: AtomicI64::new(key.last_used_at.map_or(0, |at| at.unix_timestamp())),
        })
    }

    /// A principal from a verified token or client certificate. It has no limit overrides or
    /// address list of its own (its tier and team give those) and is never revoked: a revoked
    /// token fails verification instead.
    pub fn from_identity(identity: ExternalIdentity) -> Principal {
        let ExternalIdentity { kind, id, issuer, subject, credential_id, team, tier, models, scopes, expires_at } =
            identity;
        Principal {
            id,
            credential: Credential::External { kind, issuer, subject, credential_id },
            team,
            own_tier: tier,
            models,
            scopes,
            allowed_cidrs: CidrList::default(),
            limits: LimitOverrides::default(),
            capture_content: false,
            revoked: false,
            expires_at,
            last_used: AtomicI64::new(0),
        }
    }

    /// The tier this request runs on. `team` is the caller's team as looked up for the request,
    /// so a team moved to another tier takes its keys along at once, not when they leave the
    /// key cache.
    pub fn tier<'a>(&'a self, team: Option<&'a TeamRecord>, live: &'a Live) -> &'a str {
        key_tier(self.own_tier.as_deref(), team.and_then(|team| team.tier.as_deref()), &live.limits.default_tier).0
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|end| now >= end)
    }

    /// Read before write: most requests of a busy key land in the same second and then only
    /// read the shared cache line.
    pub fn mark_used(&self, now: i64) {
        if self.last_used.load(Ordering::Relaxed) < now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }
}

/// What the caller presented, as far as the audit log and the admin API may know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A Portcullis API key; [`Principal::id`] is its id.
    Key,
    /// An access token or a client certificate (see [`ExternalIdentity`]).
    External { kind: IdentityKind, issuer: String, subject: String, credential_id: String },
}

impl Credential {
    /// The kind of principal as audit records name it.
    pub fn principal_kind(&self) -> PrincipalKind {
        match self {
            Credential::Key => PrincipalKind::Key,
            Credential::External { kind: IdentityKind::Token, .. } => PrincipalKind::Token,
            Credential::External { kind: IdentityKind::Certificate, .. } => PrincipalKind::Certificate,
        }
    }
}

/// Puts the caller in an audit record: a key caller by its key id; a token or certificate caller
/// by its issuer, subject and credential id, with no key id. Without a credential (none was
/// accepted) only what is known: `principal`, if anything.
pub fn record_caller(event: &mut AuditEvent, principal: Option<String>, credential: Option<Credential>) {
    event.principal_kind = credential.as_ref().map(Credential::principal_kind);
    match credential {
        Some(Credential::External { kind: _, issuer, subject, credential_id }) => {
            event.issuer = Some(issuer);
            event.subject = Some(subject);
            event.credential_id = Some(credential_id);
        }
        Some(Credential::Key) | None => event.key_id = principal,
    }
}

/// A key's tier and where it comes from: its own, else its team's, else `default_tier`. Decided
/// each time it is needed and never stored, so that only a tier given to the key itself stays
/// when its team's changes.
pub fn key_tier<'a>(own: Option<&'a str>, team: Option<&'a str>, default_tier: &'a str) -> (&'a str, TierSource) {
    match (own, team) {
        (Some(own), _) => (own, TierSource::Key),
        (None, Some(team)) => (team, TierSource::Team),
        (None, None) => (default_tier, TierSource::Default),
    }
}

#[cfg(test)]
mod tests {
    use portcullis_audit::{AuditDecision, AuditKind};

    use super::*;

    #[test]
    fn a_token_caller_is_recorded_by_issuer_subject_and_credential_id_never_as_a_key() {
        let blank = || AuditEvent::new(time::OffsetDateTime::UNIX_EPOCH, AuditKind::Request, AuditDecision::Allow, 200);
        let mut event = blank();
        let credential = Credential::External {
            kind: IdentityKind::Token,
            issuer: "https://idp.example".into(),
            subject: "svc-ingest".into(),
            credential_id: "jti-7".into(),
        };
        record_caller(&mut event, Some("oidc:corp:svc-ingest".into()), Some(credential));
        assert_eq!(event.principal_kind, Some(PrincipalKind::Token));
        assert_eq!(
            (event.key_id, event.issuer.as_deref(), event.subject.as_deref(), event.credential_id.as_deref()),
            (None, Some("https://idp.example"), Some("svc-ingest"), Some("jti-7"))
        );
        let mut event = blank();
        record_caller(&mut event, Some("key_1".into()), Some(Credential::Key));
        assert_eq!(
            (event.principal_kind, event.key_id.as_deref(), event.subject),
            (Some(PrincipalKind::Key), Some("key_1"), None)
        );
        let mut event = blank();
        record_caller(&mut event, None, None);
        assert_eq!((event.principal_kind, event.key_id), (None, None));
    }

    #[test]
    fn a_key_is_on_its_own_tier_else_its_teams_else_the_default() {
        assert_eq!(key_tier(Some("pro"), Some("free"), "basic"), ("pro", TierSource::Key));
        assert_eq!(key_tier(None, Some("free"), "basic"), ("free", TierSource::Team));
        assert_eq!(key_tier(None, None, "basic"), ("basic", TierSource::Default));
        assert_eq!(key_tier(Some("pro"), None, "basic"), ("pro", TierSource::Key));
    }
}
