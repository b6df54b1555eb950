use time::OffsetDateTime;

use super::*;
use crate::testing;
use crate::{AuditDecision, AuditKind, PrincipalKind};

fn minimal() -> AuditRecord {
    let ts = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap() + time::Duration::milliseconds(123);
    let event = AuditEvent::new(ts, AuditKind::Admin, AuditDecision::Deny, 403);
    event.into_record("node-a".to_string(), 7, GENESIS_HASH.to_string())
}

#[test]
fn canonical_encoding_is_the_documented_array() {
    let text = String::from_utf8(canonical(&minimal())).unwrap();
    assert_eq!(
        text,
        r#"[1,7,1800000000123,"node-a","admin",null,null,null,null,null,null,null,null,null,null,403,"deny",null,null,false,0,null,null,null,false,null,null,null,"0000000000000000000000000000000000000000000000000000000000000000"]"#
    );
}

/// A golden value: if this changes, every stored chain stops verifying.
#[test]
fn record_hash_is_stable() {
    assert_eq!(record_hash(&minimal()), "1467e1156416e2d4dee9d44b9f968237208655a39c01009c80f1aaed249782fd");
}

#[test]
fn the_field_table_is_canonical_version_3_then_the_hash() {
    let names = AuditRecord::FIELDS.map(|field| field.name);
    let (hash, covered) = names.split_last().unwrap();
    assert_eq!(*hash, "hash");
    assert_eq!(
        covered,
        &CANONICAL_FIELDS[1..],
        "a changed field table changes every stored hash: make it a new version"
    );
}

#[test]
fn version_1_is_version_2_without_the_caller_fields() {
    let without: Vec<&str> =
        CANONICAL_FIELDS_V2.iter().copied().filter(|name| !VERSION_2_FIELDS.contains(name)).collect();
    assert_eq!(without, CANONICAL_FIELDS_V1);
}

#[test]
fn version_2_is_version_3_without_the_gateway() {
    let without: Vec<&str> = CANONICAL_FIELDS.iter().copied().filter(|name| !VERSION_3_FIELDS.contains(name)).collect();
    assert_eq!(without, CANONICAL_FIELDS_V2);
}

/// A token caller's record: version 2, with the fields version 1 does not have.
fn token_caller() -> AuditRecord {
    let mut record = minimal();
    record.kind = AuditKind::Request;
    record.principal_kind = Some(PrincipalKind::Token);
    record.subject = Some("svc-ingest".into());
    record.issuer = Some("https://idp.example".into());
    record.credential_id = Some("jti-42".into());
    record
}

#[test]
fn a_record_without_caller_fields_is_hashed_as_version_1_was() {
    assert_eq!(canonical_version(&minimal()), 1);
    assert!(String::from_utf8(canonical(&minimal())).unwrap().starts_with("[1,"));
    let value: serde_json::Value = serde_json::from_slice(&canonical(&minimal())).unwrap();
    assert_eq!(value.as_array().unwrap().len(), CANONICAL_FIELDS_V1.len());
}

#[test]
fn a_record_with_caller_fields_is_version_2_and_hashes_them() {
    let record = token_caller();
    assert_eq!(canonical_version(&record), 2);
    let text = String::from_utf8(canonical(&record)).unwrap();
    assert_eq!(
        text,
        r#"[2,7,1800000000123,"node-a","request",null,"token",null,"svc-ingest","https://idp.example","jti-42",null,null,null,null,null,null,null,403,"deny",null,null,false,0,null,null,null,false,null,null,null,"0000000000000000000000000000000000000000000000000000000000000000"]"#
    );
    assert_eq!(record_hash(&record), "44e9ca2066d27b4e756dcd46cf0530c59b2afb31d23ab83b920b0883826e165e");
    for version_2_only in [
        |r: &mut AuditRecord| r.principal_kind = Some(PrincipalKind::Key),
        |r: &mut AuditRecord| r.issuer = Some("x".into()),
        |r: &mut AuditRecord| r.credential_id = Some("x".into()),
    ] {
        let mut v1 = minimal();
        let before = record_hash(&v1);
        version_2_only(&mut v1);
        assert_eq!(canonical_version(&v1), 2);
        assert_ne!(record_hash(&v1), before, "setting a version 2 field on an old record changes its hash");
    }
    let mut cleared = record.clone();
    (cleared.principal_kind, cleared.issuer, cleared.credential_id) = (None, None, None);
    assert_ne!(record_hash(&cleared), record_hash(&record));
}

/// An authorizer's decision, asked by a gateway: version 3, whatever else the record holds.
fn gateway_decision(mut record: AuditRecord) -> AuditRecord {
    record.kind = AuditKind::Authz;
    record.gateway = Some("nginx".into());
    record
}

#[test]
fn a_record_with_a_gateway_is_version_3_and_hashes_every_field() {
    let record = gateway_decision(minimal());
    assert_eq!(canonical_version(&record), 3);
    let text = String::from_utf8(canonical(&record)).unwrap();
    assert_eq!(
        text,
        r#"[3,7,1800000000123,"node-a","authz",null,null,null,null,null,null,null,null,null,"nginx",null,null,null,null,403,"deny",null,null,false,0,null,null,null,false,null,null,null,"0000000000000000000000000000000000000000000000000000000000000000"]"#,
        "the caller fields of version 2 are there (null), the gateway after the client's address"
    );
    let value: serde_json::Value = serde_json::from_slice(&canonical(&gateway_decision(token_caller()))).unwrap();
    let elements = value.as_array().unwrap();
    assert_eq!(elements.len(), CANONICAL_FIELDS.len());
    let at = |name: &str| &elements[CANONICAL_FIELDS.iter().position(|field| *field == name).unwrap()];
    assert_eq!(
        (at("version"), at("gateway"), at("issuer")),
        (&3.into(), &"nginx".into(), &"https://idp.example".into())
    );
}

#[test]
fn an_authz_record_without_a_gateway_keeps_the_older_version() {
    let mut record = minimal();
    record.kind = AuditKind::Authz;
    assert_eq!(canonical_version(&record), 1, "the kind alone does not choose the version");
    assert!(String::from_utf8(canonical(&record)).unwrap().starts_with(r#"[1,7,1800000000123,"node-a","authz",null,"#));
}

#[test]
fn the_version_choice_cannot_drop_the_gateway() {
    for older in [minimal(), token_caller()] {
        let before = record_hash(&older);
        let mut with_gateway = older.clone();
        with_gateway.gateway = Some("nginx".into());
        assert_eq!(canonical_version(&with_gateway), 3);
        assert_ne!(record_hash(&with_gateway), before, "setting the gateway on an older record changes its hash");

        // Cleared again, the record is the older one: same version, same hash, so a stored
        // version 3 record whose gateway is removed no longer matches its own hash.
        let mut cleared = with_gateway.clone();
        cleared.gateway = None;
        assert_eq!(record_hash(&cleared), before);
        assert_ne!(record_hash(&cleared), record_hash(&with_gateway));
    }
    // An empty name is a gateway too, not an absent one.
    let mut empty = minimal();
    empty.gateway = Some(String::new());
    assert_eq!(canonical_version(&empty), 3);
    assert_ne!(record_hash(&empty), record_hash(&minimal()));
    // Nor can a version 3 record hide its caller fields: clearing them keeps version 3, but the
    // nulls are hashed where the values were.
    let full = gateway_decision(token_caller());
    let mut no_caller = full.clone();
    (no_caller.principal_kind, no_caller.issuer, no_caller.credential_id) = (None, None, None);
    assert_eq!(canonical_version(&no_caller), 3);
    assert_ne!(record_hash(&no_caller), record_hash(&full));
}

#[test]
fn canonical_has_one_element_per_documented_field() {
    let record = gateway_decision(testing::chain("n", 1).remove(0));
    let value: serde_json::Value = serde_json::from_slice(&canonical(&record)).unwrap();
    assert_eq!(value.as_array().unwrap().len(), CANONICAL_FIELDS.len());
}

#[test]
fn strings_are_escaped_like_json() {
    let mut record = minimal();
    let tricky = "quote\" backslash\\ newline\n tab\t nul\u{0} bell\u{7} del\u{7f} é 漢 🦀 \u{1f}";
    record.content = Some(tricky.to_string());
    let value: serde_json::Value = serde_json::from_slice(&canonical(&record)).unwrap();
    assert_eq!(value[CANONICAL_FIELDS_V1.iter().position(|f| *f == "content").unwrap()], tricky);
    let text = String::from_utf8(canonical(&record)).unwrap();
    assert!(text.contains(r#""quote\" backslash\\ newline\n tab\t nul\u0000 bell\u0007 del"#), "{text}");
    assert!(text.contains(r"\u001f"), "{text}");
}

#[test]
fn timestamps_before_1970_round_down_to_the_millisecond() {
    let mut record = minimal();
    record.ts = OffsetDateTime::from_unix_timestamp_nanos(-1_500_000).unwrap();
    let text = String::from_utf8(canonical(&record)).unwrap();
    assert!(text.starts_with("[1,7,-2,"), "{text}");
}

#[test]
fn every_field_but_hash_changes_the_hash() {
    let base = testing::chain("n", 1).remove(0);
    type Edit = fn(&mut AuditRecord);
    let edits: Vec<(&str, Edit)> = vec![
        ("seq", |r| r.seq += 1),
        ("ts", |r| r.ts += time::Duration::milliseconds(1)),
        ("node", |r| r.node.push('x')),
        ("kind", |r| r.kind = AuditKind::Security),
        ("request_id", |r| r.request_id = None),
        ("principal_kind", |r| r.principal_kind = Some(PrincipalKind::Certificate)),
        ("key_id", |r| r.key_id = Some("key_02".into())),
        ("subject", |r| r.subject = Some("alice".into())),
        ("issuer", |r| r.issuer = Some("https://idp.example".into())),
        ("credential_id", |r| r.credential_id = Some("sha256:00".into())),
        ("team", |r| r.team = None),
        ("admin_token_id", |r| r.admin_token_id = Some("tok".into())),
        ("client_ip", |r| r.client_ip = Some("10.0.0.8".into())),
        ("gateway", |r| r.gateway = Some("envoy".into())),
        ("method", |r| r.method = Some("GET".into())),
        ("path", |r| r.path = Some("/v1/models".into())),
        ("model", |r| r.model = Some("other".into())),
        ("upstream", |r| r.upstream = None),
        ("status", |r| r.status = 500),
        ("decision", |r| r.decision = AuditDecision::Error),
        ("reason", |r| r.reason = Some("upstream_error".into())),
        ("target", |r| r.target = Some("key_9".into())),
        ("stream", |r| r.stream = true),
        ("latency_ms", |r| r.latency_ms += 1),
        ("ttfb_ms", |r| r.ttfb_ms = None),
        ("prompt_tokens", |r| r.prompt_tokens = Some(0)),
        ("completion_tokens", |r| r.completion_tokens = None),
        ("usage_estimated", |r| r.usage_estimated = true),
        ("cost_pico", |r| r.cost_pico = Some(1)),
        ("user_agent", |r| r.user_agent = None),
        ("content", |r| r.content = Some("hi".into())),
        ("prev_hash", |r| r.prev_hash = "1".repeat(64)),
    ];
    let covered: Vec<&str> = edits.iter().map(|(name, _)| *name).collect();
    assert_eq!(covered, CANONICAL_FIELDS[1..]);
    for (name, edit) in edits {
        let mut changed = base.clone();
        edit(&mut changed);
        assert_ne!(record_hash(&changed), base.hash, "editing {name} kept the hash");
    }
    let mut rehashed = base.clone();
    rehashed.hash = "f".repeat(64);
    assert_eq!(record_hash(&rehashed), base.hash, "the stored hash is not part of what is hashed");
}

#[test]
fn a_null_and_an_empty_string_hash_differently() {
    let mut none = minimal();
    let mut empty = minimal();
    none.reason = None;
    empty.reason = Some(String::new());
    assert_ne!(record_hash(&none), record_hash(&empty));
}

#[test]
fn sealed_records_link_and_number_from_one() {
    let records = testing::chain("node-a", 3);
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(records[0].prev_hash, GENESIS_HASH);
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(records[2].prev_hash, records[1].hash);
    for record in &records {
        assert_eq!(record.node, "node-a");
        assert_eq!(record.hash, record_hash(record));
        assert_eq!(record.hash.len(), 64);
    }
}

#[test]
fn a_resumed_chain_continues_after_the_last_record() {
    let records = testing::chain("node-a", 2);
    let mut chain = Chain::resume("node-a", Some((2, records[1].hash.clone())));
    let third = chain.seal(testing::event(3));
    assert_eq!(third.seq, 3);
    assert_eq!(third.prev_hash, records[1].hash);
    assert_eq!(testing::chain("node-a", 3)[2], third, "resuming gives the same record as never stopping");
    assert_eq!(chain.next_seq(), 4);
    assert_eq!(chain.last_hash(), third.hash);
}

#[test]
fn seal_keeps_the_event_time_in_utc_milliseconds() {
    let ts = OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_789)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
    let record = Chain::resume("n", None).seal(AuditEvent::new(ts, AuditKind::Request, AuditDecision::Allow, 200));
    assert_eq!(record.ts.unix_timestamp_nanos(), 1_800_000_000_123_000_000);
    assert_eq!(record.ts.offset(), time::UtcOffset::UTC);
}
