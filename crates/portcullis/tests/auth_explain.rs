//! `POST /admin/v1/auth/explain` and `portcullis auth explain` through the real binary: a key
//! accepted with its principal and limits; revoked, expired, unknown, malformed and non-key
//! credentials refused with the exact reason; only admin tokens may ask; the credential never
//! appears in an answer, the audit log or the gateway's log. And the audit record's caller
//! columns in the export.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{
    BINARY, Reply, audit_records, chat, cli_as, describe, http, models_config, send, str_field, wait_for_records,
};
use portcullis_auth::{SecretKind, SecretToken};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

/// A team on tier `pro`, whose keys follow it; the default tier `free`.
async fn gateway() -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let config = format!(
        "{}\n[tiers.free]\nrequests_per_minute = 5\n\n[tiers.pro]\nrequests_per_minute = 600\n\
         budget_per_day = 2.5\n",
        models_config(&stub, &["m"])
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let team = gateway.cli(&["teams", "create", "acme", "--tier", "pro"]);
    assert!(team.status.success(), "{}", describe(&team));
    (stub, gateway)
}

async fn explain_as(gateway: &Gateway, token: &str, credential: &str) -> Reply {
    let url = format!("{}/admin/v1/auth/explain", gateway.admin_url());
    send(http().post(url).bearer_auth(token).json(&json!({ "credential": credential }))).await
}

async fn explain(gateway: &Gateway, credential: &str) -> Value {
    let reply = explain_as(gateway, gateway.admin_token(), credential).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body
}

/// The limit `name` of the scope of `kind` in an explanation.
fn limit<'a>(explanation: &'a Value, kind: &str, name: &str) -> &'a Value {
    let scopes = explanation["limits"].as_array().unwrap_or_else(|| panic!("no limits in {explanation}"));
    let scope = scopes.iter().find(|scope| scope["scope"]["kind"] == kind);
    let limits = scope.and_then(|scope| scope["limits"].as_array());
    limits
        .and_then(|limits| limits.iter().find(|limit| limit["limit"] == name))
        .unwrap_or_else(|| panic!("no {kind} {name} in {explanation}"))
}

/// `portcullis auth explain --credential-stdin --json` with `credential` on its stdin.
fn cli_explain_stdin(gateway: &Gateway, credential: &str) -> Value {
    let mut child = Command::new(BINARY)
        .args(["auth", "explain", "--credential-stdin", "--json"])
        .current_dir(gateway.dir())
        .env("PORTCULLIS_ADMIN_URL", gateway.admin_url())
        .env("PORTCULLIS_ADMIN_TOKEN", gateway.admin_token())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the portcullis CLI");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    writeln!(stdin, "{credential}").expect("write the credential");
    drop(stdin);
    let output = child.wait_with_output().expect("the CLI ends");
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains(credential), "the CLI echoed the credential: {stdout}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("no JSON ({error}): {}", describe(&output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_what_becomes_of_a_key_or_why_it_is_refused() {
    let (_stub, gateway) = gateway().await;
    let (key_id, key) = gateway.create_key(&["--team", "acme", "--models", "m", "--cidr", "10.0.0.0/8"]);

    // Accepted: the principal, its tier and where it comes from, and the limits that apply.
    let accepted = explain(&gateway, &key).await;
    assert_eq!((accepted["kind"].as_str(), accepted["accepted"].as_bool()), (Some("key"), Some(true)), "{accepted}");
    assert!(accepted["refused"].is_null(), "{accepted}");
    let principal = &accepted["principal"];
    assert_eq!(str_field(principal, "id"), key_id);
    assert_eq!(str_field(principal, "kind"), "key");
    assert_eq!((str_field(principal, "team"), str_field(principal, "tier")), ("acme", "pro"));
    assert_eq!(str_field(principal, "tier_source"), "team");
    assert_eq!(principal["models"], json!(["m"]));
    assert_eq!(principal["allowed_cidrs"], json!(["10.0.0.0/8"]));
    assert!(principal["expires_at"].is_null());
    let own = limit(&accepted, "key", "requests_per_minute");
    assert_eq!((own["max"].as_u64(), own["remaining"].as_u64()), (Some(600), Some(600)), "{accepted}");
    assert_eq!(limit(&accepted, "key", "budget_per_day")["max"].as_f64(), Some(2.5));

    // The CLI says the same, from stdin or from its argument.
    let from_stdin = cli_explain_stdin(&gateway, &key);
    assert_eq!(from_stdin["principal"]["id"], principal["id"]);
    let human = cli_as(&gateway, gateway.admin_token(), &["auth", "explain", &key]);
    assert!(human.status.success(), "{}", describe(&human));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("accepted:") && text.contains("pro (its team's)"), "{text}");
    assert!(text.contains("key ") && text.contains("requests_per_minute"), "a limits table: {text}");
    assert!(!text.contains(&key), "{text}");

    // Malformed, unknown, and not a key at all.
    let malformed = explain(&gateway, &format!("{}x", &key[..key.len() - 1])).await;
    assert_eq!(
        (malformed["kind"].as_str(), malformed["refused"]["code"].as_str()),
        (Some("key"), Some("invalid_api_key"))
    );
    assert!(str_field(&malformed["refused"], "message").contains("not a well-formed key"), "{malformed}");
    assert!(malformed["principal"].is_null());
    let stranger = SecretToken::generate(SecretKind::ApiKey);
    let unknown = explain(&gateway, stranger.expose()).await;
    assert_eq!(unknown["refused"]["code"], "invalid_api_key", "{unknown}");
    assert!(str_field(&unknown["refused"], "message").contains("no key has this secret"), "{unknown}");
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    let token = explain(&gateway, jwt).await;
    assert_eq!((token["kind"].as_str(), token["refused"]["code"].as_str()), (Some("unknown"), Some("invalid_api_key")));
    assert!(str_field(&token["refused"], "message").contains("no token issuer is configured"), "{token}");

    // A rotated-out secret past its grace is expired; a revoked key is revoked; both still say
    // which key they are.
    let rotated = gateway.cli_json(&["keys", "rotate", &key_id, "--grace", "0s"]);
    let new_secret = str_field(&rotated, "key").to_string();
    let expired = explain(&gateway, &key).await;
    assert_eq!(
        (expired["accepted"].as_bool(), expired["refused"]["code"].as_str()),
        (Some(false), Some("expired_api_key"))
    );
    assert_eq!(expired["principal"]["id"], json!(key_id), "{expired}");
    let revoke = gateway.cli(&["keys", "revoke", &key_id]);
    assert!(revoke.status.success(), "{}", describe(&revoke));
    let revoked = explain(&gateway, &new_secret).await;
    assert_eq!(revoked["refused"]["code"], "revoked_api_key", "{revoked}");
    assert_eq!(revoked["principal"]["id"], json!(key_id));
    // The proxy agrees.
    chat(&gateway, Some(&new_secret), "m").await.assert_error(401, "revoked_api_key");

    // Only admins may ask; a refusal is audited like any other.
    let auditor = gateway.cli_json(&["tokens", "create", "--name", "reader", "--role", "auditor"]);
    let team_admin =
        gateway.cli_json(&["tokens", "create", "--name", "acme", "--role", "team_admin", "--team", "acme"]);
    for token in [&auditor, &team_admin] {
        let reply = explain_as(&gateway, str_field(token, "token"), &new_secret).await;
        reply.assert_error(403, "forbidden");
        assert!(!reply.text.contains(&new_secret), "{}", reply.text);
    }
    let refused = cli_as(&gateway, str_field(&auditor, "token"), &["auth", "explain", &new_secret]);
    assert!(!refused.status.success(), "{}", describe(&refused));

    // Every explanation is an admin record naming the principal (or none), never the credential.
    // team.create, key.create, key.rotate, key.revoke, two token.create, eight explanations and
    // three refusals.
    let records = wait_for_records(&gateway, "kind=admin", 17).await;
    let explained: Vec<&Value> = records.iter().filter(|record| record["reason"] == "auth.explain").collect();
    assert_eq!(explained.len(), 8, "one record per explanation answered: {records:#?}");
    assert!(explained.iter().any(|record| record["target"] == json!(key_id) && record["team"] == "acme"));
    assert!(explained.iter().any(|record| record["target"] == "-"));
    let refusals = records.iter().filter(|record| record["status"] == 403).count();
    assert_eq!(refusals, 3, "{records:#?}");
    let everything = audit_records(&gateway, "").await;
    let dump = serde_json::to_string(&everything).expect("records as JSON");
    let log = gateway.log_text();
    for secret in [key.as_str(), new_secret.as_str(), stranger.expose(), jwt] {
        assert!(!dump.contains(secret), "a credential in the audit log");
        assert!(!log.contains(secret), "a credential in the gateway's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_names_each_callers_kind_and_credential_columns() {
    let (_stub, gateway) = gateway().await;
    let (key_id, key) = gateway.create_key(&["--team", "acme"]);
    chat(&gateway, Some(&key), "m").await.assert_ok();
    chat(&gateway, None, "m").await.assert_error(401, "invalid_api_key");

    let records = wait_for_records(&gateway, "kind=request", 2).await;
    let by_key = records.iter().find(|record| record["key_id"] == json!(key_id)).expect("the key's record");
    assert_eq!(by_key["principal_kind"], "key");
    assert!(by_key["subject"].is_null() && by_key["issuer"].is_null() && by_key["credential_id"].is_null());
    let anonymous = records.iter().find(|record| record["status"] == 401).expect("the refusal's record");
    assert!(anonymous["principal_kind"].is_null(), "no credential was accepted: {anonymous}");

    let csv = gateway.cli(&["audit", "export", "--format", "csv", "--kind", "request"]);
    assert!(csv.status.success(), "{}", describe(&csv));
    let csv = String::from_utf8_lossy(&csv.stdout).into_owned();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let column = |name: &str| header.iter().position(|cell| *cell == name).unwrap_or_else(|| panic!("no {name}"));
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    let row = rows.iter().find(|row| row[column("key_id")] == key_id).expect("the key's row");
    assert_eq!(row[column("principal_kind")], "key");
    assert_eq!((row[column("issuer")], row[column("credential_id")]), ("", ""));
    assert!(rows.iter().any(|row| row[column("principal_kind")].is_empty()), "the refusal has none");

    // The filters for token callers are accepted (and find nothing here).
    let none = audit_records(&gateway, "subject=svc-ingest&issuer=https%3A%2F%2Fidp.example").await;
    assert!(none.is_empty(), "{none:#?}");
    let verify = gateway.cli(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", describe(&verify));
}
