//! A stored record as the admin API shows it: every field of the record, and the cost in currency
//! units next to the exact `cost_pico` the record's hash covers.

use portcullis_audit::AuditRecord;
use portcullis_types::admin::{AuditPage, AuditView};

use super::cursor::{cursor_of, encode_cursor};

/// A page of records, with the cursor after its last one.
pub(super) fn page(records: Vec<AuditRecord>) -> AuditPage {
    let next_cursor = records.last().map(|last| encode_cursor(&cursor_of(last)));
    AuditPage { data: records.into_iter().map(audit_view).collect(), next_cursor }
}

/// Display only: `cost_pico` is the exact value.
pub(super) fn cost_units(cost_pico: u64) -> f64 {
    cost_pico as f64 / 1e12
}

pub fn audit_view(record: AuditRecord) -> AuditView {
    // No `..`: a field added to the record does not compile until the view shows it.
    let AuditRecord {
        seq,
        ts,
        node,
        kind,
        request_id,
        principal_kind,
        key_id,
        subject,
        issuer,
        credential_id,
        team,
        admin_token_id,
        client_ip,
        gateway,
        method,
        path,
        model,
        upstream,
        status,
        decision,
        reason,
        target,
        stream,
        latency_ms,
        ttfb_ms,
        prompt_tokens,
        completion_tokens,
        usage_estimated,
        cost_pico,
        user_agent,
        content,
        prev_hash,
        hash,
    } = record;
    AuditView {
        seq,
        ts,
        node,
        kind: kind.name().to_string(),
        request_id,
        principal_kind: principal_kind.map(|kind| kind.name().to_string()),
        key_id,
        subject,
        issuer,
        credential_id,
        team,
        admin_token_id,
        client_ip,
        gateway,
        method,
        path,
        model,
        upstream,
        status,
        decision: decision.name().to_string(),
        reason,
        target,
        stream,
        latency_ms,
        ttfb_ms,
        prompt_tokens,
        completion_tokens,
        usage_estimated,
        cost: cost_pico.map(cost_units),
        cost_pico,
        user_agent,
        content,
        prev_hash,
        hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::audit::testing::record;

    #[test]
    fn views_keep_every_field_with_cost_in_units_too() {
        let json = serde_json::to_value(audit_view(record(7))).unwrap();
        assert_eq!(json["ts"], "2025-06-10T12:30:00.123Z");
        assert_eq!((json["kind"].as_str(), json["decision"].as_str()), (Some("request"), Some("allow")));
        assert_eq!((json["cost"].as_f64(), json["cost_pico"].as_u64()), (Some(2.5), Some(2_500_000_000_000)));
        assert!(json["subject"].is_null(), "absent fields are null, not missing");
    }

    #[test]
    fn the_view_shows_every_field_of_the_table_and_the_cost() {
        let json = serde_json::to_value(audit_view(record(7))).unwrap();
        let shown: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = AuditRecord::FIELDS.iter().map(|field| field.name).chain(["cost"]).collect();
        expected.sort_unstable();
        assert_eq!(shown, expected, "serde's keys come sorted");
    }
}
