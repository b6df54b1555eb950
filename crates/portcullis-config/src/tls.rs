//! TLS on the listeners (`[server.tls]`, `[admin.tls]`) and client certificates as identities
//! (`[[auth.certificates]]`).
//!
//! The paths and the client-certificate policy are restart-only; the files behind them are read
//! again on every reload. The certificate-to-principal mapping is live.

use std::collections::HashSet;
use std::path::PathBuf;

use portcullis_auth::Scopes;
use serde::{Deserialize, Serialize};

use crate::{Config, ConfigError};

/// A listener's TLS: its certificate chain and key, and optionally the CA bundle its clients'
/// certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates are verified against; asking for client
    /// certificates at all needs it.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a client must present a certificate; meaningful only with `client_ca`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM certificate revocation lists of the client CA.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// Whether a listener with a client CA lets clients without a certificate in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A certificate is verified if presented; clients without one authenticate otherwise.
    #[default]
    Optional,
    /// The handshake fails without a valid certificate.
    Required,
}

/// One `[[auth.certificates]]` rule: a verified client certificate it matches gets this
/// principal. The first matching rule wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateMapping {
    /// Names the rule in logs and explanations.
    pub name: String,
    /// Which certificates the rule is for.
    #[serde(rename = "match")]
    pub matches: CertificateMatch,
    #[serde(default)]
    pub team: Option<String>,
    /// `None` follows the team's tier, else `limits.default_tier`.
    #[serde(default)]
    pub tier: Option<String>,
    /// Model globs; `None` allows whatever the tier allows.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// `None` allows every scope.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// The one certificate field a rule compares, exactly (`match = { san_uri = "…" }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CertificateMatch {
    /// The subject as an RFC 4514 string (`CN=batch,O=Acme`): the same attributes and values,
    /// in any order.
    Subject(String),
    /// A DNS name among the subject alternative names (case-insensitive).
    SanDns(String),
    /// A URI among the subject alternative names, such as a SPIFFE id.
    SanUri(String),
    /// The SHA-256 fingerprint of the whole certificate, `sha256:<64 hex digits>`.
    Fingerprint(String),
}

impl CertificateMatch {
    /// The field's name in the file, for messages.
    pub fn field(&self) -> &'static str {
        match self {
            CertificateMatch::Subject(_) => "subject",
            CertificateMatch::SanDns(_) => "san_dns",
            CertificateMatch::SanUri(_) => "san_uri",
            CertificateMatch::Fingerprint(_) => "fingerprint",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            CertificateMatch::Subject(value)
            | CertificateMatch::SanDns(value)
            | CertificateMatch::SanUri(value)
            | CertificateMatch::Fingerprint(value) => value,
        }
    }
}

/// `sha256:` and 64 hex digits, as a rule's fingerprint must be written.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    // `from_str_radix` alone would take a sign.
    if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// `server.tls` or `admin.tls` (`path`): client policy and revocation lists need a client CA.
pub(crate) fn validate_tls(path: &str, tls: &TlsConfig) -> Result<(), ConfigError> {
    if tls.client_ca.is_none() && tls.client_auth == ClientAuth::Required {
        return invalid(format!("{path}.client_auth"), "\"required\" needs client_ca");
    }
    if tls.client_ca.is_none() && !tls.crls.is_empty() {
        return invalid(format!("{path}.crls"), "revocation lists need client_ca");
    }
    Ok(())
}

/// Each `[[auth.certificates]]` rule: a name of its own, a match value that can match, a tier
/// that exists, known scopes.
pub(crate) fn validate_certificates(config: &Config) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (index, rule) in config.auth.certificates.iter().enumerate() {
        let path = format!("auth.certificates[{index}]");
        if rule.name.is_empty() || !names.insert(rule.name.as_str()) {
            return invalid(format!("{path}.name"), "must be non-empty and unique");
        }
        let value = rule.matches.value();
        let usable = match &rule.matches {
            CertificateMatch::Fingerprint(text) => parse_fingerprint(text).is_some(),
            _ => !value.trim().is_empty(),
        };
        if !usable {
            let expected = match rule.matches {
                CertificateMatch::Fingerprint(_) => "must be sha256: and 64 hex digits",
                _ => "must not be empty",
            };
            return invalid(format!("{path}.match.{}", rule.matches.field()), expected);
        }
        if let Some(tier) = &rule.tier
            && !config.tiers.is_empty()
            && !config.tiers.contains_key(tier)
        {
            return invalid(
                format!("{path}.tier"),
                &format!("names tier {tier:?}, which is not defined under [tiers]"),
            );
        }
        if let Some(scopes) = &rule.scopes
            && let Err(error) = Scopes::parse(scopes)
        {
            return invalid(format!("{path}.scopes"), &error.to_string());
        }
    }
    Ok(())
}

fn invalid(path: String, message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { path, message: message.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_path(text: &str) -> String {
        match Config::parse(text, |_| None) {
            Err(ConfigError::Invalid { path, .. }) => path,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn a_rule_matches_on_exactly_one_field() {
        let config = Config::parse(
            "[[auth.certificates]]\nname = \"a\"\nmatch = { san_dns = \"a.example\" }\nteam = \"t\"\n",
            |_| None,
        )
        .unwrap();
        assert_eq!(config.auth.certificates[0].matches, CertificateMatch::SanDns("a.example".into()));
        let two = "[[auth.certificates]]\nname = \"a\"\nmatch = { san_dns = \"a\", san_uri = \"b\" }\n";
        assert!(Config::parse(two, |_| None).is_err());
        let unknown = "[[auth.certificates]]\nname = \"a\"\nmatch = { email = \"a\" }\n";
        assert!(Config::parse(unknown, |_| None).is_err());
    }

    #[test]
    fn rules_and_listener_tls_are_checked() {
        let rule = |fields: &str| format!("[[auth.certificates]]\nname = \"a\"\n{fields}\n");
        assert_eq!(
            error_path(&rule("match = { fingerprint = \"sha256:00\" }")),
            "auth.certificates[0].match.fingerprint"
        );
        assert_eq!(error_path(&rule("match = { subject = \" \" }")), "auth.certificates[0].match.subject");
        assert_eq!(
            error_path(&rule("match = { san_uri = \"u\" }\nscopes = [\"admin\"]")),
            "auth.certificates[0].scopes"
        );
        let tiers = "[tiers.free]\nrequests_per_minute = 1\n[limits]\ndefault_tier = \"free\"\n";
        assert_eq!(
            error_path(&format!("{tiers}{}", rule("match = { san_uri = \"u\" }\ntier = \"gold\""))),
            "auth.certificates[0].tier"
        );
        let twice = format!("{}{}", rule("match = { san_uri = \"u\" }"), rule("match = { san_uri = \"v\" }"));
        assert_eq!(error_path(&twice), "auth.certificates[1].name");
        let required = "[server.tls]\ncert = \"c\"\nkey = \"k\"\nclient_auth = \"required\"\n";
        assert_eq!(error_path(required), "server.tls.client_auth");
        let crls = "[admin.tls]\ncert = \"c\"\nkey = \"k\"\ncrls = [\"r\"]\n";
        assert_eq!(error_path(crls), "admin.tls.crls");
    }

    #[test]
    fn a_fingerprint_is_sha256_and_64_hex_digits() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&format!("sha256:{hex}")), Some([0xab; 32]));
        assert_eq!(parse_fingerprint(&format!("sha256:{}", hex.to_uppercase())), Some([0xab; 32]));
        assert_eq!(parse_fingerprint(&hex), None);
        assert_eq!(parse_fingerprint(&format!("sha256:{}", &hex[2..])), None);
        assert_eq!(parse_fingerprint(&format!("sha256:{}zz", &hex[2..])), None);
        assert_eq!(parse_fingerprint(&format!("sha256:{}+1", &hex[3..])), None);
    }
}
