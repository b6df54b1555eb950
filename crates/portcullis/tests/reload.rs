//! SIGHUP reload by class of setting (docs/configuration.md, "Reloading"): a changed live setting
//! — a tier's limit, the `[security]` thresholds, a model's endpoints — takes effect without a
//! restart; a changed startup setting is named in a warning and by `GET /admin/v1/config` until
//! the file agrees with what runs again. Black-box: the real binary, a stub model server.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::{BINARY, chat, http, models_config, send, str_field};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::Value;

/// `GET /admin/v1/config` with `token`.
async fn config_status(gateway: &Gateway, token: &str) -> Value {
    let reply = send(http().get(format!("{}/admin/v1/config", gateway.admin_url())).bearer_auth(token)).await;
    assert_eq!(reply.status, 200, "GET /admin/v1/config: {}", reply.text);
    reply.body
}

/// Rewrites the configuration with `edit`, sends SIGHUP and waits until the gateway reports a
/// reload newer than the last one; returns that report.
async fn reload_with(gateway: &Gateway, edit: impl FnOnce(String) -> String) -> Value {
    let before = config_status(gateway, gateway.admin_token()).await["last_reload"].clone();
    let path = gateway.config_path();
    let text = std::fs::read_to_string(&path).expect("read the configuration");
    std::fs::write(&path, edit(text)).expect("rewrite the configuration");
    gateway.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = config_status(gateway, gateway.admin_token()).await;
        if status["last_reload"] != before {
            return status;
        }
        assert!(Instant::now() < deadline, "no reload was reported; log:\n{}", gateway.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiers_limit_changed_by_sighup_applies_to_the_next_request() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY)
        .config("[tiers.free]\nrequests_per_minute = 1000\n")
        .config(&models_config(&stub, &["m"]))
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    let reply = chat(&gateway, Some(&key), "m").await;
    reply.assert_ok();
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("1000"));

    let status =
        reload_with(&gateway, |text| text.replace("requests_per_minute = 1000", "requests_per_minute = 2")).await;
    assert_eq!(status["last_reload"]["outcome"], "ok", "{status}");
    assert_eq!(status["restart_required"], serde_json::json!([]), "a tier's limit is live: {status}");
    let reply = chat(&gateway, Some(&key), "m").await;
    reply.assert_ok();
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("2"), "the new limit is not in force");
    // A burst of at most two: of three requests within a second, the third is refused.
    chat(&gateway, Some(&key), "m").await;
    chat(&gateway, Some(&key), "m").await.assert_error(429, "rate_limit_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_thresholds_changed_by_sighup_apply_to_the_failures_already_counted() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY)
        .config("[security]\nauth_failure_limit = 100\nblock_duration = \"1m\"\n")
        .config(&models_config(&stub, &["m"]))
        .start()
        .await;
    let wrong = "pcl_not_a_real_key";
    for _ in 0..3 {
        chat(&gateway, Some(wrong), "m").await.assert_error(401, "invalid_api_key");
    }

    // Four failures now block. Three are counted already, so the next one blocks: the detector
    // took the new threshold and kept its count.
    let status = reload_with(&gateway, |text| text.replace("auth_failure_limit = 100", "auth_failure_limit = 4")).await;
    assert_eq!(status["restart_required"], serde_json::json!([]), "the thresholds are live: {status}");
    chat(&gateway, Some(wrong), "m").await.assert_error(401, "invalid_api_key");
    let blocked = chat(&gateway, Some(wrong), "m").await;
    blocked.assert_error(429, "client_blocked");
    let retry_after: u64 = blocked.header("retry-after").and_then(|value| value.parse().ok()).unwrap_or_default();
    assert!((50..=60).contains(&retry_after), "blocked for the configured minute: {retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_endpoints_changed_by_sighup_receive_its_next_request() {
    let (old, new) = (StubUpstream::start().await, StubUpstream::start().await);
    let gateway = GatewayBuilder::new(BINARY).config(&models_config(&old, &["m"])).start().await;
    let (_, key) = gateway.create_key(&[]);
    chat(&gateway, Some(&key), "m").await.assert_ok();
    assert!(old.last_request_to("/v1/chat/completions").is_some());

    let status = reload_with(&gateway, |text| text.replace(&old.url(), &new.url())).await;
    assert_eq!(status["restart_required"], serde_json::json!([]), "a model's endpoints are live: {status}");
    old.clear_requests();
    chat(&gateway, Some(&key), "m").await.assert_ok();
    assert!(new.last_request_to("/v1/chat/completions").is_some(), "the new endpoint was not used");
    assert!(old.last_request_to("/v1/chat/completions").is_none(), "the old endpoint is still used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_startup_setting_is_named_until_the_file_agrees_with_what_runs() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY).config(&models_config(&stub, &["m"])).start().await;
    let original = std::fs::read_to_string(gateway.config_path()).expect("read the configuration");
    let issued = gateway.cli_json(&["tokens", "create", "--name", "reader", "--role", "auditor"]);
    let auditor = str_field(&issued, "token").to_string();
    let at_start = config_status(&gateway, &auditor).await;
    assert_eq!(at_start["last_reload"], Value::Null, "{at_start}");
    assert_eq!(at_start["restart_required"], serde_json::json!([]), "{at_start}");

    // A listener limit and a secret: fixed at start, so reported, the secret by name only.
    let secret = "hunter2-never-shown";
    let status = reload_with(&gateway, |text| {
        let text = text.replacen("[server]\n", "[server]\nmax_headers = 100\n", 1);
        format!("{text}\n[limits]\nredis_url = \"redis://user:{secret}@127.0.0.1:1\"\n")
    })
    .await;
    assert_eq!(status["last_reload"]["outcome"], "ok", "{status}");
    assert_eq!(status["restart_required"], serde_json::json!(["limits.redis_url", "server.max_headers"]));
    assert_eq!(config_status(&gateway, &auditor).await, status, "any admin role reads the same");
    assert_eq!(gateway.cli_json(&["config", "status"]), status, "`portcullis config status --json`");
    let warning = gateway
        .log_text()
        .lines()
        .rev()
        .find(|line| line.contains("configuration reloaded"))
        .unwrap_or_default()
        .to_string();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("limits.redis_url") && warning.contains("server.max_headers"), "{warning}");
    assert!(!gateway.log_text().contains(secret), "the secret reached the log");
    assert!(!status.to_string().contains(secret), "the secret reached the API");

    // The same file again: still different from what runs, still named.
    let again = reload_with(&gateway, |text| text).await;
    assert_eq!(again["restart_required"], status["restart_required"], "{again}");

    // A file that is refused changes nothing but the last reload's outcome.
    let refused = reload_with(&gateway, |text| format!("{text}\n[[models]]\nname = \"x\"\nbogus = 1\n")).await;
    assert_eq!(refused["last_reload"]["outcome"], "error", "{refused}");
    assert!(str_field(&refused["last_reload"], "error").contains("models[1]"), "{refused}");
    assert_eq!(refused["restart_required"], status["restart_required"]);
    assert_eq!(refused["loaded_at"], again["loaded_at"], "a refused file is not loaded");

    // Back to the file the gateway started with: nothing waits for a restart any more.
    let reverted = reload_with(&gateway, |_| original.clone()).await;
    assert_eq!(reverted["last_reload"]["outcome"], "ok", "{reverted}");
    assert_eq!(reverted["restart_required"], serde_json::json!([]), "reverting must clear it: {reverted}");
    assert_ne!(reverted["loaded_at"], status["loaded_at"]);
}
