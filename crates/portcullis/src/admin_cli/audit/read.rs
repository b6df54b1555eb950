//! `audit query` and `audit tail`: pages of `GET /admin/v1/audit`, followed by their cursor.

use std::collections::VecDeque;
use std::time::Duration;

use portcullis_types::admin::{AuditPage, AuditView, ListResponse};
use serde_json::Value;

use super::render::{TAIL_HEADERS, print_record, tail_line};
use super::{Filters, PAGE, QueryArgs, TailArgs};
use crate::admin_cli::client::{AdminClient, Fetched};
use crate::admin_cli::output::{self, Streaming};

/// How often `tail -f` asks for new records.
const POLL: Duration = Duration::from_secs(1);
/// Windows `tail` widens through, newest first, until it has enough records: reading only the
/// end of a long log, since the API reads oldest first.
const TAIL_WINDOWS: [&str; 6] = ["5m", "1h", "24h", "7d", "30d", "365d"];

/// One page of `GET /admin/v1/audit` with `query`, plus `limit` and `cursor`.
async fn fetch_page(
    client: &AdminClient,
    query: &[(&'static str, String)],
    limit: Option<u64>,
    cursor: Option<&str>,
) -> anyhow::Result<Fetched<AuditPage>> {
    let limit = limit.map(|limit| limit.to_string());
    let mut pairs: Vec<(&str, &str)> = query.iter().map(|(name, value)| (*name, value.as_str())).collect();
    if let Some(limit) = &limit {
        pairs.push(("limit", limit));
    }
    if let Some(cursor) = cursor {
        pairs.push(("cursor", cursor));
    }
    client.get::<AuditPage>(&["audit"], &pairs).await
}

/// The records of a page, each with its JSON as the server sent it.
fn records(fetched: Fetched<AuditPage>) -> (Vec<(AuditView, Value)>, Option<String>) {
    let Fetched { raw, body } = fetched;
    let raws = match raw.get("data") {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    let raws = raws.into_iter().chain(std::iter::repeat(Value::Null));
    (body.data.into_iter().zip(raws).collect(), body.next_cursor)
}

pub(super) async fn query(args: QueryArgs, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let query = args.filters.query();
    if !args.all {
        let Fetched { raw, body } = fetch_page(&client, &query, args.limit, None).await?;
        return output::print_list(global.json, &Fetched { raw, body: ListResponse { data: body.data } });
    }
    let mut all: Vec<(AuditView, Value)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = records(fetch_page(&client, &query, Some(PAGE), cursor.as_deref()).await?);
        let full = page.len() as u64 >= PAGE;
        all.extend(page);
        match next {
            Some(next) if full => cursor = Some(next),
            _ => break,
        }
    }
    let (views, raws): (Vec<AuditView>, Vec<Value>) = all.into_iter().unzip();
    output::print_list(global.json, &Fetched { raw: Value::Array(raws), body: ListResponse { data: views } })
}

/// The last `lines` records (through widening time windows), then, with `-f`, new ones as they
/// arrive. New records are those after the last one seen in the API's order (`ts`, node, seq);
/// a record stored late with an earlier time than that is not shown.
pub(super) async fn tail(args: TailArgs, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let mut out = Streaming::stdout();
    let wanted = usize::try_from(args.lines).unwrap_or(usize::MAX);
    let (latest, mut cursor) = latest(&client, &args.filters, wanted).await?;
    if !global.json {
        out.line(&tail_line(&TAIL_HEADERS.map(str::to_string)))?;
    }
    for (view, raw) in &latest {
        print_record(&mut out, global.json, view, raw)?;
    }
    if !args.follow {
        return out.finish();
    }
    let query = args.filters.query();
    loop {
        if out.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
        loop {
            let (page, next) = records(fetch_page(&client, &query, Some(PAGE), cursor.as_deref()).await?);
            let full = page.len() as u64 >= PAGE;
            for (view, raw) in &page {
                print_record(&mut out, global.json, view, raw)?;
            }
            if next.is_some() {
                cursor = next;
            }
            if !full {
                break;
            }
        }
    }
}

/// The last `wanted` records matching `filters`, oldest first, and the cursor after the newest.
async fn latest(
    client: &AdminClient,
    filters: &Filters,
    wanted: usize,
) -> anyhow::Result<(Vec<(AuditView, Value)>, Option<String>)> {
    // A window the caller chose is the only one; otherwise widen until enough records are found,
    // ending with the whole log.
    let windows: Vec<Option<String>> = match &filters.since {
        Some(since) => vec![Some(since.clone())],
        None => TAIL_WINDOWS.iter().map(|window| Some(window.to_string())).chain([None]).collect(),
    };
    let mut found = (Vec::new(), None);
    for window in windows {
        let query = Filters { since: window, ..filters.clone() }.query();
        let mut last: VecDeque<(AuditView, Value)> = VecDeque::new();
        let mut cursor: Option<String> = None;
        let mut seen = 0;
        loop {
            let (page, next) = records(fetch_page(client, &query, Some(PAGE), cursor.as_deref()).await?);
            let full = page.len() as u64 >= PAGE;
            seen += page.len();
            for record in page {
                last.push_back(record);
                if last.len() > wanted {
                    last.pop_front();
                }
            }
            if next.is_some() {
                cursor = next;
            }
            if !full {
                break;
            }
        }
        found = (last.into_iter().collect(), cursor);
        if seen >= wanted {
            break;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::super::sample_view as view;
    use super::*;

    #[test]
    fn the_server_shapes_read_back() -> anyhow::Result<()> {
        let page: AuditPage = serde_json::from_value(serde_json::json!({
            "data": [serde_json::to_value(view())?],
            "next_cursor": "abc"
        }))?;
        assert_eq!(page.data, [view()]);
        Ok(())
    }

    #[test]
    fn raw_records_are_printed_as_the_server_sent_them() {
        let raw = serde_json::json!({"data": [{"seq": 7, "extra": true}], "next_cursor": null});
        let body = AuditPage { data: vec![view()], next_cursor: None };
        let (records, next) = records(Fetched { raw, body });
        assert_eq!(records[0].1, serde_json::json!({"seq": 7, "extra": true}));
        assert_eq!(next, None);
    }
}
