//! Key naming: every key of one limiter starts with the same hash tag, `{<prefix>}:`.
//!
//! Redis Cluster hashes only the part of a key between the first `{` and the next `}`, so all keys of a
//! prefix land in one hash slot. That is what lets one script touch every scope of an admission (Cluster
//! refuses a script whose keys span slots), and it is also why the limiter lives on a single shard: see
//! the crate docs.
//!
//! A scope owns two keys, named by layout version and kind before the scope, so that no scope id can
//! make one scope's key look like another kind's key of another scope:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:v2:s:<scope>` | string | the counters (GCRA, token bucket, in flight, day and month windows), packed |
//! | `{p}:v2:l:<scope>` | sorted set | running reservations as lease members, scored by lease deadline (wall-clock ms) |
//!
//! `<scope>` is `g` for the global scope, `t:<id>` for a team and `k:<id>` for a key. `v2` names the layout
//! of the crate docs: a later layout gets a new version, so replicas of different versions never misread
//! each other's keys (during a rolling upgrade across a layout change each version counts on its own).

use portcullis_limits::LimitScope;

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
    pub(crate) fn scope_name(scope: &LimitScope) -> String {
        match scope {
            LimitScope::Global => "g".to_owned(),
            LimitScope::Team(id) => format!("t:{id}"),
            LimitScope::Key(id) => format!("k:{id}"),
        }
    }

    /// The state of a scope (by [`KeySpace::scope_name`]).
    pub(crate) fn state(&self, scope_name: &str) -> String {
        format!("{}v2:s:{scope_name}", self.tag)
    }

    /// The lease set of a scope.
    pub(crate) fn leases(&self, scope_name: &str) -> String {
        format!("{}v2:l:{scope_name}", self.tag)
    }

    /// A pub/sub channel of this prefix (channels are not keys: no layout version).
    pub(crate) fn channel(&self, name: &str) -> String {
        format!("{}{name}", self.tag)
    }

    /// The keys of these scopes as the script expects them: every state, then every lease set, in the
    /// same order.
    pub(crate) fn script_keys<'a>(&self, scope_names: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
        scope_names.clone().map(|name| self.state(name)).chain(scope_names.map(|name| self.leases(name))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(id: &str) -> LimitScope {
        LimitScope::Team(id.into())
    }

    #[test]
    fn every_key_starts_with_the_hash_tag() {
        let keys = KeySpace::new("portcullis").unwrap();
        let name = KeySpace::scope_name(&LimitScope::Key("abc".into()));
        assert_eq!(keys.state(&name), "{portcullis}:v2:s:k:abc");
        assert_eq!(keys.leases(&name), "{portcullis}:v2:l:k:abc");
        assert_eq!(keys.state(&KeySpace::scope_name(&LimitScope::Global)), "{portcullis}:v2:s:g");
        assert_eq!(keys.channel("authz:settlements"), "{portcullis}:authz:settlements");
        let names = [KeySpace::scope_name(&team("eng")), name];
        assert_eq!(
            keys.script_keys(names.iter().map(String::as_str)),
            [
                "{portcullis}:v2:s:t:eng",
                "{portcullis}:v2:s:k:abc",
                "{portcullis}:v2:l:t:eng",
                "{portcullis}:v2:l:k:abc"
            ]
        );
    }

    #[test]
    fn scope_kinds_never_share_a_key() {
        // A key id that spells a team, or a kind letter, still names a key of its own.
        let names = [
            KeySpace::scope_name(&LimitScope::Global),
            KeySpace::scope_name(&team("x")),
            KeySpace::scope_name(&LimitScope::Key("x".into())),
            KeySpace::scope_name(&LimitScope::Key("t:x".into())),
            KeySpace::scope_name(&team("g")),
        ];
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn braces_in_a_scope_id_do_not_move_the_hash_slot() {
        // Cluster hashes the first {...}: the prefix's, whatever the id contains.
        let keys = KeySpace::new("p").unwrap();
        let state = keys.state(&KeySpace::scope_name(&LimitScope::Key("{evil}".into())));
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
