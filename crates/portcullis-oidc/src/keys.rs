//! An issuer's key set, decoded once per fetch: public keys by `kid`, each with the algorithms
//! it may verify. A key that could verify an HMAC (`kty: oct`) is never kept.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One usable public key.
pub struct PublicKey {
    pub key: DecodingKey,
    /// The algorithms this key verifies: its `kty` and curve decide the family, its `alg` (when
    /// given) narrows it to one.
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("algorithms", &self.algorithms).finish_non_exhaustive()
    }
}

impl PublicKey {
    pub fn verifies(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// The keys of one fetched JWKS. Keys without a `kid` are kept apart: a token without a `kid`
/// may use one of them when it is the only one for its algorithm.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, PublicKey>,
    without_kid: Vec<PublicKey>,
}

impl KeySet {
    /// Decodes a JWKS document; keys that are not signature keys Portcullis can use are left out.
    /// `None` when the document is not a JWKS at all (then the last good set stays).
    pub fn parse(body: &[u8]) -> Option<KeySet> {
        let document: serde_json::Value = serde_json::from_slice(body).ok()?;
        let keys = document.get("keys")?.as_array()?;
        let mut set = KeySet::default();
        // One key at a time: a key of a type this version does not know spoils only itself.
        for key in keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(key.clone()) else { continue };
            let Some(public) = public_key(&jwk) else { continue };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.entry(kid).or_insert(public);
                }
                None => set.without_kid.push(public),
            }
        }
        Some(set)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token's `kid` (or, without one, the only kid-less key for its algorithm).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&PublicKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => {
                let mut candidates = self.without_kid.iter().filter(|key| key.verifies(alg));
                let only = candidates.next()?;
                candidates.next().is_none().then_some(only)
            }
        }
    }
}

fn public_key(jwk: &Jwk) -> Option<PublicKey> {
    if jwk.common.public_key_use.as_ref().is_some_and(|usage| *usage != PublicKeyUse::Signature) {
        return None;
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
        // Symmetric keys (`oct`) would turn a public document into a signing secret.
        _ => return None,
    };
    let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(declared) => family.iter().copied().filter(|alg| key_algorithm(*alg) == Some(declared)).collect(),
    };
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(PublicKey { key, algorithms })
}

fn key_algorithm(alg: Algorithm) -> Option<KeyAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::RS384 => KeyAlgorithm::RS384,
        Algorithm::RS512 => KeyAlgorithm::RS512,
        Algorithm::PS256 => KeyAlgorithm::PS256,
        Algorithm::PS384 => KeyAlgorithm::PS384,
        Algorithm::PS512 => KeyAlgorithm::PS512,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::ES384 => KeyAlgorithm::ES384,
        Algorithm::EdDSA => KeyAlgorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_encryption_keys_are_left_out_and_alg_narrows_a_key() {
        let jwks = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","kid":"enc","use":"enc","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","kid":"ec","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"RSA","kid":"rs","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"whatever","kid":"w"}
        ]}"#;
        let set = KeySet::parse(jwks).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.find(Some("h"), Algorithm::HS256).is_none());
        assert!(set.find(Some("enc"), Algorithm::ES256).is_none());
        assert!(set.find(Some("ec"), Algorithm::ES256).is_some_and(|key| key.verifies(Algorithm::ES256)));
        let rsa = set.find(Some("rs"), Algorithm::RS256).unwrap();
        assert!(rsa.verifies(Algorithm::RS256) && !rsa.verifies(Algorithm::PS256) && !rsa.verifies(Algorithm::HS256));
        assert!(KeySet::parse(b"<html>").is_none());
        assert!(KeySet::parse(br#"{"keys":{}}"#).is_none());
    }
}
