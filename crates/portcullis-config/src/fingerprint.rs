//! Secrets serialize as a fingerprint, never as themselves: enough to tell whether a secret
//! changed between two readings of the file in this process (the restart-required comparison),
//! nothing that could be printed, logged or guessed against.
//!
//! The fingerprint is a SipHash keyed with a random key drawn once per process, so it means
//! nothing outside the process that made it: even a low-entropy password inside `store.url`
//! cannot be checked against a fingerprint that leaked.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use portcullis_types::Secret;
use serde::Serializer;

fn key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new)
}

fn of(secret: &Secret<String>) -> String {
    format!("fingerprint:{:016x}", key().hash_one(secret.expose()))
}

pub(crate) fn secret<S: Serializer>(secret: &Secret<String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&of(secret))
}

pub(crate) fn optional<S: Serializer>(secret: &Option<Secret<String>>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => serializer.serialize_some(&of(secret)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_secrets_share_a_fingerprint_that_does_not_show_them() {
        let a = of(&Secret::new("sk-one".into()));
        assert_eq!(a, of(&Secret::new("sk-one".into())));
        assert_ne!(a, of(&Secret::new("sk-two".into())));
        assert!(!a.contains("sk-one"));
    }
}
