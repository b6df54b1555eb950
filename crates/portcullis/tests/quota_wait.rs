//! Quotas held by running requests, through the real binary on the in-memory limiter: a request
//! the quota can pay for once reservations settle waits for them (up to its model's
//! `queue_timeout`) instead of being refused; a refusal names the largest `max_tokens` that fits;
//! a limit of 0 is `insufficient_quota`; a rate limit still refuses at once. The same race on
//! the Redis limiter with three replicas is in `fleet.rs`.

#![allow(clippy::expect_used, clippy::panic, reason = "tests: a failure is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::quota_race::{self, QUOTA, REAL_USE};
use common::{BINARY, Reply, http, send};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

async fn gateway(stub: &StubUpstream, model_extra: &str) -> Gateway {
    let config = format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\n\
         price = {{ input_per_million = 1000000.0, output_per_million = 1000000.0 }}\n{model_extra}\n",
        stub.url()
    );
    GatewayBuilder::new(BINARY).config(&config).start().await
}

/// A key with these limit overrides: `(id, secret)`.
async fn key_with_limits(gateway: &Gateway, limits: Value) -> (String, String) {
    let body = json!({"name": portcullis_testkit::unique_name("quota-wait"), "limits": limits});
    let reply = send(
        http().post(format!("{}/admin/v1/keys", gateway.admin_url())).bearer_auth(gateway.admin_token()).json(&body),
    )
    .await;
    assert!(matches!(reply.status, 200 | 201), "creating a key failed: {}", reply.text);
    (common::str_field(&reply.body, "id").to_string(), common::str_field(&reply.body, "key").to_string())
}

fn chat(max_tokens: u64, stream: bool) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": max_tokens, "stream": stream})
}

async fn post(gateway: &Gateway, key: &str, body: &Value) -> Reply {
    send(http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).bearer_auth(key).json(body)).await
}

/// The cap a refusal names: the number after "at most ".
fn named_cap(reply: &Reply) -> u64 {
    let message = reply.message();
    let at = message.find("at most ").unwrap_or_else(|| panic!("no cap named in {message:?}")) + "at most ".len();
    let digits: String = message[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number after 'at most' in {message:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_race_spends_the_quota_and_refuses_only_what_it_cannot_pay() {
    let stub = StubUpstream::start().await;
    quota_race::prepare(&stub);
    let gateway = gateway(&stub, quota_race::QUEUE_TIMEOUT).await;
    let (key_id, key) = key_with_limits(&gateway, json!({"tokens_per_day": QUOTA})).await;

    let started = Instant::now();
    let replies = quota_race::run(&[gateway.proxy_url()], &key).await;
    let served = quota_race::check(&replies);
    eprintln!("{served} of {} served in {:?}", replies.len(), started.elapsed());
    assert_eq!(stub.requests_to("/v1/chat/completions").len() as u64, served, "refusals never reach the model");

    let usage = quota_race::settled_usage(&gateway.proxy_url(), &key, served).await;
    assert_eq!(quota_race::day_quota(&usage), (QUOTA, served * REAL_USE, 0), "{usage}");
    let recorded = quota_race::admin_totals(&gateway.admin_url(), gateway.admin_token(), &key_id, served).await;
    assert_eq!(recorded, (served, served * REAL_USE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_largest_max_tokens_that_fits_and_that_one_passes() {
    let stub = StubUpstream::start().await;
    let gateway = gateway(&stub, "").await;
    let (_, key) = key_with_limits(&gateway, json!({"tokens_per_day": 1_000})).await;

    // Bigger than the whole quota: a 400 naming the largest cap the quota could ever hold. (The
    // prompt's bound counts the body's bytes, the cap's digits among them: every cap here has three.)
    let never = post(&gateway, &key, &chat(999, false)).await;
    never.assert_error(400, "request_exceeds_limit");
    assert_eq!(never.body["error"]["param"], "max_tokens");
    let whole = named_cap(&never);
    post(&gateway, &key, &chat(whole + 1, false)).await.assert_error(400, "request_exceeds_limit");
    // That cap fits the whole quota; served, it uses 5 tokens (2 words + 3 chunks).
    post(&gateway, &key, &chat(whole, false)).await.assert_ok();

    // Now it fits the quota but not what is left: 429, naming what fits now.
    let short = post(&gateway, &key, &chat(whole, false)).await;
    short.assert_error(429, "insufficient_quota");
    let now = named_cap(&short);
    assert_eq!(now, whole - 5, "{}", short.message());
    assert!(short.message().contains("'max_tokens' of at most"), "{}", short.message());
    post(&gateway, &key, &chat(now + 1, false)).await.assert_error(429, "insufficient_quota");
    post(&gateway, &key, &chat(now, false)).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_zero_is_insufficient_quota_not_lower_max_tokens() {
    let stub = StubUpstream::start().await;
    let gateway = gateway(&stub, "").await;
    for (limits, name) in
        [(json!({"budget_per_day": 0.0}), "budget_per_day"), (json!({"tokens_per_day": 0}), "tokens_per_day")]
    {
        let (_, key) = key_with_limits(&gateway, limits).await;
        let refused = post(&gateway, &key, &chat(1, false)).await;
        refused.assert_error(429, "insufficient_quota");
        assert!(refused.message().contains(&format!("{name} of this key is 0")), "{}", refused.message());
        assert_eq!(refused.header("retry-after"), None, "waiting cannot help: {}", refused.text);
    }
    assert!(stub.requests_to("/v1/chat/completions").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_quota_is_waited_for_up_to_queue_timeout_but_a_rate_limit_refuses_at_once() {
    let stub = StubUpstream::start().await;
    let gateway = gateway(&stub, "queue_timeout = \"600ms\"").await;
    // The cap dominates the worst case (whatever bounds the prompt): one fits, two do not, and
    // a second fits once the first settles at what it used.
    let body = chat(1_000, true);
    let worst = serde_json::to_vec(&body).expect("a body").len() as u64 + 16 + 1_000;
    let limits = json!({"tokens_per_day": worst + 100});
    let (_, key) = key_with_limits(&gateway, limits).await;
    let (_, limited) =
        key_with_limits(&gateway, json!({"tokens_per_day": worst + 100, "requests_per_minute": 1})).await;

    for key in [&key, &limited] {
        let gate = stub.gated_stream();
        let running =
            http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).bearer_auth(key).json(&body).send();
        let running = running.await.expect("the gateway answers");
        assert_eq!(running.status(), 200);
        assert!(gate.wait_first_chunk(Duration::from_secs(5)).await);

        let started = Instant::now();
        let refused = post(&gateway, key, &chat(1_000, false)).await;
        let waited = started.elapsed();
        if key == &limited {
            // Its request rate is spent too: refused at once, as a rate limit.
            refused.assert_error(429, "rate_limit_exceeded");
            assert!(waited < Duration::from_millis(400), "a rate limit waited {waited:?}");
        } else {
            refused.assert_error(429, "insufficient_quota");
            assert!(refused.message().contains("held by running requests"), "{}", refused.message());
            assert!(waited >= Duration::from_millis(600), "gave up after {waited:?}, before queue_timeout");
            assert_eq!(refused.header("retry-after"), Some("1"));
        }
        gate.release();
        running.bytes().await.expect("the stream ends");
    }

    // A request held by a running one is admitted as soon as that one settles.
    let gate = stub.gated_stream();
    let running = http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).bearer_auth(&key).json(&body);
    let running = running.send().await.expect("the gateway answers");
    assert!(gate.wait_first_chunk(Duration::from_secs(5)).await);
    let (url, waiting_key) = (gateway.proxy_url(), key.clone());
    let waiting = tokio::spawn(async move {
        send(http().post(format!("{url}/v1/chat/completions")).bearer_auth(waiting_key).json(&chat(1_000, false))).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the second waits while the first runs");
    gate.release();
    running.bytes().await.expect("the stream ends");
    waiting.await.expect("the request task ran").assert_ok();

    let metrics = send(http().get(format!("{}/metrics", gateway.admin_url())).bearer_auth(gateway.admin_token())).await;
    for line in [
        "portcullis_quota_waits_total{outcome=\"timed_out\"} 1",
        "portcullis_quota_waits_total{outcome=\"admitted\"} 1",
    ] {
        assert!(metrics.text.contains(line), "no {line} in {}", metrics.text);
    }
}
