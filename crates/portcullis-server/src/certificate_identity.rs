//! A verified client certificate → the caller it stands for: the first `[[auth.certificates]]`
//! rule whose field matches, and the identity that rule gives. Pure: the handshake has verified
//! the certificate already; this only reads it.

use portcullis_auth::{ExternalIdentity, IdentityKind, ModelGlobs, Scopes};
use portcullis_config::{CertificateMapping, CertificateMatch, parse_fingerprint};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::client_certificate::ClientCertificate;

/// The rule a certificate matched, and what it made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The rule's `name`.
    pub rule: String,
    /// The certificate field the rule matched (`subject`, `san_uri`…).
    pub matched_field: &'static str,
    pub identity: ExternalIdentity,
}

/// The certificate could not be parsed (rustls verified its signature and chain, so this is a
/// certificate webpki accepts and x509-parser does not).
#[derive(Debug, thiserror::Error)]
#[error("the client certificate could not be read")]
pub struct Unreadable(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>);

/// The first of `rules` that `certificate` matches; `None` when none does.
pub fn identify(certificate: &ClientCertificate, rules: &[CertificateMapping]) -> Result<Option<Mapped>, Unreadable> {
    if rules.is_empty() {
        return Ok(None);
    }
    let (_, parsed) = X509Certificate::from_der(certificate.der()).map_err(Unreadable)?;
    let fields = Fields::read(&parsed);
    Ok(rules.iter().find_map(|rule| {
        let matched = fields.matched(&rule.matches, certificate)?;
        Some(Mapped {
            rule: rule.name.clone(),
            matched_field: rule.matches.field(),
            identity: identity(rule, matched, &fields, certificate)?,
        })
    }))
}

fn identity(
    rule: &CertificateMapping,
    matched: String,
    fields: &Fields,
    certificate: &ClientCertificate,
) -> Option<ExternalIdentity> {
    // Validation refused unknown scopes: a rule that still has one grants nothing.
    let scopes = match &rule.scopes {
        None => Scopes::all(),
        Some(names) => Scopes::parse(names).ok()?,
    };
    Some(ExternalIdentity {
        kind: IdentityKind::Certificate,
        id: format!("cert:{matched}"),
        issuer: fields.issuer.clone(),
        subject: matched,
        credential_id: certificate.fingerprint_id(),
        team: rule.team.clone(),
        tier: rule.tier.clone(),
        models: ModelGlobs::new(rule.models.clone().unwrap_or_default()),
        scopes,
        expires_at: Some(fields.not_after),
    })
}

/// What rules compare, read once per certificate.
struct Fields {
    /// `(TYPE, value)` pairs, types upper-cased; `None` if an attribute is not a string (then no
    /// subject rule matches).
    subject: Option<Vec<(String, String)>>,
    issuer: String,
    dns: Vec<String>,
    uris: Vec<String>,
    /// Unix seconds.
    not_after: i64,
}

impl Fields {
    fn read(certificate: &X509Certificate<'_>) -> Fields {
        let (mut dns, mut uris) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = certificate.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(name) => dns.push((*name).to_string()),
                    GeneralName::URI(uri) => uris.push((*uri).to_string()),
                    _ => {}
                }
            }
        }
        Fields {
            subject: attributes(certificate.subject()),
            issuer: certificate.issuer().to_string(),
            dns,
            uris,
            not_after: certificate.validity().not_after.timestamp(),
        }
    }

    /// The certificate's value of the field `matches` names, when it matches.
    fn matched(&self, matches: &CertificateMatch, certificate: &ClientCertificate) -> Option<String> {
        match matches {
            CertificateMatch::Subject(text) => {
                let mut wanted = parse_distinguished_name(text)?;
                let mut have = self.subject.clone()?;
                wanted.sort();
                have.sort();
                (wanted == have).then(|| text.clone())
            }
            CertificateMatch::SanDns(name) => self.dns.iter().find(|dns| dns.eq_ignore_ascii_case(name)).cloned(),
            CertificateMatch::SanUri(uri) => self.uris.iter().find(|have| *have == uri).cloned(),
            CertificateMatch::Fingerprint(text) => (parse_fingerprint(text).as_ref()
                == Some(certificate.fingerprint()))
            .then(|| certificate.fingerprint_id()),
        }
    }
}

fn attributes(name: &X509Name<'_>) -> Option<Vec<(String, String)>> {
    name.iter_attributes()
        .map(|attribute| {
            let oid = attribute.attr_type();
            let kind = oid2abbrev(oid, oid_registry()).map_or_else(|_| oid.to_id_string(), str::to_string);
            Some((kind.to_ascii_uppercase(), attribute.as_str().ok()?.to_string()))
        })
        .collect()
}

/// `CN=batch,O=Acme` (RFC 4514: `,` or `+` between attributes, `\` escaping the next character)
/// as `(TYPE, value)` pairs; `None` when an attribute has no `=`.
fn parse_distinguished_name(text: &str) -> Option<Vec<(String, String)>> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.push(chars.next()?),
            ',' | '+' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|part| {
            let (kind, value) = part.split_once('=')?;
            Some((kind.trim().to_ascii_uppercase(), value.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn certificate(dns: &[&str], uri: Option<&str>, subject: &[(DnType, &str)]) -> ClientCertificate {
        let mut params = CertificateParams::new(dns.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = KeyPair::generate().unwrap();
        ClientCertificate::new(params.self_signed(&key).unwrap().der().clone())
    }

    fn rule(name: &str, matches: CertificateMatch) -> CertificateMapping {
        CertificateMapping {
            name: name.into(),
            matches,
            team: Some("acme".into()),
            tier: Some("pro".into()),
            models: Some(vec!["gemma*".into()]),
            scopes: Some(vec!["chat".into()]),
        }
    }

    #[test]
    fn the_first_matching_rule_gives_the_identity() {
        let cert = certificate(
            &["Batch.Acme.Internal"],
            Some("spiffe://acme.internal/batch"),
            &[(DnType::CommonName, "batch"), (DnType::OrganizationName, "Acme, Inc")],
        );
        let rules = [
            rule("other", CertificateMatch::SanUri("spiffe://acme.internal/other".into())),
            rule("by-uri", CertificateMatch::SanUri("spiffe://acme.internal/batch".into())),
            rule("by-dns", CertificateMatch::SanDns("batch.acme.internal".into())),
        ];
        let mapped = identify(&cert, &rules).unwrap().unwrap();
        assert_eq!(mapped.rule, "by-uri");
        let identity = mapped.identity;
        assert_eq!(identity.kind, IdentityKind::Certificate);
        assert_eq!(identity.id, "cert:spiffe://acme.internal/batch");
        assert_eq!(identity.subject, "spiffe://acme.internal/batch");
        assert_eq!(identity.credential_id, cert.fingerprint_id());
        assert!(identity.credential_id.starts_with("sha256:") && identity.credential_id.len() == 7 + 64);
        assert!(identity.issuer.contains("CN=batch"), "self-signed: the issuer is the subject, {}", identity.issuer);
        assert_eq!((identity.team.as_deref(), identity.tier.as_deref()), (Some("acme"), Some("pro")));
        assert!(identity.models.allows("gemma-2b") && !identity.models.allows("llama"));
        assert_eq!(identity.scopes.names(), ["chat"]);
        assert!(identity.expires_at.is_some());

        let dns = identify(&cert, &rules[2..]).unwrap().unwrap();
        assert_eq!(dns.identity.id, "cert:Batch.Acme.Internal", "DNS names compare case-insensitively");
    }

    #[test]
    fn subjects_compare_attribute_by_attribute_in_any_order() {
        let cert = certificate(&[], None, &[(DnType::CommonName, "batch"), (DnType::OrganizationName, "Acme, Inc")]);
        let matches = |subject: &str| identify(&cert, &[rule("s", CertificateMatch::Subject(subject.into()))]).unwrap();
        assert!(matches("CN=batch,O=Acme\\, Inc").is_some());
        assert!(matches("o=Acme\\, Inc, cn=batch").is_some());
        assert!(matches("CN=batch").is_none(), "every attribute must be named");
        assert!(matches("CN=batch,O=Acme\\, Inc,OU=x").is_none());
        assert!(matches("CN=Batch,O=Acme\\, Inc").is_none(), "values are case-sensitive");
        assert!(matches("batch").is_none());
    }

    #[test]
    fn a_fingerprint_rule_matches_that_certificate_only() {
        let cert = certificate(&["a.example"], None, &[(DnType::CommonName, "a")]);
        let other = certificate(&["a.example"], None, &[(DnType::CommonName, "a")]);
        let by_print = [rule(
            "print",
            CertificateMatch::Fingerprint(cert.fingerprint_id().to_uppercase().replace("SHA256", "sha256")),
        )];
        assert_eq!(identify(&cert, &by_print).unwrap().unwrap().identity.id, format!("cert:{}", cert.fingerprint_id()));
        assert!(identify(&other, &by_print).unwrap().is_none());
    }

    #[test]
    fn no_rule_no_identity_and_defaults_allow_everything() {
        let cert = certificate(&["a.example"], None, &[]);
        assert!(identify(&cert, &[]).unwrap().is_none());
        let mut open = rule("open", CertificateMatch::SanDns("a.example".into()));
        (open.models, open.scopes, open.tier) = (None, None, None);
        let identity = identify(&cert, &[open]).unwrap().unwrap().identity;
        assert!(identity.models.is_unrestricted());
        assert_eq!(identity.scopes, Scopes::all());
        assert_eq!(identity.tier, None);
    }
}
