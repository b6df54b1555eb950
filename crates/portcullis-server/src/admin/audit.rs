//! `GET /admin/v1/audit` (a page of records), `/audit/export` (every matching record, streamed as
//! JSON Lines or CSV) and `/audit/verify` (every node's hash chain checked).
//!
//! Admins and auditors read the whole log. A team admin reads its own team's records only: the
//! team filter is forced to its team, and asking for another team finds nothing (the same answer
//! as for a team without records). Verification covers chains that span teams, so it needs an
//! admin or auditor token.
//!
//! [`params`] checks the query string, [`cursor`] pages, [`view`] shows a record, [`csv`] and
//! [`export`] stream it out, [`verify`] checks the chains.

mod csv;
mod cursor;
mod export;
mod params;
#[cfg(test)]
mod testing;
mod verify;
mod view;

use axum::Json;
use axum::extract::State;
use portcullis_types::admin::AuditPage;
use time::OffsetDateTime;

pub use export::export;
pub use verify::verify;

use self::cursor::decode_cursor;
use self::params::{AuditParams, audit_filter, limit};
use self::view::page;
use super::auth::AdminCaller;
use super::extract::ApiQuery;
use super::views::store_error;
use crate::admin::AdminState;
use crate::error::ApiError;

/// `GET /admin/v1/audit`: one page, oldest first.
pub async fn query(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = limit(params.limit.as_deref())?;
    let cursor = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let Some(filter) = audit_filter(&caller, &params, OffsetDateTime::now_utc())? else {
        return Ok(Json(AuditPage { data: Vec::new(), next_cursor: None }));
    };
    let records =
        state.audit_store().query_audit(&filter, cursor.as_ref(), limit).await.map_err(store_error("audit log"))?;
    Ok(Json(page(records)))
}

#[cfg(test)]
mod tests {
    use self::testing::{BOOTSTRAP, chain, fixture};
    use super::*;

    fn keys(body: &serde_json::Value) -> Vec<String> {
        body["data"].as_array().unwrap().iter().map(|record| record["key_id"].as_str().unwrap().to_string()).collect()
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_and_team_admins_see_their_team() {
        let fixture = fixture().await;
        fixture.audit.append_audit(&chain("gw-a", 5)).await.unwrap();

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
}
