//! The official `anthropic` Python SDK against the running binary: in front of the stub model
//! server (every scenario, every error class, a stream cut mid-way), then in front of a real
//! small model, with what each call was billed checked in `/v1/usage` and the audit record.
//!
//! Needs a Python with `anthropic` (`scripts/test.sh` makes `.venv`) and, for the real-model
//! test, `PORTCULLIS_REAL_SLM_URL` (`scripts/real-slm.sh start`). Missing either: skipped loudly,
//! or a failure when `CI=true`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, reason = "tests")]

mod common;

use std::time::{Duration, Instant};

use portcullis_testkit::{Gateway, GatewayBuilder, SdkCheck, SdkScript, StubUpstream, real_slm_url_or_skip};
use serde_json::Value;

/// A key for `model` (and one allowed a request a minute, and one without the `messages`
/// scope) and the environment the script reads.
struct Keys {
    key_id: String,
    key: String,
    limited: String,
    unscoped: String,
}

impl Keys {
    fn new(gateway: &Gateway) -> Keys {
        let (key_id, key) = gateway.create_key(&[]);
        let (_, limited) = gateway.create_key(&["--tier", "slow"]);
        let (_, unscoped) = gateway.create_key(&["--scopes", "chat"]);
        Keys { key_id, key, limited, unscoped }
    }

    fn env<'a>(&'a self, base_url: &'a str, model: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![
            ("PORTCULLIS_BASE_URL", base_url),
            ("PORTCULLIS_KEY", self.key.as_str()),
            ("PORTCULLIS_MODEL", model),
            ("PORTCULLIS_LIMITED_KEY", self.limited.as_str()),
            ("PORTCULLIS_UNSCOPED_KEY", self.unscoped.as_str()),
        ];
        env.extend_from_slice(extra);
        env
    }
}

const TIERS: &str = "[tiers.free]\n\n[tiers.slow]\nrequests_per_minute = 1\n";

/// The key's allowed records for `path`, once there are `count` of them.
async fn allowed_records(gateway: &Gateway, key_id: &str, path: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + common::AUDIT_WAIT;
    loop {
        let records: Vec<Value> = common::audit_records(gateway, &format!("key={key_id}"))
            .await
            .into_iter()
            .filter(|record| record["path"] == path && record["decision"] == "allow")
            .collect();
        if records.len() >= count || Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the script's `usage` against the key's one record for `path` and returns it billed.
async fn billed_as_reported(gateway: &Gateway, keys: &Keys, path: &str, observed: &Value) -> (u64, u64) {
    let records = allowed_records(gateway, &keys.key_id, path, 1).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let usage = &observed["usage"];
    let reported = (usage["prompt_tokens"].as_u64().unwrap(), usage["output_tokens"].as_u64().unwrap());
    assert_eq!(common::billed(&records[0]), reported, "billed the whole prompt the SDK saw: {observed}");
    assert_eq!(records[0]["usage_estimated"], false, "{}", records[0]);
    reported
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_messages_count_tokens_and_error_classes_through_the_gateway() {
    let Some(sdk) = SdkCheck::or_skip(SdkScript::Anthropic) else {
        return;
    };
    let stub = StubUpstream::start().await;
    let config = format!("[[models]]\nname = \"small\"\nendpoints = [\"{}\"]\n\n{TIERS}", stub.url());
    let gateway = GatewayBuilder::new(common::BINARY).config(&config).start().await;
    let base_url = gateway.proxy_url();

    let keys = Keys::new(&gateway);
    let env = keys.env(&base_url, "small", &[]);
    let message = sdk.run("message", &env);
    assert_eq!(message["text"], portcullis_testkit::reply_text("small", 3), "{message}");
    // The stub reports part of the prompt as read from its cache: it is billed all the same.
    assert!(message["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 0, "{message}");
    let (prompt, completion) = billed_as_reported(&gateway, &keys, "/v1/messages", &message).await;
    assert_eq!(common::spent_today(&gateway, &keys.key, 1).await["tokens"].as_u64(), Some(prompt + completion));
    let forwarded = stub.last_request_to("/v1/messages").unwrap();
    assert!(forwarded.header("anthropic-version").is_some(), "the SDK's API version is forwarded");

    let keys = Keys::new(&gateway);
    let env = keys.env(&base_url, "small", &[]);
    let stream = sdk.run("stream", &env);
    assert_eq!(stream["deltas"], 3, "{stream}");
    billed_as_reported(&gateway, &keys, "/v1/messages", &stream).await;

    let counted = sdk.run("count_tokens", &env);
    assert!(counted["input_tokens"].as_u64().unwrap() > 0, "{counted}");
    let record = &allowed_records(&gateway, &keys.key_id, "/v1/messages/count_tokens", 1).await[0];
    assert_eq!(common::billed(record), (0, 0), "counting bills no tokens: {record}");

    let errors = sdk.run("errors", &env);
    for (case, class) in [
        ("bad_key", "AuthenticationError"),
        ("count_bad_key", "AuthenticationError"),
        ("no_scope", "PermissionDeniedError"),
        ("unknown_model", "NotFoundError"),
        ("rate_limited", "RateLimitError"),
        ("no_max_tokens", "BadRequestError"),
    ] {
        assert_eq!(errors[case]["class"], class, "{case}: {errors}");
    }
    let cut = sdk.run("stream-cut", &env);
    assert_eq!(cut["text"], "echo:small", "the text before the cut reached the SDK: {cut}");
}

/// Gemma 3 270M behind llama.cpp's server, which answers `/v1/messages` and count_tokens itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_through_the_gateway_to_a_real_small_model() {
    let Some(sdk) = SdkCheck::or_skip(SdkScript::Anthropic) else {
        return;
    };
    let Some(upstream) = real_slm_url_or_skip() else {
        return;
    };
    let config = format!("{}server = \"llamacpp\"\n\n{TIERS}", common::real_slm_model(&upstream));
    let gateway = GatewayBuilder::new(common::BINARY).config(&config).start().await;
    let base_url = gateway.proxy_url();
    let slow_model = [("PORTCULLIS_MAX_TOKENS", "12"), ("PORTCULLIS_TIMEOUT", "120")];
    let run = |scenario: &str, keys: &Keys| sdk.run(scenario, &keys.env(&base_url, "gemma", &slow_model));

    let keys = Keys::new(&gateway);
    let message = run("message", &keys);
    let (prompt, completion) = billed_as_reported(&gateway, &keys, "/v1/messages", &message).await;
    assert!(prompt > 0 && (1..=12).contains(&completion), "{message}");
    assert_eq!(common::spent_today(&gateway, &keys.key, 1).await["tokens"].as_u64(), Some(prompt + completion));

    let keys = Keys::new(&gateway);
    let stream = run("stream", &keys);
    assert!(stream["deltas"].as_u64().unwrap() >= 1, "{stream}");
    billed_as_reported(&gateway, &keys, "/v1/messages", &stream).await;

    let counted = run("count_tokens", &keys);
    assert!(counted["input_tokens"].as_u64().unwrap() > 0, "{counted}");
    let record = &allowed_records(&gateway, &keys.key_id, "/v1/messages/count_tokens", 1).await[0];
    assert_eq!(common::billed(record), (0, 0), "counting bills no tokens: {record}");

    let errors = run("errors", &keys);
    for (case, class) in [
        ("bad_key", "AuthenticationError"),
        ("no_scope", "PermissionDeniedError"),
        ("unknown_model", "NotFoundError"),
        ("rate_limited", "RateLimitError"),
    ] {
        assert_eq!(errors[case]["class"], class, "{case}: {errors}");
    }
}
