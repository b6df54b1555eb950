//! Client certificates already mapped to their caller, by fingerprint: the rules are applied
//! once per certificate and rule set, so a request with a known certificate costs one lookup.

use std::sync::{Arc, Weak};

use portcullis_config::Live;

use crate::certificate_identity::identify;
use crate::client_certificate::ClientCertificate;
use crate::principal::Principal;

/// More certificates than this (a fleet of workloads, each rotating) are mapped again on use.
const CAPACITY: u64 = 10_000;

#[derive(Clone)]
pub struct CertificateCache {
    entries: moka::sync::Cache<[u8; 32], Arc<Entry>>,
}

struct Entry {
    /// The settings whose rules made `principal`: after a reload the certificate is mapped
    /// again. Weak, so that a cached entry keeps no old settings alive.
    mapped_by: Weak<Live>,
    /// `None`: no rule matches this certificate.
    principal: Option<Arc<Principal>>,
}

impl std::fmt::Debug for CertificateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCache").field("entries", &self.entries.entry_count()).finish()
    }
}

impl Default for CertificateCache {
    fn default() -> Self {
        CertificateCache { entries: moka::sync::Cache::new(CAPACITY) }
    }
}

impl CertificateCache {
    /// The caller `certificate` stands for under `live`'s `[[auth.certificates]]`, if any.
    pub fn principal(&self, certificate: &ClientCertificate, live: &Arc<Live>) -> Option<Arc<Principal>> {
        if let Some(entry) = self.entries.get(certificate.fingerprint())
            && std::ptr::eq(entry.mapped_by.as_ptr(), Arc::as_ptr(live))
        {
            return entry.principal.clone();
        }
        let principal = match identify(certificate, &live.auth.certificates) {
            Ok(Some(mapped)) => {
                tracing::debug!(rule = %mapped.rule, id = %mapped.identity.id, "client certificate mapped");
                Some(Arc::new(Principal::from_identity(mapped.identity)))
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(error = %portcullis_types::chain(&error), fingerprint = %certificate.fingerprint_id(), "client certificate not mapped");
                None
            }
        };
        let entry = Entry { mapped_by: Arc::downgrade(live), principal: principal.clone() };
        self.entries.insert(*certificate.fingerprint(), Arc::new(entry));
        principal
    }
}

#[cfg(test)]
mod tests {
    use portcullis_config::Config;
    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    fn live(team: &str) -> Arc<Live> {
        let text =
            format!("[[auth.certificates]]\nname = \"a\"\nmatch = {{ san_dns = \"a.example\" }}\nteam = \"{team}\"\n");
        Arc::new(Config::parse(&text, |_| None).unwrap().split().1)
    }

    fn certificate(name: &str) -> ClientCertificate {
        let params = CertificateParams::new(vec![name.to_string()]).unwrap();
        ClientCertificate::new(params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().clone())
    }

    #[test]
    fn a_certificate_is_mapped_once_per_rule_set() {
        let cache = CertificateCache::default();
        let (first, reloaded) = (live("alpha"), live("beta"));
        let known = certificate("a.example");
        let once = cache.principal(&known, &first).unwrap();
        let again = cache.principal(&known, &first).unwrap();
        assert!(Arc::ptr_eq(&once, &again), "the second request is a lookup");
        assert_eq!(once.team.as_deref(), Some("alpha"));
        let after_reload = cache.principal(&known, &reloaded).unwrap();
        assert_eq!(after_reload.team.as_deref(), Some("beta"), "a reload's rules apply at once");
        assert!(cache.principal(&certificate("b.example"), &reloaded).is_none());
    }
}
