//! `GET /admin/v1/audit/export`: every matching record, streamed as JSON Lines or CSV while it is
//! read from the store a page at a time.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header;
use portcullis_audit::{AuditCursor, AuditFilter, AuditRecord, AuditStore};
use portcullis_store::StoreError;
use portcullis_types::chain;
use time::OffsetDateTime;

use super::csv::{csv_header, csv_row};
use super::cursor::cursor_of;
use super::params::{AuditParams, audit_filter};
use super::view::audit_view;
use crate::admin::AdminState;
use crate::admin::auth::AdminCaller;
use crate::admin::extract::ApiQuery;
use crate::admin::views::store_error;
use crate::error::ApiError;

/// Records read from the store per step of an export.
const EXPORT_PAGE: usize = 1000;

/// `GET /admin/v1/audit/export`: every matching record, read from the store [`EXPORT_PAGE`] at a
/// time while the body streams. The first page is read before answering, so a store that is down
/// gets a proper 500; a failure later cuts the body short (the client sees an incomplete
/// transfer, never a silently short export).
pub async fn export(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Response, ApiError> {
    let format = match params.format.as_deref() {
        None | Some("jsonl") => Format::Jsonl,
        Some("csv") => Format::Csv,
        Some(_) => return Err(ApiError::bad_request("format must be jsonl or csv", Some("format"))),
    };
    let filter = audit_filter(&caller, &params, OffsetDateTime::now_utc())?;
    let store = Arc::clone(state.audit_store());
    let first = match &filter {
        Some(filter) => store.query_audit(filter, None, EXPORT_PAGE).await.map_err(store_error("audit log"))?,
        None => Vec::new(),
    };
    let mut chunk = Vec::new();
    if format == Format::Csv {
        chunk.extend_from_slice(csv_header().as_bytes());
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
            match self {
                Format::Jsonl => {
                    // Serializing plain strings and numbers into a Vec cannot fail.
                    if serde_json::to_writer(&mut *out, &audit_view(record)).is_ok() {
                        out.push(b'\n');
                    }
                }
                Format::Csv => csv_row(out, &record),
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

#[cfg(test)]
mod tests {
    use portcullis_types::admin::AuditView;

    use super::*;
    use crate::admin::audit::testing::{BOOTSTRAP, chain, fixture};

    #[tokio::test]
    async fn exports_stream_every_record_across_store_pages() {
        let fixture = fixture().await;
        let records = chain("gw-big", 2 * EXPORT_PAGE as u64 + 3);
        fixture.audit.append_audit(&records).await.unwrap();

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
        assert_eq!(rows[0], csv_header().trim_end());
        assert!(rows[1].starts_with("1,2025-06-10T00:00:00.000Z,gw-big,request,,,key_0,,,,acme,"), "{}", rows[1]);

        // A team admin's export holds its team's records only; another team's is just the header.
        let (_, _, body) = fixture.get(&fixture.team_admin, "/admin/v1/audit/export?node=gw-big&format=jsonl").await;
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.lines().count(), EXPORT_PAGE + 2);
        assert!(text.lines().all(|line| line.contains("\"team\":\"acme\"")));
        let uri = "/admin/v1/audit/export?node=gw-big&format=csv&team=globex";
        let (status, _, body) = fixture.get(&fixture.team_admin, uri).await;
        assert_eq!((status, String::from_utf8(body).unwrap()), (200, csv_header()));

        let (status, _, body) = fixture.get(BOOTSTRAP, "/admin/v1/audit/export?format=xml").await;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, body["error"]["param"].as_str()), (400, Some("format")));
    }
}
