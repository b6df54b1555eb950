//! The admin API against hostile or careless callers, through the real binary (issue 12): money
//! and rates beyond what the limiters hold exactly are refused instead of clamped, absurd times
//! and numbers are 400s naming their parameter (never a panicked worker), and invisible and
//! format characters are refused in display strings.
#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use common::{BINARY, Reply, chat, describe, http, models_config, send};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

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
