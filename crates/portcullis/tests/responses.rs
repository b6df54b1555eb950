//! OpenAI's Responses API through the real binary, against the stub's `/v1/responses`: metered
//! from the answer's `usage` or the stream's `response.completed`, capped, refused when it is no
//! answer, and billed what was relayed when a stream is cut.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use common::{BINARY, Reply, billed, http, record_of, send, the_record};
use portcullis_testkit::{DEFAULT_STREAM_CHUNKS, Fault, Gateway, GatewayBuilder, StubUpstream, reply_text};
use serde_json::{Value, json};

/// `m` is served as `Up-M`: the stub echoes the name it was sent in the reply's text.
async fn start() -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let config = format!("[[models]]\nname = \"m\"\nupstream_model = \"Up-M\"\nendpoints = [\"{}\"]\n", stub.url());
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    (stub, gateway)
}

async fn respond(gateway: &Gateway, key: &str, body: &Value) -> Reply {
    send(http().post(format!("{}/v1/responses", gateway.proxy_url())).bearer_auth(key).json(body)).await
}

/// The `data:` payloads of an SSE body, with the `event:` name each came under.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let name = event.lines().find_map(|line| line.strip_prefix("event: ")).unwrap_or_default();
            let data = event.lines().find_map(|line| line.strip_prefix("data: ")).expect("an event with data");
            (name.to_string(), serde_json::from_str(data).unwrap_or_else(|_| panic!("not JSON: {data}")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_is_capped_named_as_asked_and_billed_from_its_usage_plain_and_streamed() {
    let (stub, gateway) = start().await;
    let (_, key) = gateway.create_key(&["--scopes", "responses"]);

    let reply = respond(&gateway, &key, &json!({"model": "m", "input": "hello there"})).await;
    reply.assert_ok();
    assert_eq!(reply.body["model"], "m", "the client's name, not the server's: {}", reply.text);
    assert_eq!(
        reply.body["output"][0]["content"][0]["text"],
        reply_text("Up-M", DEFAULT_STREAM_CHUNKS),
        "text untouched"
    );
    let seen = stub.last_request_to("/v1/responses").expect("the stub was called");
    assert_eq!(seen.json_field("model"), "Up-M");
    assert!(seen.json_field("max_output_tokens").as_u64().is_some_and(|cap| cap > 0), "cap written: {:?}", seen.body);
    assert!(seen.json_field("stream_options").is_null());
    let record = record_of(&gateway, &reply).await;
    assert_eq!(billed(&record), (2, 3), "{record}");
    assert_eq!(record["usage_estimated"], false, "{record}");

    let streamed = json!({"model": "m", "input": "hello there again", "stream": true, "max_output_tokens": 2});
    let reply = respond(&gateway, &key, &streamed).await;
    reply.assert_ok();
    let events = events(&reply.text);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"), "{}", reply.text);
    assert_eq!(names.last(), Some(&"response.incomplete"), "capped at 2 of 3: {}", reply.text);
    assert_eq!(names.iter().filter(|name| name.ends_with(".delta")).count(), 2);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
        if let Some(response) = data.get("response") {
            assert_eq!(response["model"], "m", "every event names the client's model: {data}");
        }
    }
    assert!(!reply.text.contains("\"Up-M\""), "{}", reply.text);
    let seen = stub.last_request_to("/v1/responses").expect("the stub was called");
    assert_eq!(seen.json_field("max_output_tokens"), 2, "the client's own cap stands");
    assert!(seen.json_field("stream_options").is_null(), "never added for this API: {:?}", seen.body);
    let record = record_of(&gateway, &reply).await;
    assert_eq!(billed(&record), (3, 2), "{record}");
    assert_eq!(record["usage_estimated"], false, "read from response.incomplete: {record}");

    let today = common::spent_today(&gateway, &key, 2).await;
    assert_eq!(today["tokens"], 2 + 3 + 3 + 2, "{today}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_stream_cut_mid_way_is_billed_what_was_relayed_and_ends_with_a_responses_error() {
    let (_stub, gateway) = start().await;
    let (_, key) = gateway.create_key(&[]);
    let body = json!({"model": "m", "input": Fault::ResetMidStream.marker(), "stream": true});
    let reply = respond(&gateway, &key, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let events = events(&reply.text);
    let (name, error) = events.last().expect("events");
    assert_eq!(name, "error", "{}", reply.text);
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("upstream_failed_mid_stream")));
    assert!(error["message"].is_string());
    assert_eq!(events.iter().filter(|(name, _)| name.ends_with(".delta")).count(), 1, "{}", reply.text);
    let record = record_of(&gateway, &reply).await;
    assert_eq!(record["completion_tokens"], 1, "one delta reached the client: {record}");
    assert_eq!(record["usage_estimated"], true, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_output_is_refused_and_billed_nothing() {
    let (_stub, gateway) = start().await;
    let (_, key) = gateway.create_key(&[]);
    let reply = respond(&gateway, &key, &json!({"model": "m", "input": Fault::WrongShape.marker()})).await;
    reply.assert_error(502, "upstream_invalid_response");
    let record = record_of(&gateway, &reply).await;
    assert_eq!(record["reason"], "upstream_wrong_shape", "{record}");
    assert_eq!(record["completion_tokens"].as_u64().unwrap_or(0), 0, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_api_needs_its_scope_and_its_input() {
    let (stub, gateway) = start().await;
    let (_, chat_only) = gateway.create_key(&["--scopes", "chat"]);
    respond(&gateway, &chat_only, &json!({"model": "m", "input": "hi"})).await.assert_error(403, "scope_missing");
    let (_, key) = gateway.create_key(&["--scopes", "responses"]);
    let reply = respond(&gateway, &key, &json!({"model": "m"})).await;
    assert_eq!((reply.status, reply.body["error"]["param"].as_str()), (400, Some("input")), "{}", reply.text);
    assert!(stub.requests_to("/v1/responses").is_empty());
}

/// Answers of every API, plain and streamed, carry the client's model name — also when a
/// fallback served them; a model that exposes its server's keeps that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_the_clients_model_name_unless_the_model_exposes_its_servers() {
    let stub = StubUpstream::start().await;
    let dead = format!("http://127.0.0.1:{}", portcullis_testkit::free_port());
    let config = format!(
        "[[models]]\nname = \"m\"\nupstream_model = \"Up-M\"\nendpoints = [\"{url}\"]\n\n\
         [[models]]\nname = \"x\"\nupstream_model = \"Up-X\"\nexpose_upstream_model = true\nendpoints = [\"{url}\"]\n\n\
         [[models]]\nname = \"primary\"\nendpoints = [\"{dead}\"]\nfallbacks = [\"m\"]\nhealth_check = {{ enabled = false }}\n",
        url = stub.url()
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    let prompt = |path: &str, model: &str| match path {
        "/v1/chat/completions" => common::chat_body(model),
        "/v1/completions" => json!({"model": model, "prompt": "once upon"}),
        _ => json!({"model": model, "input": ["a", "b"]}),
    };
    for (model, named) in [("m", "m"), ("primary", "primary"), ("x", "Up-X")] {
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
            let url = format!("{}{path}", gateway.proxy_url());
            let plain = send(http().post(&url).bearer_auth(&key).json(&prompt(path, model))).await;
            plain.assert_ok();
            assert_eq!(plain.body["model"], named, "{model} {path}: {}", plain.text);
            let length: usize = plain.header("content-length").and_then(|length| length.parse().ok()).unwrap_or(0);
            assert_eq!(length, plain.text.len(), "the length of what was sent");
            if path == "/v1/embeddings" {
                continue;
            }
            let mut body = prompt(path, model);
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
            let streamed = send(http().post(&url).bearer_auth(&key).json(&body)).await;
            streamed.assert_ok();
            let chunks: Vec<Value> = streamed
                .text
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .filter(|data| *data != "[DONE]")
                .map(|data| serde_json::from_str(data).expect("a JSON chunk"))
                .collect();
            assert!(chunks.len() > DEFAULT_STREAM_CHUNKS, "{}", streamed.text);
            assert!(chunks.iter().all(|chunk| chunk["model"] == named), "{model} {path}: {}", streamed.text);
        }
    }
}

/// Reads, cancellations and deletions of stored responses the stub received.
fn lookups(stub: &StubUpstream) -> usize {
    stub.requests().iter().filter(|request| request.path.contains("/v1/responses/")).count()
}

/// What a stored response's id opens, for whom: its maker reads, continues and deletes it (also
/// after a restart, the seal's secret coming from the fleet's pepper); any other key, a bare
/// server id or a forged id gets the 404 of an id that never existed, and reaches no server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_response_is_served_only_to_the_key_that_made_it() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[security]\nkey_pepper = \"fleet-pepper\"\n\n[[models]]\nname = \"m\"\nupstream_model = \"Up-M\"\nendpoints = [\"{}\"]\n",
        stub.url()
    );
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, alice) = gateway.create_key(&[]);
    let (_, bob) = gateway.create_key(&[]);
    let (_, chat_only) = gateway.create_key(&["--scopes", "chat"]);
    let url = |path: &str| format!("{}/v1/responses{path}", gateway.proxy_url());

    let created = respond(&gateway, &alice, &json!({"model": "m", "input": "remember this"})).await;
    created.assert_ok();
    let id = created.body["id"].as_str().expect("an id").to_string();
    let server_id = id.split('.').next().expect("the server's id first").to_string();
    assert!(server_id.starts_with("resp_stub") && id != server_id, "the server's id is not shown: {id}");

    let streamed = respond(&gateway, &alice, &json!({"model": "m", "input": "and this", "stream": true})).await;
    streamed.assert_ok();
    let ids: Vec<String> = events(&streamed.text)
        .iter()
        .filter_map(|(_, data)| data["response"]["id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.len() >= 2 && ids.iter().all(|seen| *seen == ids[0]), "one sealed id in every event: {ids:?}");
    assert!(ids[0].contains('.'), "{}", streamed.text);

    let read = send(http().get(url(&format!("/{id}"))).bearer_auth(&alice)).await;
    read.assert_ok();
    assert_eq!(
        (read.body["id"].as_str(), read.body["model"].as_str()),
        (Some(id.as_str()), Some("m")),
        "{}",
        read.text
    );
    let read_streamed = send(http().get(url(&format!("/{}", ids[0]))).bearer_auth(&alice)).await;
    read_streamed.assert_ok();
    let items = send(http().get(url(&format!("/{id}/input_items"))).bearer_auth(&alice)).await;
    items.assert_ok();
    assert_eq!(items.body["data"][0]["content"][0]["text"], "remember this", "{}", items.text);

    let cancelled = send(http().post(url(&format!("/{id}/cancel"))).bearer_auth(&alice)).await;
    cancelled.assert_ok();
    assert_eq!(
        (cancelled.body["id"].as_str(), cancelled.body["status"].as_str()),
        (Some(id.as_str()), Some("cancelled"))
    );

    let before = lookups(&stub);
    let never_existed =
        send(http().get(url("/resp_never.6d.00112233445566778899aabbccddeeff")).bearer_auth(&bob)).await;
    never_existed.assert_error(404, "not_found");
    let tampered = format!("{}{}", &id[..id.len() - 1], if id.ends_with('0') { '1' } else { '0' });
    for (key, path) in [
        (&bob, format!("/{id}")),
        (&bob, format!("/{id}/input_items")),
        (&alice, format!("/{server_id}")),
        (&alice, format!("/{tampered}")),
    ] {
        let refused = send(http().get(url(&path)).bearer_auth(key)).await;
        assert_eq!((refused.status, &refused.body), (404, &never_existed.body), "{path}: {}", refused.text);
    }
    let cancelled_by_bob = send(http().post(url(&format!("/{id}/cancel"))).bearer_auth(&bob)).await;
    assert_eq!((cancelled_by_bob.status, &cancelled_by_bob.body), (404, &never_existed.body));
    let deleted_by_bob = send(http().delete(url(&format!("/{id}"))).bearer_auth(&bob)).await;
    assert_eq!((deleted_by_bob.status, &deleted_by_bob.body), (404, &never_existed.body));
    let after = lookups(&stub);
    assert_eq!(before, after, "no refused lookup reached the model server");
    send(http().get(url(&format!("/{id}"))).bearer_auth(&chat_only)).await.assert_error(403, "scope_missing");

    let posts = stub.requests_to("/v1/responses").len();
    let continued_by_bob =
        respond(&gateway, &bob, &json!({"model": "m", "input": "go on", "previous_response_id": id})).await;
    assert_eq!((continued_by_bob.status, &continued_by_bob.body), (404, &never_existed.body));
    assert_eq!(stub.requests_to("/v1/responses").len(), posts, "bob's continuation reached no server");
    let continued =
        respond(&gateway, &alice, &json!({"model": "m", "input": "go on", "previous_response_id": id})).await;
    continued.assert_ok();
    assert_eq!(continued.body["previous_response_id"], id.as_str(), "{}", continued.text);
    let seen = stub.last_request_to("/v1/responses").expect("the continuation");
    assert_eq!(seen.json_field("previous_response_id"), server_id.as_str(), "the server gets its own id");

    gateway.restart().await;
    let url = |path: &str| format!("{}/v1/responses{path}", gateway.proxy_url());
    send(http().get(url(&format!("/{id}"))).bearer_auth(&alice)).await.assert_ok();
    let deleted = send(http().delete(url(&format!("/{id}"))).bearer_auth(&alice)).await;
    deleted.assert_ok();
    assert_eq!((deleted.body["id"].as_str(), deleted.body["deleted"].as_bool()), (Some(id.as_str()), Some(true)));
    let gone = send(http().get(url(&format!("/{id}"))).bearer_auth(&alice)).await;
    assert_eq!((gone.status, &gone.body), (404, &never_existed.body));
    let record = the_record(&gateway, deleted.header("x-request-id").expect("id")).await;
    assert_eq!((record["status"].as_u64(), record["model"].as_str()), (Some(200), Some("m")), "{record}");
    let record = the_record(&gateway, gone.header("x-request-id").expect("id")).await;
    assert_eq!(record["status"].as_u64(), Some(404), "{record}");
}

/// Two replicas on one store and one pepper: a response made through one is its maker's
/// through the other too, and still no one else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_response_opens_on_every_replica_of_a_fleet_for_its_maker_only() {
    let Some(db) = portcullis_testkit::PostgresDatabase::create_or_skip().await else { return };
    let stub = StubUpstream::start().await;
    let config = format!(
        "[security]\nkey_pepper = \"fleet-pepper\"\n\n[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\n",
        stub.url()
    );
    let replica = || GatewayBuilder::new(BINARY).store_url(db.url()).config(&config).start();
    let (one, two) = tokio::join!(replica(), replica());
    let (_, alice) = one.create_key(&[]);
    let (_, bob) = two.create_key(&[]);

    let created = respond(&one, &alice, &json!({"model": "m", "input": "remember this"})).await;
    created.assert_ok();
    let path = format!("/v1/responses/{}", created.body["id"].as_str().expect("an id"));
    let read = common::get(&two, &alice, &path).await;
    read.assert_ok();
    assert_eq!(read.body["id"], created.body["id"], "{}", read.text);
    common::get(&two, &bob, &path).await.assert_error(404, "not_found");
    common::get(&one, &bob, &path).await.assert_error(404, "not_found");
}

/// Behind the authorizer the gateway in front relays the model server's own ids, which the
/// gateway cannot bind to their callers: continuing a stored response is refused there, and a
/// new response is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorizer_refuses_to_continue_a_stored_response_it_cannot_bind() {
    let stub = StubUpstream::start().await;
    let config =
        format!("[authz]\nlisten = \"127.0.0.1:0\"\n\n[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\n", stub.url());
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    let ask = |body: Value| {
        http()
            .get(format!("http://{}/authz", gateway.authz_addr()))
            .header("x-forwarded-uri", "/v1/responses")
            .header("x-forwarded-method", "POST")
            .bearer_auth(&key)
            .body(body.to_string())
    };
    send(ask(json!({"model": "m", "input": "hi"}))).await.assert_ok();
    let refused = send(ask(json!({"model": "m", "input": "hi", "previous_response_id": "resp_someone_elses"}))).await;
    assert_eq!(
        (refused.status, refused.body["error"]["param"].as_str()),
        (400, Some("previous_response_id")),
        "{}",
        refused.text
    );
}
