//! Requests built to get past a limit, a check or the audit, through the real binary: caps the
//! model server reads but the reservation did not, bodies that bomb a model server or steer it,
//! forged forwarded-for hops, a shared address locked out by a neighbour, and clients that leave
//! before their answer.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::time::Duration;

use common::{BINARY, Reply, chat, chat_body, http, send, the_record};
use portcullis_testkit::{Gateway, GatewayBuilder, STUB_SERVER_HEADERS, StubUpstream};
use serde_json::{Value, json};

async fn post(gateway: &Gateway, key: &str, body: &Value) -> Reply {
    send(http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).bearer_auth(key).json(body)).await
}

fn with(mut body: Value, extra: Value) -> Value {
    for (name, value) in extra.as_object().expect("an object") {
        body[name] = value.clone();
    }
    body
}

#[tokio::test]
async fn the_cap_the_server_obeys_is_the_cap_that_was_reserved() {
    let (stub, gateway) = common::start(&["m"]).await;
    stub.set_stream_chunks(50);
    let (_, key) = gateway.create_key(&[]);

    // llama.cpp reads `n_predict` before `max_tokens`.
    let reply = post(&gateway, &key, &with(chat_body("m"), json!({"max_tokens": 1, "n_predict": 100000}))).await;
    reply.assert_ok();
    assert_eq!(reply.body["usage"]["completion_tokens"], 1, "{}", reply.text);
    let sent = stub.last_request_to("/v1/chat/completions").expect("forwarded");
    assert_eq!((sent.json_field("n_predict"), sent.json_field("max_tokens")), (&json!(1), &json!(1)));

    // Both OpenAI fields: the smaller one is reserved and both carry it.
    let reply =
        post(&gateway, &key, &with(chat_body("m"), json!({"max_completion_tokens": 5, "max_tokens": 500}))).await;
    assert_eq!(reply.body["usage"]["completion_tokens"], 5, "{}", reply.text);
    let sent = stub.last_request_to("/v1/chat/completions").expect("forwarded");
    assert_eq!((sent.json_field("max_completion_tokens"), sent.json_field("max_tokens")), (&json!(5), &json!(5)));

    // Caps the gateway could not hold the server to are refused, naming the field.
    for (extra, param) in [
        (json!({"n_predict": "100000"}), "n_predict"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"options": {"num_predict": 100000}}), "options.num_predict"),
        (json!({"best_of": 1000}), "best_of"),
    ] {
        let reply = post(&gateway, &key, &with(chat_body("m"), extra.clone())).await;
        reply.assert_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["param"], param, "{extra}: {}", reply.text);
    }
}

#[tokio::test]
async fn generation_past_the_reservation_is_billed_and_refuses_the_key_until_paid() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY)
        .config(&common::models_config(&stub, &["m"]))
        .config("[tiers.free]\ntokens_per_day = 400\n")
        .start()
        .await;
    // A server that ignores every cap and generates 500 tokens for a request reserving ~100.
    stub.set_ignore_max_tokens(true);
    stub.set_stream_chunks(500);
    let (key_id, key) = gateway.create_key(&[]);
    let reply = post(&gateway, &key, &with(chat_body("m"), json!({"max_tokens": 5}))).await;
    reply.assert_ok();
    assert_eq!(reply.body["usage"]["completion_tokens"], 500);

    let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
    assert_eq!(record["completion_tokens"], 500, "billed what was generated: {record}");
    let next = post(&gateway, &key, &with(chat_body("m"), json!({"max_tokens": 5}))).await;
    next.assert_error(429, "insufficient_quota");
    let usage = common::get(&gateway, &key, "/v1/usage").await;
    let day = usage.body["limits"][0]["limits"]
        .as_array()
        .and_then(|limits| limits.iter().find(|limit| limit["limit"] == "tokens_per_day"))
        .cloned()
        .unwrap_or_else(|| panic!("no tokens_per_day for {key_id}: {}", usage.text));
    assert!(day["used"].as_u64().is_some_and(|used| used > 400), "the overrun is counted: {day}");
}

#[tokio::test]
async fn bodies_that_would_bomb_or_confuse_a_model_server_never_reach_it() {
    let (stub, gateway) = common::start(&["m"]).await;
    let (_, key) = gateway.create_key(&[]);
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    let deep = format!(r#"{{"model":"m","messages":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let mut invalid_utf8 = br#"{"model":"m","messages":[{"role":"user","content":"caf"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xC3, 0x28]);
    invalid_utf8.extend_from_slice(br#""}]}"#);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a nesting bomb", deep.into_bytes(), "messages"),
        ("invalid UTF-8", invalid_utf8, "messages"),
        ("a lone surrogate", br#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#.to_vec(), "messages"),
        (
            "a duplicate member",
            br#"{"model":"m","messages":[],"max_tokens":1,"max_tokens":9999}"#.to_vec(),
            "max_tokens",
        ),
    ];
    for (what, body, param) in cases {
        let reply =
            send(http().post(&url).bearer_auth(&key).header("content-type", "application/json").body(body)).await;
        reply.assert_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["param"], param, "{what}: {}", reply.text);
    }
    assert!(stub.requests_to("/v1/chat/completions").is_empty(), "nothing reached the model server");
}

#[tokio::test]
async fn fields_that_steer_a_server_are_removed_unless_the_model_allows_them() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{url}\"]\n\n[[models]]\nname = \"open\"\nendpoints = [\"{url}\"]\npassthrough_fields = [\"api_base\"]\n",
        url = stub.url()
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    let steering = json!({"api_base": "http://attacker", "base_url": "http://attacker", "api_key": "sk-stolen",
        "extra_headers": {"x": "y"}, "aws_secret_access_key": "s", "temperature": 0.2});
    post(&gateway, &key, &with(chat_body("m"), steering.clone())).await.assert_ok();
    let sent = stub.last_request_to("/v1/chat/completions").expect("forwarded");
    for field in ["api_base", "base_url", "api_key", "extra_headers", "aws_secret_access_key"] {
        assert_eq!(sent.json_field(field), &Value::Null, "{field} reached the server: {:?}", sent.body);
    }
    assert_eq!(sent.json_field("temperature"), &json!(0.2), "ordinary fields pass");

    post(&gateway, &key, &with(chat_body("open"), steering)).await.assert_ok();
    let sent = stub.last_request_to("/v1/chat/completions").expect("forwarded");
    assert_eq!(sent.json_field("api_base"), &json!("http://attacker"), "allowed for this model");
    assert_eq!(sent.json_field("api_key"), &Value::Null, "only what is allowed");
}

#[tokio::test]
async fn one_clients_poison_does_not_eject_the_endpoint_for_everyone() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nejection = {{ consecutive_failures = 2, duration = \"60s\" }}\n",
        stub.url()
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, attacker) = gateway.create_key(&[]);
    let (_, neighbour) = gateway.create_key(&[]);
    stub.fail_when_body_contains("poison", 500);
    for _ in 0..5 {
        let reply = post(&gateway, &attacker, &with(chat_body("m"), json!({"user": "poison"}))).await;
        assert_eq!(reply.status, 500, "{}", reply.text);
    }
    stub.fail_when_body_contains("poison", 400);
    for _ in 0..5 {
        let reply = post(&gateway, &attacker, &with(chat_body("m"), json!({"user": "poison"}))).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
    }
    chat(&gateway, Some(&neighbour), "m").await.assert_ok();
}

#[tokio::test]
async fn the_model_servers_own_headers_do_not_reach_the_client() {
    let (_stub, gateway) = common::start(&["m"]).await;
    let (_, key) = gateway.create_key(&[]);
    let reply = chat(&gateway, Some(&key), "m").await;
    reply.assert_ok();
    for (name, _) in STUB_SERVER_HEADERS {
        assert!(reply.header(name).is_none(), "the model server's {name} reached the client");
    }
    let names: Vec<&str> = reply.headers.keys().map(|name| name.as_str()).collect();
    for name in &names {
        assert!(
            ["content-type", "content-length", "date", "x-request-id"].contains(name)
                || name.starts_with("x-ratelimit-"),
            "unexpected header {name} in {names:?}"
        );
    }
}

#[tokio::test]
async fn a_forged_forwarded_hop_cannot_choose_the_client_address() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY)
        .server_setting("trusted_proxies = [\"127.0.0.0/8\"]")
        .config(&common::models_config(&stub, &["m"]))
        .start()
        .await;
    let (_, key) = gateway.create_key(&["--cidr", "10.1.0.0/16"]);
    let with_hops = |hops: &str| {
        send(
            http()
                .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
                .bearer_auth(&key)
                .header("x-forwarded-for", hops)
                .json(&chat_body("m")),
        )
    };
    with_hops("10.1.2.3").await.assert_ok();
    // The client wrote an allowed address to the left of a hop with a port: that hop is the client.
    with_hops("10.1.2.3, 6.6.6.6:4444").await.assert_error(403, "ip_not_allowed");
    with_hops("10.1.2.3, [2001:db8::6]:4444").await.assert_error(403, "ip_not_allowed");
    // A hop that is no address at all, where the client must be: refused outright.
    for hop in ["unknown", "_hidden", "garbage"] {
        let reply = with_hops(&format!("10.1.2.3, {hop}")).await;
        reply.assert_error(400, "malformed_request");
    }
    // Several header lines are one list.
    let reply = send(
        http()
            .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
            .bearer_auth(&key)
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-forwarded-for", "6.6.6.6")
            .json(&chat_body("m")),
    )
    .await;
    reply.assert_error(403, "ip_not_allowed");
    let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
    assert_eq!(record["client_ip"], "6.6.6.6", "the audit names the real client: {record}");
}

#[tokio::test]
async fn a_blocked_address_still_serves_valid_keys_and_says_when_to_retry() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY)
        .config(&common::models_config(&stub, &["m"]))
        .config("[security]\nauth_failure_limit = 3\nblock_duration = \"5s\"\n")
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    for _ in 0..3 {
        chat(&gateway, Some("pcl_not_a_real_key"), "m").await.assert_error(401, "invalid_api_key");
    }
    let blocked = chat(&gateway, Some("pcl_not_a_real_key"), "m").await;
    blocked.assert_error(429, "client_blocked");
    assert_eq!(blocked.header("retry-after"), Some("5"), "rounded up, never short of the block");
    // Someone else behind the same address, with a valid key, is not locked out.
    chat(&gateway, Some(&key), "m").await.assert_ok();
    chat(&gateway, None, "m").await.assert_error(429, "client_blocked");
}

#[tokio::test]
async fn a_client_that_leaves_before_its_answer_is_audited_once_and_settled() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[[models]]\nname = \"one-at-a-time\"\nendpoints = [\"{url}\"]\nmax_concurrent = 1\nqueue_timeout = \"10s\"\n\n\
         [[models]]\nname = \"m\"\nendpoints = [\"{url}\"]\n",
        url = stub.url()
    );
    let gateway = GatewayBuilder::new(BINARY)
        .config(&config)
        .config("[tiers.free]\nmax_concurrent = 5\ntokens_per_day = 1000000\n")
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    stub.set_response_delay(Duration::from_secs(3));
    let request = |model: &str, id: &str, patience: Duration| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(patience)
            .build()
            .expect("client")
            .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
            .bearer_auth(&key)
            .header("x-request-id", id)
            .json(&chat_body(model))
            .send()
    };
    // `holder` takes the only slot of its model; `queued` waits behind it and gives up; `waiting`
    // is sent to the model server and gives up before its first byte.
    let patient = Duration::from_secs(10);
    let impatient = Duration::from_millis(500);
    let (holder, queued, waiting) = tokio::join!(
        request("one-at-a-time", "leave-holder", patient),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            request("one-at-a-time", "leave-queued", impatient).await
        },
        request("m", "leave-waiting", impatient),
    );
    assert!(holder.is_ok_and(|response| response.status() == 200));
    assert!(queued.is_err() && waiting.is_err(), "both impatient clients gave up");

    let queued = the_record(&gateway, "leave-queued").await;
    let waiting = the_record(&gateway, "leave-waiting").await;
    for record in [&queued, &waiting] {
        assert_eq!(
            (record["status"].as_u64(), record["reason"].as_str()),
            (Some(499), Some("client_disconnected")),
            "{record}"
        );
    }
    // Never sent: nothing generated, nothing billed. Sent: the prompt and the whole cap, estimated.
    assert_eq!(
        (queued["completion_tokens"].as_u64(), queued["usage_estimated"].as_bool()),
        (Some(0), Some(false)),
        "{queued}"
    );
    assert_eq!(
        (waiting["completion_tokens"].as_u64(), waiting["usage_estimated"].as_bool()),
        (Some(1024), Some(true)),
        "{waiting}"
    );
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 2, "the queued request never reached the server");

    // Nothing is left held: the gauge is back to zero and every concurrency slot is free.
    let metrics = send(http().get(format!("{}/metrics", gateway.admin_url())).bearer_auth(gateway.admin_token())).await;
    let in_flight =
        metrics.text.lines().find(|line| line.starts_with("portcullis_in_flight_requests{listener=\"proxy\"}"));
    assert_eq!(in_flight.and_then(|line| line.rsplit(' ').next()), Some("0"), "{in_flight:?}");
    let usage = common::get(&gateway, &key, "/v1/usage").await;
    let concurrent = usage.body["limits"][0]["limits"]
        .as_array()
        .and_then(|limits| limits.iter().find(|limit| limit["limit"] == "max_concurrent"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(concurrent["used"], 0, "no slot held: {}", usage.text);
}

#[tokio::test]
async fn a_secret_in_a_request_id_or_user_agent_never_reaches_the_log() {
    let (_stub, gateway) = common::start(&["m"]).await;
    let (_, key) = gateway.create_key(&[]);
    let reply = send(
        http()
            .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
            .bearer_auth(&key)
            .header("x-request-id", key.as_str())
            .header("user-agent", format!("my-app/1.0 (key {key})"))
            .json(&chat_body("m")),
    )
    .await;
    reply.assert_ok();
    let id = reply.header("x-request-id").expect("an id");
    assert!(id.starts_with("req_"), "the key-shaped id was echoed: {id}");
    let record = the_record(&gateway, id).await;
    let agent = record["user_agent"].as_str().unwrap_or_default();
    assert!(agent.starts_with("my-app/1.0") && !agent.contains(&key), "{record}");
    assert!(!gateway.log_text().contains(&key), "the key reached the gateway's log");
}
