//! The certificate branch of `auth explain`: whether the proxy listener's handshake would take a
//! client certificate (its chain to `server.tls.client_ca`, its dates, the revocation lists), and
//! which `[[auth.certificates]]` rule it falls under — the same verifier and the same mapping as a
//! real connection, read from the files and the rules in force.

use portcullis_types::admin::{AuthExplanation, ClaimMapping, CredentialKind, MappingSource, Refusal};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AdminState;
use super::explanation::{principal_explanation, refused};
use crate::certificate_identity::{Mapped, identify};
use crate::client_certificate::ClientCertificate;
use crate::error::ApiError;
use crate::listener::client_verifier;
use crate::principal::Principal;

/// `pem` holds the client's certificate first, then any intermediates it would send.
pub async fn explain_certificate(
    state: &AdminState,
    pem: &str,
    now: OffsetDateTime,
) -> Result<AuthExplanation, ApiError> {
    let chain = match CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>() {
        Ok(chain) if !chain.is_empty() => chain,
        Ok(_) => return Ok(unusable("no PEM CERTIFICATE block")),
        Err(error) => return Ok(unusable(&format!("not PEM: {error}"))),
    };
    let (leaf, intermediates) = chain.split_at(1);
    let handshake = handshake_refusal(state, &leaf[0], intermediates);
    let certificate = ClientCertificate::new(leaf[0].clone());
    let live = state.runtime().live.clone();
    let mapped = match identify(&certificate, &live.auth.certificates) {
        Ok(Some(mapped)) => mapped,
        Ok(None) => {
            let mut explanation = refused(
                CredentialKind::Certificate,
                "invalid_api_key",
                "no [[auth.certificates]] rule matches it: it names no caller, so a request with it and no \
                 other credential is refused"
                    .into(),
            );
            if let Some(handshake) = handshake {
                explanation.refused = Some(handshake);
            }
            return Ok(explanation);
        }
        Err(error) => return Ok(unusable(&error.to_string())),
    };
    let lines = rule_lines(&mapped);
    let issuer = Some(mapped.identity.issuer.clone());
    let principal = Principal::from_identity(mapped.identity);
    let expired = principal.is_expired(now.unix_timestamp());
    let refusal = handshake.or_else(|| {
        expired.then(|| Refusal { code: "certificate_refused".into(), message: "the certificate has expired".into() })
    });
    let mut explanation = principal_explanation(state, CredentialKind::Certificate, &principal, refusal, now).await?;
    explanation.issuer = issuer;
    explanation.claims = lines;
    Ok(explanation)
}

/// Why the proxy listener's handshake would refuse the certificate; `None` if it would take it.
fn handshake_refusal(
    state: &AdminState,
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
) -> Option<Refusal> {
    let refusal = |message: String| Some(Refusal { code: "certificate_refused".into(), message });
    let Some(files) = state.proxy_tls() else {
        return refusal("the proxy listener does not ask for client certificates (no [server.tls])".into());
    };
    match client_verifier("server.tls", files) {
        Ok(Some(verifier)) => match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            Ok(_) => None,
            Err(error) => refusal(format!("the proxy listener's handshake refuses it: {error}")),
        },
        Ok(None) => refusal("the proxy listener does not ask for client certificates (no server.tls.client_ca)".into()),
        Err(error) => {
            refusal(format!("the proxy listener's client CA cannot be read now: {}", portcullis_types::chain(&error)))
        }
    }
}

/// One line per principal field: the matched certificate field, then what the rule gives.
fn rule_lines(mapped: &Mapped) -> Vec<ClaimMapping> {
    let identity = &mapped.identity;
    let from_rule = |field: &str, mapped_to: Value| ClaimMapping {
        field: field.into(),
        claim: format!("rule {:?}", mapped.rule),
        value: None,
        mapped: mapped_to,
        source: MappingSource::Default,
    };
    vec![
        ClaimMapping {
            field: "subject".into(),
            claim: mapped.matched_field.into(),
            value: Some(json!(identity.subject)),
            mapped: json!(identity.id),
            source: MappingSource::Claim,
        },
        from_rule("team", json!(identity.team)),
        from_rule("tier", json!(identity.tier)),
        from_rule("models", json!(identity.models.patterns())),
        from_rule("scopes", json!(identity.scopes.names())),
    ]
}

fn unusable(message: &str) -> AuthExplanation {
    refused(CredentialKind::Certificate, "invalid_certificate", format!("the certificate cannot be read: {message}"))
}
