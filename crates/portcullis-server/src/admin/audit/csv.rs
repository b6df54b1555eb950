//! The CSV export: a header naming every field of the record's table (and `cost`), then one
//! RFC 4180 row per record.

use portcullis_audit::AuditRecord;
use portcullis_audit::fields::{Value, from_unix_millis};

use super::view::cost_units;

/// The one column that is no field of the record: the cost in currency units, shown right before
/// the exact `cost_pico` it is derived from.
const COST: &str = "cost";
const COST_BEFORE: &str = "cost_pico";

/// The column names, in row order, ending in CRLF.
pub(super) fn csv_header() -> String {
    let mut names: Vec<&str> = Vec::with_capacity(AuditRecord::FIELDS.len() + 1);
    for field in AuditRecord::FIELDS {
        if field.name == COST_BEFORE {
            names.push(COST);
        }
        names.push(field.name);
    }
    names.join(",") + "\r\n"
}

/// One RFC 4180 line, in [`csv_header`]'s order; absent values are empty cells.
pub(super) fn csv_row(out: &mut Vec<u8>, record: &AuditRecord) {
    for (index, (field, value)) in AuditRecord::FIELDS.iter().zip(record.values()).enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if field.name == COST_BEFORE {
            let cost = record.cost_pico.map(|pico| cost_units(pico).to_string()).unwrap_or_default();
            csv_cell(out, &cost, false);
            out.push(b',');
        }
        match value {
            Value::Count(count) => csv_cell(out, &count.map(|count| count.to_string()).unwrap_or_default(), false),
            Value::Status(status) => csv_cell(out, &status.to_string(), false),
            Value::Millis(millis) => {
                let time = from_unix_millis(millis).map(portcullis_types::millis::format).unwrap_or_default();
                csv_cell(out, &time, false);
            }
            Value::Text(text) => csv_cell(out, text.unwrap_or(""), true),
            Value::Flag(flag) => csv_cell(out, if flag { "true" } else { "false" }, false),
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Quotes a cell holding a comma, quote, CR or LF, doubling its quotes. A text cell that a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a leading `'`:
/// user agents and paths come from clients. JSON Lines keeps every value exactly.
fn csv_cell(out: &mut Vec<u8>, cell: &str, text: bool) {
    let formula = text && cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || cell.contains([',', '"', '\r', '\n']);
    if quote {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    for byte in cell.bytes() {
        if byte == b'"' {
            out.push(b'"');
        }
        out.push(byte);
    }
    if quote {
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::audit::testing::record;

    #[test]
    fn the_header_names_every_field_with_the_cost_before_cost_pico() {
        assert_eq!(
            csv_header(),
            "seq,ts,node,kind,request_id,principal_kind,key_id,subject,issuer,credential_id,team,admin_token_id,client_ip,gateway,method,path,model,upstream,\
             status,decision,reason,target,stream,latency_ms,ttfb_ms,prompt_tokens,completion_tokens,\
             usage_estimated,cost,cost_pico,user_agent,content,prev_hash,hash\r\n"
        );
    }

    #[test]
    fn csv_rows_match_the_header_and_escape_what_needs_it() {
        let mut out = Vec::new();
        csv_row(&mut out, &record(7));
        let row = String::from_utf8(out).unwrap();
        assert!(row.ends_with("\r\n"));
        assert!(row.contains(",\"'=HYPERLINK(\"\"http://x\"\"), \"\"quoted\"\"\","), "{row}");
        assert!(row.contains(",\"line one\nline two, with comma\","), "{row}");
        assert!(row.starts_with("7,2025-06-10T12:30:00.123Z,gw-1,request,req_1,key,key_1,,,,acme,"), "{row}");
        assert!(row.contains(",200,allow,,,false,0,,,,false,2.5,2500000000000,"), "{row}");
        let mut quoted = false;
        let separators = row.chars().filter(|&c| {
            quoted ^= c == '"';
            c == ',' && !quoted
        });
        assert_eq!(separators.count(), csv_header().matches(',').count(), "one cell per column");

        let mut token_caller = record(8);
        token_caller.principal_kind = Some(portcullis_audit::PrincipalKind::Token);
        token_caller.key_id = None;
        token_caller.subject = Some("svc-ingest".into());
        token_caller.issuer = Some("https://idp.example".into());
        token_caller.credential_id = Some("sha256:0a1b".into());
        let mut out = Vec::new();
        csv_row(&mut out, &token_caller);
        let row = String::from_utf8(out).unwrap();
        assert!(
            row.starts_with(
                "8,2025-06-10T12:30:00.123Z,gw-1,request,req_1,token,,svc-ingest,https://idp.example,sha256:0a1b,acme,"
            ),
            "{row}"
        );

        let mut decision = record(9);
        decision.kind = portcullis_audit::AuditKind::Authz;
        decision.gateway = Some("nginx".into());
        let mut out = Vec::new();
        csv_row(&mut out, &decision);
        let row = String::from_utf8(out).unwrap();
        assert!(
            row.starts_with("9,2025-06-10T12:30:00.123Z,gw-1,authz,req_1,key,key_1,,,,acme,,10.0.0.1,nginx,,"),
            "{row}"
        );

        let mut cell = Vec::new();
        csv_cell(&mut cell, "-1", false);
        csv_cell(&mut cell, "plain", true);
        csv_cell(&mut cell, "@SUM(A1)", true);
        assert_eq!(String::from_utf8(cell).unwrap(), "-1plain\"'@SUM(A1)\"", "numbers stay numbers");
    }
}
