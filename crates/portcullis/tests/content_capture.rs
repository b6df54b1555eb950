//! Content capture through the real binary: prompts and completions are recorded only for keys
//! and teams that opted in, redacted (built-in rules and `audit.redact`) before they are stored,
//! and only an admin may turn capture on.
//!
//! The stub answers `echo:<upstream model> 1 2` (three chunks when streamed). The model's
//! upstream name is an email address, so the completion has something to redact too.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{AUDIT_WAIT, BINARY, Reply, cli_as, cli_json_as, describe, http, send, str_field};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

const MODEL: &str = "m";
/// What the stub's answer becomes once redacted: it echoes the upstream model, an email address.
const COMPLETION: &str = "echo:[REDACTED:email] 1 2";
/// The prompt of [`prompt_with`], redacted.
const REDACTED_PROMPT: &str =
    "mail [REDACTED:email], card [REDACTED:card], key [REDACTED:api_key], ticket [REDACTED:custom]";

async fn start_gateway() -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[audit]\nredact = [\"ACME-[0-9]{{6}}\"]\n\n[[models]]\nname = \"{MODEL}\"\nupstream_model = \"carol@example.org\"\n\
         endpoints = [\"{}\"]\n",
        stub.url()
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    (stub, gateway)
}

/// A prompt with one thing for each kind of rule: an email, a Luhn-valid card number, a
/// Portcullis key (the caller's own) and a match of the custom rule.
fn prompt_with(secret: &str) -> String {
    format!("mail alice@example.com, card 4111 1111 1111 1111, key {secret}, ticket ACME-123456")
}

/// `POST /v1/<path>` as `key` with `x-request-id: id`, read to the end.
async fn call(gateway: &Gateway, key: &str, path: &str, id: &str, body: &Value) -> Reply {
    let request = http()
        .post(format!("{}/v1/{path}", gateway.proxy_url()))
        .bearer_auth(key)
        .header("x-request-id", id)
        .json(body);
    let reply = send(request).await;
    reply.assert_ok();
    reply
}

/// A chat request saying `content`, plain or streamed.
async fn chat(gateway: &Gateway, key: &str, id: &str, content: &str, stream: bool) -> Reply {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream});
    call(gateway, key, "chat/completions", id, &body).await
}

/// The key's records from `GET /admin/v1/audit?key=…`, polled until there are `count`.
async fn records_of(gateway: &Gateway, key_id: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + AUDIT_WAIT;
    loop {
        let reply = send(
            http()
                .get(format!("{}/admin/v1/audit?key={key_id}", gateway.admin_url()))
                .bearer_auth(gateway.admin_token()),
        )
        .await;
        reply.assert_ok();
        let records = reply.body["data"].as_array().unwrap_or_else(|| panic!("no data in {}", reply.text)).clone();
        if records.len() >= count {
            return records;
        }
        assert!(Instant::now() < deadline, "{count} records of {key_id} expected within {AUDIT_WAIT:?}: {records:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The record of one request among `records`.
fn record<'a>(records: &'a [Value], request_id: &str) -> &'a Value {
    records
        .iter()
        .find(|record| record["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no record of {request_id} in {records:#?}"))
}

/// A record's `content`, parsed; `None` when it has none.
fn content(record: &Value) -> Option<Value> {
    let text = record["content"].as_str()?;
    Some(serde_json::from_str(text).unwrap_or_else(|error| panic!("content is not JSON ({error}): {text}")))
}

#[track_caller]
fn assert_forbidden(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the command should have failed: {}", describe(output));
    assert!(stderr.contains("403") && stderr.contains("(forbidden)"), "expected a 403: {}", describe(output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_capture_records_no_content() {
    let (_stub, gateway) = start_gateway().await;
    let (id, key) = gateway.create_key(&[]);
    assert_eq!(gateway.cli_json(&["keys", "show", &id])["capture_content"], false, "capture is off by default");

    let prompt = prompt_with(&key);
    chat(&gateway, &key, "plain", &prompt, false).await;
    chat(&gateway, &key, "streamed", &prompt, true).await;

    let records = records_of(&gateway, &id, 2).await;
    for request_id in ["plain", "streamed"] {
        let record = record(&records, request_id);
        assert_eq!(record["decision"], "allow", "{record}");
        assert_eq!(record["content"], Value::Null, "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capturing_key_records_its_prompts_and_completions_redacted() {
    let (_stub, gateway) = start_gateway().await;
    let (id, key) = gateway.create_key(&["--capture-content"]);
    assert_eq!(gateway.cli_json(&["keys", "show", &id])["capture_content"], true);

    let prompt = prompt_with(&key);
    let plain = chat(&gateway, &key, "plain", &prompt, false).await;
    assert_eq!(
        plain.body["choices"][0]["message"]["content"], "echo:carol@example.org 1 2",
        "the client's answer is whole"
    );
    let streamed = chat(&gateway, &key, "streamed", &prompt, true).await;
    assert!(streamed.text.contains("carol@example.org"), "{}", streamed.text);
    call(
        &gateway,
        &key,
        "embeddings",
        "embedded",
        &json!({"model": MODEL, "input": ["card 4111-1111-1111-1111", "ok"]}),
    )
    .await;

    let records = records_of(&gateway, &id, 3).await;
    for request_id in ["plain", "streamed"] {
        let record = record(&records, request_id);
        assert_eq!(
            content(record),
            Some(json!({"prompt": REDACTED_PROMPT, "completion": COMPLETION})),
            "{request_id}: {record}"
        );
    }
    let embedded = record(&records, "embedded");
    assert_eq!(content(embedded), Some(json!({"prompt": "card [REDACTED:card]\nok"})), "embeddings: prompt only");

    // Nothing redacted is anywhere in the stored records, and content is part of the hash chain.
    let stored = serde_json::to_string(&records).expect("records serialise");
    for secret in ["alice@example.com", "4111", &key, "ACME-123456", "carol@example.org"] {
        assert!(!stored.contains(secret), "{secret:?} reached the audit log: {stored}");
    }
    let verify =
        send(http().get(format!("{}/admin/v1/audit/verify", gateway.admin_url())).bearer_auth(gateway.admin_token()))
            .await;
    assert_eq!(verify.body["ok"], true, "{}", verify.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capturing_team_applies_to_its_keys_until_turned_off() {
    let (_stub, gateway) = start_gateway().await;
    let team = gateway.cli_json(&["teams", "create", "acme", "--capture-content"]);
    assert_eq!(team["capture_content"], true, "{team}");
    let (id, key) = gateway.create_key(&["--team", "acme"]);
    assert_eq!(gateway.cli_json(&["keys", "show", &id])["capture_content"], false, "the key itself did not opt in");
    let (other_id, other_key) = gateway.create_key(&["--team", "globex"]);

    chat(&gateway, &key, "team-on", &prompt_with(&key), true).await;
    chat(&gateway, &other_key, "other-team", &prompt_with(&other_key), false).await;
    let records = records_of(&gateway, &id, 1).await;
    assert_eq!(
        content(record(&records, "team-on")),
        Some(json!({"prompt": REDACTED_PROMPT, "completion": COMPLETION}))
    );
    assert_eq!(record(&records_of(&gateway, &other_id, 1).await, "other-team")["content"], Value::Null);

    let team = gateway.cli_json(&["teams", "update", "acme", "--capture-content", "false"]);
    assert_eq!(team["capture_content"], false, "{team}");
    chat(&gateway, &key, "team-off", &prompt_with(&key), false).await;
    let records = records_of(&gateway, &id, 2).await;
    assert_eq!(record(&records, "team-off")["content"], Value::Null, "turning capture off applies at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_turns_capture_on_or_off() {
    let (_stub, gateway) = start_gateway().await;
    gateway.cli_json(&["teams", "create", "acme"]);
    let issued = gateway.cli_json(&["tokens", "create", "--name", "t", "--role", "team_admin", "--team", "acme"]);
    let token = str_field(&issued, "token").to_string();

    assert_forbidden(&cli_as(&gateway, &token, &["keys", "create", "--name", "spy", "--capture-content"]));
    let created = cli_json_as(&gateway, &token, &["keys", "create", "--name", "plain"]);
    let id = str_field(&created, "id").to_string();
    assert_forbidden(&cli_as(&gateway, &token, &["keys", "update", &id, "--capture-content", "true"]));
    assert_forbidden(&cli_as(&gateway, &token, &["teams", "update", "acme", "--capture-content", "true"]));
    assert_eq!(gateway.cli_json(&["keys", "show", &id])["capture_content"], false, "refusals change nothing");

    let updated = gateway.cli_json(&["keys", "update", &id, "--capture-content", "true"]);
    assert_eq!(updated["capture_content"], true, "{updated}");
    // Resending the current value changes nothing, so the team admin may; turning it off may not.
    cli_json_as(&gateway, &token, &["keys", "update", &id, "--capture-content", "true"]);
    assert_forbidden(&cli_as(&gateway, &token, &["keys", "update", &id, "--capture-content", "false"]));
    assert_eq!(gateway.cli_json(&["keys", "show", &id])["capture_content"], true);
}
