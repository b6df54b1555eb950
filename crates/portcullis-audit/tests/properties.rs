//! Properties of the canonical encoding and of verification over random chains and tamperings.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure is a failed test")]

mod common;

use portcullis_audit::{CANONICAL_FIELDS_V2, ChainBreak, Tampering, VerifyStatus, canonical, verify_records};
use proptest::prelude::*;

/// Where `field` is in the encoding of [`common::chain`]'s records: key callers without a
/// gateway, so version 2.
fn position(field: &str) -> usize {
    CANONICAL_FIELDS_V2.iter().position(|f| *f == field).unwrap()
}

proptest! {
    /// Any text survives the encoding: a JSON parser reads back exactly the string that was hashed.
    #[test]
    fn any_text_decodes_to_itself(content in any::<String>(), node in "[a-z0-9-]{1,20}") {
        let mut record = common::chain(&node, 1).remove(0);
        record.content = Some(content.clone());
        let value: serde_json::Value = serde_json::from_slice(&canonical(&record)).unwrap();
        prop_assert_eq!(value[position("content")].as_str(), Some(content.as_str()));
        prop_assert_eq!(value[position("node")].as_str(), Some(node.as_str()));
    }

    /// Changing a record's content, wherever it is in the chain, is found at that record.
    #[test]
    fn an_edit_anywhere_is_found_at_its_seq(len in 1u64..60, at in any::<prop::sample::Index>(), tokens in any::<u64>()) {
        let mut records = common::chain("n", len);
        let at = at.index(records.len());
        prop_assume!(records[at].prompt_tokens != Some(tokens));
        records[at].prompt_tokens = Some(tokens);
        let seq = records[at].seq;
        prop_assert_eq!(
            verify_records("n", None, &records).status,
            VerifyStatus::Break(ChainBreak { seq, problem: Tampering::Edited })
        );
    }

    /// Removing any record but the last is found at its seq (the last one needs an outside anchor).
    #[test]
    fn a_deletion_anywhere_but_the_end_is_found_at_its_seq(len in 2u64..60, at in any::<prop::sample::Index>()) {
        let mut records = common::chain("n", len);
        let at = at.index(records.len() - 1);
        let seq = records.remove(at).seq;
        prop_assert_eq!(
            verify_records("n", None, &records).status,
            VerifyStatus::Break(ChainBreak { seq, problem: Tampering::Deleted })
        );
    }
}
