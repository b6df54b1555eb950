//! The authenticated caller, as every later phase sees it.

use std::sync::atomic::{AtomicI64, Ordering};

use portcullis_auth::{CidrList, ModelGlobs, Scopes};
use portcullis_store::SecretMatch;
use portcullis_types::admin::LimitOverrides;

/// Who is calling and what their credential allows. Built once per cached key, shared by
/// every request that presents it.
#[derive(Debug)]
pub struct Principal {
    /// `key_…` for API keys.
    pub id: String,
    pub team: Option<String>,
    pub tier: String,
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
            team: key.team.clone(),
            tier: key.tier.clone(),
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
