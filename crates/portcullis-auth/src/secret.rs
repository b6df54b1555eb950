//! The secret formats: `pcl_` API keys and `pct_` admin tokens.
//!
//! `prefix + 32 random base62 characters + 6 base62 characters of CRC-32` (IEEE) over everything
//! before the checksum. The fixed shape lets secret scanners find leaked keys, and the checksum
//! lets the proxy reject a typo or a made-up key without touching the store.

use std::fmt;

use rand::Rng;
use rand::rngs::OsRng;

use crate::base62;

const BODY_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    ApiKey,
    AdminToken,
}

impl SecretKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            SecretKind::ApiKey => "pcl_",
            SecretKind::AdminToken => "pct_",
        }
    }

    const fn len(self) -> usize {
        self.prefix().len() + BODY_LEN + CHECKSUM_LEN
    }
}

/// One way a string fails to be a well-formed secret of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("wrong prefix")]
    WrongPrefix,
    #[error("wrong length")]
    WrongLength,
    #[error("character outside 0-9A-Za-z")]
    BadCharacter,
    #[error("checksum does not match")]
    BadChecksum,
}

/// A well-formed secret. Its `Debug` and `Display` are redacted; [`SecretToken::expose`] is the
/// one way to the text, used only to show it once and to hash it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken {
    kind: SecretKind,
    text: String,
}

impl SecretToken {
    /// A fresh secret from the operating system's random source.
    pub fn generate(kind: SecretKind) -> SecretToken {
        let mut rng = OsRng;
        let mut text = String::with_capacity(kind.len());
        text.push_str(kind.prefix());
        for _ in 0..BODY_LEN {
            text.push(char::from(base62::ALPHABET[rng.gen_range(0..62)]));
        }
        let checksum = checksum(&text);
        text.push_str(&checksum);
        SecretToken { kind, text }
    }

    /// Checks the shape and checksum; never touches a store.
    pub fn parse(kind: SecretKind, text: &str) -> Result<SecretToken, FormatError> {
        let body = text.strip_prefix(kind.prefix()).ok_or(FormatError::WrongPrefix)?;
        if text.len() != kind.len() {
            return Err(FormatError::WrongLength);
        }
        if !body.bytes().all(base62::is_digit) {
            return Err(FormatError::BadCharacter);
        }
        let (signed, given) = text.split_at(kind.len() - CHECKSUM_LEN);
        if checksum(signed) != given {
            return Err(FormatError::BadChecksum);
        }
        Ok(SecretToken { kind, text: text.to_string() })
    }

    pub fn kind(&self) -> SecretKind {
        self.kind
    }

    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `pcl_AbCd…`: enough to tell keys apart in a list, useless to an attacker.
    pub fn display_prefix(&self) -> String {
        format!("{}…", &self.text[..self.kind.prefix().len() + 4])
    }
}

fn checksum(signed: &str) -> String {
    base62::encode_fixed(u64::from(crc32fast::hash(signed.as_bytes())), CHECKSUM_LEN)
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretToken({}[redacted])", self.kind.prefix())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn generated_key_has_the_documented_shape() {
        let key = SecretToken::generate(SecretKind::ApiKey);
        let text = key.expose();
        assert_eq!(text.len(), 42);
        assert!(text.starts_with("pcl_"));
        assert!(text[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(SecretToken::parse(SecretKind::ApiKey, text), Ok(key.clone()));
    }

    #[test]
    fn every_format_rule_has_its_own_error() {
        let good = SecretToken::generate(SecretKind::ApiKey).expose().to_string();
        let parse = |text: &str| SecretToken::parse(SecretKind::ApiKey, text);
        assert_eq!(parse(&good.replacen("pcl_", "pck_", 1)), Err(FormatError::WrongPrefix));
        assert_eq!(parse(&good[..41]), Err(FormatError::WrongLength));
        assert_eq!(parse(&format!("{good}0")), Err(FormatError::WrongLength));
        assert_eq!(parse(&format!("{}-{}", &good[..10], &good[11..])), Err(FormatError::BadCharacter));
        let last = good.as_bytes()[41];
        let flipped = if last == b'0' { '1' } else { '0' };
        assert_eq!(parse(&format!("{}{flipped}", &good[..41])), Err(FormatError::BadChecksum));
    }

    #[test]
    fn a_key_is_not_an_admin_token() {
        let key = SecretToken::generate(SecretKind::ApiKey);
        assert_eq!(SecretToken::parse(SecretKind::AdminToken, key.expose()), Err(FormatError::WrongPrefix));
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = SecretToken::generate(SecretKind::AdminToken);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.expose()[4..]));
        assert_eq!(key.display_prefix().chars().count(), 9);
    }

    proptest! {
        #[test]
        fn any_single_character_change_in_the_body_is_caught(position in 4usize..42, replacement in 0usize..62) {
            let good = SecretToken::generate(SecretKind::ApiKey).expose().to_string();
            let mut bytes = good.clone().into_bytes();
            let new = crate::base62::ALPHABET[replacement];
            prop_assume!(bytes[position] != new);
            bytes[position] = new;
            let typo = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(SecretToken::parse(SecretKind::ApiKey, &typo), Err(FormatError::BadChecksum));
        }
    }
}
