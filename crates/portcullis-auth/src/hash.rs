//! How secrets are stored: SHA-256, or HMAC-SHA-256 with a pepper when one is configured.

use std::fmt;

use hmac::{Hmac, Mac};
use portcullis_types::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::SecretToken;

/// The stored form of a secret. Equality is constant-time.
#[derive(Clone, Copy, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl PartialEq for SecretHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not secret, but a short form is all anyone needs in a log.
        write!(f, "SecretHash({}…)", &self.to_hex()[..8])
    }
}

#[derive(Clone, Debug)]
pub struct SecretHasher {
    pepper: Option<Secret<Vec<u8>>>,
}

impl SecretHasher {
    pub fn new(pepper: Option<&str>) -> Self {
        Self { pepper: pepper.map(|p| Secret::new(p.as_bytes().to_vec())) }
    }

    pub fn hash(&self, secret: &SecretToken) -> SecretHash {
        let input = secret.expose().as_bytes();
        let digest: [u8; 32] = match &self.pepper {
            None => Sha256::digest(input).into(),
            Some(pepper) => match Hmac::<Sha256>::new_from_slice(pepper.expose()) {
                Ok(mut mac) => {
                    mac.update(input);
                    mac.finalize().into_bytes().into()
                }
                // HMAC accepts keys of any length, so this arm is unreachable in practice.
                Err(_) => Sha256::digest(input).into(),
            },
        };
        SecretHash(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKind;

    #[test]
    fn pepper_changes_the_hash() {
        let key = SecretToken::generate(SecretKind::ApiKey);
        let plain = SecretHasher::new(None).hash(&key);
        let peppered = SecretHasher::new(Some("pepper")).hash(&key);
        assert_ne!(plain, peppered);
        assert_eq!(plain, SecretHasher::new(None).hash(&key));
    }

    #[test]
    fn hex_round_trips() {
        let hash = SecretHasher::new(None).hash(&SecretToken::generate(SecretKind::ApiKey));
        assert_eq!(SecretHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(SecretHash::from_hex("zz"), None);
    }
}
