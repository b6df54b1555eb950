//! Key naming: every key of one limiter starts with the same hash tag, `{<prefix>}:`.
//!
//! Redis Cluster hashes only the part of a key between the first `{` and the next `}`, so all keys of a
//! prefix land in one hash slot. That is what lets one script touch every scope of an admission (Cluster
//! refuses a script whose keys span slots), and it is also why the limiter lives on a single shard: see
//! the crate docs.
//!
//! A scope owns three keys, named by kind first so that no scope id can make one scope's key look like
//! another kind's key of another scope:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:s:<scope>` | hash | the counters (GCRA, token bucket, in flight, day and month windows) |
//! | `{p}:l:<scope>` | sorted set | running reservations, scored by lease deadline (wall-clock ms) |
//! | `{p}:h:<scope>` | hash | running reservations: id → what the admission took from this scope |
//!
//! `<scope>` is `g` for the global scope, `t:<id>` for a team and `k:<id>` for a key.

use portcullis_limits::Scope;

/// The key names of one limiter.
#[derive(Clone, Debug)]
pub(crate) struct KeySpace {
    /// `{<prefix>}:`
    tag: String,
}

/// Why a key prefix was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrefixError {
    Empty,
    /// A brace would end or restart the hash tag.
    Brace,
}

impl KeySpace {
    pub(crate) fn new(prefix: &str) -> Result<KeySpace, PrefixError> {
        if prefix.is_empty() {
            return Err(PrefixError::Empty);
        }
        if prefix.contains(['{', '}']) {
            return Err(PrefixError::Brace);
        }
        Ok(KeySpace { tag: format!("{{{prefix}}}:") })
    }

    /// The name of a scope inside its keys.
    pub(crate) fn scope_name(scope: &Scope) -> String {
        match scope {
            Scope::Global => "g".to_owned(),
            Scope::Team(id) => format!("t:{id}"),
            Scope::Key(id) => format!("k:{id}"),
        }
    }

    /// The state hash, lease set and holds hash of a scope (by [`KeySpace::scope_name`]), in that order:
    /// the triple the script expects for each scope.
    pub(crate) fn triple(&self, scope_name: &str) -> [String; 3] {
        let tag = &self.tag;
        [format!("{tag}s:{scope_name}"), format!("{tag}l:{scope_name}"), format!("{tag}h:{scope_name}")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(id: &str) -> Scope {
        Scope::Team(id.into())
    }

    #[test]
    fn every_key_starts_with_the_hash_tag() {
        let keys = KeySpace::new("portcullis").unwrap();
        let name = KeySpace::scope_name(&Scope::Key("abc".into()));
        assert_eq!(keys.triple(&name), ["{portcullis}:s:k:abc", "{portcullis}:l:k:abc", "{portcullis}:h:k:abc"]);
        assert_eq!(keys.triple(&KeySpace::scope_name(&Scope::Global))[0], "{portcullis}:s:g");
        assert_eq!(keys.triple(&KeySpace::scope_name(&team("eng")))[2], "{portcullis}:h:t:eng");
    }

    #[test]
    fn scope_kinds_never_share_a_key() {
        // A key id that spells a team, or a kind letter, still names a key of its own.
        let names = [
            KeySpace::scope_name(&Scope::Global),
            KeySpace::scope_name(&team("x")),
            KeySpace::scope_name(&Scope::Key("x".into())),
            KeySpace::scope_name(&Scope::Key("t:x".into())),
            KeySpace::scope_name(&team("g")),
        ];
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn braces_in_a_scope_id_do_not_move_the_hash_slot() {
        // Cluster hashes the first {...}: the prefix's, whatever the id contains.
        let keys = KeySpace::new("p").unwrap();
        let [state, ..] = keys.triple(&KeySpace::scope_name(&Scope::Key("{evil}".into())));
        assert!(state.starts_with("{p}:"));
    }

    #[test]
    fn prefix_must_be_non_empty_and_brace_free() {
        assert_eq!(KeySpace::new("").unwrap_err(), PrefixError::Empty);
        assert_eq!(KeySpace::new("a}b").unwrap_err(), PrefixError::Brace);
        assert_eq!(KeySpace::new("{a").unwrap_err(), PrefixError::Brace);
        assert!(KeySpace::new("tenant-1:limits").is_ok());
    }
}
