//! The admin API against hostile or careless callers, through the real binary (issue 12):
//! a `team_admin` cannot widen its plan or read another team's objects, absurd times and numbers
//! are 400s naming their parameter (never a panicked worker), invisible and format characters are
//! refused in display strings, money and rates beyond what the limiters hold exactly are refused
//! instead of clamped, and a "No such …" answer names the thing that is missing.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::{BINARY, Reply, chat, cli_as, describe, http, models_config, send, str_field};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

/// How long usage roll-ups and audit records may take to reach the store.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// Two tiers; `free` (the default tier) has no `tokens_per_minute` and no `max_concurrent`.
const TIERS: &str = "[tiers.free]\nrequests_per_minute = 60\ntokens_per_day = 100000\nbudget_per_day = 5.0\n\n\
                     [tiers.pro]\nrequests_per_minute = 600\ntokens_per_day = 1000000\nbudget_per_day = 50.0\n";

async fn start_with(config: &str) -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY).config(config).config(&models_config(&stub, &["a"])).start().await;
    (stub, gateway)
}

/// One admin API call with `token`; `body` is sent as JSON when it is not `Null`.
async fn admin(gateway: &Gateway, token: &str, method: &str, path: &str, body: Value) -> Reply {
    let url = format!("{}/admin/v1{path}", gateway.admin_url());
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = http().request(method, url).bearer_auth(token);
    if !body.is_null() {
        request = request.json(&body);
    }
    send(request).await
}

/// A `team_admin` token for `team` (created by the bootstrap admin): `(id, token)`.
async fn team_admin(gateway: &Gateway, team: &str) -> (String, String) {
    let body = json!({"name": format!("{team}-admin"), "role": "team_admin", "team": team});
    let reply = admin(gateway, gateway.admin_token(), "POST", "/tokens", body).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    (str_field(&reply.body, "id").to_string(), str_field(&reply.body, "token").to_string())
}

#[track_caller]
fn assert_status(reply: &Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
}

/// A 400 `invalid_request` whose `param` is `param`.
#[track_caller]
fn assert_bad_param(reply: &Reply, param: &str, what: &str) {
    reply.assert_error(400, "invalid_request");
    assert_eq!(reply.body["error"]["param"].as_str(), Some(param), "{what}: {}", reply.text);
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {}", reply.text))
        .iter()
        .map(|item| item["id"].as_str().or(item["key_id"].as_str()).unwrap_or("<no id>").to_string())
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Item 10k: money and rates are refused, not clamped, beyond what the limiters hold exactly
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_beyond_the_stated_maximum_are_refused_by_the_admin_api() {
    let (_stub, gateway) = start_with("").await;
    let root = gateway.admin_token().to_string();
    assert_status(&admin(&gateway, &root, "POST", "/teams", json!({"name": "acme"})).await, 201, "team");
    let (id, _) = gateway.create_key(&[]);

    for (limits, maximum) in [
        (json!({"budget_per_day": 18_500_000.0}), "9223372"),
        (json!({"budget_per_month": 9_223_373}), "9223372"),
        (json!({"budget_per_day": 1e19}), "9223372"),
        (json!({"requests_per_minute": 67_108_865u64}), "67108864"),
        (json!({"tokens_per_minute": 75_059_993_790u64}), "75059993789"),
        (json!({"tokens_per_day": 9_223_372_036_854_775_808u64}), "9223372036854775807"),
        (json!({"tokens_per_month": u64::MAX}), "9223372036854775807"),
    ] {
        for (method, path, body) in [
            ("POST", "/keys".to_string(), json!({"name": "k", "limits": limits})),
            ("PATCH", format!("/keys/{id}"), json!({"limits": limits})),
            ("POST", "/teams".to_string(), json!({"name": "t", "limits": limits})),
            ("PATCH", "/teams/acme".to_string(), json!({"limits": limits})),
        ] {
            let reply = admin(&gateway, &root, method, &path, body.clone()).await;
            assert_bad_param(&reply, "limits", &format!("{method} {path} {body}"));
            assert!(reply.message().contains(maximum), "the message states the maximum: {}", reply.text);
        }
    }
    // The maxima themselves are accepted and shown as given.
    let top = json!({"budget_per_day": 9_223_372.0, "requests_per_minute": 67_108_864u64,
                     "tokens_per_minute": 75_059_993_789u64, "tokens_per_month": 9_223_372_036_854_775_807u64});
    let created = admin(&gateway, &root, "POST", "/keys", json!({"name": "top", "limits": top})).await;
    assert_status(&created, 201, "the maxima");
    assert_eq!(created.body["limits"], top, "{}", created.text);
}

#[test]
fn config_limits_beyond_the_stated_maximum_name_their_path() {
    let dir = tempfile::tempdir().expect("a temp dir");
    for (toml, path, maximum) in [
        ("[tiers.free]\nbudget_per_day = 18500000.0\n", "tiers.free.budget_per_day", "9223372"),
        ("[tiers.free]\nbudget_per_month = 1e300\n", "tiers.free.budget_per_month", "9223372"),
        ("[limits.global]\nbudget_per_month = 2e7\n", "limits.global.budget_per_month", "9223372"),
        ("[limits.global]\nbudget_per_day = -1.0\n", "limits.global.budget_per_day", "9223372"),
        ("[tiers.free]\nrequests_per_minute = 100000000\n", "tiers.free.requests_per_minute", "67108864"),
        ("[limits.global]\ntokens_per_minute = 100000000000\n", "limits.global.tokens_per_minute", "75059993789"),
    ] {
        let file = dir.path().join("portcullis.toml");
        std::fs::write(&file, toml).expect("write the config");
        let output = std::process::Command::new(BINARY)
            .args(["config", "check", "--config"])
            .arg(&file)
            .output()
            .expect("run config check");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{toml}: {}", describe(&output));
        assert!(stderr.contains(path) && stderr.contains(maximum), "{toml}: {}", describe(&output));
    }
}

// ------------------------------------------------------------------------------------------------
// Item 8: admin input that used to panic
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_times_and_numbers_are_400s_naming_the_parameter_and_the_gateway_keeps_answering() {
    let (_stub, gateway) = start_with("").await;
    let root = gateway.admin_token().to_string();
    let (id, key) = gateway.create_key(&[]);
    // Past year 9999 once in UTC: what the `time` crate, and so every store, can hold.
    let beyond = "9999-12-31T23:00:00-23:00";
    let beyond_later = "9999-12-31T23:30:00-23:00";
    let cursor: String = "99999999999999999999:n:1".bytes().map(|b| format!("{b:02x}")).collect();

    let cases: Vec<(&str, String, Value, &str)> = vec![
        ("POST", "/keys".into(), json!({"name": "x", "expires_in": "3000000d"}), "expires_in"),
        ("POST", "/keys".into(), json!({"name": "x", "expires_in": "18446744073709551615ms"}), "expires_in"),
        ("POST", "/keys".into(), json!({"name": "x", "expires_at": beyond}), "expires_at"),
        ("PATCH", format!("/keys/{id}"), json!({"expires_in": "3000000d"}), "expires_in"),
        ("PATCH", format!("/keys/{id}"), json!({"expires_at": beyond}), "expires_at"),
        ("POST", format!("/keys/{id}/rotate"), json!({"grace": "3000000d"}), "grace"),
        ("POST", format!("/keys/{id}/rotate"), json!({"grace": "18446744073709551615ms"}), "grace"),
        ("GET", "/usage?since=18446744073709551615ms".into(), Value::Null, "since"),
        ("GET", format!("/usage?since={beyond}&until={beyond_later}"), Value::Null, "since"),
        ("GET", format!("/usage?since=2025-01-01T00:00:00Z&until={beyond}"), Value::Null, "until"),
        ("GET", format!("/audit?since={beyond}"), Value::Null, "since"),
        ("GET", format!("/audit?until={beyond}"), Value::Null, "until"),
        ("GET", format!("/audit/export?since={beyond}"), Value::Null, "since"),
        ("GET", "/audit?since=106751991167d".into(), Value::Null, "since"),
        ("GET", format!("/audit?cursor={cursor}"), Value::Null, "cursor"),
        ("GET", "/audit?limit=99999999999999999999999".into(), Value::Null, "limit"),
        ("POST", "/keys".into(), json!({"name": "x", "limits": {"budget_per_day": 1e300}}), "limits"),
        ("POST", "/keys".into(), json!({"name": "x", "limits": {"requests_per_minute": 1e20}}), "limits"),
        ("POST", "/keys".into(), json!({"name": "x", "limits": {"tokens_per_day": -1}}), "limits"),
        ("POST", "/teams".into(), json!({"name": "t", "limits": {"budget_per_month": 1e20}}), "limits"),
    ];
    for (method, path, body, param) in &cases {
        let reply = admin(&gateway, &root, method, path, body.clone()).await;
        assert_bad_param(&reply, param, &format!("{method} {path} {body}"));
        let health = send(http().get(format!("{}/healthz", gateway.admin_url()))).await;
        assert_eq!(health.status, 200, "the gateway answers after {method} {path}");
    }

    // Far back is fine: year -6188 is within range.
    assert_status(&admin(&gateway, &root, "GET", "/usage?since=3000000d", Value::Null).await, 200, "far back");
    // The farthest expiry the stores hold is fine, and the key stays readable.
    let far =
        admin(&gateway, &root, "POST", "/keys", json!({"name": "far", "expires_at": "9999-12-31T23:59:59Z"})).await;
    assert_status(&far, 201, "the last second of year 9999");
    assert_status(&admin(&gateway, &root, "GET", "/keys", Value::Null).await, 200, "the list still reads");
    chat(&gateway, Some(&key), "a").await.assert_ok();
    assert!(!gateway.log_text().contains("panicked"), "a worker panicked:\n{}", gateway.log_tail(40));
}

// ------------------------------------------------------------------------------------------------
// Item 10g: invisible and format characters in display strings
// ------------------------------------------------------------------------------------------------

/// Right-to-left override, isolates, marks, zero-width and tag characters, the BOM, a soft
/// hyphen, the line separator and a C0 control.
const HIDDEN: [char; 14] = [
    '\u{202E}',
    '\u{202A}',
    '\u{2066}',
    '\u{2069}',
    '\u{200F}',
    '\u{061C}',
    '\u{200B}',
    '\u{200D}',
    '\u{2060}',
    '\u{FEFF}',
    '\u{00AD}',
    '\u{E0041}',
    '\u{2028}',
    '\u{0007}',
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_and_format_characters_are_refused_in_display_strings() {
    // No tiers configured: then any tier name is accepted, so its text must be checked too.
    let (_stub, gateway) = start_with("").await;
    let root = gateway.admin_token().to_string();
    let (id, _) = gateway.create_key(&[]);

    for hidden in HIDDEN {
        let text = format!("adm{hidden}in");
        let cases: Vec<(&str, String, Value, &str)> = vec![
            ("POST", "/keys".into(), json!({"name": text}), "name"),
            ("PATCH", format!("/keys/{id}"), json!({"name": text}), "name"),
            ("POST", "/tokens".into(), json!({"name": text, "role": "auditor"}), "name"),
            ("POST", "/teams".into(), json!({"name": text}), "name"),
            ("POST", "/keys".into(), json!({"name": "k", "team": text}), "team"),
            ("POST", "/keys".into(), json!({"name": "k", "tier": text}), "tier"),
            ("POST", "/keys".into(), json!({"name": "k", "models": [text]}), "models"),
            ("POST", "/keys".into(), json!({"name": "k", "metadata": {"owner": text}}), "metadata"),
            ("POST", "/keys".into(), json!({"name": "k", "metadata": {text.clone(): "x"}}), "metadata"),
            ("POST", "/keys".into(), json!({"name": "k", "metadata": {"a": [{"b": text}]}}), "metadata"),
            ("PATCH", format!("/keys/{id}"), json!({"metadata": {"owner": text}}), "metadata"),
            ("POST", "/teams".into(), json!({"name": "t", "metadata": {"owner": text}}), "metadata"),
        ];
        for (method, path, body, param) in cases {
            let reply = admin(&gateway, &root, method, &path, body.clone()).await;
            assert_bad_param(&reply, param, &format!("U+{:04X} in {method} {path} {body}", hidden as u32));
        }
        let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
        for (route, param) in
            [("usage", "model"), ("usage", "key"), ("audit", "key"), ("audit", "node"), ("audit", "request_id")]
        {
            let reply = admin(&gateway, &root, "GET", &format!("/{route}?{param}={encoded}"), Value::Null).await;
            assert_bad_param(&reply, param, &format!("U+{:04X} in /{route}?{param}", hidden as u32));
        }
    }

    // Through the CLI too, and ordinary non-ASCII text is still welcome.
    let output = gateway.cli(&["keys", "create", "--name", "evil\u{202E}gnp.exe"]);
    assert!(
        !output.status.success() && String::from_utf8_lossy(&output.stderr).contains("400"),
        "{}",
        describe(&output)
    );
    let fine =
        admin(&gateway, &root, "POST", "/keys", json!({"name": "café ☕ 東京", "metadata": {"owner": "Zoë"}})).await;
    assert_status(&fine, 201, "ordinary Unicode");
}

// ------------------------------------------------------------------------------------------------
// Item 3: a team_admin cannot escape its plan
// ------------------------------------------------------------------------------------------------

/// docs/admin-api.md "What a team_admin may change": per-key limits at most the plan's (the
/// key's tier and its team's limits) and never above what the key has now; no limit removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_admin_may_only_lower_its_keys_limits() {
    let (_stub, gateway, root, token_id, token) = acme_on_free_with_its_team_admin().await;

    // Raising a tier limit on create: refused, whatever the field.
    for (limits, field) in [
        (json!({"requests_per_minute": 1_000_000}), "requests_per_minute"),
        (json!({"budget_per_day": 1e9}), "budget_per_day"),
        (json!({"budget_per_day": 5.000001}), "budget_per_day"),
        (json!({"tokens_per_day": 100_001}), "tokens_per_day"),
        (json!({"requests_per_minute": 30, "budget_per_day": 6}), "budget_per_day"),
    ] {
        let reply = admin(&gateway, &token, "POST", "/keys", json!({"name": "greedy", "limits": limits})).await;
        reply.assert_error(403, "forbidden");
        assert!(reply.message().contains(&format!("limits.{field} ")), "{}", reply.text);
    }
    let listed = admin(&gateway, &root, "GET", "/keys?team=acme", Value::Null).await;
    assert_eq!(ids(&listed), Vec::<String>::new(), "no key was created by a refused call");

    // The plan's own values, and anything lower, are fine; a limit the tier lacks may be set.
    let at_plan = admin(
        &gateway,
        &token,
        "POST",
        "/keys",
        json!({"name": "at-plan", "limits": {"requests_per_minute": 60, "budget_per_day": 5}}),
    )
    .await;
    assert_status(&at_plan, 201, "the plan's own values");
    let lower = json!({"requests_per_minute": 30, "budget_per_day": 1.5, "tokens_per_minute": 1000});
    let created = admin(&gateway, &token, "POST", "/keys", json!({"name": "lower", "limits": lower})).await;
    assert_status(&created, 201, "lower limits");
    let id = str_field(&created.body, "id").to_string();
    let path = format!("/keys/{id}");

    // PATCH replaces the whole `limits` object: raising one, or leaving one out (which falls back
    // to the tier's value, or to none), is refused; so is going back up to the plan.
    for (limits, why) in [
        (json!({"requests_per_minute": 60, "budget_per_day": 1.5, "tokens_per_minute": 1000}), "back up to the tier"),
        (json!({"requests_per_minute": 30, "budget_per_day": 1.5, "tokens_per_minute": 2000}), "above its own value"),
        (json!({"requests_per_minute": 30, "budget_per_day": 1.5}), "tokens_per_minute removed"),
        (json!({"requests_per_minute": 30, "tokens_per_minute": 1000}), "budget back to the tier's"),
        (json!({}), "every override removed"),
    ] {
        let reply = admin(&gateway, &token, "PATCH", &path, json!({"limits": limits})).await;
        reply.assert_error(403, "forbidden");
        assert!(reply.message().contains("limits."), "{why}: {}", reply.text);
    }
    let unchanged = admin(&gateway, &root, "GET", &path, Value::Null).await;
    assert_eq!(unchanged.body["limits"], lower, "refused changes changed nothing: {}", unchanged.text);

    // Lowering, and changes that leave the limits alone, go through.
    let lowered = json!({"requests_per_minute": 20, "budget_per_day": 1.0, "tokens_per_minute": 500});
    assert_status(&admin(&gateway, &token, "PATCH", &path, json!({"limits": lowered})).await, 200, "lowering");
    assert_status(&admin(&gateway, &token, "PATCH", &path, json!({"name": "renamed"})).await, 200, "a rename");
    assert_status(&admin(&gateway, &token, "PATCH", &path, json!({"limits": lowered})).await, 200, "resending");

    // A team whose own limit is below its tier's: the team's value is the plan.
    let team_limit = json!({"limits": {"requests_per_minute": 10}});
    assert_status(&admin(&gateway, &root, "PATCH", "/teams/acme", team_limit).await, 200, "team limit");
    let above_team = json!({"name": "k", "limits": {"requests_per_minute": 15}});
    admin(&gateway, &token, "POST", "/keys", above_team).await.assert_error(403, "forbidden");
    let at_team = json!({"name": "k", "limits": {"requests_per_minute": 10}});
    assert_status(&admin(&gateway, &token, "POST", "/keys", at_team).await, 201, "the team's value");

    // What an admin granted above the plan may be kept (resent unchanged), not raised further.
    let granted = json!({"requests_per_minute": 1000, "budget_per_day": 1.0, "tokens_per_minute": 500});
    assert_status(&admin(&gateway, &root, "PATCH", &path, json!({"limits": granted})).await, 200, "admin grant");
    assert_status(&admin(&gateway, &token, "PATCH", &path, json!({"limits": granted})).await, 200, "kept as is");
    let further = json!({"requests_per_minute": 2000, "budget_per_day": 1.0, "tokens_per_minute": 500});
    admin(&gateway, &token, "PATCH", &path, json!({"limits": further})).await.assert_error(403, "forbidden");
    // An admin is not bound by the plan.
    let rich = json!({"name": "rich", "team": "acme", "limits": {"requests_per_minute": 1_000_000}});
    assert_status(&admin(&gateway, &root, "POST", "/keys", rich).await, 201, "an admin");

    // Every refusal is audited with the token, the team and why.
    let by_token = wait_for_audit(&gateway, "kind=admin&decision=deny&team=acme", Some(&token_id), 12).await;
    assert_eq!(by_token.len(), 12, "one record naming the token per refusal: {by_token:#?}");
    for record in &by_token {
        assert_eq!((record["status"].as_u64(), record["team"].as_str()), (Some(403), Some("acme")), "{record:#}");
        let reason = record["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("key.") && reason.contains("limits."), "the reason says why: {record:#}");
    }
    let raised = by_token.iter().find(|record| record["target"].as_str() == Some(id.as_str()));
    assert!(raised.is_some(), "a refused update names its key: {by_token:#?}");
}

/// Team tier, limits, metadata and capture are admin-only; so is creating a team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_admin_cannot_change_its_teams_plan() {
    let (_stub, gateway, root, token_id, token) = acme_on_free_with_its_team_admin().await;

    for patch in [
        json!({"limits": {"requests_per_minute": 1_000_000}}),
        json!({"limits": {"requests_per_minute": 1}}),
        json!({"tier": "pro"}),
        json!({"capture_content": true}),
        json!({"metadata": {"plan": "unlimited"}}),
    ] {
        admin(&gateway, &token, "PATCH", "/teams/acme", patch).await.assert_error(403, "forbidden");
    }
    let create = json!({"name": "acme-2", "tier": "pro"});
    admin(&gateway, &token, "POST", "/teams", create).await.assert_error(403, "forbidden");
    let team = admin(&gateway, &root, "GET", "/teams/acme", Value::Null).await;
    assert_eq!((team.body["tier"].as_str(), team.body["limits"].clone()), (Some("free"), json!({})), "{}", team.text);

    let by_token = wait_for_audit(&gateway, "kind=admin&decision=deny", Some(&token_id), 6).await;
    assert_eq!(by_token.len(), 6, "{by_token:#?}");
    assert!(by_token.iter().all(|record| record["reason"].as_str().is_some_and(|r| r.starts_with("team."))));
}

/// docs/admin-api.md: a team_admin's lists are its own team's; asking for another team gives an
/// empty answer, never its own team's objects under the other name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_admin_asking_for_another_team_gets_nothing() {
    let (_stub, gateway) = start_with("").await;
    let root = gateway.admin_token().to_string();
    let (acme_id, acme_key) = gateway.create_key(&["--team", "acme"]);
    let (globex_id, globex_key) = gateway.create_key(&["--team", "globex"]);
    chat(&gateway, Some(&acme_key), "a").await.assert_ok();
    chat(&gateway, Some(&globex_key), "a").await.assert_ok();
    let (_, token) = team_admin(&gateway, "acme").await;

    let keys = admin(&gateway, &token, "GET", "/keys?team=globex", Value::Null).await;
    assert_eq!((keys.status, ids(&keys)), (200, vec![]), "{}", keys.text);
    let keys = admin(&gateway, &token, "GET", "/keys?team=globex&include_revoked=true", Value::Null).await;
    assert_eq!((keys.status, ids(&keys)), (200, vec![]), "{}", keys.text);
    let own = admin(&gateway, &token, "GET", "/keys?team=acme", Value::Null).await;
    assert_eq!(ids(&own), vec![acme_id.clone()]);
    assert_eq!(ids(&admin(&gateway, &token, "GET", "/keys", Value::Null).await), vec![acme_id.clone()]);
    let by_admin = admin(&gateway, &root, "GET", "/keys?team=globex", Value::Null).await;
    assert_eq!(ids(&by_admin), vec![globex_id.clone()]);

    // Usage: wait until both keys' usage is stored, then ask as the team admin.
    let deadline = Instant::now() + STORE_WAIT;
    while ids(&admin(&gateway, &root, "GET", "/usage?group_by=key", Value::Null).await).len() < 2 {
        assert!(Instant::now() < deadline, "usage was not recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let usage = admin(&gateway, &token, "GET", "/usage?group_by=key&team=globex", Value::Null).await;
    assert_eq!((usage.status, ids(&usage)), (200, vec![]), "{}", usage.text);
    let usage = admin(&gateway, &token, "GET", &format!("/usage?group_by=key&key={globex_id}"), Value::Null).await;
    assert_eq!((usage.status, ids(&usage)), (200, vec![]), "{}", usage.text);
    assert_eq!(ids(&admin(&gateway, &token, "GET", "/usage?group_by=key", Value::Null).await), vec![acme_id.clone()]);

    // Audit: query and export.
    wait_for_audit(&gateway, "kind=request", None, 2).await;
    let audit = admin(&gateway, &token, "GET", "/audit?team=globex", Value::Null).await;
    assert_eq!((audit.status, audit.body["data"].as_array().map(Vec::len)), (200, Some(0)), "{}", audit.text);
    let own = admin(&gateway, &token, "GET", "/audit?kind=request", Value::Null).await;
    let teams: Vec<&str> =
        own.body["data"].as_array().expect("data").iter().filter_map(|r| r["team"].as_str()).collect();
    assert_eq!(teams, vec!["acme"], "{}", own.text);
    let export = admin(&gateway, &token, "GET", "/audit/export?team=globex", Value::Null).await;
    assert_eq!((export.status, export.text.as_str()), (200, ""), "an empty export");

    // Routes without a team filter do not pretend to have one; tokens are not for team admins.
    admin(&gateway, &token, "GET", "/tokens?team=globex", Value::Null).await.assert_error(403, "forbidden");
    let teams = admin(&gateway, &token, "GET", "/teams?team=globex", Value::Null).await;
    assert_bad_param(&teams, "team", "a filter /teams does not have");
    let teams = admin(&gateway, &token, "GET", "/teams", Value::Null).await;
    let names: Vec<&str> =
        teams.body["data"].as_array().expect("data").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, vec!["acme"]);
    admin(&gateway, &token, "GET", "/teams/globex", Value::Null).await.assert_error(404, "not_found");
}

/// A gateway with [`TIERS`], team `acme` on tier `free`, and a team_admin token for it: the
/// stub, the gateway, the bootstrap token, and the team admin's token id and secret.
async fn acme_on_free_with_its_team_admin() -> (StubUpstream, Gateway, String, String, String) {
    let (stub, gateway) = start_with(TIERS).await;
    let root = gateway.admin_token().to_string();
    assert_status(
        &admin(&gateway, &root, "POST", "/teams", json!({"name": "acme", "tier": "free"})).await,
        201,
        "team",
    );
    let (token_id, token) = team_admin(&gateway, "acme").await;
    (stub, gateway, root, token_id, token)
}

/// The audit records matching `query` (read with the bootstrap token) made by `admin_token_id`,
/// or all of them for `None`; polls until there are `count`.
async fn wait_for_audit(gateway: &Gateway, query: &str, admin_token_id: Option<&str>, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + STORE_WAIT;
    loop {
        let reply =
            admin(gateway, gateway.admin_token(), "GET", &format!("/audit?limit=1000&{query}"), Value::Null).await;
        assert_status(&reply, 200, "audit query");
        let records: Vec<Value> = reply.body["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|record| admin_token_id.is_none_or(|id| record["admin_token_id"].as_str() == Some(id)))
            .collect();
        if records.len() >= count || Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Item 10e: "No such …" names what is missing
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_thing_is_named_for_what_it_is() {
    let (_stub, gateway) = start_with("").await;
    let root = gateway.admin_token().to_string();

    let output =
        cli_as(&gateway, &root, &["tokens", "create", "--name", "t", "--role", "team_admin", "--team", "nope"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("No such team") && !stderr.contains("token."), "{}", describe(&output));
    let listed = admin(&gateway, &root, "GET", "/tokens", Value::Null).await;
    assert!(listed.body["data"].as_array().is_some_and(|tokens| tokens.is_empty()), "{}", listed.text);

    let (id, _) = gateway.create_key(&[]);
    for (args, missing) in [
        (vec!["keys", "show", "key_nope"], "key"),
        (vec!["keys", "update", "key_nope", "--name", "x"], "key"),
        (vec!["keys", "revoke", "key_nope"], "key"),
        (vec!["keys", "rotate", "key_nope"], "key"),
        (vec!["teams", "show", "nope"], "team"),
        (vec!["teams", "update", "nope", "--metadata", "{}"], "team"),
        (vec!["tokens", "revoke", "tok_nope"], "token"),
    ] {
        let output = cli_as(&gateway, &root, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("No such {missing}.")), "{args:?}: {}", describe(&output));
    }
    assert!(gateway.cli(&["keys", "show", &id]).status.success());
}
