//! A caller known by a credential that Portcullis did not issue: an OAuth 2.0 / OIDC access token
//! or a client certificate. The verifiers produce it; the server turns it into a principal.

use crate::{ModelGlobs, Scopes};

/// What a verified token or certificate says about its holder, after the configured mapping
/// (claims or certificate fields → team, tier, models, scopes) and its allow-lists were applied.
/// Never holds the credential itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub kind: IdentityKind,
    /// Stable per issuer and subject: `oidc:<issuer name>:<sub>` or `cert:<identity>`. Keys the
    /// principal's own limits, its usage and its misuse counts, as a key's id does.
    pub id: String,
    /// The token's `iss`, or the certificate's issuer (its CA's subject).
    pub issuer: String,
    /// The token's `sub`, or the certificate identity the mapping matched (a SAN, the subject,
    /// or the fingerprint).
    pub subject: String,
    /// Names this one credential in the audit log without revealing it: the token's `jti`, else
    /// `sha256:` and the start of the token's hash; a certificate's `sha256:` fingerprint.
    pub credential_id: String,
    pub team: Option<String>,
    /// `None` follows the team's tier, else the default tier (as a key without a tier does).
    pub tier: Option<String>,
    pub models: ModelGlobs,
    pub scopes: Scopes,
    /// Unix seconds at which the credential stops working.
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    Token,
    Certificate,
}

impl IdentityKind {
    /// The name in audit records, headers and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            IdentityKind::Token => "token",
            IdentityKind::Certificate => "certificate",
        }
    }
}
