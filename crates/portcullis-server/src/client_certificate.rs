//! The client certificate a connection presented and its TLS handshake verified: the connection
//! puts it on each of its requests, authentication may map it to a caller.

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

/// A verified end-entity certificate, with its SHA-256 fingerprint taken once per connection.
pub struct ClientCertificate {
    der: CertificateDer<'static>,
    fingerprint: [u8; 32],
}

impl ClientCertificate {
    pub fn new(der: CertificateDer<'static>) -> ClientCertificate {
        let fingerprint = Sha256::digest(der.as_ref()).into();
        ClientCertificate { der, fingerprint }
    }

    pub fn der(&self) -> &[u8] {
        self.der.as_ref()
    }

    /// SHA-256 of the whole DER certificate.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// `sha256:<hex>`, as `[[auth.certificates]]` rules and audit records write it.
    pub fn fingerprint_id(&self) -> String {
        format!("sha256:{}", hex::encode(self.fingerprint))
    }
}

/// The fingerprint names it; the DER bytes would only fill logs.
impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientCertificate").field(&self.fingerprint_id()).finish()
    }
}
