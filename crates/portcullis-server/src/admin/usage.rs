//! `GET /admin/v1/usage`: what keys spent, from the store's hourly roll-ups.

use axum::Json;
use axum::extract::State;
use portcullis_store::{UsageGrouping, UsageQuery, UsageRow};
use portcullis_types::admin::{ListResponse, Role, UsageView};
use serde::Deserialize;
use time::OffsetDateTime;

use super::AdminState;
use super::auth::AdminCaller;
use super::extract::ApiQuery;
use super::validate;
use super::views::store_error;
use crate::error::ApiError;

/// How far back a report reaches when `since` is not given.
pub const DEFAULT_SINCE: &str = "7d";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    key: Option<String>,
    team: Option<String>,
    model: Option<String>,
    /// A duration back from now (`7d`, `24h`) or an RFC 3339 time.
    since: Option<String>,
    /// An RFC 3339 time; now if absent.
    until: Option<String>,
    /// `day` (default), `hour`, `model`, `key` or `team`.
    group_by: Option<String>,
}

/// Admins and auditors see all usage. A team admin sees its own team's only: the team filter is
/// forced to its team, and asking for another team (or another team's key) finds nothing, the
/// same answer as for a team or key without usage.
pub async fn report(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiQuery(query): ApiQuery<ReportQuery>,
) -> Result<Json<ListResponse<UsageView>>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let Some(usage_query) = usage_query(&caller, query, now)? else {
        return Ok(Json(ListResponse { data: Vec::new() }));
    };
    let rows = state.stores().usage.usage_report(&usage_query).await.map_err(store_error("usage"))?;
    Ok(Json(ListResponse { data: rows.into_iter().map(usage_view).collect() }))
}

/// The store query for a request, or `None` when the caller may see nothing it asked for.
fn usage_query(caller: &AdminCaller, query: ReportQuery, now: OffsetDateTime) -> Result<Option<UsageQuery>, ApiError> {
    let group_by = match query.group_by.as_deref() {
        None => UsageGrouping::Day,
        Some(text) => UsageGrouping::parse(text).ok_or_else(|| {
            ApiError::bad_request("group_by must be one of day, hour, model, key, team", Some("group_by"))
        })?,
    };
    let since = validate::since(query.since.as_deref().unwrap_or(DEFAULT_SINCE), now)?;
    let until = match query.until.as_deref() {
        None => now,
        Some(text) => validate::parse_time(text).ok_or_else(|| {
            ApiError::bad_request("until must be an RFC 3339 time no later than 9999-12-31T23:59:59Z", Some("until"))
        })?,
    };
    if since >= until {
        return Err(ApiError::bad_request("since must be before until", Some("since")));
    }
    let key_id = query.key.as_deref().map(|key| validate::filter(key, "key")).transpose()?;
    let model = query.model.as_deref().map(|model| validate::filter(model, "model")).transpose()?;
    let mut team = query.team.as_deref().map(|team| validate::team_name(team, "team")).transpose()?;
    if caller.role == Role::TeamAdmin {
        match (&caller.team, &team) {
            // Another team's usage is answered as if there were none.
            (Some(own), Some(asked)) if own != asked => return Ok(None),
            (Some(own), _) => team = Some(own.clone()),
            (None, _) => return Ok(None),
        }
    }
    Ok(Some(UsageQuery { key_id, team, model, since, until, group_by }))
}

fn usage_view(row: UsageRow) -> UsageView {
    UsageView {
        bucket: row.bucket,
        key_id: row.key_id,
        team: row.team,
        model: row.model,
        requests: row.requests,
        prompt_tokens: row.prompt_tokens,
        completion_tokens: row.completion_tokens,
        total_tokens: row.prompt_tokens.saturating_add(row.completion_tokens),
        // Display only: the store's sums are exact integers.
        cost: row.cost_pico as f64 / 1e12,
        estimated_requests: row.estimated_requests,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portcullis_store::{Migrator, UsageRecord, UsageStore};
    use portcullis_store_sqlite::SqliteStore;
    use time::macros::datetime;

    use super::*;
    use crate::admin::test_support::{self, admin, caller, param_of};

    const NOW: OffsetDateTime = datetime!(2025-06-10 12:30 UTC);

    fn ask(pairs: &[(&str, &str)]) -> ReportQuery {
        test_support::ask("/admin/v1/usage", pairs)
    }

    #[test]
    fn defaults_are_the_last_seven_days_by_day() {
        let query = usage_query(&admin(), ask(&[]), NOW).unwrap().unwrap();
        assert_eq!(
            query,
            UsageQuery {
                key_id: None,
                team: None,
                model: None,
                since: NOW - time::Duration::days(7),
                until: NOW,
                group_by: UsageGrouping::Day,
            }
        );
    }

    #[test]
    fn since_takes_a_duration_or_a_time_and_until_a_time() {
        let query = usage_query(&admin(), ask(&[("since", "24h"), ("group_by", "hour")]), NOW).unwrap().unwrap();
        assert_eq!((query.since, query.group_by), (NOW - time::Duration::hours(24), UsageGrouping::Hour));
        let fixed = [("since", "2025-06-01T00:00:00Z"), ("until", "2025-06-02T00:00:00+02:00")];
        let query = usage_query(&admin(), ask(&fixed), NOW).unwrap().unwrap();
        assert_eq!(query.since, datetime!(2025-06-01 00:00 UTC));
        assert_eq!(query.until, datetime!(2025-06-01 22:00 UTC));
        // An unencoded `+` arrives as a space.
        let uri: http::Uri = "/?since=30d&until=2025-06-02T00:00:00+02:00".parse().unwrap();
        let raw = axum::extract::Query::<ReportQuery>::try_from_uri(&uri).unwrap().0;
        assert_eq!(usage_query(&admin(), raw, NOW).unwrap().unwrap().until, datetime!(2025-06-01 22:00 UTC));
        for grouping in UsageGrouping::ALL {
            let query = usage_query(&admin(), ask(&[("group_by", grouping.as_str())]), NOW).unwrap().unwrap();
            assert_eq!(query.group_by, grouping);
        }
    }

    #[test]
    fn bad_parameters_are_400s_naming_the_parameter() {
        let bad: [(&[(&str, &str)], &str); 7] = [
            (&[("group_by", "week")], "group_by"),
            (&[("since", "yesterday")], "since"),
            (&[("since", "-1d")], "since"),
            (&[("until", "7d")], "until"),
            (&[("since", "2025-06-11T00:00:00Z")], "since"),
            (&[("team", "a/b")], "team"),
            (&[("key", "")], "key"),
        ];
        for (pairs, param) in bad {
            let error = usage_query(&admin(), ask(pairs), NOW).unwrap_err();
            assert_eq!(param_of(error), Some(param), "{pairs:?}");
        }
    }

    #[test]
    fn a_team_admin_is_confined_to_its_team() {
        let acme = caller(Role::TeamAdmin, Some("acme"));
        let query = usage_query(&acme, ask(&[("key", "key_x")]), NOW).unwrap().unwrap();
        assert_eq!((query.team.as_deref(), query.key_id.as_deref()), (Some("acme"), Some("key_x")));
        let query = usage_query(&acme, ask(&[("team", "acme")]), NOW).unwrap().unwrap();
        assert_eq!(query.team.as_deref(), Some("acme"));
        assert_eq!(usage_query(&acme, ask(&[("team", "globex")]), NOW).unwrap(), None, "nothing, not an error");
        assert_eq!(usage_query(&caller(Role::TeamAdmin, None), ask(&[]), NOW).unwrap(), None);

        // Admins and auditors filter as they ask.
        for role in [Role::Admin, Role::Auditor] {
            let query = usage_query(&caller(role, None), ask(&[("team", "globex")]), NOW).unwrap().unwrap();
            assert_eq!(query.team.as_deref(), Some("globex"));
            let query = usage_query(&caller(role, None), ask(&[]), NOW).unwrap().unwrap();
            assert_eq!(query.team, None);
        }
    }

    #[tokio::test]
    async fn another_teams_key_reports_nothing_to_a_team_admin() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        store.migrate().await.unwrap();
        let used = |key: &str, team: &str| UsageRecord {
            at: NOW - time::Duration::hours(1),
            key_id: key.into(),
            team: Some(team.into()),
            model: "m".into(),
            requests: 1,
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_pico: 2_500_000_000_000,
            estimated_requests: 0,
        };
        store.record_usage(&[used("key_acme", "acme"), used("key_globex", "globex")]).await.unwrap();
        let acme = caller(Role::TeamAdmin, Some("acme"));
        let report = |caller: AdminCaller, pairs: &'static [(&'static str, &'static str)]| {
            let store = store.clone();
            async move {
                let query = usage_query(&caller, ask(pairs), NOW).unwrap().unwrap();
                store.usage_report(&query).await.unwrap().into_iter().map(usage_view).collect::<Vec<_>>()
            }
        };

        assert!(report(acme.clone(), &[("key", "key_globex")]).await.is_empty());
        let own = report(acme, &[("group_by", "key")]).await;
        assert_eq!(own.len(), 1);
        assert_eq!((own[0].key_id.as_deref(), own[0].team.as_deref()), (Some("key_acme"), Some("acme")));
        assert_eq!((own[0].total_tokens, own[0].cost), (7, 2.5));
        assert_eq!(report(admin(), &[("group_by", "key")]).await.len(), 2);
    }

    /// Usage is kept by principal id; a token principal has no key row, and its usage is
    /// reported, filtered and confined to its team as a key's is.
    #[tokio::test]
    async fn a_token_principals_usage_is_reported_like_a_keys() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        store.migrate().await.unwrap();
        let used = |principal: &str, team: &str| UsageRecord {
            at: NOW - time::Duration::hours(1),
            key_id: principal.into(),
            team: Some(team.into()),
            model: "m".into(),
            requests: 1,
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_pico: 1_000_000_000_000,
            estimated_requests: 0,
        };
        let token = "oidc:corp:svc-ingest@example";
        store.record_usage(&[used("key_acme", "acme"), used(token, "acme")]).await.unwrap();
        let acme = caller(Role::TeamAdmin, Some("acme"));
        for who in [admin(), acme] {
            let query = usage_query(&who, ask(&[("group_by", "key")]), NOW).unwrap().unwrap();
            let rows: Vec<_> = store.usage_report(&query).await.unwrap().into_iter().map(usage_view).collect();
            let ids: Vec<_> = rows.iter().map(|row| row.key_id.as_deref()).collect();
            assert_eq!(ids, [Some("key_acme"), Some(token)]);
            let query = usage_query(&who, ask(&[("key", token)]), NOW).unwrap().unwrap();
            let rows = store.usage_report(&query).await.unwrap();
            assert_eq!((rows.len(), rows[0].requests, rows[0].cost_pico), (1, 1, 1_000_000_000_000));
        }
        let query = usage_query(&admin(), ask(&[("team", "acme")]), NOW).unwrap().unwrap();
        assert_eq!(store.usage_report(&query).await.unwrap()[0].requests, 2, "the team's usage counts both");
    }

    /// Through the router: the bootstrap admin sees both teams, a stored team_admin token only
    /// its own, with or without asking for the other team's key.
    #[tokio::test]
    async fn the_route_answers_by_role() {
        use axum::body::Body;
        use portcullis_auth::{SecretKind, SecretToken};
        use portcullis_store::{NewAdminToken, NewTeam};
        use tower::ServiceExt;

        const BOOTSTRAP: &str = "bootstrap-admin-token-for-usage-tests";
        let (state, stores, task) = crate::state::AppState::in_memory_for_tests(Some(BOOTSTRAP)).await;
        let state = state.admin();

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
        let secret = SecretToken::generate(SecretKind::AdminToken);
        let token = NewAdminToken {
            id: "tok_acme".into(),
            name: "acme admin".into(),
            secret_hash: *state.hasher().hash(&secret).as_bytes(),
            display_prefix: secret.display_prefix(),
            role: Role::TeamAdmin,
            team: Some("acme".into()),
            created_by: "test".into(),
            created_at: now,
        };
        stores.tokens.create_token(token).await.unwrap();
        for (key, team) in [("key_acme", "acme"), ("key_globex", "globex")] {
            let record = UsageRecord {
                at: now,
                key_id: key.into(),
                team: Some(team.into()),
                model: "m".into(),
                requests: 1,
                prompt_tokens: 2,
                completion_tokens: 3,
                cost_pico: 1_000_000_000_000,
                estimated_requests: 0,
            };
            stores.usage.record_usage(&[record]).await.unwrap();
        }

        let router = super::super::router(state);
        let get = |token: String, query: &'static str| {
            let router = router.clone();
            async move {
                let request = http::Request::builder()
                    .uri(format!("/admin/v1/usage?{query}"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap();
                let response = router.oneshot(request).await.unwrap();
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
                (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
            }
        };
        let keys = |body: &serde_json::Value| -> Vec<String> {
            body["data"].as_array().unwrap().iter().map(|line| line["key_id"].as_str().unwrap().to_string()).collect()
        };

        let (status, body) = get(BOOTSTRAP.into(), "group_by=key").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(keys(&body), ["key_acme", "key_globex"]);
        assert_eq!(body["data"][0]["total_tokens"], 5);
        assert_eq!(body["data"][0]["cost"], 1.0);

        let team_admin = secret.expose().to_string();
        let (status, body) = get(team_admin.clone(), "group_by=key").await;
        assert_eq!((status, keys(&body)), (200, vec!["key_acme".to_string()]));
        let (status, body) = get(team_admin.clone(), "group_by=key&key=key_globex").await;
        assert_eq!((status, keys(&body)), (200, vec![]), "another team's key: nothing, not an error");
        let (status, body) = get(team_admin.clone(), "team=globex").await;
        assert_eq!((status, body["data"].as_array().unwrap().len()), (200, 0));
        let (status, body) = get(team_admin, "group_by=week").await;
        assert_eq!((status, body["error"]["param"].as_str()), (400, Some("group_by")));

        task.shutdown().await.unwrap();
    }

    #[test]
    fn views_skip_absent_labels() {
        let row = UsageRow {
            model: Some("m".into()),
            requests: 2,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_pico: 1_500_000,
            estimated_requests: 1,
            ..UsageRow::default()
        };
        let json = serde_json::to_value(usage_view(row)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "model": "m", "requests": 2, "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                "cost": 0.0000015, "estimated_requests": 1
            })
        );
        let row = UsageRow { bucket: Some(datetime!(2025-06-10 00:00 UTC)), ..UsageRow::default() };
        let json = serde_json::to_value(usage_view(row)).unwrap();
        assert_eq!(json["bucket"], "2025-06-10T00:00:00Z");
        assert!(json.get("team").is_none());
    }
}
