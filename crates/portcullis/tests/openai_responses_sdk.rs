//! The official `openai` Python SDK's `responses.create` (plain and streamed) through the
//! running binary: in front of the stub (stored responses, and every error class the SDK
//! raises), then in front of a real small model (llama.cpp's server), with the usage it reports
//! checked against `/v1/usage` and the audit record.
//!
//! Needs a Python with `openai` (`scripts/test.sh` makes `.venv`, or `PORTCULLIS_PYTHON`) and,
//! for the real model, `PORTCULLIS_REAL_SLM_URL`. Missing either: skipped loudly, or a failure
//! when `CI=true`.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use common::{BINARY, the_record};
use portcullis_testkit::{GatewayBuilder, SdkCheck, SdkScript, StubUpstream, real_slm_url_or_skip};
use serde_json::Value;

fn tokens(usage: &Value) -> u64 {
    usage["input_tokens"].as_u64().unwrap_or(0) + usage["output_tokens"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_responses_stored_responses_and_error_classes_through_the_gateway() {
    let Some(sdk) = SdkCheck::or_skip(SdkScript::OpenAiResponses) else {
        return;
    };
    let stub = StubUpstream::start().await;
    let config = format!(
        "[tiers.free]\n\n[tiers.trickle]\nrequests_per_minute = 1\n\n[[models]]\nname = \"small\"\nupstream_model = \"Small-Upstream\"\nendpoints = [\"{}\"]\n",
        stub.url()
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&["--scopes", "responses"]);
    let (_, other) = gateway.create_key(&["--scopes", "responses"]);
    let (_, chat_only) = gateway.create_key(&["--scopes", "chat"]);
    let (_, limited) = gateway.create_key(&["--tier", "trickle"]);
    let base_url = gateway.openai_base_url();
    let env = [
        ("PORTCULLIS_BASE_URL", base_url.as_str()),
        ("PORTCULLIS_KEY", key.as_str()),
        ("PORTCULLIS_MODEL", "small"),
        ("PORTCULLIS_STORES", "1"),
        ("PORTCULLIS_CHAT_ONLY_KEY", chat_only.as_str()),
        ("PORTCULLIS_OTHER_KEY", other.as_str()),
        ("PORTCULLIS_LIMITED_KEY", limited.as_str()),
    ];

    let seen = sdk.run("responses", &env);
    assert_eq!(seen["stored"]["deleted"], true, "{seen}");
    let record = the_record(&gateway, seen["plain"]["request_id"].as_str().expect("a request id")).await;
    assert_eq!(record["completion_tokens"], seen["plain"]["usage"]["output_tokens"], "{record}");
    assert_error_classes(&sdk.run("errors", &env));
}

/// Gemma 3 270M behind llama.cpp's server answers `/v1/responses` itself: real tokens, its own
/// usage, billed and audited as reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_responses_through_the_gateway_to_a_real_small_model() {
    let Some(sdk) = SdkCheck::or_skip(SdkScript::OpenAiResponses) else {
        return;
    };
    let Some(upstream) = real_slm_url_or_skip() else {
        return;
    };
    let config =
        format!("[tiers.free]\n\n[tiers.trickle]\nrequests_per_minute = 1\n\n{}", common::real_slm_model(&upstream));
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&["--models", "gemma", "--scopes", "responses"]);
    let (_, other) = gateway.create_key(&["--models", "gemma", "--scopes", "responses"]);
    let (_, chat_only) = gateway.create_key(&["--models", "gemma", "--scopes", "chat"]);
    let (_, limited) = gateway.create_key(&["--models", "gemma", "--tier", "trickle"]);
    let base_url = gateway.openai_base_url();
    let env = [
        ("PORTCULLIS_BASE_URL", base_url.as_str()),
        ("PORTCULLIS_KEY", key.as_str()),
        ("PORTCULLIS_MODEL", "gemma"),
        ("PORTCULLIS_MAX_TOKENS", "12"),
        ("PORTCULLIS_TIMEOUT", "120"),
        ("PORTCULLIS_CHAT_ONLY_KEY", chat_only.as_str()),
        ("PORTCULLIS_OTHER_KEY", other.as_str()),
        ("PORTCULLIS_LIMITED_KEY", limited.as_str()),
    ];

    let seen = sdk.run("responses", &env);
    let (plain, streamed) = (&seen["plain"]["usage"], &seen["stream"]["usage"]);
    assert!(!seen["plain"]["text"].as_str().unwrap_or_default().is_empty(), "{seen}");
    let record = the_record(&gateway, seen["plain"]["request_id"].as_str().expect("a request id")).await;
    assert_eq!(
        (&record["prompt_tokens"], &record["completion_tokens"], &record["usage_estimated"]),
        (&plain["input_tokens"], &plain["output_tokens"], &Value::Bool(false)),
        "billed as the model server reported: {record}"
    );
    let today = common::spent_today(&gateway, &key, 2).await;
    assert_eq!(today["tokens"].as_u64(), Some(tokens(plain) + tokens(streamed)), "{today} vs {seen}");

    // The refusals are the gateway's own, in front of a real server as in front of the stub.
    assert_error_classes(&sdk.run("errors", &env));
}

/// Every error case of the `errors` scenario raised the SDK's own class.
#[track_caller]
fn assert_error_classes(errors: &Value) {
    for (case, class) in [
        ("401", "AuthenticationError"),
        ("403", "PermissionDeniedError"),
        ("404_unknown", "NotFoundError"),
        ("404_not_mine", "NotFoundError"),
        ("404_continued_by_another", "NotFoundError"),
        ("429", "RateLimitError"),
    ] {
        assert_eq!(errors[case]["class"], class, "{case}: {errors}");
    }
}
