//! The official `openai` Python SDK against the running binary: first in front of the stub
//! upstream (every scenario, every error class), then in front of a real small model.
//!
//! Needs a Python with `openai` (`scripts/test.sh` makes `.venv`) and, for the real-model test,
//! `PORTCULLIS_REAL_SLM_URL` (`scripts/real-slm.sh start`). Missing either: skipped loudly, or a
//! failure when `CI=true`.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use common::BINARY;
use portcullis_testkit::{Gateway, GatewayBuilder, SdkCheck, SdkScript, real_slm_url_or_skip};

// Multi-threaded: the SDK script runs as a blocking child process while the in-process stub
// must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_chat_stream_embeddings_models_and_error_classes_through_the_gateway() {
    let Some(sdk) = SdkCheck::or_skip(SdkScript::OpenAi) else {
        return;
    };
    let (stub, gateway) = common::start(&["small", "secret-model"]).await;
    let (revoked_id, revoked) = gateway.create_key(&["--models", "small"]);
    assert!(gateway.cli(&["keys", "revoke", &revoked_id]).status.success());
    let (_, key) = gateway.create_key(&["--models", "small"]);
    let base_url = gateway.openai_base_url();
    let env = [
        ("PORTCULLIS_BASE_URL", base_url.as_str()),
        ("PORTCULLIS_KEY", key.as_str()),
        ("PORTCULLIS_MODEL", "small"),
        ("PORTCULLIS_EXPECT_MODELS", "small"),
        ("PORTCULLIS_HIDDEN_MODEL", "secret-model"),
        ("PORTCULLIS_DENIED_MODEL", "secret-model"),
        ("PORTCULLIS_OTHER_KEY", revoked.as_str()),
    ];

    let chat = sdk.run("chat", &env);
    assert!(chat["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0, "{chat}");
    let stream = sdk.run("stream", &env);
    assert!(stream["chunks"].as_u64().unwrap_or(0) >= 2, "{stream}");
    sdk.run("stream-no-usage", &env);
    let embeddings = sdk.run("embeddings", &env);
    assert!(embeddings["dimensions"].as_u64().unwrap_or(0) > 0, "{embeddings}");
    let models = sdk.run("models", &env);
    assert_eq!(models["models"], serde_json::json!(["small"]));
    let errors = sdk.run("errors", &env);
    for class in ["AuthenticationError", "PermissionDeniedError", "NotFoundError", "BadRequestError"] {
        assert!(errors.to_string().contains(class), "scenario errors did not check {class}: {errors}");
    }
    // The SDK saw the gateway's own stream; the stub got exactly the requests the SDK made.
    assert!(!stub.requests_to("/v1/chat/completions").is_empty());
}

/// Gemma 3 270M behind llama.cpp's server: real tokens, real usage counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_through_the_gateway_to_a_real_small_model() {
    let Some(sdk) = SdkCheck::or_skip(SdkScript::OpenAi) else {
        return;
    };
    let Some(upstream) = real_slm_url_or_skip() else {
        return;
    };
    let config = common::real_slm_model(&upstream);
    let gateway: Gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&["--models", "gemma"]);
    let base_url = gateway.openai_base_url();
    let env = [
        ("PORTCULLIS_BASE_URL", base_url.as_str()),
        ("PORTCULLIS_KEY", key.as_str()),
        ("PORTCULLIS_MODEL", "gemma"),
        ("PORTCULLIS_MAX_TOKENS", "12"),
        ("PORTCULLIS_TIMEOUT", "120"),
    ];

    let chat = sdk.run("chat", &env);
    let usage = &chat["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap_or(0) > 0, "real prompt tokens counted: {chat}");
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    assert!((1..=12).contains(&completion), "the model generated within max_tokens: {chat}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(usage["prompt_tokens"].as_u64().unwrap() + completion));

    let stream = sdk.run("stream", &env);
    assert!(stream["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0, "usage chunk relayed: {stream}");
    assert!(!stream["text"].as_str().unwrap_or_default().is_empty(), "{stream}");

    let embeddings = sdk.run("embeddings", &env);
    assert_eq!(embeddings["dimensions"].as_u64(), Some(640), "Gemma 3 270M embeds in 640 dimensions: {embeddings}");
    assert!(embeddings["usage_one"]["prompt_tokens"].as_u64().unwrap_or(0) > 0, "{embeddings}");
}

/// A model server that misbehaves, as the SDK sees it through the gateway: its failures raise
/// `InternalServerError` (never `AuthenticationError` for a key that is fine), its non-answers
/// are not returned as completions, and a stream it breaks raises an `APIError` with the cause
/// instead of ending as if complete or failing as a connection error the SDK would retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exceptions_for_a_model_server_that_misbehaves() {
    let Some(sdk) = SdkCheck::or_skip(SdkScript::OpenAi) else {
        return;
    };
    let (_stub, gateway) = common::start(&["small"]).await;
    let (_, key) = gateway.create_key(&["--models", "small"]);
    let base_url = gateway.openai_base_url();
    let env = [
        ("PORTCULLIS_BASE_URL", base_url.as_str()),
        ("PORTCULLIS_KEY", key.as_str()),
        ("PORTCULLIS_MODEL", "small"),
        ("PORTCULLIS_TIMEOUT", "10"),
    ];

    let faults = sdk.run("faults", &env);
    for (fault, class) in [
        ("unauthorized", "InternalServerError"),
        ("leaky_failure", "InternalServerError"),
        ("html", "InternalServerError"),
        ("wrong_shape", "InternalServerError"),
        ("reset_mid_stream", "APIError"),
        ("invalid_event", "APIError"),
        ("unterminated_event", "APIError"),
    ] {
        assert_eq!(faults[fault]["class"], class, "{fault}: {faults}");
    }
    assert_eq!(faults["hold_after_done"]["finish_reason"], "stop", "{faults}");
}
