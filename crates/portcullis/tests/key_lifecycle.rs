//! The life of an API key and of the admin tokens that manage keys, seen from outside: through
//! the proxy's HTTP answers and the `portcullis` CLI of the real binary.
//!
//! Every test starts its own stub model server and gateway; durations are kept short (a few
//! seconds at most) so expiry and rotation grace can be observed ending.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{chat, chat_body, cli_as, cli_json_as, describe, get, http, model_ids, send, start, str_field};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

/// Asserts the CLI failed, and that its message carries the HTTP status and the error code.
#[track_caller]
fn assert_cli_refused(output: &Output, status: &str, code: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the command should have failed: {}", describe(output));
    assert!(
        stderr.contains(status) && stderr.contains(&format!("({code})")),
        "expected `{status} ... ({code})` in: {}",
        describe(output)
    );
}

/// `keys show ID --json`, as the bootstrap admin.
fn show_key(gateway: &Gateway, id: &str) -> Value {
    gateway.cli_json(&["keys", "show", id])
}

// ------------------------------------------------------------------------------------------------
// Credentials the proxy does not accept
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_malformed_and_missing_keys_are_all_invalid_api_key_and_x_api_key_works_like_bearer() {
    let (_stub, gateway) = start(&["a"]).await;
    let (_, key) = gateway.create_key(&[]);
    // A well-formed key with a valid checksum that this gateway never issued: another
    // gateway's (each has its own store).
    let (_other_stub, other) = start(&["a"]).await;
    let (_, foreign) = other.create_key(&[]);

    chat(&gateway, Some(&key), "a").await.assert_ok();

    let unknown = chat(&gateway, Some(&foreign), "a").await;
    unknown.assert_error(401, "invalid_api_key");

    // The last character is part of the checksum: flipping it leaves a well-shaped key that
    // fails the checksum.
    let last = key.chars().last().expect("a key is not empty");
    let flipped = format!("{}{}", &key[..key.len() - 1], if last == 'A' { 'B' } else { 'A' });
    let bad_checksum = chat(&gateway, Some(&flipped), "a").await;
    bad_checksum.assert_error(401, "invalid_api_key");
    assert_eq!(
        bad_checksum.message(),
        unknown.message(),
        "a malformed key and an unknown key must be indistinguishable to the caller"
    );
    assert_eq!(bad_checksum.body, unknown.body);

    chat(&gateway, None, "a").await.assert_error(401, "invalid_api_key");
    let garbage = chat(&gateway, Some("not-a-key"), "a").await;
    garbage.assert_error(401, "invalid_api_key");

    // x-api-key is a full alternative to Authorization: Bearer, for good and bad keys alike.
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    send(http().post(&url).header("x-api-key", &key).json(&chat_body("a"))).await.assert_ok();
    send(http().post(&url).header("x-api-key", &foreign).json(&chat_body("a")))
        .await
        .assert_error(401, "invalid_api_key");
    send(http().post(&url).header("x-api-key", &flipped).json(&chat_body("a")))
        .await
        .assert_error(401, "invalid_api_key");
}

// ------------------------------------------------------------------------------------------------
// Revocation, expiry, rotation, update
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_rejected_on_the_very_next_request() {
    let (_stub, gateway) = start(&["a"]).await;
    let (id, key) = gateway.create_key(&[]);
    // Used first, so the gateway has the key in its cache when it is revoked.
    chat(&gateway, Some(&key), "a").await.assert_ok();
    chat(&gateway, Some(&key), "a").await.assert_ok();

    let revoked = gateway.cli_json(&["keys", "revoke", &id]);
    assert_eq!(revoked["status"], "revoked", "{revoked}");

    chat(&gateway, Some(&key), "a").await.assert_error(401, "revoked_api_key");
    get(&gateway, &key, "/v1/models").await.assert_error(401, "revoked_api_key");
    let shown = show_key(&gateway, &id);
    assert_eq!(shown["status"], "revoked", "{shown}");
    assert!(shown["revoked_at"].is_string(), "{shown}");

    // A revoked key cannot be brought back by rotating it.
    let rotate = gateway.cli(&["keys", "rotate", &id, "--grace", "0s"]);
    assert_cli_refused(&rotate, "409", "conflict");
    chat(&gateway, Some(&key), "a").await.assert_error(401, "revoked_api_key");
}

/// Polls a chat with `key` until it is refused (at most `deadline` after `from`); returns when
/// that was, after asserting each answer before it was a success and the refusal says `code`.
async fn refused_from(gateway: &Gateway, key: &str, code: &str, from: Instant, deadline: Duration) -> Duration {
    loop {
        let reply = chat(gateway, Some(key), "a").await;
        if reply.status != 200 {
            reply.assert_error(401, code);
            return from.elapsed();
        }
        assert!(from.elapsed() < deadline, "still accepted {:?} after it should have ended", from.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends are stored in whole seconds, rounded up: an end given as N seconds falls N to N+1
/// seconds after it was set. The windows are wide enough for a loaded machine, and the order is
/// what is asserted: accepted while the end is ahead, refused from the end on, and for good.
const SECRET_LIFE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_rejected_with_expired_api_key() {
    let (_stub, gateway) = start(&["a"]).await;
    // The expiry is set after this instant: the key cannot end before SECRET_LIFE from here.
    let before_creation = Instant::now();
    let (id, key) = gateway.create_key(&["--expires-in", "3s"]);
    // Alive at first (and now cached by the gateway).
    let reply = chat(&gateway, Some(&key), "a").await;
    if before_creation.elapsed() < SECRET_LIFE {
        reply.assert_ok();
        assert_eq!(show_key(&gateway, &id)["status"], "active");
    }

    let ended = refused_from(&gateway, &key, "expired_api_key", before_creation, Duration::from_secs(30)).await;
    assert!(ended >= SECRET_LIFE, "refused {ended:?} after creation, before its expiry");
    get(&gateway, &key, "/v1/models").await.assert_error(401, "expired_api_key");
    chat(&gateway, Some(&key), "a").await.assert_error(401, "expired_api_key");
    let shown = show_key(&gateway, &id);
    assert_eq!(shown["status"], "expired", "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
    let (_stub, gateway) = start(&["a"]).await;
    let (id, old) = gateway.create_key(&[]);
    chat(&gateway, Some(&old), "a").await.assert_ok();

    let before_rotation = Instant::now();
    let rotated = gateway.cli_json(&["keys", "rotate", &id, "--grace", "3s"]);
    let new = str_field(&rotated, "key").to_string();
    assert_eq!(str_field(&rotated, "id"), id, "rotation keeps the key's id");
    assert_ne!(new, old, "rotation issues a new secret");
    assert!(new.starts_with("pcl_"), "{new}");

    // During the grace period both secrets work.
    let (old_reply, new_reply) = (chat(&gateway, Some(&old), "a").await, chat(&gateway, Some(&new), "a").await);
    if before_rotation.elapsed() < SECRET_LIFE {
        old_reply.assert_ok();
    }
    new_reply.assert_ok();

    let ended = refused_from(&gateway, &old, "expired_api_key", before_rotation, Duration::from_secs(30)).await;
    assert!(ended >= SECRET_LIFE, "the old secret ended {ended:?} after the rotation, within its grace");
    chat(&gateway, Some(&old), "a").await.assert_error(401, "expired_api_key");
    chat(&gateway, Some(&new), "a").await.assert_ok();
    // The key itself is still active; only its old secret ended.
    assert_eq!(show_key(&gateway, &id)["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_with_zero_grace_ends_the_old_secret_at_once() {
    let (_stub, gateway) = start(&["a"]).await;
    let (id, old) = gateway.create_key(&[]);
    chat(&gateway, Some(&old), "a").await.assert_ok();

    let rotated = gateway.cli_json(&["keys", "rotate", &id, "--grace", "0s"]);
    let new = str_field(&rotated, "key").to_string();

    chat(&gateway, Some(&old), "a").await.assert_error(401, "expired_api_key");
    chat(&gateway, Some(&new), "a").await.assert_ok();

    // Rotating again ends the second secret at once too; the first stays dead.
    let again = gateway.cli_json(&["keys", "rotate", &id, "--grace", "0s"]);
    let newest = str_field(&again, "key").to_string();
    chat(&gateway, Some(&new), "a").await.assert_error(401, "expired_api_key");
    chat(&gateway, Some(&old), "a").await.assert_error(401, "expired_api_key");
    chat(&gateway, Some(&newest), "a").await.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rotation_ends_every_older_secret_but_never_extends_one() {
    let (_stub, gateway) = start(&["a"]).await;
    let (id, first) = gateway.create_key(&[]);
    let second = str_field(&gateway.cli_json(&["keys", "rotate", &id, "--grace", "1h"]), "key").to_string();
    chat(&gateway, Some(&first), "a").await.assert_ok();
    chat(&gateway, Some(&second), "a").await.assert_ok();

    // A rotation with no grace cuts the first secret's remaining hour short, and the second's.
    let third = str_field(&gateway.cli_json(&["keys", "rotate", &id, "--grace", "0s"]), "key").to_string();
    chat(&gateway, Some(&first), "a").await.assert_error(401, "expired_api_key");
    chat(&gateway, Some(&second), "a").await.assert_error(401, "expired_api_key");
    chat(&gateway, Some(&third), "a").await.assert_ok();

    // A later rotation with a long grace keeps the third alive but revives neither of the others.
    let fourth = str_field(&gateway.cli_json(&["keys", "rotate", &id, "--grace", "1h"]), "key").to_string();
    chat(&gateway, Some(&third), "a").await.assert_ok();
    chat(&gateway, Some(&fourth), "a").await.assert_ok();
    chat(&gateway, Some(&first), "a").await.assert_error(401, "expired_api_key");
    chat(&gateway, Some(&second), "a").await.assert_error(401, "expired_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_takes_effect_on_the_next_request() {
    let (stub, gateway) = start(&["a", "other"]).await;
    let (id, key) = gateway.create_key(&["--models", "a"]);
    chat(&gateway, Some(&key), "a").await.assert_ok();
    chat(&gateway, Some(&key), "other").await.assert_error(403, "model_not_allowed");

    let updated = gateway.cli_json(&["keys", "update", &id, "--models", "other"]);
    assert_eq!(updated["models"], json!(["other"]), "{updated}");

    let calls_before = stub.requests_to("/v1/chat/completions").len();
    chat(&gateway, Some(&key), "a").await.assert_error(403, "model_not_allowed");
    assert_eq!(
        stub.requests_to("/v1/chat/completions").len(),
        calls_before,
        "a refused request must not reach the model server"
    );
    chat(&gateway, Some(&key), "other").await.assert_ok();
    assert_eq!(model_ids(&gateway, &key).await, vec!["other".to_string()]);

    // Narrowing the scopes is just as immediate.
    gateway.cli_json(&["keys", "update", &id, "--scopes", "models"]);
    chat(&gateway, Some(&key), "other").await.assert_error(403, "scope_missing");
}

// ------------------------------------------------------------------------------------------------
// What a key may do: models, scopes, client networks
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cannot_use_or_see_models_outside_its_list() {
    let (stub, gateway) = start(&["allowed", "secret-model"]).await;
    let (_, key) = gateway.create_key(&["--models", "allowed"]);
    let (_, wide) = gateway.create_key(&["--models", "*"]);

    chat(&gateway, Some(&key), "allowed").await.assert_ok();
    let refused = chat(&gateway, Some(&key), "secret-model").await;
    refused.assert_error(403, "model_not_allowed");
    assert_eq!(refused.body["error"]["param"], "model", "{}", refused.body);
    assert!(
        stub.requests_to("/v1/chat/completions").iter().all(|request| request.json_field("model") != "secret-model"),
        "a model the key may not use must never reach the model server"
    );

    assert_eq!(model_ids(&gateway, &key).await, vec!["allowed".to_string()]);
    get(&gateway, &key, "/v1/models/allowed").await.assert_ok();
    get(&gateway, &key, "/v1/models/secret-model").await.assert_error(404, "model_not_found");

    // A model that is not configured at all is a 404, not a 403.
    chat(&gateway, Some(&key), "no-such-model").await.assert_error(404, "model_not_found");
    get(&gateway, &key, "/v1/models/no-such-model").await.assert_error(404, "model_not_found");

    // The same configured model is visible to a key that may use it.
    let mut all = model_ids(&gateway, &wide).await;
    all.sort();
    assert_eq!(all, vec!["allowed".to_string(), "secret-model".to_string()]);
    chat(&gateway, Some(&wide), "secret-model").await.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_limit_the_endpoints_a_key_may_call() {
    let (_stub, gateway) = start(&["a"]).await;
    let (_, chat_only) = gateway.create_key(&["--scopes", "chat"]);
    let url = |path: &str| format!("{}{path}", gateway.proxy_url());

    chat(&gateway, Some(&chat_only), "a").await.assert_ok();
    let embeddings =
        send(http().post(url("/v1/embeddings")).bearer_auth(&chat_only).json(&json!({"model": "a", "input": "hi"})))
            .await;
    embeddings.assert_error(403, "scope_missing");
    let completions =
        send(http().post(url("/v1/completions")).bearer_auth(&chat_only).json(&json!({"model": "a", "prompt": "hi"})))
            .await;
    completions.assert_error(403, "scope_missing");

    // A key with the embeddings scope passes the same request.
    let (_, embedder) = gateway.create_key(&["--scopes", "embeddings"]);
    send(http().post(url("/v1/embeddings")).bearer_auth(&embedder).json(&json!({"model": "a", "input": "hi"})))
        .await
        .assert_ok();
    chat(&gateway, Some(&embedder), "a").await.assert_error(403, "scope_missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_other_networks_is_refused_from_loopback() {
    let (_stub, gateway) = start(&["a"]).await;
    let (_, elsewhere) = gateway.create_key(&["--cidr", "10.0.0.0/8"]);
    let (_, loopback) = gateway.create_key(&["--cidr", "127.0.0.1"]);
    let (_, either) = gateway.create_key(&["--cidr", "10.0.0.0/8,127.0.0.0/8"]);

    chat(&gateway, Some(&elsewhere), "a").await.assert_error(403, "ip_not_allowed");
    get(&gateway, &elsewhere, "/v1/models").await.assert_error(403, "ip_not_allowed");
    // X-Forwarded-For is not believed from a peer that is not a trusted proxy.
    let spoofed = send(
        http()
            .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
            .bearer_auth(&elsewhere)
            .header("x-forwarded-for", "10.1.2.3")
            .json(&chat_body("a")),
    )
    .await;
    spoofed.assert_error(403, "ip_not_allowed");

    chat(&gateway, Some(&loopback), "a").await.assert_ok();
    chat(&gateway, Some(&either), "a").await.assert_ok();
}

// ------------------------------------------------------------------------------------------------
// Admin tokens and their roles
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_admin_sees_and_changes_only_its_own_teams_keys() {
    let (_stub, gateway) = start(&["a"]).await;
    let (globex_id, globex_key) = gateway.create_key(&["--team", "globex", "--name", "globex-key"]);
    let (acme_by_admin, _) = gateway.create_key(&["--team", "acme", "--name", "acme-by-admin"]);
    let (teamless, _) = gateway.create_key(&["--name", "teamless"]);

    let issued = gateway.cli_json(&["tokens", "create", "--name", "t", "--role", "team_admin", "--team", "acme"]);
    let token = str_field(&issued, "token").to_string();
    assert!(token.starts_with("pct_"), "{issued}");
    assert_eq!(issued["team"], "acme", "{issued}");

    // Creating without --team puts the key in the token's team.
    let created = cli_json_as(&gateway, &token, &["keys", "create", "--name", "mine"]);
    assert_eq!(created["team"], "acme", "{created}");
    let mine_id = str_field(&created, "id").to_string();
    let mine = str_field(&created, "key").to_string();
    chat(&gateway, Some(&mine), "a").await.assert_ok();

    // The list holds acme's keys only, whatever team is asked for.
    for args in [&["keys", "list"][..], &["keys", "list", "--team", "globex"], &["keys", "list", "--all"]] {
        let listed = cli_json_as(&gateway, &token, args);
        let keys = listed["data"].as_array().expect("a list has data");
        assert!(keys.iter().all(|key| key["team"] == "acme"), "{args:?} shows another team's key: {listed}");
        let ids: Vec<&str> = keys.iter().map(|key| str_field(key, "id")).collect();
        assert!(!ids.contains(&globex_id.as_str()) && !ids.contains(&teamless.as_str()), "{args:?}: {ids:?}");
        if args.len() == 2 {
            assert!(ids.contains(&mine_id.as_str()) && ids.contains(&acme_by_admin.as_str()), "{ids:?}");
        }
    }
    // Its own team's keys can be shown and changed.
    cli_json_as(&gateway, &token, &["keys", "show", &acme_by_admin]);
    cli_json_as(&gateway, &token, &["keys", "update", &acme_by_admin, "--name", "renamed"]);

    // Another team's key does not exist as far as a team admin can tell.
    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "show", &globex_id]), "404", "not_found");
    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "show", &teamless]), "404", "not_found");
    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "revoke", &globex_id]), "404", "not_found");
    assert_cli_refused(
        &cli_as(&gateway, &token, &["keys", "update", &globex_id, "--models", "nothing"]),
        "404",
        "not_found",
    );
    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "rotate", &globex_id, "--grace", "0s"]), "404", "not_found");
    // Teams are confined the same way.
    let teams = cli_json_as(&gateway, &token, &["teams", "list"]);
    let names: Vec<&str> = teams["data"].as_array().expect("data").iter().map(|team| str_field(team, "name")).collect();
    assert_eq!(names, vec!["acme"], "{teams}");
    assert_cli_refused(&cli_as(&gateway, &token, &["teams", "show", "globex"]), "404", "not_found");
    // ... and the other team's key still works untouched.
    chat(&gateway, Some(&globex_key), "a").await.assert_ok();
    let globex = show_key(&gateway, &globex_id);
    assert_eq!((globex["status"].as_str(), globex["models"].clone()), (Some("active"), json!([])), "{globex}");

    // No keys for another team, and no admin-only operations.
    assert_cli_refused(
        &cli_as(&gateway, &token, &["keys", "create", "--name", "x", "--team", "globex"]),
        "403",
        "forbidden",
    );
    assert_cli_refused(
        &cli_as(&gateway, &token, &["tokens", "create", "--name", "y", "--role", "admin"]),
        "403",
        "forbidden",
    );
    let listed = gateway.cli_json(&["keys", "list", "--team", "globex"]);
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "no key was created for globex: {listed}");
}

/// docs/admin-api.md: a team admin creates keys with "team's tier only" and updates them with
/// "tier unchanged"; a key without a tier gets the team's, else `limits.default_tier`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_admin_cannot_give_its_keys_another_tier_than_its_teams() {
    let stub = StubUpstream::start().await;
    let tiers = "[tiers.free]\nmodels = [\"*\"]\n\n[tiers.pro]\nmodels = [\"*\"]\n";
    let gateway =
        GatewayBuilder::new(common::BINARY).config(tiers).config(&common::models_config(&stub, &["a"])).start().await;

    // A team with a tier of its own.
    gateway.cli_json(&["teams", "create", "initech", "--tier", "pro"]);
    let initech = str_field(
        &gateway.cli_json(&["tokens", "create", "--name", "i", "--role", "team_admin", "--team", "initech"]),
        "token",
    )
    .to_string();
    let created = cli_json_as(&gateway, &initech, &["keys", "create", "--name", "k"]);
    assert_eq!(created["tier"], "pro", "{created}");
    chat(&gateway, Some(str_field(&created, "key")), "a").await.assert_ok();
    assert_cli_refused(
        &cli_as(&gateway, &initech, &["keys", "create", "--name", "k2", "--tier", "free"]),
        "403",
        "forbidden",
    );
    let id = str_field(&created, "id").to_string();
    assert_cli_refused(&cli_as(&gateway, &initech, &["keys", "update", &id, "--tier", "free"]), "403", "forbidden");

    // A team without a tier: its keys get the default tier, and a team admin cannot pick another.
    gateway.cli_json(&["teams", "create", "acme"]);
    let acme = str_field(
        &gateway.cli_json(&["tokens", "create", "--name", "a", "--role", "team_admin", "--team", "acme"]),
        "token",
    )
    .to_string();
    let plain = cli_json_as(&gateway, &acme, &["keys", "create", "--name", "plain"]);
    assert_eq!(plain["tier"], "free", "{plain}");
    let plain_id = str_field(&plain, "id").to_string();
    assert_cli_refused(&cli_as(&gateway, &acme, &["keys", "update", &plain_id, "--tier", "pro"]), "403", "forbidden");
    let upgraded = cli_as(&gateway, &acme, &["keys", "create", "--name", "upgraded", "--tier", "pro", "--json"]);
    let listed = gateway.cli_json(&["keys", "list", "--team", "acme"]);
    let tiers: Vec<&str> = listed["data"].as_array().expect("data").iter().map(|key| str_field(key, "tier")).collect();
    assert_cli_refused(&upgraded, "403", "forbidden");
    assert_eq!(tiers, vec!["free"], "a team admin gave its team a key of another tier: {listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_can_read_but_not_change_keys() {
    let (_stub, gateway) = start(&["a"]).await;
    let (id, key) = gateway.create_key(&["--name", "watched"]);
    let issued = gateway.cli_json(&["tokens", "create", "--name", "audit", "--role", "auditor"]);
    let token = str_field(&issued, "token").to_string();

    let listed = cli_json_as(&gateway, &token, &["keys", "list"]);
    let ids: Vec<&str> = listed["data"].as_array().expect("data").iter().map(|key| str_field(key, "id")).collect();
    assert_eq!(ids, vec![id.as_str()]);
    cli_json_as(&gateway, &token, &["keys", "show", &id]);

    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "create", "--name", "nope"]), "403", "forbidden");
    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "revoke", &id]), "403", "forbidden");
    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "update", &id, "--name", "nope"]), "403", "forbidden");
    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "rotate", &id]), "403", "forbidden");

    chat(&gateway, Some(&key), "a").await.assert_ok();
    assert_eq!(show_key(&gateway, &id)["name"], "watched");
    assert_eq!(gateway.cli_json(&["keys", "list"])["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_admin_token_is_refused() {
    let (_stub, gateway) = start(&["a"]).await;
    let issued = gateway.cli_json(&["tokens", "create", "--name", "ops", "--role", "admin"]);
    let token = str_field(&issued, "token").to_string();
    let token_id = str_field(&issued, "id").to_string();
    cli_json_as(&gateway, &token, &["keys", "list"]);

    let revoked = gateway.cli_json(&["tokens", "revoke", &token_id]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "list"]), "401", "invalid_token");
    assert_cli_refused(&cli_as(&gateway, &token, &["keys", "create", "--name", "x"]), "401", "invalid_token");

    // The same over plain HTTP, with the error body.
    let admin_keys = format!("{}/admin/v1/keys", gateway.admin_url());
    let refused = send(http().get(&admin_keys).bearer_auth(&token)).await;
    refused.assert_error(401, "invalid_token");
    send(http().get(&admin_keys)).await.assert_error(401, "invalid_token");
    send(http().get(&admin_keys).bearer_auth(gateway.admin_token())).await.assert_ok();
}

// ------------------------------------------------------------------------------------------------
// The secret is shown once
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_shown_at_creation_only_and_later_only_as_a_prefix() {
    let (_stub, gateway) = start(&["a"]).await;
    let (id, secret) = gateway.create_key(&["--name", "shown-once"]);
    chat(&gateway, Some(&secret), "a").await.assert_ok();
    // Past the `pcl_` prefix and the few characters a display prefix may show.
    let hidden = &secret[8..];

    let outputs = [
        gateway.cli(&["keys", "show", &id, "--json"]),
        gateway.cli(&["keys", "show", &id]),
        gateway.cli(&["keys", "list", "--json"]),
        gateway.cli(&["keys", "list", "--all"]),
        gateway.cli(&["keys", "update", &id, "--name", "renamed", "--json"]),
        gateway.cli(&["keys", "revoke", &id, "--json"]),
        gateway.cli(&["keys", "list", "--all", "--json"]),
    ];
    for output in &outputs {
        assert!(output.status.success(), "{}", describe(output));
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!text.contains(hidden), "the secret was shown again:\n{text}");
    }

    let shown: Value = serde_json::from_slice(&outputs[0].stdout).expect("keys show --json prints JSON");
    assert!(shown.get("key").is_none() && shown.get("secret").is_none(), "{shown}");
    let prefix = str_field(&shown, "prefix");
    let visible = prefix.trim_end_matches('…');
    assert!(visible.starts_with("pcl_") && secret.starts_with(visible), "prefix {prefix:?} of {secret:?}");
    assert!(visible.len() < 12, "a prefix must not reveal most of the secret: {prefix:?}");

    let listed: Value = serde_json::from_slice(&outputs[2].stdout).expect("keys list --json prints JSON");
    let entry = listed["data"].as_array().and_then(|keys| keys.iter().find(|key| key["id"] == id.as_str()));
    assert_eq!(entry.map(|key| key["prefix"].clone()), Some(Value::from(prefix)), "{listed}");

    // Over HTTP, the admin API never returns it either.
    let raw = http()
        .get(format!("{}/admin/v1/keys/{id}", gateway.admin_url()))
        .bearer_auth(gateway.admin_token())
        .send()
        .await
        .expect("admin API answers")
        .text()
        .await
        .expect("body");
    assert!(!raw.contains(hidden), "{raw}");
}

/// An empty scope list is refused, not taken for "none" (a key that can do nothing) or "all": the
/// CLI's `--scopes ''`, and `"scopes": []` through the API, on create and on update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_scope_list_is_refused_naming_scopes() {
    let (_stub, gateway) = start(&["a"]).await;
    let refused = gateway.cli(&["keys", "create", "--name", "empty", "--scopes", ""]);
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("scopes"), "{}", describe(&refused));

    let keys = format!("{}/admin/v1/keys", gateway.admin_url());
    let created =
        send(http().post(&keys).bearer_auth(gateway.admin_token()).json(&json!({"name": "n", "scopes": []}))).await;
    created.assert_error(400, "invalid_request");
    assert_eq!(created.body["error"]["param"], "scopes", "{}", created.text);

    let (id, key) = gateway.create_key(&["--scopes", "chat"]);
    let updated =
        send(http().patch(format!("{keys}/{id}")).bearer_auth(gateway.admin_token()).json(&json!({"scopes": []})))
            .await;
    updated.assert_error(400, "invalid_request");
    chat(&gateway, Some(&key), "a").await.assert_ok();
    // Left out, the scopes are all four.
    let (_, all) = gateway.create_key(&[]);
    get(&gateway, &all, "/v1/models").await.assert_ok();
}

/// The admin API takes a JSON body sent without a `Content-Type` (as `curl -d` and most scripts
/// send it), and refuses one that names another type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_without_a_content_type_are_read_as_json() {
    let (_stub, gateway) = start(&["a"]).await;
    let keys = format!("{}/admin/v1/keys", gateway.admin_url());
    let created = send(http().post(&keys).bearer_auth(gateway.admin_token()).body(r#"{"name":"scripted"}"#)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    chat(&gateway, created.body["key"].as_str(), "a").await.assert_ok();
    let refused = send(
        http()
            .post(&keys)
            .bearer_auth(gateway.admin_token())
            .header("content-type", "text/plain")
            .body(r#"{"name":"typed"}"#),
    )
    .await;
    refused.assert_error(400, "invalid_request");
}

/// Exit statuses as docs/cli.md states them: 2 for a wrong command line, 1 for a refused or
/// failed command, 0 for success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_2_on_a_wrong_command_line_and_1_on_a_failure() {
    let (_stub, gateway) = start(&["a"]).await;
    assert_eq!(gateway.cli(&["keys", "create", "--no-such-option"]).status.code(), Some(2));
    assert_eq!(gateway.cli(&["keys", "show", "key_does_not_exist"]).status.code(), Some(1));
    assert_eq!(gateway.cli(&["keys", "list"]).status.code(), Some(0));
}

/// Without a token the CLI says where the first one comes from, not a command that needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_cli_points_at_where_the_first_one_comes_from() {
    let (_stub, gateway) = start(&["a"]).await;
    let output = cli_as(&gateway, "", &["keys", "list"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PORTCULLIS_ADMIN_TOKEN") && stderr.contains("portcullis serve"), "{stderr}");
    assert!(!stderr.contains("tokens create"), "a command that needs a token is no way to get one: {stderr}");
}

/// A key revoked right after a request still has that use on record: its cached use time is not
/// dropped with the cache entry the revocation invalidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_right_before_revocation_is_still_recorded() {
    let (_stub, mut gateway) = start(&["a"]).await;
    let (id, key) = gateway.create_key(&[]);
    chat(&gateway, Some(&key), "a").await.assert_ok();
    assert!(gateway.cli(&["keys", "revoke", &id]).status.success());
    // A restart writes the use times back (as the periodic write-back would, within 30 s).
    gateway.restart().await;
    let shown = show_key(&gateway, &id);
    assert!(shown["last_used_at"].is_string(), "the use before the revocation was lost: {shown}");
    assert_eq!(shown["status"], "revoked", "{shown}");
}
