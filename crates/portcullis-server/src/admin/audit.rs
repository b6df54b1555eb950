//! `GET /admin/v1/audit` (a page of records), `/audit/export` (every matching record, streamed as
//! JSON Lines or CSV) and `/audit/verify` (every node's hash chain checked).
//!
//! Admins and auditors read the whole log. A team admin reads its own team's records only: the
//! team filter is forced to its team, and asking for another team finds nothing (the same answer
//! as for a team without records). Verification covers chains that span teams, so it needs an
//! admin or auditor token.

use portcullis_types::chain;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header;
use portcullis_store::{AuditCursor, AuditDecision, AuditFilter, AuditKind, AuditRecord, AuditStore, StoreError};
use portcullis_types::admin::{
    AuditChainStatus, AuditNodeVerifyView, AuditPage, AuditProblem, AuditVerifyView, AuditView, Role,
};
use serde::Deserialize;
use time::OffsetDateTime;

use super::auth::{AdminCaller, forbidden};
use super::extract::ApiQuery;
use super::validate;
use super::views::store_error;
use crate::error::ApiError;
use crate::state::AppState;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Records read from the store per step of an export.
const EXPORT_PAGE: usize = 1000;

/// The query string of all three routes; each reads the parameters it knows. Everything is text
/// here so that a bad value is a 400 naming its parameter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// A duration back from now (`24h`) or an RFC 3339 time; inclusive.
    since: Option<String>,
    /// An RFC 3339 time; exclusive.
    until: Option<String>,
    key: Option<String>,
    team: Option<String>,
    model: Option<String>,
    status: Option<String>,
    decision: Option<String>,
    kind: Option<String>,
    request_id: Option<String>,
    node: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    /// Export only: `jsonl` (default) or `csv`.
    format: Option<String>,
}

/// `GET /admin/v1/audit`: one page, oldest first.
pub async fn query(
    State(state): State<AppState>,
    caller: AdminCaller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = limit(params.limit.as_deref())?;
    let cursor = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let Some(filter) = audit_filter(&caller, &params, OffsetDateTime::now_utc())? else {
        return Ok(Json(AuditPage { data: Vec::new(), next_cursor: None }));
    };
    let records =
        state.stores().audit.query_audit(&filter, cursor.as_ref(), limit).await.map_err(store_error("audit log"))?;
    Ok(Json(page(records)))
}

/// `GET /admin/v1/audit/export`: every matching record, read from the store [`EXPORT_PAGE`] at a
/// time while the body streams. The first page is read before answering, so a store that is down
/// gets a proper 500; a failure later cuts the body short (the client sees an incomplete
/// transfer, never a silently short export).
pub async fn export(
    State(state): State<AppState>,
    caller: AdminCaller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Response, ApiError> {
    let format = match params.format.as_deref() {
        None | Some("jsonl") => Format::Jsonl,
        Some("csv") => Format::Csv,
        Some(_) => return Err(ApiError::bad_request("format must be jsonl or csv", Some("format"))),
    };
    let filter = audit_filter(&caller, &params, OffsetDateTime::now_utc())?;
    let store = Arc::clone(&state.stores().audit);
    let first = match &filter {
        Some(filter) => store.query_audit(filter, None, EXPORT_PAGE).await.map_err(store_error("audit log"))?,
        None => Vec::new(),
    };
    let mut chunk = Vec::new();
    if format == Format::Csv {
        chunk.extend_from_slice(CSV_HEADER.as_bytes());
    }
    let export = Export {
        store,
        filter: filter.unwrap_or_default(),
        cursor: first.last().map(cursor_of),
        format,
        done: first.len() < EXPORT_PAGE,
    };
    format.write(&mut chunk, first);
    let rest = futures_util::stream::try_unfold(export, Export::next_chunk);
    let body = futures_util::StreamExt::chain(futures_util::stream::once(async { Ok(Bytes::from(chunk)) }), rest);
    let headers = [
        (header::CONTENT_TYPE, format.content_type()),
        (header::CONTENT_DISPOSITION, format.disposition()),
        (header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, Body::from_stream(body)).into_response())
}

/// `GET /admin/v1/audit/verify`: 200 whether or not every chain verifies (`ok` says which); the
/// CLI turns a break into its exit status.
pub async fn verify(State(state): State<AppState>, caller: AdminCaller) -> Result<Json<AuditVerifyView>, ApiError> {
    let result = verify_chains(&state, &caller).await;
    super::refusal::audited(&caller, "audit.verify", None, result)
}

async fn verify_chains(state: &AppState, caller: &AdminCaller) -> Result<Json<AuditVerifyView>, ApiError> {
    if caller.role == Role::TeamAdmin {
        return Err(forbidden("verification reads every team's records: it needs an admin or auditor token"));
    }
    let reports =
        portcullis_audit::verify_all(state.stores().audit.as_ref()).await.map_err(store_error("audit log"))?;
    let nodes: Vec<AuditNodeVerifyView> = reports.into_iter().map(verify_view).collect();
    Ok(Json(AuditVerifyView { ok: nodes.iter().all(|node| node.status == AuditChainStatus::Ok), nodes }))
}

fn verify_view(report: portcullis_audit::VerifyReport) -> AuditNodeVerifyView {
    use portcullis_audit::{ChainBreak, Tampering, VerifyStatus};
    let status = match report.status {
        VerifyStatus::Ok => AuditChainStatus::Ok,
        VerifyStatus::Break(ChainBreak { seq, problem }) => AuditChainStatus::Break {
            seq,
            problem: match problem {
                Tampering::Edited => AuditProblem::Edited,
                Tampering::Deleted => AuditProblem::Deleted,
                Tampering::Inserted => AuditProblem::Inserted,
                Tampering::Reordered => AuditProblem::Reordered,
            },
        },
    };
    AuditNodeVerifyView {
        node: report.node,
        records_checked: report.records_checked,
        last_seq: report.last_seq,
        from_checkpoint: report.from_checkpoint,
        status,
    }
}

fn page(records: Vec<AuditRecord>) -> AuditPage {
    let next_cursor = records.last().map(|last| encode_cursor(&cursor_of(last)));
    AuditPage { data: records.into_iter().map(audit_view).collect(), next_cursor }
}

/// The store filter for a request, or `None` when the caller may see nothing it asked for.
/// Every parameter is checked first, so a bad one is a 400 whoever asks.
fn audit_filter(
    caller: &AdminCaller,
    params: &AuditParams,
    now: OffsetDateTime,
) -> Result<Option<AuditFilter>, ApiError> {
    let since = params.since.as_deref().map(|text| validate::since(text, now)).transpose()?;
    let until = params
        .until
        .as_deref()
        .map(|text| {
            validate::parse_time(text).ok_or_else(|| {
                ApiError::bad_request(
                    "until must be an RFC 3339 time no later than 9999-12-31T23:59:59Z",
                    Some("until"),
                )
            })
        })
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(ApiError::bad_request("since must be before until", Some("since")));
    }
    let status =
        params
            .status
            .as_deref()
            .map(|text| {
                text.trim().parse::<u16>().ok().filter(|status| (100..=599).contains(status)).ok_or_else(|| {
                    ApiError::bad_request("status must be an HTTP status code (100-599)", Some("status"))
                })
            })
            .transpose()?;
    let decision = params
        .decision
        .as_deref()
        .map(|text| {
            AuditDecision::from_name(text)
                .ok_or_else(|| ApiError::bad_request("decision must be one of allow, deny, error", Some("decision")))
        })
        .transpose()?;
    let kind = params
        .kind
        .as_deref()
        .map(|text| {
            AuditKind::from_name(text)
                .ok_or_else(|| ApiError::bad_request("kind must be one of request, admin, security", Some("kind")))
        })
        .transpose()?;
    let mut team = params.team.as_deref().map(|team| validate::team_name(team, "team")).transpose()?;
    let filter = AuditFilter {
        since,
        until,
        node: params.node.as_deref().map(|node| validate::filter(node, "node")).transpose()?,
        key_id: params.key.as_deref().map(|key| validate::filter(key, "key")).transpose()?,
        team: None,
        model: params.model.as_deref().map(|model| validate::filter(model, "model")).transpose()?,
        status,
        decision,
        kind,
        request_id: params.request_id.as_deref().map(|id| validate::filter(id, "request_id")).transpose()?,
    };
    if caller.role == Role::TeamAdmin {
        match (&caller.team, &team) {
            // Another team's records are answered as if there were none.
            (Some(own), Some(asked)) if own != asked => return Ok(None),
            (Some(own), _) => team = Some(own.clone()),
            (None, _) => return Ok(None),
        }
    }
    Ok(Some(AuditFilter { team, ..filter }))
}

fn limit(text: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_LIMIT);
    };
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| ApiError::bad_request(format!("limit must be 1-{MAX_LIMIT}"), Some("limit")))
}

fn cursor_of(record: &AuditRecord) -> AuditCursor {
    AuditCursor { ts: record.ts, node: record.node.clone(), seq: record.seq }
}

/// Opaque to clients: hex of `<ts unix ms>:<node>:<seq>`.
fn encode_cursor(cursor: &AuditCursor) -> String {
    let millis = cursor.ts.unix_timestamp_nanos().div_euclid(1_000_000);
    let text = format!("{millis}:{}:{}", cursor.node, cursor.seq);
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_cursor(text: &str) -> Result<AuditCursor, ApiError> {
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

pub fn audit_view(record: AuditRecord) -> AuditView {
    AuditView {
        seq: record.seq,
        ts: record.ts,
        node: record.node,
        kind: record.kind.name().to_string(),
        request_id: record.request_id,
        key_id: record.key_id,
        subject: record.subject,
        team: record.team,
        admin_token_id: record.admin_token_id,
        client_ip: record.client_ip,
        method: record.method,
        path: record.path,
        model: record.model,
        upstream: record.upstream,
        status: record.status,
        decision: record.decision.name().to_string(),
        reason: record.reason,
        target: record.target,
        stream: record.stream,
        latency_ms: record.latency_ms,
        ttfb_ms: record.ttfb_ms,
        prompt_tokens: record.prompt_tokens,
        completion_tokens: record.completion_tokens,
        usage_estimated: record.usage_estimated,
        // Display only: `cost_pico` is the exact value.
        cost: record.cost_pico.map(|pico| pico as f64 / 1e12),
        cost_pico: record.cost_pico,
        user_agent: record.user_agent,
        content: record.content,
        prev_hash: record.prev_hash,
        hash: record.hash,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jsonl,
    Csv,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    fn disposition(self) -> &'static str {
        match self {
            Format::Jsonl => "attachment; filename=\"audit.jsonl\"",
            Format::Csv => "attachment; filename=\"audit.csv\"",
        }
    }

    fn write(self, out: &mut Vec<u8>, records: Vec<AuditRecord>) {
        for record in records {
            let view = audit_view(record);
            match self {
                Format::Jsonl => {
                    // Serializing plain strings and numbers into a Vec cannot fail.
                    if serde_json::to_writer(&mut *out, &view).is_ok() {
                        out.push(b'\n');
                    }
                }
                Format::Csv => csv_row(out, &view),
            }
        }
    }
}

/// The rest of an export after its first page.
struct Export {
    store: Arc<dyn AuditStore>,
    filter: AuditFilter,
    cursor: Option<AuditCursor>,
    format: Format,
    done: bool,
}

impl Export {
    async fn next_chunk(mut self) -> Result<Option<(Bytes, Export)>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = match self.store.query_audit(&self.filter, self.cursor.as_ref(), EXPORT_PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(error = %chain(&error), "audit export cut short: store read failed");
                return Err(error);
            }
        };
        self.done = page.len() < EXPORT_PAGE;
        if let Some(last) = page.last() {
            self.cursor = Some(cursor_of(last));
        }
        let mut chunk = Vec::new();
        self.format.write(&mut chunk, page);
        Ok(Some((Bytes::from(chunk), self)))
    }
}

const CSV_HEADER: &str = "seq,ts,node,kind,request_id,key_id,subject,team,admin_token_id,client_ip,method,path,model,\
                          upstream,status,decision,reason,target,stream,latency_ms,ttfb_ms,prompt_tokens,\
                          completion_tokens,usage_estimated,cost,cost_pico,user_agent,content,prev_hash,hash\r\n";

/// One RFC 4180 line, in [`CSV_HEADER`]'s order; absent values are empty cells.
fn csv_row(out: &mut Vec<u8>, view: &AuditView) {
    let number = |value: Option<u64>| value.map(|value| value.to_string()).unwrap_or_default();
    let ts = portcullis_types::millis::format(view.ts);
    let cells: [(&str, bool); 30] = [
        (&view.seq.to_string(), false),
        (&ts, false),
        (&view.node, true),
        (&view.kind, true),
        (view.request_id.as_deref().unwrap_or(""), true),
        (view.key_id.as_deref().unwrap_or(""), true),
        (view.subject.as_deref().unwrap_or(""), true),
        (view.team.as_deref().unwrap_or(""), true),
        (view.admin_token_id.as_deref().unwrap_or(""), true),
        (view.client_ip.as_deref().unwrap_or(""), true),
        (view.method.as_deref().unwrap_or(""), true),
        (view.path.as_deref().unwrap_or(""), true),
        (view.model.as_deref().unwrap_or(""), true),
        (view.upstream.as_deref().unwrap_or(""), true),
        (&view.status.to_string(), false),
        (&view.decision, true),
        (view.reason.as_deref().unwrap_or(""), true),
        (view.target.as_deref().unwrap_or(""), true),
        (if view.stream { "true" } else { "false" }, false),
        (&view.latency_ms.to_string(), false),
        (&number(view.ttfb_ms), false),
        (&number(view.prompt_tokens), false),
        (&number(view.completion_tokens), false),
        (if view.usage_estimated { "true" } else { "false" }, false),
        (&view.cost.map(|cost| cost.to_string()).unwrap_or_default(), false),
        (&number(view.cost_pico), false),
        (view.user_agent.as_deref().unwrap_or(""), true),
        (view.content.as_deref().unwrap_or(""), true),
        (&view.prev_hash, true),
        (&view.hash, true),
    ];
    for (index, (cell, text)) in cells.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        csv_cell(out, cell, *text);
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
    use axum::body::Body;
    use portcullis_audit::{AuditEvent, Chain};
    use portcullis_auth::{SecretKind, SecretToken};
    use portcullis_store::{NewAdminToken, NewTeam, Stores};
    use time::macros::datetime;
    use tower::ServiceExt;

    use super::*;
    use crate::admin::test_support::{self, admin, caller, param_of};

    const NOW: OffsetDateTime = datetime!(2025-06-10 12:30 UTC);

    fn ask(pairs: &[(&str, &str)]) -> AuditParams {
        test_support::ask("/admin/v1/audit", pairs)
    }

    #[test]
    fn no_parameters_read_everything() {
        assert_eq!(audit_filter(&admin(), &ask(&[]), NOW).unwrap(), Some(AuditFilter::default()));
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
    }

    #[test]
    fn every_filter_is_parsed() {
        let pairs = [
            ("since", "24h"),
            ("until", "2025-06-10T14:00:00+02:00"),
            ("key", "key_1"),
            ("team", "acme"),
            ("model", "smollm"),
            ("status", "429"),
            ("decision", "deny"),
            ("kind", "security"),
            ("request_id", "req_1"),
            ("node", "gw:1"),
        ];
        let filter = audit_filter(&admin(), &ask(&pairs), NOW).unwrap().unwrap();
        let expected = AuditFilter {
            since: Some(NOW - time::Duration::hours(24)),
            until: Some(datetime!(2025-06-10 12:00 UTC)),
            node: Some("gw:1".into()),
            key_id: Some("key_1".into()),
            team: Some("acme".into()),
            model: Some("smollm".into()),
            status: Some(429),
            decision: Some(AuditDecision::Deny),
            kind: Some(AuditKind::Security),
            request_id: Some("req_1".into()),
        };
        assert_eq!(filter, expected);
        let since = audit_filter(&admin(), &ask(&[("since", "2025-06-01T00:00:00Z")]), NOW).unwrap().unwrap();
        assert_eq!(since.since, Some(datetime!(2025-06-01 00:00 UTC)));
        for (decision, parsed) in [("allow", AuditDecision::Allow), ("error", AuditDecision::Error)] {
            let filter = audit_filter(&admin(), &ask(&[("decision", decision)]), NOW).unwrap().unwrap();
            assert_eq!(filter.decision, Some(parsed));
        }
        assert_eq!(limit(Some("1000")).unwrap(), 1000);
    }

    #[test]
    fn bad_parameters_are_400s_naming_the_parameter() {
        let bad: [(&[(&str, &str)], &str); 13] = [
            (&[("since", "yesterday")], "since"),
            (&[("since", "-1d")], "since"),
            (&[("until", "24h")], "until"),
            (&[("since", "2025-06-11T00:00:00Z"), ("until", "2025-06-10T00:00:00Z")], "since"),
            (&[("status", "abc")], "status"),
            (&[("status", "99")], "status"),
            (&[("decision", "maybe")], "decision"),
            (&[("kind", "Request")], "kind"),
            (&[("team", "a/b")], "team"),
            (&[("key", "")], "key"),
            (&[("model", "m%1B")], "model"),
            (&[("request_id", &"r".repeat(129))], "request_id"),
            (&[("node", "")], "node"),
        ];
        for (pairs, param) in bad {
            let error = audit_filter(&admin(), &ask(pairs), NOW).unwrap_err();
            assert_eq!(param_of(error), Some(param), "{pairs:?}");
        }
        for bad in ["0", "1001", "-1", "ten"] {
            assert_eq!(param_of(limit(Some(bad)).unwrap_err()), Some("limit"), "{bad}");
        }
        // A team admin gets the same 400s, not an empty answer.
        let acme = caller(Role::TeamAdmin, Some("acme"));
        assert_eq!(param_of(audit_filter(&acme, &ask(&[("status", "x")]), NOW).unwrap_err()), Some("status"));
    }

    #[test]
    fn a_team_admin_is_confined_to_its_team() {
        let acme = caller(Role::TeamAdmin, Some("acme"));
        let filter = audit_filter(&acme, &ask(&[("key", "key_x")]), NOW).unwrap().unwrap();
        assert_eq!((filter.team.as_deref(), filter.key_id.as_deref()), (Some("acme"), Some("key_x")));
        let filter = audit_filter(&acme, &ask(&[("team", "acme")]), NOW).unwrap().unwrap();
        assert_eq!(filter.team.as_deref(), Some("acme"));
        assert_eq!(audit_filter(&acme, &ask(&[("team", "globex")]), NOW).unwrap(), None, "nothing, not an error");
        assert_eq!(audit_filter(&caller(Role::TeamAdmin, None), &ask(&[]), NOW).unwrap(), None);
        for role in [Role::Admin, Role::Auditor] {
            let filter = audit_filter(&caller(role, None), &ask(&[("team", "globex")]), NOW).unwrap().unwrap();
            assert_eq!(filter.team.as_deref(), Some("globex"));
        }
    }

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

    fn record(seq: u64) -> AuditRecord {
        let mut chain = Chain::resume("gw-1", Some((seq - 1, "p".repeat(64))));
        chain.seal(AuditEvent {
            request_id: Some("req_1".into()),
            key_id: Some("key_1".into()),
            team: Some("acme".into()),
            client_ip: Some("10.0.0.1".into()),
            path: Some("/v1/chat/completions".into()),
            model: Some("smollm".into()),
            cost_pico: Some(2_500_000_000_000),
            user_agent: Some("=HYPERLINK(\"http://x\"), \"quoted\"".into()),
            content: Some("line one\nline two, with comma".into()),
            ..AuditEvent::new(datetime!(2025-06-10 12:30:00.123 UTC), AuditKind::Request, AuditDecision::Allow, 200)
        })
    }

    #[test]
    fn views_keep_every_field_with_cost_in_units_too() {
        let json = serde_json::to_value(audit_view(record(7))).unwrap();
        assert_eq!(json["ts"], "2025-06-10T12:30:00.123Z");
        assert_eq!((json["kind"].as_str(), json["decision"].as_str()), (Some("request"), Some("allow")));
        assert_eq!((json["cost"].as_f64(), json["cost_pico"].as_u64()), (Some(2.5), Some(2_500_000_000_000)));
        assert!(json["subject"].is_null(), "absent fields are null, not missing");
        assert_eq!(json.as_object().unwrap().len(), 30, "every record field, plus cost");
    }

    #[test]
    fn csv_rows_match_the_header_and_escape_what_needs_it() {
        let mut out = Vec::new();
        csv_row(&mut out, &audit_view(record(7)));
        let row = String::from_utf8(out).unwrap();
        assert!(row.ends_with("\r\n"));
        assert!(row.contains(",\"'=HYPERLINK(\"\"http://x\"\"), \"\"quoted\"\"\","), "{row}");
        assert!(row.contains(",\"line one\nline two, with comma\","), "{row}");
        assert!(row.starts_with("7,2025-06-10T12:30:00.123Z,gw-1,request,req_1,key_1,,acme,"), "{row}");
        assert!(row.contains(",200,allow,,,false,0,,,,false,2.5,2500000000000,"), "{row}");

        let mut cell = Vec::new();
        csv_cell(&mut cell, "-1", false);
        csv_cell(&mut cell, "plain", true);
        csv_cell(&mut cell, "@SUM(A1)", true);
        assert_eq!(String::from_utf8(cell).unwrap(), "-1plain\"'@SUM(A1)\"", "numbers stay numbers");
        assert_eq!(CSV_HEADER.trim_end().split(',').count(), 30);
    }

    struct Fixture {
        router: axum::Router,
        stores: Stores,
        team_admin: String,
        auditor: String,
    }

    const BOOTSTRAP: &str = "bootstrap-admin-token-for-audit-tests";

    async fn fixture() -> Fixture {
        let (state, stores, _task) = AppState::in_memory_for_tests(Some(BOOTSTRAP)).await;
        let now = OffsetDateTime::now_utc();
        let team = NewTeam {
            name: "acme".into(),
            tier: None,
            limits: Default::default(),
            metadata: serde_json::json!({}),
            capture_content: false,
            created_at: now,
        };
        stores.teams.create_team(team).await.unwrap();
        let token = |id: &str, role: Role, team: Option<&str>| {
            let secret = SecretToken::generate(SecretKind::AdminToken);
            let token = NewAdminToken {
                id: id.into(),
                name: id.into(),
                secret_hash: *state.hasher().hash(&secret).as_bytes(),
                display_prefix: secret.display_prefix(),
                role,
                team: team.map(Into::into),
                created_by: "test".into(),
                created_at: now,
            };
            (token, secret.expose().to_string())
        };
        let (acme, team_admin) = token("tok_acme", Role::TeamAdmin, Some("acme"));
        let (audit, auditor) = token("tok_auditor", Role::Auditor, None);
        stores.tokens.create_token(acme).await.unwrap();
        stores.tokens.create_token(audit).await.unwrap();
        Fixture { router: super::super::router(state), stores, team_admin, auditor }
    }

    impl Fixture {
        async fn get(&self, token: &str, uri: &str) -> (u16, http::HeaderMap, Vec<u8>) {
            let request = http::Request::builder()
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let response = self.router.clone().oneshot(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
            (parts.status.as_u16(), parts.headers, body.to_vec())
        }

        async fn json(&self, token: &str, uri: &str) -> (u16, serde_json::Value) {
            let (status, _, body) = self.get(token, uri).await;
            (status, serde_json::from_slice(&body).unwrap())
        }
    }

    /// `count` sealed records of `node`, alternating between teams acme and globex, one second apart.
    fn chain(node: &str, count: u64) -> Vec<AuditRecord> {
        let mut chain = Chain::resume(node, None);
        (0..count)
            .map(|i| {
                chain.seal(AuditEvent {
                    team: Some(if i % 2 == 0 { "acme" } else { "globex" }.into()),
                    key_id: Some(format!("key_{i}")),
                    ..AuditEvent::new(
                        datetime!(2025-06-10 00:00 UTC) + time::Duration::seconds(i as i64),
                        AuditKind::Request,
                        AuditDecision::Allow,
                        200,
                    )
                })
            })
            .collect()
    }

    fn keys(body: &serde_json::Value) -> Vec<String> {
        body["data"].as_array().unwrap().iter().map(|record| record["key_id"].as_str().unwrap().to_string()).collect()
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_and_team_admins_see_their_team() {
        let fixture = fixture().await;
        fixture.stores.audit.append_audit(&chain("gw-a", 5)).await.unwrap();

        let (status, first) = fixture.json(BOOTSTRAP, "/admin/v1/audit?node=gw-a&limit=2").await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(keys(&first), ["key_0", "key_1"]);
        let mut seen = keys(&first);
        let mut cursor = first["next_cursor"].as_str().unwrap().to_string();
        loop {
            let (status, page) =
                fixture.json(BOOTSTRAP, &format!("/admin/v1/audit?node=gw-a&limit=2&cursor={cursor}")).await;
            assert_eq!(status, 200, "{page}");
            seen.extend(keys(&page));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = next.to_string(),
                None => break,
            }
        }
        assert_eq!(seen, ["key_0", "key_1", "key_2", "key_3", "key_4"]);
        let (_, everything) = fixture.json(BOOTSTRAP, "/admin/v1/audit?node=gw-a").await;
        assert_eq!(everything["data"][4]["seq"], 5);
        assert_eq!(everything["data"][4]["ts"], "2025-06-10T00:00:04.000Z");

        let (status, own) = fixture.json(&fixture.team_admin, "/admin/v1/audit?node=gw-a").await;
        assert_eq!((status, keys(&own)), (200, vec!["key_0".into(), "key_2".into(), "key_4".into()]));
        let (status, other) = fixture.json(&fixture.team_admin, "/admin/v1/audit?node=gw-a&team=globex").await;
        assert_eq!((status, other), (200, serde_json::json!({"data": [], "next_cursor": null})));
        let (status, auditor) = fixture.json(&fixture.auditor, "/admin/v1/audit?node=gw-a&team=globex").await;
        assert_eq!((status, keys(&auditor)), (200, vec!["key_1".into(), "key_3".into()]));

        let (status, bad) = fixture.json(BOOTSTRAP, "/admin/v1/audit?cursor=nonsense").await;
        assert_eq!((status, bad["error"]["param"].as_str()), (400, Some("cursor")));
        let (status, bad) = fixture.json(&fixture.team_admin, "/admin/v1/audit?limit=5000").await;
        assert_eq!((status, bad["error"]["param"].as_str()), (400, Some("limit")));
    }

    #[tokio::test]
    async fn exports_stream_every_record_across_store_pages() {
        let fixture = fixture().await;
        let records = chain("gw-big", 2 * EXPORT_PAGE as u64 + 3);
        fixture.stores.audit.append_audit(&records).await.unwrap();

        let (status, headers, body) = fixture.get(BOOTSTRAP, "/admin/v1/audit/export?node=gw-big").await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/x-ndjson");
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<AuditView> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        let expected: Vec<AuditView> = records.iter().cloned().map(audit_view).collect();
        assert_eq!(lines.len(), expected.len());
        assert!(lines == expected, "every record once, in order, exactly");

        let (status, headers, body) = fixture.get(BOOTSTRAP, "/admin/v1/audit/export?format=csv&node=gw-big").await;
        assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "text/csv; charset=utf-8"));
        let text = String::from_utf8(body).unwrap();
        let rows: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(rows.len(), records.len() + 1);
        assert_eq!(rows[0], CSV_HEADER.trim_end());
        assert!(rows[1].starts_with("1,2025-06-10T00:00:00.000Z,gw-big,request,,key_0,,acme,"), "{}", rows[1]);

        // A team admin's export holds its team's records only; another team's is just the header.
        let (_, _, body) = fixture.get(&fixture.team_admin, "/admin/v1/audit/export?node=gw-big&format=jsonl").await;
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.lines().count(), EXPORT_PAGE + 2);
        assert!(text.lines().all(|line| line.contains("\"team\":\"acme\"")));
        let uri = "/admin/v1/audit/export?node=gw-big&format=csv&team=globex";
        let (status, _, body) = fixture.get(&fixture.team_admin, uri).await;
        assert_eq!((status, String::from_utf8(body).unwrap()), (200, CSV_HEADER.to_string()));

        let (status, _, body) = fixture.get(BOOTSTRAP, "/admin/v1/audit/export?format=xml").await;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, body["error"]["param"].as_str()), (400, Some("format")));
    }

    #[tokio::test]
    async fn verify_reports_each_chain_and_is_closed_to_team_admins() {
        let fixture = fixture().await;
        fixture.stores.audit.append_audit(&chain("gw-good", 4)).await.unwrap();
        let mut tampered = chain("gw-bad", 4);
        tampered[2].status = 500;
        fixture.stores.audit.append_audit(&tampered).await.unwrap();

        for token in [BOOTSTRAP, fixture.auditor.as_str()] {
            let (status, body) = fixture.json(token, "/admin/v1/audit/verify").await;
            assert_eq!((status, &body["ok"]), (200, &serde_json::json!(false)), "{body}");
            let nodes = body["nodes"].as_array().unwrap();
            let node = |name: &str| nodes.iter().find(|node| node["node"] == name).unwrap().clone();
            assert_eq!(
                node("gw-good"),
                serde_json::json!({"node": "gw-good", "records_checked": 4, "last_seq": 4,
                                   "from_checkpoint": null, "status": "ok"})
            );
            assert_eq!(
                node("gw-bad"),
                serde_json::json!({"node": "gw-bad", "records_checked": 2, "last_seq": 2, "from_checkpoint": null,
                                   "status": {"break": {"seq": 3, "problem": "edited"}}})
            );
        }
        let (status, body) = fixture.json(&fixture.team_admin, "/admin/v1/audit/verify").await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    }
}
