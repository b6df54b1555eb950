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
