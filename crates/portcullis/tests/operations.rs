//! Running the gateway: configuration checks, SIGHUP reload, SIGTERM drain, metrics and health,
//! request limits, secrets kept out of logs, metrics and the store, the first admin token, and
//! request ids. Black-box: the real binary, driven over HTTP, signals and the CLI.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BINARY, Reply, chat, chat_body, cli_as, describe, get, http, model_ids, send, start, str_field};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream, reply_text, workspace_root};
use serde_json::{Value, json};

/// `portcullis config check --config <path>`.
fn config_check(path: &Path, json: bool) -> Output {
    let mut command = Command::new(BINARY);
    command.arg("config").arg("check").arg("--config").arg(path);
    if json {
        command.arg("--json");
    }
    command.stdin(Stdio::null()).output().expect("run portcullis config check")
}

/// Writes `text` to a fresh temporary configuration file and checks it.
fn check_text(text: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).expect("write the configuration");
    config_check(&path, false)
}

#[track_caller]
fn assert_check_fails_naming(text: &str, field_path: &str) {
    let output = check_text(text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "config check accepted:\n{text}\n{}", describe(&output));
    assert!(stderr.contains(field_path), "the error should name `{field_path}`:\n{}", describe(&output));
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn append_to_config(gateway: &Gateway, text: &str) {
    let path = gateway.config_path();
    let mut config = std::fs::read_to_string(&path).expect("read the gateway's configuration");
    config.push('\n');
    config.push_str(text);
    std::fs::write(&path, config).expect("rewrite the gateway's configuration");
}

fn model_table(name: &str, stub: &StubUpstream, extra: &str) -> String {
    format!("[[models]]\nname = \"{name}\"\nendpoints = [\"{}\"]\n{extra}\n", stub.url())
}

// ------------------------------------------------------------------------------------------------
// config check
// ------------------------------------------------------------------------------------------------

#[test]
fn config_check_accepts_the_reference_configuration() {
    let reference = workspace_root().join("examples/portcullis.toml");
    let output = config_check(&reference, false);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid"), "{}", describe(&output));

    let output = config_check(&reference, true);
    assert!(output.status.success(), "{}", describe(&output));
    let summary: Value = serde_json::from_slice(&output.stdout).expect("config check --json prints JSON");
    assert_eq!(summary["valid"], true, "{summary}");
    assert_eq!(summary["models"], json!(["smollm2"]), "{summary}");
}

#[test]
fn config_check_rejects_an_unknown_field_naming_its_path() {
    let endpoint = "endpoints = [\"http://127.0.0.1:9000\"]";
    let text = format!("[[models]]\nname = \"m0\"\n{endpoint}\n\n[[models]]\nname = \"m1\"\n{endpoint}\nbogus = 1\n");
    assert_check_fails_naming(&text, "models[1].bogus");
    let text = format!("[[models]]\nname = \"m0\"\n{endpoint}\nbogus = 1\n");
    assert_check_fails_naming(&text, "models[0].bogus");
    assert_check_fails_naming("[server]\nlisten = \"127.0.0.1:8080\"\nmax_body = 3\n", "server.max_body");
    // The same file without the unknown field is fine, so the field is what was refused.
    let output = check_text(&format!("[[models]]\nname = \"m0\"\n{endpoint}\n"));
    assert!(output.status.success(), "{}", describe(&output));
}

#[test]
fn config_check_rejects_a_bad_duration_naming_its_path() {
    let endpoint = "endpoints = [\"http://127.0.0.1:9000\"]";
    assert_check_fails_naming(
        &format!("[[models]]\nname = \"m\"\n{endpoint}\nqueue_timeout = \"2 seconds\"\n"),
        "models[0].queue_timeout",
    );
    assert_check_fails_naming(
        &format!("[[models]]\nname = \"m\"\n{endpoint}\ntimeouts = {{ first_byte = \"soon\" }}\n"),
        "models[0].timeouts.first_byte",
    );
    assert_check_fails_naming("[server]\nshutdown_timeout = \"30\"\n", "server.shutdown_timeout");
    // `[limits.global]` has a tier's limit fields, and only those (docs/configuration.md).
    assert_check_fails_naming("[limits.global]\nburst = 5\n", "limits.global");
    let global = "[limits.global]\nrequests_per_minute = 6000\ntokens_per_minute = 100000\nmax_concurrent = 64\n\
                  tokens_per_day = 1000000\ntokens_per_month = 9000000\nbudget_per_day = 10.0\nbudget_per_month = 100.0\n";
    let output = check_text(global);
    assert!(output.status.success(), "{}", describe(&output));
    let output = check_text(&format!("[[models]]\nname = \"m\"\n{endpoint}\nqueue_timeout = \"2s\"\n"));
    assert!(output.status.success(), "{}", describe(&output));
}

/// `config check` refuses what `serve` would refuse about the store — an unsupported scheme, a
/// SQLite file whose directory is missing — in the same words, naming `store.url`.
#[test]
fn config_check_refuses_the_store_urls_serve_refuses() {
    let missing = tempfile::tempdir().expect("temp dir").path().join("gone");
    for (url, words) in [
        ("mysql://db/portcullis".to_string(), "scheme \"mysql\" is not supported"),
        (format!("sqlite://{}/p.db", missing.display()), "does not exist"),
    ] {
        let text = format!("[store]\nurl = \"{url}\"\n");
        assert_check_fails_naming(&text, "store.url");
        let checked = check_text(&text);
        assert!(String::from_utf8_lossy(&checked.stderr).contains(words), "{}", describe(&checked));

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, &text).expect("write the configuration");
        let served = std::process::Command::new(BINARY)
            .args(["serve", "--config"])
            .arg(&path)
            .env("PORTCULLIS_ADMIN_TOKEN", "pct_0000000000000000000000000000000000000000")
            .output()
            .expect("run serve");
        assert!(!served.status.success(), "serve started on {url}");
        assert!(String::from_utf8_lossy(&served.stderr).contains(words), "{}", describe(&served));
    }
    assert!(!missing.exists(), "nothing was created");
}

/// `serve` with `text` as its configuration, with an admin token so it needs none of its own.
fn serve_text(text: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).expect("write the configuration");
    Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&path)
        .env("PORTCULLIS_ADMIN_TOKEN", "pct_0000000000000000000000000000000000000000")
        .stdin(Stdio::null())
        .output()
        .expect("run serve")
}

/// A backend left out of the build (`--no-default-features`) is refused by `config check` and
/// `serve` alike, in words that say so; a build with it accepts the same file.
#[test]
fn a_backend_the_binary_was_built_without_is_refused_by_name() {
    for (built, text, setting, feature) in [
        (cfg!(feature = "postgres"), "[store]\nurl = \"postgres://127.0.0.1:1/none\"\n", "store.url", "postgres"),
        (
            cfg!(feature = "redis"),
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\n",
            "limits.backend",
            "redis",
        ),
    ] {
        let checked = check_text(text);
        if built {
            assert!(checked.status.success(), "{}", describe(&checked));
            continue;
        }
        let words = format!("{setting}: this binary was built without the `{feature}` feature");
        assert!(
            !checked.status.success() && String::from_utf8_lossy(&checked.stderr).contains(&words),
            "{}",
            describe(&checked)
        );
        let served = serve_text(text);
        assert!(
            !served.status.success() && String::from_utf8_lossy(&served.stderr).contains(&words),
            "{}",
            describe(&served)
        );
    }
}

/// A start that fails says why with every cause, each once: the step, the store's error and the
/// driver's own words.
#[test]
fn serve_says_why_the_store_did_not_open_with_each_cause_once() {
    let directory = tempfile::tempdir().expect("temp dir");
    // A directory where the database file should be.
    let served = serve_text(&format!("[store]\nurl = \"sqlite://{}\"\n", directory.path().display()));

    let stderr = String::from_utf8_lossy(&served.stderr);
    assert!(!served.status.success(), "{}", describe(&served));
    let said = format!(
        "error: cannot start: opening the store: store unavailable: cannot open {}: ",
        directory.path().display()
    );
    assert!(stderr.contains(&said), "{}", describe(&served));
    assert_eq!(stderr.matches("unable to open database file").count(), 1, "{}", describe(&served));
}

// ------------------------------------------------------------------------------------------------
// SIGHUP reload
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_models_and_an_invalid_file_keeps_the_running_configuration() {
    let (stub, mut gateway) = start(&["a"]).await;
    let (_, key) = gateway.create_key(&["--models", "*"]);
    assert_eq!(model_ids(&gateway, &key).await, vec!["a"]);
    chat(&gateway, Some(&key), "b").await.assert_error(404, "model_not_found");

    append_to_config(&gateway, &model_table("b", &stub, ""));
    gateway.signal("HUP");
    let reloaded =
        eventually(Duration::from_secs(2), || async { model_ids(&gateway, &key).await.contains(&"b".to_string()) })
            .await;
    assert!(reloaded, "model b did not appear after SIGHUP; log:\n{}", gateway.log_tail(20));
    chat(&gateway, Some(&key), "b").await.assert_ok();
    assert_eq!(stub.last_request_to("/v1/chat/completions").map(|r| r.json_field("model").clone()), Some(json!("b")));
    assert!(gateway.is_running());

    // An invalid file: logged, and the running configuration is kept.
    let good_config = std::fs::read_to_string(gateway.config_path()).expect("read config");
    append_to_config(&gateway, &model_table("c", &stub, "bogus = true"));
    gateway.signal("HUP");
    let failed = eventually(Duration::from_secs(2), || async { gateway.log_text().contains("reload failed") }).await;
    assert!(failed, "no reload failure was logged; log:\n{}", gateway.log_tail(20));
    let failure =
        gateway.log_text().lines().find(|line| line.contains("reload failed")).unwrap_or_default().to_string();
    assert!(failure.contains("models[2].bogus"), "the logged failure should name the field: {failure}");
    assert!(gateway.is_running(), "an invalid reload must not stop the gateway");
    chat(&gateway, Some(&key), "a").await.assert_ok();
    chat(&gateway, Some(&key), "b").await.assert_ok();
    chat(&gateway, Some(&key), "c").await.assert_error(404, "model_not_found");
    assert_eq!(model_ids(&gateway, &key).await, vec!["a", "b"]);

    // A later valid file is taken again.
    std::fs::write(gateway.config_path(), format!("{good_config}\n{}", model_table("d", &stub, ""))).expect("write");
    gateway.signal("HUP");
    let recovered =
        eventually(Duration::from_secs(2), || async { model_ids(&gateway, &key).await.contains(&"d".to_string()) })
            .await;
    assert!(recovered, "a valid file after an invalid one was not loaded; log:\n{}", gateway.log_tail(20));
    chat(&gateway, Some(&key), "d").await.assert_ok();
    assert_eq!(gateway.terminate(Duration::from_secs(10)).await.map(|status| status.success()), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lets_in_flight_streams_finish_on_the_routes_they_started_with() {
    let (stub, gateway) = start(&["a"]).await;
    let (_, key) = gateway.create_key(&[]);
    stub.set_chunk_gap(Duration::from_millis(300));
    stub.set_stream_chunks(5);

    let body = json!({"model": "a", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut response = http()
        .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("the stream starts");
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.expect("read the first chunk").expect("a first chunk");
    let mut received = String::from_utf8_lossy(&first).into_owned();

    // Model a is replaced by model b while a's stream is running.
    let config = std::fs::read_to_string(gateway.config_path()).expect("read config");
    std::fs::write(gateway.config_path(), config.replace("name = \"a\"", "name = \"b\"")).expect("write config");
    gateway.signal("HUP");
    let reloaded = eventually(Duration::from_secs(2), || async { model_ids(&gateway, &key).await == vec!["b"] }).await;
    assert!(reloaded, "the reload was not applied; log:\n{}", gateway.log_tail(20));
    assert!(stub.chunk_sent_count() < 7, "the stream ended before the reload; the test proves nothing");

    while let Some(chunk) = response.chunk().await.expect("the stream is not cut by the reload") {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.trim_end().ends_with("data: [DONE]"), "the stream was not completed:\n{received}");
    chat(&gateway, Some(&key), "a").await.assert_error(404, "model_not_found");
    stub.set_chunk_gap(Duration::ZERO);
    chat(&gateway, Some(&key), "b").await.assert_ok();
}

/// docs/configuration.md: settings a reload cannot apply must be reported in the log. The request
/// head limits are applied per connection; a reload must either apply a new `max_headers` or say
/// that it was ignored, not drop it silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_request_head_limits_applies_them_or_reports_them_ignored() {
    let (_stub, gateway) = start(&["a"]).await;
    let (_, key) = gateway.create_key(&[]);
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    let hundred_headers = || {
        let mut request = http().post(&url).bearer_auth(&key).json(&chat_body("a"));
        for index in 0..100 {
            request = request.header(format!("x-filler-{index}"), "v");
        }
        request.send()
    };
    let before = hundred_headers().await.map(|response| response.status().as_u16());
    assert!(before.as_ref().map_or(true, |status| *status == 431), "100 headers over the default 64: {before:?}");

    let config = std::fs::read_to_string(gateway.config_path()).expect("read config");
    assert!(config.contains("[server]\n"), "{config}");
    std::fs::write(gateway.config_path(), config.replacen("[server]\n", "[server]\nmax_headers = 200\n", 1))
        .expect("write config");
    gateway.signal("HUP");
    let logged =
        eventually(Duration::from_secs(2), || async { gateway.log_text().contains("configuration reloaded") }).await;
    assert!(logged, "no reload was logged:\n{}", gateway.log_tail(20));

    let reported = gateway
        .log_text()
        .lines()
        .filter(|line| line.contains("configuration reloaded"))
        .any(|line| line.contains("max_headers"));
    let after = hundred_headers().await.map(|response| response.status().as_u16());
    assert!(
        reported || matches!(after, Ok(200)),
        "a reload raised max_headers to 200, yet 100 headers still get {after:?} and the reload log does not \
         report server.max_headers as ignored:\n{}",
        gateway.log_tail(5)
    );
}

// ------------------------------------------------------------------------------------------------
// SIGTERM drain
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_stream_finish_refuses_new_connections_and_exits_zero() {
    let stub = StubUpstream::start().await;
    let mut gateway = GatewayBuilder::new(BINARY)
        .server_setting("shutdown_timeout = \"10s\"")
        .config(&model_table("a", &stub, ""))
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    stub.set_chunk_gap(Duration::from_millis(300));
    stub.set_stream_chunks(5);
    let proxy = gateway.proxy_addr();

    let body = json!({"model": "a", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut response = http()
        .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("the stream starts");
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.expect("read the first chunk").expect("a first chunk");
    let mut received = String::from_utf8_lossy(&first).into_owned();

    gateway.signal("TERM");
    let signalled = Instant::now();
    let reader = tokio::spawn(async move {
        while let Some(chunk) = response.chunk().await.expect("the stream is not cut") {
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
        (received, Instant::now())
    });

    // New connections are refused while the stream is still being served.
    let refused =
        eventually(Duration::from_secs(1), || async { tokio::net::TcpStream::connect(proxy).await.is_err() }).await;
    let refused_after = signalled.elapsed();
    assert!(refused, "the proxy listener still accepts connections after SIGTERM");
    assert!(!reader.is_finished(), "the stream ended before new connections were refused");

    let (received, ended) = reader.await.expect("the reader task");
    assert!(received.trim_end().ends_with("data: [DONE]"), "the stream was not completed:\n{received}");
    let text: String = received
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|event| event["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, reply_text("a", 5), "every content chunk arrives");
    assert!(ended.duration_since(signalled) > refused_after, "refusal came before the stream ended");

    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    let log = gateway.log_tail(20);
    assert!(status.is_some_and(|status| status.success()), "exit status {status:?}; log:\n{log}");
    assert!(gateway.log_text().contains("drained"), "log:\n{log}");
}

/// With `server.drain_delay`, SIGTERM first makes the gateway not ready while it still serves:
/// `/readyz` answers 503 (a balancer stops sending), new connections are still accepted and
/// answered, and a keep-alive client gets its answer with `Connection: close`; only after the
/// delay do the listeners close. A second signal ends the delay at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_drain_delay_serves_not_ready_then_stops() {
    let stub = StubUpstream::start().await;
    let delay = Duration::from_secs(4);
    let mut gateway = GatewayBuilder::new(BINARY)
        .server_setting("drain_delay = \"4s\"")
        .config(&model_table("a", &stub, ""))
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    let keep_alive = http();
    let chat = |client: &reqwest::Client| {
        client
            .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
            .bearer_auth(&key)
            .json(&json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}))
    };
    let before = send(chat(&keep_alive)).await;
    before.assert_ok();
    assert_eq!(before.header("connection"), None, "a keep-alive answer before the signal");

    gateway.signal("TERM");
    let signalled = Instant::now();
    let ready_url = format!("{}/readyz", gateway.proxy_url());
    let not_ready = eventually(Duration::from_secs(2), || async {
        http().get(&ready_url).send().await.is_ok_and(|reply| reply.status() == 503)
    })
    .await;
    assert!(not_ready, "/readyz did not turn 503 after SIGTERM");
    let during = send(chat(&keep_alive)).await;
    during.assert_ok();
    assert_eq!(during.header("connection"), Some("close"), "a keep-alive client is told to move on");
    send(chat(&http())).await.assert_ok();
    assert!(signalled.elapsed() < delay, "the checks above ran past the delay; they prove nothing");

    let status = gateway.wait_exit(delay + Duration::from_secs(15)).await;
    assert!(status.is_some_and(|status| status.success()), "exit status {status:?}");
    assert!(signalled.elapsed() >= delay, "stopped {:?} after SIGTERM, before the drain delay", signalled.elapsed());

    // A second signal cuts a long delay short.
    let mut gateway = GatewayBuilder::new(BINARY).server_setting("drain_delay = \"10m\"").start().await;
    gateway.signal("TERM");
    let ready_url = format!("{}/readyz", gateway.proxy_url());
    assert!(
        eventually(Duration::from_secs(2), || async {
            http().get(&ready_url).send().await.is_ok_and(|reply| reply.status() == 503)
        })
        .await
    );
    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|status| status.success()), "exit status {status:?}: {}", gateway.log_tail(5));
    assert!(gateway.log_text().contains("drain delay cut short"), "{}", gateway.log_tail(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_waiting_for_a_stream_at_the_shutdown_deadline() {
    let stub = StubUpstream::start().await;
    let mut gateway = GatewayBuilder::new(BINARY)
        .server_setting("shutdown_timeout = \"1s\"")
        .config(&model_table("a", &stub, ""))
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    // 20 chunks half a second apart: ten seconds, far past the one-second deadline.
    stub.set_chunk_gap(Duration::from_millis(500));
    stub.set_stream_chunks(20);
    let body = json!({"model": "a", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut response = http()
        .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("the stream starts");
    let request_id = response.headers()["x-request-id"].to_str().expect("an id").to_string();
    response.chunk().await.expect("read the first chunk").expect("a first chunk");

    gateway.signal("TERM");
    let signalled = Instant::now();
    let status = gateway.wait_exit(Duration::from_secs(4)).await;
    assert!(status.is_some(), "still running {:?} after SIGTERM with a 1 s deadline", signalled.elapsed());
    let mut received = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!received.contains("[DONE]"), "the stream could not have finished in time:\n{received}");
    assert!(gateway.log_text().contains("deadline"), "log:\n{}", gateway.log_tail(10));
    // Cut short, the request was still settled and recorded before the process exited.
    gateway.restart().await;
    let record = common::the_record(&gateway, &request_id).await;
    assert_eq!(
        (record["decision"].as_str(), record["reason"].as_str()),
        (Some("error"), Some("cut_at_shutdown")),
        "{record}"
    );
    assert!(
        record["completion_tokens"].as_u64().is_some_and(|tokens| tokens >= 1),
        "what was relayed is billed: {record}"
    );
    let usage = common::get(&gateway, &key, "/v1/usage").await;
    assert_eq!(usage.body["spend"]["today"]["requests"], 1, "a usage row was written: {}", usage.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_shuts_down_cleanly_like_sigterm() {
    let (_stub, mut gateway) = start(&["a"]).await;
    let (_, key) = gateway.create_key(&[]);
    chat(&gateway, Some(&key), "a").await.assert_ok();
    gateway.signal("INT");
    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|status| status.success()), "{status:?}; log:\n{}", gateway.log_tail(10));
    assert!(gateway.log_text().contains("drained"), "log:\n{}", gateway.log_tail(10));
}

/// The audit spill file (`audit.spill_file`, by default in the working directory) is made by the
/// first spill: a gateway whose store never failed leaves none behind, however many records it
/// wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_and_stop_whose_store_never_failed_leaves_no_spill_file() {
    let (_stub, mut gateway) = start(&["a"]).await;
    let spill = gateway.dir().join("portcullis-audit-spill.jsonl");
    let (_, key) = gateway.create_key(&[]);
    chat(&gateway, Some(&key), "a").await.assert_ok();
    assert!(!spill.exists(), "created while serving: {}", spill.display());
    let status = gateway.terminate(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|status| status.success()), "{status:?}; log:\n{}", gateway.log_tail(10));
    assert!(!spill.exists(), "left behind: {}", spill.display());
}

// ------------------------------------------------------------------------------------------------
// Metrics and health
// ------------------------------------------------------------------------------------------------

/// The value of the first sample line of `metrics` whose name is `name` and whose labels
/// include every `label="value"` pair given.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let all =
            labels.iter().all(|(key, value)| label_text.split(',').any(|pair| pair == format!("{key}=\"{value}\"")));
        all.then(|| value.split_whitespace().next()?.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served_on_the_admin_listener() {
    let (stub, gateway) = start(&["a"]).await;
    let (_, key) = gateway.create_key(&["--models", "a"]);
    let (_, narrow) = gateway.create_key(&["--models", "other"]);
    chat(&gateway, Some(&key), "a").await.assert_ok();
    chat(&gateway, Some(&key), "a").await.assert_ok();
    chat(&gateway, Some(&narrow), "a").await.assert_error(403, "model_not_allowed");
    chat(&gateway, None, "a").await.assert_error(401, "invalid_api_key");

    // No admin token needed.
    let scraped = send(http().get(format!("{}/metrics", gateway.admin_url()))).await;
    assert_eq!(scraped.status, 200, "{}", scraped.text);
    let metrics = scraped.text;

    let ok = sample(&metrics, "portcullis_requests_total", &[("listener", "proxy"), ("model", "a"), ("status", "200")]);
    assert!(ok.is_some_and(|count| count >= 2.0), "200s for model a: {ok:?}\n{metrics}");
    let refused =
        sample(&metrics, "portcullis_requests_total", &[("listener", "proxy"), ("model", "a"), ("status", "403")]);
    assert_eq!(refused, Some(1.0), "403s for model a\n{metrics}");
    let anonymous = sample(&metrics, "portcullis_requests_total", &[("listener", "proxy"), ("status", "401")]);
    assert_eq!(anonymous, Some(1.0), "401s\n{metrics}");

    let bucket = sample(&metrics, "portcullis_request_duration_seconds_bucket", &[("model", "a"), ("le", "+Inf")]);
    assert!(bucket.is_some_and(|count| count >= 2.0), "+Inf bucket: {bucket:?}\n{metrics}");
    let buckets =
        metrics.lines().filter(|line| line.starts_with("portcullis_request_duration_seconds_bucket{")).count();
    assert!(buckets > 2, "histogram buckets\n{metrics}");
    let count = sample(&metrics, "portcullis_request_duration_seconds_count", &[("model", "a")]);
    assert!(count.is_some_and(|count| count >= 2.0), "{count:?}\n{metrics}");

    let healthy = sample(&metrics, "portcullis_upstream_healthy", &[("model", "a"), ("endpoint", &stub.url())]);
    assert_eq!(healthy, Some(1.0), "upstream health of {}\n{metrics}", stub.url());
    let in_flight = sample(&metrics, "portcullis_in_flight_requests", &[("listener", "proxy")]);
    assert_eq!(in_flight, Some(0.0), "nothing in flight on the proxy\n{metrics}");

    // The audit writer: four proxy requests and two admin key creations went in; nothing went
    // to the spill file or was lost, and (async durability) every record is written soon after.
    let submitted = sample(&metrics, "portcullis_audit_records_submitted_total", &[]);
    assert!(submitted.is_some_and(|count| count >= 6.0), "audit records submitted: {submitted:?}\n{metrics}");
    for name in ["portcullis_audit_records_spilled_total", "portcullis_audit_records_dropped_total"] {
        assert_eq!(sample(&metrics, name, &[]), Some(0.0), "{name}\n{metrics}");
    }
    let admin_url = gateway.admin_url();
    let all_written = eventually(Duration::from_secs(2), || async {
        let now = send(http().get(format!("{admin_url}/metrics"))).await.text;
        sample(&now, "portcullis_audit_records_written_total", &[]) >= submitted
    })
    .await;
    assert!(all_written, "not every submitted audit record ({submitted:?}) was written within 2 s");

    // The request counter counts: another success shows up in the next scrape.
    chat(&gateway, Some(&key), "a").await.assert_ok();
    let again = send(http().get(format!("{}/metrics", gateway.admin_url()))).await.text;
    let ok_after =
        sample(&again, "portcullis_requests_total", &[("listener", "proxy"), ("model", "a"), ("status", "200")]);
    assert_eq!(ok_after, ok.map(|count| count + 1.0), "{again}");

    // Metrics are not on the client-facing listener.
    let on_proxy = send(http().get(format!("{}/metrics", gateway.proxy_url()))).await;
    on_proxy.assert_error(404, "not_found");

    for base in [gateway.proxy_url(), gateway.admin_url()] {
        for path in ["/healthz", "/readyz"] {
            let reply = send(http().get(format!("{base}{path}"))).await;
            assert_eq!(reply.status, 200, "{base}{path}: {}", reply.text);
        }
    }
}

/// The `model` label is taken from configured model names only: a key holder sending made-up
/// model names must not be able to mint new time series (each one a counter and a 16-bucket
/// histogram kept for the life of the process, and a cardinality bomb for the scraper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_never_carry_model_names_the_client_invented() {
    let (_stub, gateway) = start(&["a"]).await;
    let (_, key) = gateway.create_key(&[]);
    chat(&gateway, Some(&key), "a").await.assert_ok();
    for index in 0..3 {
        chat(&gateway, Some(&key), &format!("invented-{index}")).await.assert_error(404, "model_not_found");
    }
    get(&gateway, &key, "/v1/models/invented-by-path").await.assert_error(404, "model_not_found");

    let metrics = send(http().get(format!("{}/metrics", gateway.admin_url()))).await.text;
    assert!(sample(&metrics, "portcullis_requests_total", &[("model", "a"), ("status", "200")]).is_some(), "{metrics}");
    let invented: Vec<&str> = metrics.lines().filter(|line| line.contains("invented-")).take(6).collect();
    assert!(invented.is_empty(), "client-chosen model names became metric labels:\n{}", invented.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// Request limits
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_request_heads_are_refused_and_the_gateway_keeps_serving() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY)
        .server_setting("max_body_bytes = 1024")
        .config(&model_table("a", &stub, ""))
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    chat(&gateway, Some(&key), "a").await.assert_ok();

    let big = json!({"model": "a", "messages": [{"role": "user", "content": "x".repeat(2048)}]});
    send(http().post(&url).bearer_auth(&key).json(&big)).await.assert_error(413, "request_too_large");

    // The same without a Content-Length: a chunked body read from a file.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("body.json");
    std::fs::write(&file, big.to_string()).expect("write the body");
    let body = reqwest::Body::from(tokio::fs::File::open(&file).await.expect("open the body"));
    let chunked = send(http().post(&url).bearer_auth(&key).header("content-type", "application/json").body(body)).await;
    chunked.assert_error(413, "request_too_large");
    let before = stub.requests_to("/v1/chat/completions").len();
    assert_eq!(before, 1, "an oversized body must not reach the model server");

    // 200 header fields (the default limit is 64).
    let mut many = http().post(&url).bearer_auth(&key).json(&chat_body("a"));
    for index in 0..200 {
        many = many.header(format!("x-filler-{index}"), "v");
    }
    // Either 431 or a closed connection is a refusal; an answer from the route is not.
    match many.send().await {
        Ok(response) => assert_eq!(response.status(), 431, "200 headers were not refused"),
        Err(error) => assert!(!error.is_timeout(), "the gateway hung instead of refusing: {error}"),
    }
    // One header larger than the whole head may be.
    let huge = http().post(&url).bearer_auth(&key).header("x-filler", "v".repeat(32 * 1024)).json(&chat_body("a"));
    match huge.send().await {
        Ok(response) => assert_eq!(response.status(), 431, "a 32 KiB header was not refused"),
        Err(error) => assert!(!error.is_timeout(), "the gateway hung instead of refusing: {error}"),
    }
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), before, "refused heads must not reach the model server");

    chat(&gateway, Some(&key), "a").await.assert_ok();
}

// ------------------------------------------------------------------------------------------------
// Secrets never leak
// ------------------------------------------------------------------------------------------------

/// Every file of the SQLite store (`portcullis.db` and its `-wal`/`-shm`/`-journal`), as bytes.
fn store_bytes(gateway: &Gateway) -> Vec<(String, Vec<u8>)> {
    let db = gateway.db_path();
    let name = db.file_name().and_then(|name| name.to_str()).unwrap_or("portcullis.db").to_string();
    std::fs::read_dir(gateway.dir())
        .expect("list the gateway directory")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_str().is_some_and(|file| file.starts_with(&name)))
        .map(|entry| {
            let path = entry.path();
            (path.display().to_string(), std::fs::read(&path).expect("read a store file"))
        })
        .collect()
}

fn contains_bytes(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// A random alphanumeric tail, so a canary cannot match anything by chance.
fn random_tail() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos, std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_errors_metrics_or_the_store() {
    let upstream_key = format!("sk-upstream-canary-{}", random_tail());
    let admin_token = format!("admintoken-canary-{}", random_tail());
    let stub = StubUpstream::start().await;
    let mut gateway = GatewayBuilder::new(BINARY)
        .admin_token(&admin_token)
        .config(&model_table("a", &stub, &format!("api_key = \"{upstream_key}\"")))
        .config(&model_table("b", &stub, ""))
        .start()
        .await;
    let (key_id, key) = gateway.create_key(&["--models", "a"]);
    let (revoked_id, revoked) = gateway.create_key(&["--models", "a"]);
    gateway.cli_json(&["keys", "revoke", &revoked_id]);
    // The random body of each secret, so that a logged near-miss (a flipped checksum) is caught too.
    let key_body = key[4..36].to_string();
    let revoked_body = revoked[4..36].to_string();

    let mut answers: Vec<Reply> = Vec::new();
    let proxy = |path: &str| format!("{}{path}", gateway.proxy_url());
    let admin = |path: &str| format!("{}{path}", gateway.admin_url());

    // Good requests, plain and streamed.
    let good = chat(&gateway, Some(&key), "a").await;
    good.assert_ok();
    let stream = json!({"model": "a", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let streamed = send(http().post(proxy("/v1/chat/completions")).bearer_auth(&key).json(&stream)).await;
    assert!(streamed.text.contains("data: [DONE]"), "{}", streamed.text);
    get(&gateway, &key, "/v1/models").await.assert_ok();
    answers.push(good);
    // A client that puts its key in the query string.
    let reply = send(http().get(proxy(&format!("/v1/models?api_key={key}")))).await;
    reply.assert_error(401, "invalid_api_key");
    answers.push(reply);
    answers.push(streamed);

    // A key never issued, a wrong checksum, a revoked key, x-api-key, no key.
    let flipped = format!("{}{}", &key[..41], if key.ends_with('A') { 'B' } else { 'A' });
    let unknown = format!("pcl_{}", "Z".repeat(38));
    for bad in [&flipped, &unknown] {
        let reply = chat(&gateway, Some(bad), "a").await;
        reply.assert_error(401, "invalid_api_key");
        answers.push(reply);
    }
    let reply = send(http().post(proxy("/v1/chat/completions")).header("x-api-key", &flipped).json(&chat_body("a")));
    let reply = reply.await;
    reply.assert_error(401, "invalid_api_key");
    answers.push(reply);
    let reply = chat(&gateway, Some(&revoked), "a").await;
    reply.assert_error(401, "revoked_api_key");
    answers.push(reply);
    // The admin token is not an API key.
    let reply = chat(&gateway, Some(&admin_token), "a").await;
    reply.assert_error(401, "invalid_api_key");
    answers.push(reply);
    // A model the key may not use, and one that does not exist.
    let reply = chat(&gateway, Some(&key), "b").await;
    reply.assert_error(403, "model_not_allowed");
    answers.push(reply);
    let reply = chat(&gateway, Some(&key), "nope").await;
    reply.assert_error(404, "model_not_found");
    answers.push(reply);
    // The model server failing.
    stub.fail_with(500);
    let reply = chat(&gateway, Some(&key), "a").await;
    assert!(reply.status >= 500, "{}", reply.text);
    answers.push(reply);
    stub.reset();

    // Admin calls with good and bad tokens.
    let reply = send(http().get(admin("/admin/v1/keys")).bearer_auth(&admin_token)).await;
    reply.assert_ok();
    answers.push(reply);
    let near_miss = format!("{admin_token}x");
    for bad in [near_miss.as_str(), key.as_str(), "pct_notatoken"] {
        let reply = send(http().get(admin("/admin/v1/keys")).bearer_auth(bad)).await;
        reply.assert_error(401, "invalid_token");
        answers.push(reply);
    }
    let reply = send(http().post(admin("/admin/v1/keys")).bearer_auth(&near_miss).json(&json!({"name": "x"}))).await;
    reply.assert_error(401, "invalid_token");
    answers.push(reply);
    let denied = cli_as(&gateway, &near_miss, &["keys", "list"]);
    assert!(!denied.status.success(), "{}", describe(&denied));
    let cli_text = format!("{}{}", String::from_utf8_lossy(&denied.stdout), String::from_utf8_lossy(&denied.stderr));

    let metrics = send(http().get(admin("/metrics"))).await.text;

    let canaries: [(&str, &str); 6] = [
        ("the API key", &key),
        ("the API key's random body", &key_body),
        ("the revoked API key", &revoked),
        ("the revoked API key's random body", &revoked_body),
        ("the admin token", &admin_token),
        ("the upstream api_key", &upstream_key),
    ];
    let check_text = |place: &str, text: &str| {
        for (what, canary) in canaries {
            assert!(!text.contains(canary), "{what} appears in {place}:\n{text}");
        }
    };
    for answer in &answers {
        check_text("an answer body", &answer.text);
        for (name, value) in &answer.headers {
            check_text(&format!("response header {name}"), value.to_str().unwrap_or_default());
        }
    }
    check_text("/metrics", &metrics);
    check_text("the refused CLI's output", &cli_text);
    let store_while_running = store_bytes(&gateway);
    assert!(!store_while_running.is_empty(), "no SQLite files found in {}", gateway.dir().display());

    // The upstream key was configured and used: the stub saw it, and never the client's key.
    let calls = stub.requests_to("/v1/chat/completions");
    assert!(!calls.is_empty());
    for call in calls.iter().filter(|call| call.json_field("model") == "a") {
        assert_eq!(call.header("authorization"), Some(format!("Bearer {upstream_key}").as_str()));
    }
    for call in stub.requests() {
        for (name, value) in &call.headers {
            for (what, canary) in &canaries[..5] {
                assert!(!value.contains(canary), "{what} reached the model server in header {name}");
            }
        }
        assert!(!contains_bytes(&call.raw_body, &key_body), "the API key reached the model server in a body");
    }

    // After a clean shutdown (WAL checkpointed, log flushed) nothing leaked either.
    assert_eq!(gateway.terminate(Duration::from_secs(10)).await.map(|status| status.success()), Some(true));
    let log = gateway.log_text();
    assert!(log.contains("portcullis is serving"), "the log was captured: {log}");
    check_text("the gateway log", &log);
    // Positive controls: the log has the access lines, and the store files are the real ones.
    assert!(log.contains(&key_id), "the access log names the key by its id: {log}");
    let store_after = store_bytes(&gateway);
    assert!(
        store_while_running.iter().chain(&store_after).any(|(_, bytes)| contains_bytes(bytes, &key_id)),
        "the store files hold the key"
    );
    for (path, bytes) in store_while_running.into_iter().chain(store_after) {
        for (what, canary) in canaries {
            assert!(!contains_bytes(&bytes, canary), "{what} appears in the store file {path}");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Key use times survive a restart
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_use_times_are_written_back_at_shutdown() {
    let (_stub, mut gateway) = start(&["a"]).await;
    let (used, key) = gateway.create_key(&["--name", "used"]);
    let (idle, _) = gateway.create_key(&["--name", "idle"]);
    chat(&gateway, Some(&key), "a").await.assert_ok();

    assert_eq!(gateway.terminate(Duration::from_secs(10)).await.map(|status| status.success()), Some(true));
    gateway.restart().await;
    let shown = gateway.cli_json(&["keys", "show", &used]);
    assert!(shown["last_used_at"].is_string(), "the use before shutdown was not recorded: {shown}");
    let shown = gateway.cli_json(&["keys", "show", &idle]);
    assert!(shown["last_used_at"].is_null(), "an unused key has no use time: {shown}");
}

// ------------------------------------------------------------------------------------------------
// The first admin token
// ------------------------------------------------------------------------------------------------

const ANNOUNCEMENT: &str = "First admin token";

/// Every `pct_` admin token (`pct_` + 38 base62 characters) in `text`, in order.
fn admin_tokens_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("pct_") {
        let candidate: String = rest[at + 4..].chars().take_while(char::is_ascii_alphanumeric).collect();
        if candidate.len() == 38 {
            found.push(format!("pct_{candidate}"));
        }
        rest = &rest[at + 4..];
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_without_a_bootstrap_token_prints_one_admin_token_once() {
    // The builder always sets PORTCULLIS_ADMIN_TOKEN; an empty value means unset to `serve`.
    let stub = StubUpstream::start().await;
    let mut gateway = GatewayBuilder::new(BINARY)
        .env("PORTCULLIS_ADMIN_TOKEN", "")
        .config(&model_table("a", &stub, ""))
        .start()
        .await;

    let log = gateway.log_text();
    assert_eq!(log.matches(ANNOUNCEMENT).count(), 1, "announced once:\n{log}");
    let tokens = admin_tokens_in(&log);
    let distinct: BTreeSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), 1, "exactly one generated admin token in the output:\n{log}");
    let token = tokens[0].clone();
    // Straight to the terminal, never through the (JSON) logger.
    for line in log.lines().filter(|line| line.contains(&token)) {
        assert!(serde_json::from_str::<Value>(line).is_err(), "the token went through the logger: {line}");
    }
    let occurrences = log.matches(&token).count();

    // It works against the admin API; the builder's own token is not an admin token here.
    let created = common::cli_json_as(&gateway, &token, &["keys", "create", "--name", "by-first-admin"]);
    let key = str_field(&created, "key").to_string();
    chat(&gateway, Some(&key), "a").await.assert_ok();
    let refused = cli_as(&gateway, gateway.admin_token(), &["keys", "list"]);
    assert!(!refused.status.success(), "{}", describe(&refused));

    // A restart on the same store prints no other token, and the first one still works.
    gateway.restart().await;
    let log = gateway.log_text();
    assert_eq!(log.matches(ANNOUNCEMENT).count(), 1, "announced again after a restart:\n{log}");
    assert_eq!(admin_tokens_in(&log).len(), tokens.len(), "another token was printed:\n{log}");
    assert_eq!(log.matches(&token).count(), occurrences);
    let listed = common::cli_json_as(&gateway, &token, &["keys", "list"]);
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");
    chat(&gateway, Some(&key), "a").await.assert_ok();
}

// ------------------------------------------------------------------------------------------------
// x-request-id
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_when_sane_and_generated_otherwise() {
    let (stub, gateway) = start(&["a"]).await;
    let (_, key) = gateway.create_key(&[]);
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    let with_id = |id: &str| http().post(&url).bearer_auth(&key).header("x-request-id", id).json(&chat_body("a"));

    // A sane id is echoed, and passed on to the model server.
    let sane = "client-trace_01.a:b";
    let reply = send(with_id(sane)).await;
    reply.assert_ok();
    assert_eq!(reply.header("x-request-id"), Some(sane));
    let seen = stub.last_request_to("/v1/chat/completions").expect("the stub was called");
    assert_eq!(seen.header("x-request-id"), Some(sane));
    let longest = "a".repeat(128);
    assert_eq!(send(with_id(&longest)).await.header("x-request-id"), Some(longest.as_str()));

    // Insane ids are replaced by a generated one.
    let generated = |reply: &Reply| {
        let id = reply.header("x-request-id").unwrap_or_default().to_string();
        assert!(id.starts_with("req_") && id.len() > 4, "expected a generated id, got {id:?}");
        id
    };
    let mut ids = BTreeSet::new();
    for insane in ["has space", &"a".repeat(129), "semi;colon", "quote\"d", "slash/ed"] {
        let reply = send(with_id(insane)).await;
        reply.assert_ok();
        let id = generated(&reply);
        // The model server gets the id the client got back, not the rejected one.
        let forwarded = stub.last_request_to("/v1/chat/completions").expect("the stub was called");
        assert_eq!(forwarded.header("x-request-id"), Some(id.as_str()), "sent {insane:?}");
        ids.insert(id);
    }
    let reply = send(http().post(&url).bearer_auth(&key).json(&chat_body("a"))).await;
    ids.insert(generated(&reply));
    assert_eq!(ids.len(), 6, "generated ids are unique: {ids:?}");

    // Errors carry one too, on both listeners.
    let reply = chat(&gateway, None, "a").await;
    reply.assert_error(401, "invalid_api_key");
    generated(&reply);
    let reply = send(http().post(&url).header("x-request-id", sane).json(&chat_body("a"))).await;
    reply.assert_error(401, "invalid_api_key");
    assert_eq!(reply.header("x-request-id"), Some(sane));
    let reply = get(&gateway, &key, "/v1/nowhere").await;
    reply.assert_error(404, "not_found");
    generated(&reply);
    let reply = send(http().get(format!("{}/admin/v1/keys", gateway.admin_url()))).await;
    reply.assert_error(401, "invalid_token");
    generated(&reply);
    let reply =
        send(http().get(format!("{}/admin/v1/keys", gateway.admin_url())).header("x-request-id", "has space")).await;
    generated(&reply);
}
