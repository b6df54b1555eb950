//! The audit record and the names of its kinds and decisions.

use time::OffsetDateTime;

use crate::fields::audit_record;

audit_record! {
    /// One audit record: a proxied request (allowed or denied), an authorizer's decision about a
    /// request a gateway forwards (or its settlement), an admin action, or a security event. Never holds a secret. `prev_hash`/`hash` chain the records of one node:
    /// `hash = SHA-256(prev_hash ‖ canonical encoding of every other field)` (see [`crate::chain`]).
    ///
    /// Declared through the field table (see [`crate::fields`]): the stores' columns, the CSV export
    /// and the canonical encoding follow this list. A new field also needs a migration in each
    /// backend, a place in the admin view and [`crate::AuditEvent`], and a new canonical version
    /// (see [`crate::chain`]); a test fails for each one forgotten.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct AuditRecord {
        /// Position in its node's chain, from 1, without gaps.
        pub seq: u64,
        /// When the request ended (or the action happened), UTC, millisecond precision.
        #[serde(with = "time::serde::rfc3339")]
        pub ts: OffsetDateTime,
        pub node: String,
        pub kind: AuditKind,
        pub request_id: Option<String>,
        /// What the caller of a proxied request presented: an API key, an access token or a client
        /// certificate; `None` for a record without such a caller (admin actions, most security
        /// events, requests refused before a credential was accepted).
        pub principal_kind: Option<PrincipalKind>,
        /// API key id of a proxied request's caller (`None` for token and certificate callers).
        pub key_id: Option<String>,
        /// A token caller's `sub`, or the certificate identity its mapping matched.
        pub subject: Option<String>,
        /// A token's `iss`, or a client certificate's issuer.
        pub issuer: Option<String>,
        /// Names the one token or certificate without revealing it: the token's `jti` or
        /// `sha256:` and the start of its hash; a certificate's `sha256:` fingerprint.
        pub credential_id: Option<String>,
        pub team: Option<String>,
        /// Admin token id behind an admin action.
        pub admin_token_id: Option<String>,
        pub client_ip: Option<String>,
        /// Which gateway asked the authorizer about the request: the name it gives itself
        /// (`nginx`, `caddy`, `envoy`…), else its address; `None` for records that did not come
        /// through the authorizer.
        pub gateway: Option<String>,
        pub method: Option<String>,
        pub path: Option<String>,
        pub model: Option<String>,
        pub upstream: Option<String>,
        pub status: u16,
        pub decision: AuditDecision,
        /// Why: the error code of a denial or failure (`invalid_api_key`, `insufficient_quota`…), an
        /// admin action's name (`key.revoke`), a security event's (`client_blocked`, `anomaly`).
        pub reason: Option<String>,
        /// What an admin action changed (a key id, a team name).
        pub target: Option<String>,
        pub stream: bool,
        pub latency_ms: u64,
        pub ttfb_ms: Option<u64>,
        pub prompt_tokens: Option<u64>,
        pub completion_tokens: Option<u64>,
        pub usage_estimated: bool,
        /// Cost in pico-units (10⁻¹² currency units).
        pub cost_pico: Option<u64>,
        pub user_agent: Option<String>,
        /// Prompt and completion, only for teams or keys that opted in, redacted before storage.
        pub content: Option<String>,
        pub prev_hash: String,
        pub hash: String,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Request,
    /// A decision of the authorizer about a request another gateway forwards, or the settlement of
    /// one with its usage; `gateway` names the gateway that asked.
    Authz,
    Admin,
    Security,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    Allow,
    Deny,
    /// Allowed, but the model server failed.
    Error,
}

/// The kind of credential a caller presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    Key,
    Token,
    Certificate,
}

impl AuditKind {
    pub const ALL: [AuditKind; 4] = [AuditKind::Request, AuditKind::Authz, AuditKind::Admin, AuditKind::Security];

    /// The stored, queried and hashed name (the serde name too). Spelled out, not taken from
    /// serde: it is part of the audit chain's canonical encoding, so changing one would break the
    /// verification of every record already stored.
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::Request => "request",
            AuditKind::Authz => "authz",
            AuditKind::Admin => "admin",
            AuditKind::Security => "security",
        }
    }

    pub fn from_name(name: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl AuditDecision {
    pub const ALL: [AuditDecision; 3] = [AuditDecision::Allow, AuditDecision::Deny, AuditDecision::Error];

    /// The stored, queried and hashed name (the serde name too); see [`AuditKind::name`].
    pub fn name(self) -> &'static str {
        match self {
            AuditDecision::Allow => "allow",
            AuditDecision::Deny => "deny",
            AuditDecision::Error => "error",
        }
    }

    pub fn from_name(name: &str) -> Option<AuditDecision> {
        AuditDecision::ALL.into_iter().find(|decision| decision.name() == name)
    }
}

impl PrincipalKind {
    pub const ALL: [PrincipalKind; 3] = [PrincipalKind::Key, PrincipalKind::Token, PrincipalKind::Certificate];

    /// The stored, queried and hashed name (the serde name too); see [`AuditKind::name`].
    pub fn name(self) -> &'static str {
        match self {
            PrincipalKind::Key => "key",
            PrincipalKind::Token => "token",
            PrincipalKind::Certificate => "certificate",
        }
    }

    pub fn from_name(name: &str) -> Option<PrincipalKind> {
        PrincipalKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_names_round_trip_and_match_serde() {
        for kind in AuditKind::ALL {
            assert_eq!(AuditKind::from_name(kind.name()), Some(kind));
            assert_eq!(serde_json::to_value(kind).ok(), Some(serde_json::json!(kind.name())));
        }
        for decision in AuditDecision::ALL {
            assert_eq!(AuditDecision::from_name(decision.name()), Some(decision));
            assert_eq!(serde_json::to_value(decision).ok(), Some(serde_json::json!(decision.name())));
        }
        for kind in PrincipalKind::ALL {
            assert_eq!(PrincipalKind::from_name(kind.name()), Some(kind));
            assert_eq!(serde_json::to_value(kind).ok(), Some(serde_json::json!(kind.name())));
        }
        assert_eq!(AuditKind::from_name("Request"), None);
    }

    #[test]
    fn the_audit_docs_name_every_field() {
        let docs = include_str!("../../../docs/audit.md");
        let section = docs.split("## What a record holds").nth(1).and_then(|rest| rest.split("\n## ").next());
        let section = section.expect("docs/audit.md has a section `What a record holds`");
        for field in AuditRecord::FIELDS {
            assert!(section.contains(&format!("`{}`", field.name)), "docs/audit.md does not name `{}`", field.name);
        }
    }

    #[test]
    fn every_field_of_the_record_is_in_the_table() {
        let record = crate::testing::chain("n", 1).remove(0);
        let serialized = serde_json::to_value(&record).unwrap();
        let keys: Vec<&str> = serialized.as_object().unwrap().keys().map(String::as_str).collect();
        let mut fields = AuditRecord::FIELDS.map(|field| field.name);
        fields.sort_unstable();
        assert_eq!(keys, fields, "serde's keys come sorted");
    }
}
