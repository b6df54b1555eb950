//! A token issuer for the benchmark row with JWT authentication: an Ed25519 key made at start,
//! its OIDC discovery document and JWKS (served beside the fake model's routes), and access
//! tokens signed with it. Only what a gateway needs to verify a token; nothing else of OIDC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The one key's id.
const KID: &str = "bench-1";
/// Path of the key set, named in the discovery document.
pub const JWKS_PATH: &str = "/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410): what `EncodingKey::from_ed_der` reads.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

pub struct Issuer {
    url: String,
    signing: EncodingKey,
    /// The public key, base64url: the JWK's `x`.
    public_x: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Issuer").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Issuer {
    /// A fresh key for the issuer at `url` (its `iss`, and where its documents are served).
    pub fn generate(url: String) -> Issuer {
        let seed: [u8; 32] = rand::random();
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Issuer { url, signing: EncodingKey::from_ed_der(&der), public_x: URL_SAFE_NO_PAD.encode(public) }
    }

    pub fn discovery(&self) -> Bytes {
        let url = &self.url;
        Bytes::from(json!({ "issuer": url, "jwks_uri": format!("{url}{JWKS_PATH}") }).to_string())
    }

    pub fn jwks(&self) -> Bytes {
        let key =
            json!({ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": KID, "x": self.public_x });
        Bytes::from(json!({ "keys": [key] }).to_string())
    }

    /// An access token for `subject`, for `audience`, valid for `lifetime` from now.
    pub fn token(&self, audience: &str, subject: &str, lifetime: Duration) -> jsonwebtoken::errors::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(KID.to_string());
        let claims = json!({
            "iss": self.url,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "exp": now + lifetime.as_secs(),
            "scope": "chat models",
        });
        jsonwebtoken::encode(&header, &claims, &self.signing)
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[test]
    fn a_token_verifies_against_the_published_key_set() {
        let issuer = Issuer::generate("http://127.0.0.1:1".into());
        let token = issuer.token("bench-aud", "client", Duration::from_secs(60)).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&issuer.jwks()).unwrap();
        let key = DecodingKey::from_jwk(jwks.find(KID).unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["bench-aud"]);
        validation.set_issuer(&["http://127.0.0.1:1"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims["sub"], "client");
        let other = Issuer::generate("http://127.0.0.1:1".into());
        let other_key = DecodingKey::from_jwk(
            serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(&other.jwks()).unwrap().find(KID).unwrap(),
        )
        .unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &other_key, &validation).is_err());
    }
}
