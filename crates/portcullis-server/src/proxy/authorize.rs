//! Authorization of an authenticated caller: address, scope and model.

use std::net::IpAddr;

use portcullis_auth::Scope;
use portcullis_config::Live;

use crate::error::ApiError;
use crate::principal::Principal;

pub fn check_address(principal: &Principal, client: IpAddr) -> Result<(), ApiError> {
    if principal.allowed_cidrs.allows(client) { Ok(()) } else { Err(ApiError::IpNotAllowed) }
}

pub fn check_scope(principal: &Principal, scope: Scope) -> Result<(), ApiError> {
    if principal.scopes.contains(scope) { Ok(()) } else { Err(ApiError::ScopeMissing { scope: scope.as_str() }) }
}

/// Whether the caller, on `tier` ([`Principal::tier`]), may use a configured model: its key's
/// globs and its tier's globs must both allow it. With tiers configured, a key whose tier has
/// gone from the configuration may use nothing (fail closed) until it is moved to an existing
/// tier.
pub fn may_use_model(live: &Live, principal: &Principal, tier: &str, model: &str) -> bool {
    if !principal.models.allows(model) {
        return false;
    }
    if live.tiers.is_empty() {
        return true;
    }
    live.tier(tier).is_some_and(|tier| tier.models.allows(model))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use portcullis_auth::{CidrList, ModelGlobs, Scopes};

    use super::*;

    fn principal(models: &[&str]) -> Principal {
        Principal {
            id: "key_test".into(),
            credential: crate::principal::Credential::Key,
            team: None,
            own_tier: None,
            models: ModelGlobs::new(models.iter().map(|m| m.to_string()).collect()),
            scopes: Scopes::parse(&["chat"]).unwrap(),
            allowed_cidrs: CidrList::parse(&["10.0.0.0/8"]).unwrap(),
            limits: Default::default(),
            capture_content: false,
            revoked: false,
            expires_at: None,
            last_used: AtomicI64::new(0),
        }
    }

    #[test]
    fn key_and_tier_globs_must_both_allow_the_model() {
        let config =
            portcullis_config::Config::parse("[tiers.free]\nmodels = [\"small*\"]\n", |_| None).unwrap().split().1;
        assert!(may_use_model(&config, &principal(&[]), "free", "small-1"));
        assert!(!may_use_model(&config, &principal(&[]), "free", "big-1"));
        assert!(!may_use_model(&config, &principal(&["small-2"]), "free", "small-1"));
        assert!(!may_use_model(&config, &principal(&[]), "vanished", "small-1"));
    }

    #[test]
    fn scope_and_address_checks_name_what_is_missing() {
        let p = principal(&[]);
        assert_eq!(check_scope(&p, Scope::Embeddings), Err(ApiError::ScopeMissing { scope: "embeddings" }));
        assert!(check_scope(&p, Scope::Chat).is_ok());
        assert_eq!(check_address(&p, "192.168.0.1".parse().unwrap()), Err(ApiError::IpNotAllowed));
        assert!(check_address(&p, "10.1.1.1".parse().unwrap()).is_ok());
    }
}
