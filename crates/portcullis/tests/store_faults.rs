//! What a store holds never stops a start (issue 13): usage rows at the limit — the figures a
//! model server reporting 2⁶⁴ − 1 tokens left behind, stored as i64::MAX — one of them or many,
//! and damaged rows (negative counts, a key id or an audit hash that is not UTF-8), written into
//! a stopped gateway's store behind its back, as an older build or a hand edit could have.
//!
//! The gateway must start (it seeds its day and month limits from these rows), serve, count the
//! saturated use against quotas, and report saturated numbers — i64::MAX, never an error — on
//! `GET /v1/usage`, `GET /admin/v1/usage` in every grouping and `portcullis usage`. On SQLite
//! and on PostgreSQL alike: without PostgreSQL its test skips loudly (fails with `CI=true`).
#![allow(clippy::expect_used, clippy::panic, reason = "tests: a failed expectation is a failed test")]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{BINARY, admin_json, chat, describe, get, http, send};
use portcullis_testkit::{Gateway, GatewayBuilder, PostgresDatabase, StubUpstream};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// The most a usage count holds, and what every sum of such counts reads as.
const MAX: i64 = i64::MAX;
const MODEL: &str = "m";
const TEAM: &str = "acme";

/// One `usage_hourly` row: hour (unix seconds), key id, team, model, and requests, prompt
/// tokens, completion tokens, cost (pico-units) and estimated requests.
struct UsageRow {
    hour: i64,
    key_id: String,
    team: Option<&'static str>,
    model: &'static str,
    counts: [i64; 5],
}

/// The keys of a scenario: one without limits, one in [`TEAM`] with a day's token quota.
struct Keys {
    free_id: String,
    free: String,
    limited_id: String,
    limited: String,
}

/// A gateway on `store_url` (its own SQLite file when `None`) with the scenario's keys; stopped.
async fn stopped_gateway_with_keys(stub: &StubUpstream, store_url: Option<&str>) -> (Gateway, Keys) {
    let mut builder = GatewayBuilder::new(BINARY)
        .config(&format!("[[models]]\nname = \"{MODEL}\"\nendpoints = [\"{}\"]\n", stub.url()));
    if let Some(url) = store_url {
        builder = builder.store_url(url);
    }
    let mut gateway = builder.start().await;
    gateway.cli_json(&["teams", "create", TEAM]);
    let (free_id, free) = gateway.create_key(&["--name", "free"]);
    let body = json!({"name": "limited", "team": TEAM, "limits": {"tokens_per_day": 1_000_000}});
    let created = send(
        http().post(format!("{}/admin/v1/keys", gateway.admin_url())).bearer_auth(gateway.admin_token()).json(&body),
    )
    .await;
    assert!(matches!(created.status, 200 | 201), "create the limited key: {}", created.text);
    let limited_id = created.body["id"].as_str().expect("a created key has an id").to_string();
    let limited = created.body["key"].as_str().expect("a created key has a secret").to_string();
    let status = gateway.terminate(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|status| status.success()), "the gateway stops cleanly: {status:?}");
    (gateway, Keys { free_id, free, limited_id, limited })
}

/// The rows at the limit: the free key's one answer of the issue (a huge prompt and completion in
/// the current hour), and the limited key's every hour of today plus the month's first hour, in
/// two models, every figure at the limit.
fn rows_at_the_limit(keys: &Keys, now: OffsetDateTime) -> Vec<UsageRow> {
    let hour_of = |at: OffsetDateTime| at.unix_timestamp() - at.unix_timestamp().rem_euclid(3600);
    let today = now.replace_time(time::Time::MIDNIGHT);
    let month = today.replace_day(1).expect("every month has a first day");
    let mut hours: BTreeSet<i64> = (hour_of(today)..=hour_of(now)).step_by(3600).collect();
    hours.insert(hour_of(month));

    let mut rows = vec![UsageRow {
        hour: hour_of(now),
        key_id: keys.free_id.clone(),
        team: None,
        model: MODEL,
        counts: [1, MAX, MAX, MAX, 0],
    }];
    for hour in hours {
        for model in [MODEL, "retired-model"] {
            rows.push(UsageRow { hour, key_id: keys.limited_id.clone(), team: Some(TEAM), model, counts: [MAX; 5] });
        }
    }
    rows
}

/// Restarts the stopped gateway on its doctored store, then checks it serves and reports
/// saturated usage. `repair_log` is part of the warning the store logs for the damaged rows.
async fn starts_serves_and_reports_saturated(gateway: &mut Gateway, keys: &Keys, repair_log: &str) {
    if let Err(error) = gateway.try_restart().await {
        panic!("a store holding usage at the limit stopped the start: {error}");
    }

    // Serves: the key without limits gets an answer; the limited key's day is used up (the
    // saturated use was seeded into the limiter), a refusal, not an error.
    chat(gateway, Some(&keys.free), MODEL).await.assert_ok();
    chat(gateway, Some(&keys.limited), MODEL).await.assert_error(429, "insufficient_quota");

    // `GET /v1/usage`: each key's spend today and this month, saturated.
    let free = get(gateway, &keys.free, "/v1/usage").await;
    free.assert_ok();
    for period in ["today", "month"] {
        let spend = &free.body["spend"][period];
        assert_eq!(spend["tokens"], json!(MAX), "{period}: prompt + completion stop at the limit: {}", free.text);
        let cost = spend["cost"].as_f64().unwrap_or_else(|| panic!("{period}: no cost in {}", free.text));
        assert!((cost - MAX as f64 / 1e12).abs() < 1.0, "{period}: the cost at the limit, in units: {}", free.text);
    }
    let limited = get(gateway, &keys.limited, "/v1/usage").await;
    limited.assert_ok();
    for period in ["today", "month"] {
        let spend = &limited.body["spend"][period];
        assert_eq!(spend["requests"], json!(MAX), "{period}: {}", limited.text);
        assert_eq!(spend["tokens"], json!(MAX), "{period}: {}", limited.text);
    }
    let day = limit(&limited.body, "tokens_per_day");
    assert_eq!(day["remaining"], 0, "{}", limited.text);

    // `GET /admin/v1/usage`: every grouping answers, every figure at most the limit, and the
    // limited key's, its team's and the retired model's at it.
    for group_by in ["hour", "day", "model", "key", "team"] {
        let report = admin_json(gateway, &format!("/admin/v1/usage?since=40d&group_by={group_by}")).await;
        let lines = report["data"].as_array().unwrap_or_else(|| panic!("{group_by}: no data in {report}"));
        assert!(!lines.is_empty(), "{group_by}: {report}");
        for line in lines {
            for figure in ["requests", "prompt_tokens", "completion_tokens", "estimated_requests"] {
                let value = line[figure].as_u64().unwrap_or_else(|| panic!("{group_by}: no {figure} in {line}"));
                assert!(value <= MAX as u64, "{group_by}: {figure} above the limit in {line}");
            }
        }
    }
    let line_of = |lines: &Value, field: &str, value: &str| -> Value {
        let lines = lines["data"].as_array().cloned().unwrap_or_default();
        lines
            .into_iter()
            .find(|line| line[field] == value)
            .unwrap_or_else(|| panic!("no {field} {value} in the report"))
    };
    let by_key = admin_json(gateway, "/admin/v1/usage?since=40d&group_by=key").await;
    let limited_line = line_of(&by_key, "key_id", &keys.limited_id);
    for figure in ["requests", "prompt_tokens", "completion_tokens", "estimated_requests"] {
        assert_eq!(limited_line[figure], json!(MAX), "{figure}: {limited_line}");
    }
    let free_line = line_of(&by_key, "key_id", &keys.free_id);
    assert_eq!(free_line["prompt_tokens"], json!(MAX), "{free_line}");
    let by_team = admin_json(gateway, "/admin/v1/usage?since=40d&group_by=team").await;
    assert_eq!(line_of(&by_team, "team", TEAM)["completion_tokens"], json!(MAX), "{by_team}");
    let by_model = admin_json(gateway, "/admin/v1/usage?since=40d&group_by=model").await;
    assert_eq!(line_of(&by_model, "model", "retired-model")["requests"], json!(MAX), "{by_model}");

    // The CLI's table, totals line included.
    let table = gateway.cli(&["usage", "--since", "40d", "--group-by", "key"]);
    assert!(table.status.success(), "{}", describe(&table));
    assert!(String::from_utf8_lossy(&table.stdout).contains(&MAX.to_string()), "{}", describe(&table));

    // The damaged rows were read as the nearest counts, and said so.
    assert_logged(gateway, repair_log).await;
}

/// Waits (the gateway writes its log from a thread of its own) until the log holds `text`.
async fn assert_logged(gateway: &Gateway, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gateway.log_text().contains(text) {
        assert!(std::time::Instant::now() < deadline, "no {text:?} in the log:\n{}", gateway.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One limit of the key's own scope in a `/v1/usage` answer.
fn limit<'a>(usage: &'a Value, name: &str) -> &'a Value {
    usage["limits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|scope| scope["scope"]["kind"] == "key")
        .flat_map(|scope| scope["limits"].as_array().into_iter().flatten())
        .find(|entry| entry["limit"] == name)
        .unwrap_or_else(|| panic!("no {name} in the key scope of {usage}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_with_usage_at_the_limit_starts_serves_and_reports_it_saturated() {
    let stub = StubUpstream::start().await;
    let (mut gateway, keys) = stopped_gateway_with_keys(&stub, None).await;
    let now = OffsetDateTime::now_utc();
    {
        let db = rusqlite::Connection::open(gateway.db_path()).expect("open the gateway's SQLite store");
        for row in rows_at_the_limit(&keys, now) {
            let [requests, prompt, completion, cost, estimated] = row.counts;
            db.execute(
                "INSERT INTO usage_hourly (hour, key_id, team, model, requests, prompt_tokens, completion_tokens,
                                           cost_pico, estimated_requests)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params![
                    row.hour, row.key_id, row.team, row.model, requests, prompt, completion, cost, estimated
                ],
            )
            .expect("write a usage row");
        }
        // Damaged rows, past the CHECK constraints: negative counts, and a key id that is not UTF-8.
        db.execute_batch(&format!(
            "PRAGMA ignore_check_constraints = ON;
             INSERT INTO usage_hourly VALUES ({hour}, 'key_damaged', NULL, '{MODEL}', -1, {min}, 3, -5, 0);
             INSERT INTO usage_hourly VALUES ({hour}, CAST(x'6BFF' AS TEXT), NULL, '{MODEL}', 1, 1, 1, 1, 0);",
            hour = now.unix_timestamp() - now.unix_timestamp().rem_euclid(3600),
            min = i64::MIN,
        ))
        .expect("write damaged usage rows");
        // And the audit chain's last hash, which the writer continues from at start-up.
        let edited = db
            .execute(
                "UPDATE audit_log SET hash = CAST(x'68FF' AS TEXT)
                 WHERE (node, seq) IN (SELECT node, MAX(seq) FROM audit_log GROUP BY node)",
                [],
            )
            .expect("edit the last audit hash");
        assert!(edited >= 1, "the gateway audited the key creations");
    }
    starts_serves_and_reports_saturated(&mut gateway, &keys, "usage rows hold values that are not counts").await;
    assert_logged(&gateway, "last hash is not UTF-8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_with_usage_at_the_limit_starts_serves_and_reports_it_saturated() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let stub = StubUpstream::start().await;
    let (mut gateway, keys) = stopped_gateway_with_keys(&stub, Some(database.url())).await;
    let (client, connection) =
        tokio_postgres::connect(database.url(), tokio_postgres::NoTls).await.expect("connect to the test database");
    tokio::spawn(connection);
    let now = OffsetDateTime::now_utc();
    for row in rows_at_the_limit(&keys, now) {
        let [requests, prompt, completion, cost, estimated] = row.counts;
        client
            .execute(
                "INSERT INTO usage_hourly (hour, key_id, team, model, requests, prompt_tokens, completion_tokens,
                                           cost_pico, estimated_requests)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[&row.hour, &row.key_id, &row.team, &row.model, &requests, &prompt, &completion, &cost, &estimated],
            )
            .await
            .expect("write a usage row");
    }
    // Damaged rows, once the CHECK constraints are gone: negative counts, down to i64::MIN, whose
    // sum does not even fit a BIGINT.
    client
        .batch_execute(
            "ALTER TABLE usage_hourly DROP CONSTRAINT usage_hourly_requests_check;
             ALTER TABLE usage_hourly DROP CONSTRAINT usage_hourly_prompt_tokens_check;",
        )
        .await
        .expect("drop the CHECK constraints");
    let hour = now.unix_timestamp() - now.unix_timestamp().rem_euclid(3600);
    for (hour, model) in [(hour, MODEL), (hour, "retired-model"), (hour - 3600, MODEL)] {
        client
            .execute(
                "INSERT INTO usage_hourly VALUES ($1, 'key_damaged', NULL, $2, -1, $3, 3, 5, 0)",
                &[&hour, &model, &i64::MIN],
            )
            .await
            .expect("write a damaged usage row");
    }
    starts_serves_and_reports_saturated(&mut gateway, &keys, "usage rows hold negative counts").await;
}
