//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a public API).
//!
//! Each function takes the fuzzer's bytes, runs a parser on them and asserts what must hold for
//! every input: a failed assertion is how the fuzzer learns of a logic bug, not only a panic.
#![doc(hidden)]
#![allow(clippy::panic, reason = "a broken invariant panics so that the fuzzer records the input")]

use crate::base62;
use crate::secret::{SecretKind, SecretToken};

const KINDS: [SecretKind; 2] = [SecretKind::ApiKey, SecretKind::AdminToken];

/// The `pcl_`/`pct_` format: [`SecretToken::parse`] of the bytes as text (both kinds), and a
/// well-formed secret built from the bytes by the documented rule (prefix, 32 base62
/// characters, six base62 characters of the CRC-32 of what precedes them), which must parse,
/// and stop parsing after any change of one character.
pub fn key_format(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        for kind in KINDS {
            if let Ok(token) = SecretToken::parse(kind, text) {
                check_parsed(kind, text, &token);
            }
        }
    }
    let Some((&selector, rest)) = bytes.split_first() else { return };
    let kind = KINDS[usize::from(selector & 1)];
    let mut text = String::from(kind.prefix());
    text.extend((0..32).map(|at| char::from(base62::ALPHABET[usize::from(rest.get(at).copied().unwrap_or(0) % 62)])));
    let checksum = base62::encode_fixed(u64::from(crc32fast::hash(text.as_bytes())), 6);
    text.push_str(&checksum);
    let token = match SecretToken::parse(kind, &text) {
        Ok(token) => token,
        Err(error) => panic!("a secret built by the documented rule was refused ({error}): {text:?}"),
    };
    check_parsed(kind, &text, &token);
    let other = KINDS[usize::from(!selector & 1)];
    assert!(SecretToken::parse(other, &text).is_err(), "{text:?} parsed as the other kind too");
    // One character changed, at a position and to a byte the input picks.
    let position = kind.prefix().len() + usize::from(rest.get(32).copied().unwrap_or(0)) % 38;
    let replacement = rest.get(33).copied().unwrap_or(b'x');
    let mut changed = text.clone().into_bytes();
    if changed[position] != replacement {
        changed[position] = replacement;
        if let Ok(changed) = String::from_utf8(changed) {
            assert!(SecretToken::parse(kind, &changed).is_err(), "a one-character change was accepted: {changed:?}");
        }
    }
}

fn check_parsed(kind: SecretKind, text: &str, token: &SecretToken) {
    assert_eq!(token.kind(), kind);
    assert_eq!(token.expose(), text, "parse keeps the text as given");
    assert_eq!(text.len(), 42);
    assert!(text[4..].bytes().all(|byte| byte.is_ascii_alphanumeric()), "{text:?}");
    let shown = token.display_prefix();
    assert!(shown.starts_with(&text[..8]) && shown.ends_with('…') && shown.chars().count() == 9, "{shown:?}");
    assert!(!format!("{token:?}").contains(&text[4..]), "Debug shows the secret");
}
