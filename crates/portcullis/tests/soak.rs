//! Soak: good and hostile traffic mixed for a while against one gateway — streams read to the
//! end and abandoned, clients that leave before their answer, bad keys, nesting bombs, idle
//! sockets, bodies that never finish, a model server that resets — and then the books must
//! balance: every request a handler saw has exactly one audit record, recorded usage equals the
//! sum of audited usage, no reservation or gauge is left held, and memory came back.
//!
//! `PORTCULLIS_SOAK_SECS` sets how long the traffic runs (default 30).

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BINARY, chat_body, http, send};
use futures_util::StreamExt;
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// The request ids a client sent and saw answered (or gave up on), by what was expected of them.
#[derive(Default)]
struct Sent {
    ids: Mutex<Vec<String>>,
    next: AtomicU64,
}

impl Sent {
    fn id(&self, kind: &str) -> String {
        format!("soak-{kind}-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    async fn handled(&self, id: String) {
        self.ids.lock().await.push(id);
    }
}

/// A model server that accepts, reads the request and resets the connection.
async fn resetting_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.set_zero_linger();
            });
        }
    });
    format!("http://{address}")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn metric(gateway: &Gateway, line_start: &str) -> Option<f64> {
    let metrics = send(http().get(format!("{}/metrics", gateway.admin_url())).bearer_auth(gateway.admin_token())).await;
    metrics
        .text
        .lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_good_and_hostile_traffic_leaves_the_books_balanced() {
    let seconds: u64 = std::env::var("PORTCULLIS_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let stub = StubUpstream::start().await;
    stub.set_stream_chunks(8);
    let slow = StubUpstream::start().await;
    slow.set_response_delay(Duration::from_millis(800));
    let resetting = resetting_upstream().await;
    let models = format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nprice = {{ input_per_million = 1.0, output_per_million = 2.0 }}\n\n\
         [[models]]\nname = \"slow\"\nendpoints = [\"{}\"]\n\n\
         [[models]]\nname = \"resets\"\nendpoints = [\"{resetting}\"]\nhealth_check = {{ enabled = false }}\nretries = 0\n",
        stub.url(),
        slow.url()
    );
    let gateway = GatewayBuilder::new(BINARY)
        .server_setting("header_read_timeout = \"2s\"")
        .server_setting("body_read_timeout = \"2s\"")
        .server_setting("idle_timeout = \"5s\"")
        .config(&models)
        .config("[tiers.free]\nmax_concurrent = 64\ntokens_per_day = 1000000000\nbudget_per_day = 1000.0\n")
        .config("[security]\nauth_failure_limit = 50\nblock_duration = \"2s\"\n")
        .start()
        .await;
    let keys: Vec<(String, String)> = (0..3).map(|_| gateway.create_key(&[])).collect();
    let gateway = Arc::new(gateway);
    let sent = Arc::new(Sent::default());
    let until = Instant::now() + Duration::from_secs(seconds);

    // Warm up, then take the memory baseline.
    for _ in 0..50 {
        common::chat(&gateway, Some(&keys[0].1), "m").await.assert_ok();
    }
    let rss_before = rss_kib(gateway.pid());

    let mut tasks = Vec::new();
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    let key = |index: usize| keys[index % keys.len()].1.clone();
    // Good requests, plain and streamed, read to the end.
    for worker in 0..4 {
        let (url, key, sent) = (url.clone(), key(worker), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            while Instant::now() < until {
                round += 1;
                let id = sent.id("good");
                let mut body = chat_body("m");
                body["stream"] = json!(round.is_multiple_of(2));
                let response = http().post(&url).bearer_auth(&key).header("x-request-id", &id).json(&body).send().await;
                let response = response.expect("the gateway answers");
                assert_eq!(response.status(), 200, "{id}");
                response.bytes().await.expect("the whole answer");
                sent.handled(id).await;
            }
        }));
    }
    // Streams abandoned after their first chunk.
    {
        let (url, key, sent) = (url.clone(), key(1), sent.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let id = sent.id("abandoned");
                let mut body = chat_body("m");
                body["stream"] = json!(true);
                let response = http().post(&url).bearer_auth(&key).header("x-request-id", &id).json(&body).send().await;
                let mut stream = response.expect("answers").bytes_stream();
                let _ = stream.next().await;
                drop(stream);
                sent.handled(id).await;
            }
        }));
    }
    // Clients that leave before the answer of a slow model.
    {
        let (url, key, sent) = (url.clone(), key(2), sent.clone());
        tasks.push(tokio::spawn(async move {
            let impatient =
                reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(200)).build().expect("client");
            while Instant::now() < until {
                let id = sent.id("left");
                let result = impatient
                    .post(&url)
                    .bearer_auth(&key)
                    .header("x-request-id", &id)
                    .json(&chat_body("slow"))
                    .send()
                    .await;
                assert!(result.is_err(), "{id} was answered before it left");
                sent.handled(id).await;
            }
        }));
    }
    // A model server that resets; bad keys; nesting bombs.
    {
        let (url, key, sent) = (url.clone(), key(0), sent.clone());
        tasks.push(tokio::spawn(async move {
            let deep = format!(r#"{{"model":"m","messages":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
            let mut round = 0u64;
            while Instant::now() < until {
                round += 1;
                let id = sent.id("hostile");
                // A resetting server fails with 502 until it is out of rotation, then 503.
                let (request, expected): (_, &[u16]) = match round % 3 {
                    0 => (http().post(&url).bearer_auth(&key).json(&chat_body("resets")), &[429, 502, 503]),
                    1 => (
                        http()
                            .post(&url)
                            .bearer_auth("pcl_0000000000000000000000000000000000000000")
                            .json(&chat_body("m")),
                        &[401, 429],
                    ),
                    _ => (
                        http()
                            .post(&url)
                            .bearer_auth(&key)
                            .header("content-type", "application/json")
                            .body(deep.clone()),
                        &[400, 429],
                    ),
                };
                let reply = send(request.header("x-request-id", &id)).await;
                assert!(expected.contains(&reply.status), "{id}: {} {}", reply.status, reply.text);
                sent.handled(id).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Idle sockets and bodies that stop: both must be closed by the gateway, the second with 408.
    {
        let (address, key, sent) = (gateway.proxy_addr(), key(1), sent.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let id = sent.id("stalled");
                let mut idle = TcpStream::connect(address).await.expect("connect");
                let mut stalled = TcpStream::connect(address).await.expect("connect");
                let head = format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nx-request-id: {id}\r\nContent-Length: 5000\r\n\r\n{{\"mo"
                );
                stalled.write_all(head.as_bytes()).await.expect("send");
                let mut answer = Vec::new();
                tokio::time::timeout(Duration::from_secs(6), stalled.read_to_end(&mut answer)).await.expect("closed in time").ok();
                assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
                let mut nothing = Vec::new();
                tokio::time::timeout(Duration::from_secs(6), idle.read_to_end(&mut nothing)).await.expect("idle socket closed").ok();
                sent.handled(id).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a traffic task failed");
    }

    // Quiet: let lingering closes, the usage flush and the audit writer catch up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ids = sent.ids.lock().await.clone();
    eprintln!("soak: {} requests over {seconds} s", ids.len());

    // Every request a handler saw: exactly one record.
    let export =
        send(http().get(format!("{}/admin/v1/audit/export", gateway.admin_url())).bearer_auth(gateway.admin_token()))
            .await;
    assert_eq!(export.status, 200);
    let records: Vec<Value> =
        export.text.lines().map(|line| serde_json::from_str(line).expect("a JSON record")).collect();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        if let Some(id) = record["request_id"].as_str() {
            *by_id.entry(id).or_default() += 1;
        }
    }
    let wrong: Vec<(&String, usize)> = ids
        .iter()
        .map(|id| (id, by_id.get(id.as_str()).copied().unwrap_or(0)))
        .filter(|(_, count)| *count != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} requests without exactly one record, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    // Recorded usage equals audited usage, key by key.
    let usage = send(
        http()
            .get(format!("{}/admin/v1/usage?group_by=key&since=1d", gateway.admin_url()))
            .bearer_auth(gateway.admin_token()),
    )
    .await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    for (key_id, _) in &keys {
        let audited: (u64, u64) = records
            .iter()
            .filter(|record| record["key_id"].as_str() == Some(key_id.as_str()))
            .map(|record| {
                let tokens =
                    record["prompt_tokens"].as_u64().unwrap_or(0) + record["completion_tokens"].as_u64().unwrap_or(0);
                (tokens, record["cost_pico"].as_u64().unwrap_or(0))
            })
            .fold((0, 0), |total, (tokens, cost)| (total.0 + tokens, total.1 + cost));
        let row = usage.body["data"]
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["key_id"].as_str() == Some(key_id.as_str())))
            .cloned()
            .unwrap_or_else(|| panic!("no usage row for {key_id}: {}", usage.text));
        let recorded = row["prompt_tokens"].as_u64().unwrap_or(0) + row["completion_tokens"].as_u64().unwrap_or(0);
        assert_eq!(recorded, audited.0, "tokens of {key_id}: usage {row} vs audit");
        let cost = row["cost"].as_f64().unwrap_or_default();
        let audited_cost = audited.1 as f64 / 1e12;
        assert!((cost - audited_cost).abs() < 1e-9, "cost of {key_id}: usage {cost} vs audit {audited_cost}");
    }

    // Nothing held: no request in flight, no slot or token reservation left, no connection open.
    assert_eq!(metric(&gateway, "portcullis_in_flight_requests{listener=\"proxy\"}").await, Some(0.0));
    assert_eq!(metric(&gateway, "portcullis_open_connections{listener=\"proxy\"}").await, Some(0.0));
    for (_, key) in &keys {
        let usage = common::get(&gateway, key, "/v1/usage").await;
        for limit in usage.body["limits"][0]["limits"].as_array().expect("limits") {
            assert_eq!(limit["reserved"].as_f64(), Some(0.0), "a reservation is left: {limit}");
            if limit["limit"] == "max_concurrent" {
                assert_eq!(limit["used"].as_f64(), Some(0.0), "a slot is left: {limit}");
            }
        }
    }

    let rss_after = rss_kib(gateway.pid());
    eprintln!("soak: RSS {} KiB after warm-up, {} KiB at the end", rss_before, rss_after);
    assert!(rss_after <= rss_before * 2 + 64 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");
}
