//! Where a page of the log ends: the store's cursor, and its opaque form in `next_cursor`.

use portcullis_audit::{AuditCursor, AuditRecord};
use time::OffsetDateTime;

use crate::admin::validate;
use crate::error::ApiError;

pub(super) fn cursor_of(record: &AuditRecord) -> AuditCursor {
    AuditCursor { ts: record.ts, node: record.node.clone(), seq: record.seq }
}

/// Opaque to clients: hex of `<ts unix ms>:<node>:<seq>`.
pub(super) fn encode_cursor(cursor: &AuditCursor) -> String {
    let millis = cursor.ts.unix_timestamp_nanos().div_euclid(1_000_000);
    let text = format!("{millis}:{}:{}", cursor.node, cursor.seq);
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

pub(super) fn decode_cursor(text: &str) -> Result<AuditCursor, ApiError> {
    let invalid = || ApiError::bad_request("cursor is not one this API handed out", Some("cursor"));
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(2) || bytes.len() > 2 * (validate::MAX_FILTER_LEN + 48) {
        return Err(invalid());
    }
    let decoded = bytes
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    // The node sits between the first and the last colon, so it may hold colons itself.
    let (millis, rest) = decoded.split_once(':').ok_or_else(invalid)?;
    let (node, seq) = rest.rsplit_once(':').ok_or_else(invalid)?;
    let millis: i128 = millis.parse().map_err(|_| invalid())?;
    let nanos = millis.checked_mul(1_000_000).ok_or_else(invalid)?;
    let ts = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| invalid())?;
    let seq: u64 = seq.parse().map_err(|_| invalid())?;
    Ok(AuditCursor { ts, node: node.to_string(), seq })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::admin::test_support::param_of;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        for node in ["gw-1", "gw:with:colons", "ünïcode", ":"] {
            let cursor = AuditCursor { ts: datetime!(2025-06-10 12:30:00.123 UTC), node: node.into(), seq: 42 };
            let text = encode_cursor(&cursor);
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
            assert_eq!(decode_cursor(&text).unwrap(), cursor);
        }
        let before_epoch = AuditCursor { ts: datetime!(1969-12-31 23:59:59.5 UTC), node: "n".into(), seq: 1 };
        assert_eq!(decode_cursor(&encode_cursor(&before_epoch)).unwrap(), before_epoch);
        let hex = |text: &str| text.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        for bad in [
            String::new(),
            "abc".into(),
            "zz".into(),
            hex("no colons"),
            hex("1:node"),
            hex("x:node:1"),
            hex("1:node:-1"),
            hex(&format!("{}:n:1", i128::MAX)),
            "ab".repeat(1000),
        ] {
            assert_eq!(param_of(decode_cursor(&bad).unwrap_err()), Some("cursor"), "{bad}");
        }
    }
}
