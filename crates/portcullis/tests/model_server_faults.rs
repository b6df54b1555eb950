//! Model servers that misbehave, through the real binary: what the client sees, what is billed,
//! what is audited, and that the gateway still starts afterwards.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use common::{BINARY, chat_body, http, send, the_record};
use portcullis_testkit::{GatewayBuilder, StubUpstream};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_usage_figure_is_billed_within_its_bounds_and_the_gateway_still_starts() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nprice = {{ input_per_million = 1.0, output_per_million = 2.0 }}\n",
        stub.url()
    );
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (key_id, key) = gateway.create_key(&[]);
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    for (reported, stream) in [(u64::MAX, false), (9_200_000_000_000_000_000, false), (u64::MAX, true)] {
        stub.set_reported_usage(Some((reported, reported)));
        let mut body = chat_body("m");
        body["stream"] = json!(stream);
        body["stream_options"] = json!({"include_usage": true});
        let reply = send(http().post(&url).bearer_auth(&key).json(&body)).await;
        reply.assert_ok();
        let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
        let billed = record["prompt_tokens"]
            .as_u64()
            .unwrap_or(u64::MAX)
            .saturating_add(record["completion_tokens"].as_u64().unwrap_or(u64::MAX));
        assert!(billed < 10_000, "billed {billed} tokens for a reported {reported}: {record}");
        assert_eq!(record["usage_estimated"], true, "{record}");
        let reason = record["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("usage_bounded") && reason.contains(&reported.to_string()),
            "the evidence is kept: {record}"
        );
    }
    let spend = common::get(&gateway, &key, "/v1/usage").await;
    let tokens = spend.body["spend"]["today"]["tokens"].as_u64().expect("spend today");
    assert!(tokens < 30_000, "{}", spend.text);

    gateway.restart().await;
    common::chat(&gateway, Some(&key), "m").await.assert_ok();
    let report = send(
        http()
            .get(format!("{}/admin/v1/usage?group_by=key&since=1d", gateway.admin_url()))
            .bearer_auth(gateway.admin_token()),
    )
    .await;
    assert_eq!(report.status, 200, "{}", report.text);
    assert!(report.text.contains(&key_id), "{}", report.text);
}
