//! The canonical encoding of a record, its hash, and the chain that numbers and links a node's records.
//!
//! `hash = lowercase hex SHA-256(prev_hash as 32 bytes ‖ canonical(record))`. The first record of a
//! chain links to [`GENESIS_HASH`]. Because each hash covers the previous one, changing, removing or
//! inserting a record changes every hash after it; [`crate::verify`] finds the first place where the
//! stored hashes stop matching.
//!
//! # The canonical encoding (versions 1, 2 and 3)
//! A JSON array, no whitespace, of the fields in the order of [`CANONICAL_FIELDS`] (version 3),
//! [`CANONICAL_FIELDS_V2`] (version 2) or [`CANONICAL_FIELDS_V1`] (version 1):
//! - the first element is the encoding version, `1`, `2` or `3`;
//! - `ts` is an integer: Unix milliseconds (floor), so stores may keep any precision down to the millisecond;
//! - `kind`, `decision` and `principal_kind` are their snake_case names (`"request"`, `"deny"`, `"token"`…);
//! - `None` is `null`; integers are decimal; booleans are `true`/`false`;
//! - strings are JSON strings: `"` and `\` are escaped, as are control characters (`\b \f \n \r \t`,
//!   others `\u00XX` in lowercase hex); everything else, non-ASCII included, is copied as UTF-8 bytes.
//!
//! Version 2 added the caller's `principal_kind`, `issuer` and `credential_id` (token and
//! certificate callers); version 3 added the `gateway` that asked the authorizer. A record is
//! encoded in the oldest version that has every field it holds: version 1 when it has none of the
//! later fields — every record stored before version 2, and admin records since — version 2 when
//! it has a caller field but no gateway, version 3 (all fields) when it has a gateway. So records
//! already stored verify as they were hashed. The choice cannot be used to drop a field: setting
//! a later version's field on an older record, or clearing the last of them on a newer one,
//! changes the version element and with it the hash.
//!
//! [`canonical`] walks the record's field table ([`AuditRecord::FIELDS`]), whose order is the
//! canonical order of the newest version. [`CANONICAL_FIELDS`], [`CANONICAL_FIELDS_V2`] and
//! [`CANONICAL_FIELDS_V1`] pin each version by name, and a test holds the table to them:
//! reordering, renaming or adding a field would change the hash of every record already stored,
//! so such a change fails that test until it is made a new version (one that still encodes older
//! records as they were hashed).

use sha2::{Digest, Sha256};

use crate::fields::Value;
use crate::{AuditEvent, AuditRecord};

/// The `prev_hash` of a chain's first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The newest version of the canonical encoding.
pub const CANONICAL_VERSION: u64 = 3;

/// The fields version 2 added; a record without any of them (nor of [`VERSION_3_FIELDS`]) is
/// encoded in version 1.
pub const VERSION_2_FIELDS: [&str; 3] = ["principal_kind", "issuer", "credential_id"];

/// The fields version 3 added; a record without them is encoded in version 2 or 1.
pub const VERSION_3_FIELDS: [&str; 1] = ["gateway"];

/// The elements of the version 3 canonical array, in order (`"version"` is the version number).
/// Every field of `AuditRecord` except `hash`.
pub const CANONICAL_FIELDS: [&str; 33] = [
    "version",
    "seq",
    "ts",
    "node",
    "kind",
    "request_id",
    "principal_kind",
    "key_id",
    "subject",
    "issuer",
    "credential_id",
    "team",
    "admin_token_id",
    "client_ip",
    "gateway",
    "method",
    "path",
    "model",
    "upstream",
    "status",
    "decision",
    "reason",
    "target",
    "stream",
    "latency_ms",
    "ttfb_ms",
    "prompt_tokens",
    "completion_tokens",
    "usage_estimated",
    "cost_pico",
    "user_agent",
    "content",
    "prev_hash",
];

/// The elements of the version 2 canonical array, in order.
pub const CANONICAL_FIELDS_V2: [&str; 32] = [
    "version",
    "seq",
    "ts",
    "node",
    "kind",
    "request_id",
    "principal_kind",
    "key_id",
    "subject",
    "issuer",
    "credential_id",
    "team",
    "admin_token_id",
    "client_ip",
    "method",
    "path",
    "model",
    "upstream",
    "status",
    "decision",
    "reason",
    "target",
    "stream",
    "latency_ms",
    "ttfb_ms",
    "prompt_tokens",
    "completion_tokens",
    "usage_estimated",
    "cost_pico",
    "user_agent",
    "content",
    "prev_hash",
];

/// The elements of the version 1 canonical array, in order.
pub const CANONICAL_FIELDS_V1: [&str; 29] = [
    "version",
    "seq",
    "ts",
    "node",
    "kind",
    "request_id",
    "key_id",
    "subject",
    "team",
    "admin_token_id",
    "client_ip",
    "method",
    "path",
    "model",
    "upstream",
    "status",
    "decision",
    "reason",
    "target",
    "stream",
    "latency_ms",
    "ttfb_ms",
    "prompt_tokens",
    "completion_tokens",
    "usage_estimated",
    "cost_pico",
    "user_agent",
    "content",
    "prev_hash",
];

/// The bytes a record's hash covers (after its `prev_hash`): see the module docs for the format.
pub fn canonical(record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + record.content.as_ref().map_or(0, String::len));
    encode(record, &mut out);
    out
}

/// The version `record` is encoded in: the newest version that added a field it holds — 3 with a
/// `gateway`, else 2 with any of [`VERSION_2_FIELDS`], else 1.
pub fn canonical_version(record: &AuditRecord) -> u64 {
    let held = AuditRecord::FIELDS.iter().zip(record.values()).filter(|(_, value)| !value.is_null());
    held.map(|(field, _)| added_in(field.name)).max().unwrap_or(1)
}

/// The version of the canonical encoding that added the field `name`.
fn added_in(name: &str) -> u64 {
    if VERSION_3_FIELDS.contains(&name) {
        3
    } else if VERSION_2_FIELDS.contains(&name) {
        2
    } else {
        1
    }
}

/// `lowercase hex SHA-256(prev_hash bytes ‖ canonical(record))`; `record.hash` itself is ignored.
pub fn record_hash(record: &AuditRecord) -> String {
    let mut hasher = Sha256::new();
    let mut prev = [0u8; 32];
    match hex::decode_to_slice(&record.prev_hash, &mut prev) {
        Ok(()) => hasher.update(prev),
        // Only a tampered row has a malformed `prev_hash`. Hashing its text keeps the function total;
        // verification reports such a record anyway, since no stored hash has that form.
        Err(_) => hasher.update(record.prev_hash.as_bytes()),
    }
    hasher.update(canonical(record));
    hex::encode(hasher.finalize())
}

/// One node's chain as its writer sees it: the next `seq` to hand out and the hash to link to.
/// Only one writer may extend a node's chain; two would fork it (same `seq`, different records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    node: String,
    next_seq: u64,
    last_hash: String,
}

impl Chain {
    /// Continues after `last` (`(seq, hash)` of the newest stored record), or starts a new chain at
    /// seq 1 linked to [`GENESIS_HASH`].
    pub fn resume(node: impl Into<String>, last: Option<(u64, String)>) -> Chain {
        let node = node.into();
        match last {
            Some((seq, hash)) => Chain { node, next_seq: seq.saturating_add(1), last_hash: hash },
            None => Chain { node, next_seq: 1, last_hash: GENESIS_HASH.to_string() },
        }
    }

    /// Numbers, links and hashes `event` as the next record of the chain. The event's `ts` is kept
    /// (cut to UTC milliseconds); records are not reordered by time, the chain order is seal order.
    pub fn seal(&mut self, event: AuditEvent) -> AuditRecord {
        let mut record = event.into_record(self.node.clone(), self.next_seq, self.last_hash.clone());
        record.hash = record_hash(&record);
        self.next_seq = self.next_seq.saturating_add(1);
        self.last_hash.clone_from(&record.hash);
        record
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash the next record will link to.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }
}

fn encode(record: &AuditRecord, out: &mut Vec<u8>) {
    let version = canonical_version(record);
    let mut enc = Encoder { out, first: true };
    enc.out.push(b'[');
    enc.uint(version);
    // The table ends with `hash`, which covers every field before it.
    let values = record.values();
    let fields = AuditRecord::FIELDS.iter().zip(&values);
    let covered = fields.take(values.len().saturating_sub(1));
    for (field, value) in covered {
        if added_in(field.name) > version {
            continue;
        }
        match *value {
            Value::Count(Some(count)) => enc.uint(count),
            Value::Status(status) => enc.uint(u64::from(status)),
            Value::Millis(millis) => enc.int(millis),
            Value::Text(Some(text)) => enc.str(text),
            Value::Flag(flag) => enc.bool(flag),
            Value::Count(None) | Value::Text(None) => enc.null(),
        }
    }
    enc.out.push(b']');
}

/// Writes array elements, with the separating commas.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Encoder<'_> {
    fn sep(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    fn null(&mut self) {
        self.sep();
        self.out.extend_from_slice(b"null");
    }

    fn bool(&mut self, value: bool) {
        self.sep();
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn uint(&mut self, value: u64) {
        self.sep();
        push_digits(self.out, value);
    }

    fn int(&mut self, value: i64) {
        self.sep();
        if value < 0 {
            self.out.push(b'-');
        }
        push_digits(self.out, value.unsigned_abs());
    }

    fn str(&mut self, value: &str) {
        self.sep();
        push_json_string(self.out, value);
    }
}

fn push_digits(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn push_json_string(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..at]);
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0x0f)]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
