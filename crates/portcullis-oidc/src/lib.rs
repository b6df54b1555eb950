//! OAuth 2.0 / OIDC access tokens for the gateway: OIDC discovery, the issuers' key sets (cached,
//! refreshed in the background and on an unknown `kid` within limits, the last good set kept),
//! JWT verification with an explicit algorithm allow-list and required `exp`/`iss`/`aud`, RFC
//! 7662 introspection of opaque tokens, and the mapping of claims to an [`ExternalIdentity`].
//!
//! [`Verifier`] is the entry point; [`Verifier::explain`] says why a token maps to what it does
//! or why it is refused.
//!
//! [`ExternalIdentity`]: portcullis_auth::ExternalIdentity

mod claims;
mod fetch;
mod introspection;
mod issuer;
mod keys;
mod policy;
mod refusal;
#[cfg(test)]
mod tests;
mod unverified;
mod verifier;

pub use claims::{MappedField, Source, token_hash_id};
pub use issuer::IssuerHealth;
pub use policy::RefreshPolicy;
pub use refusal::Refusal;
pub use unverified::is_jwt_shaped;
pub use verifier::{Explanation, IssuerMetric, TokenKind, Verifier};
