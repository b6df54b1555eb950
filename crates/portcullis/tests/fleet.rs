//! Fleet mode: several replicas of the real binary sharing PostgreSQL and Redis.
//!
//! Every test gets a fresh PostgreSQL database and its own Redis key prefix, so tests share the
//! machine's servers without seeing each other. Without PostgreSQL or Redis these tests skip
//! loudly; with `CI=true` they fail instead.
#![allow(clippy::expect_used, clippy::panic, reason = "tests: a failed expectation is a failed test")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BINARY, Reply, http, quota_race, send};
use portcullis_testkit::{
    Gateway, GatewayBuilder, PostgresDatabase, RedisServer, StubUpstream, TcpRelay, redis_or_skip, unique_name,
};
use serde_json::{Value, json};
use tokio::sync::Barrier;

/// The reservation lease in these tests: short, so a dead replica's reservation ends soon. (Their
/// Redis timeout is long instead: a burst of hundreds of requests on two busy cores may keep a
/// live Redis waiting past the default 250 ms, which is an outage only in tests that make one;
/// the lease must stay three times longer.)
const LEASE_SECS: u64 = 2;

/// What varies between the fleets of these tests.
struct FleetSpec {
    replicas: usize,
    redis_url: String,
    on_backend_error: &'static str,
    /// Overrides the store URL (a relay in front of the test database).
    store_url: Option<String>,
    cache_max_age: &'static str,
    /// Appended to every replica's configuration (`[tiers.*]`).
    extra_config: &'static str,
}

impl FleetSpec {
    fn new(redis_url: String) -> FleetSpec {
        FleetSpec {
            replicas: 3,
            redis_url,
            on_backend_error: "deny",
            store_url: None,
            cache_max_age: "60s",
            extra_config: "",
        }
    }
}

/// The replicas, their upstream and their database (dropped last: the replicas go first).
struct Fleet {
    replicas: Vec<Gateway>,
    stub: StubUpstream,
    _db: PostgresDatabase,
}

impl Fleet {
    /// A fleet on a fresh database; `None` after a loud skip when PostgreSQL is missing (a
    /// failure with `CI=true`).
    async fn start(spec: FleetSpec) -> Option<Fleet> {
        Some(Fleet::start_on(spec, PostgresDatabase::create_or_skip().await?).await)
    }

    async fn start_on(spec: FleetSpec, db: PostgresDatabase) -> Fleet {
        let stub = StubUpstream::start().await;
        let prefix = unique_name("fleet");
        let admin_token = format!("fleet-admin-token-{}", unique_name("t"));
        let store_url = spec.store_url.clone().unwrap_or_else(|| db.url().to_string());
        let config = |index: usize| {
            format!(
                "[limits]\nbackend = \"redis\"\nredis_url = \"{redis}\"\nredis_prefix = \"{prefix}\"\n\
             reservation_lease = \"{LEASE_SECS}s\"\nredis_timeout = \"600ms\"\non_backend_error = \"{policy}\"\nreplicas = {replicas}\n\n\
             [audit]\ndurability = \"sync\"\nnode = \"replica-{index}\"\n\n\
             [[models]]\nname = \"m\"\nendpoints = [\"{upstream}\"]\n\
             price = {{ input_per_million = 1000000.0, output_per_million = 1000000.0 }}\n{extra}",
                redis = spec.redis_url,
                extra = spec.extra_config,
                policy = spec.on_backend_error,
                replicas = spec.replicas,
                upstream = stub.url(),
            )
        };
        // Started one after another would hide a migration race; together they must agree.
        let builders = (0..spec.replicas).map(|index| {
            GatewayBuilder::new(BINARY)
                .store_url(&store_url)
                .store_setting(&format!("cache_max_age = \"{}\"", spec.cache_max_age))
                .config(&config(index))
                .admin_token(admin_token.clone())
                .start()
        });
        let replicas = futures_util::future::join_all(builders).await;
        Fleet { replicas, stub, _db: db }
    }

    fn replica(&self, index: usize) -> &Gateway {
        &self.replicas[index]
    }

    /// `POST /admin/v1/keys` on replica 0 with these limit overrides; returns `(id, secret)`.
    async fn key_with_limits(&self, limits: Value) -> (String, String) {
        let gateway = self.replica(0);
        let body = json!({ "name": unique_name("fleet-key"), "limits": limits });
        let reply = send(
            http()
                .post(format!("{}/admin/v1/keys", gateway.admin_url()))
                .bearer_auth(gateway.admin_token())
                .json(&body),
        )
        .await;
        assert!(matches!(reply.status, 200 | 201), "creating a key failed: {}", reply.text);
        (str_of(&reply.body, "id"), str_of(&reply.body, "key"))
    }
}

fn str_of(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_else(|| panic!("no {field} in {value}")).to_string()
}

fn chat_body(max_tokens: u64, stream: bool) -> Value {
    let mut body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn chat(gateway: &Gateway, key: &str, body: &Value) -> Reply {
    send(http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).bearer_auth(key).json(body)).await
}

async fn ready(gateway: &Gateway) -> Value {
    let reply = send(http().get(format!("{}/readyz", gateway.admin_url()))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body
}

/// A key allowed 60 requests a minute gets a synchronised burst of 600 spread over three
/// replicas: the shared limiter admits the key's 60, plus at most what the rate refilled while
/// the burst lasted (one a second), and refuses the rest with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_three_replicas_gets_one_key_limit_not_three() {
    let Some(redis) = redis_or_skip() else { return };
    let Some(fleet) = Fleet::start(FleetSpec::new(redis)).await else { return };
    let (_, key) = fleet.key_with_limits(json!({"requests_per_minute": 60})).await;
    let body = chat_body(5, false);

    const BURST: usize = 600;
    let barrier = Arc::new(Barrier::new(BURST));
    let started = Instant::now();
    let tasks: Vec<_> = (0..BURST)
        .map(|index| {
            let (url, key, body, barrier) =
                (fleet.replica(index % 3).proxy_url(), key.clone(), body.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let reply = send(http().post(format!("{url}/v1/chat/completions")).bearer_auth(&key).json(&body)).await;
                (index % 3, reply)
            })
        })
        .collect();
    let mut admitted = [0usize; 3];
    for task in tasks {
        let (replica, reply) = task.await.expect("the request task ran");
        match reply.status {
            200 => admitted[replica] += 1,
            _ => reply.assert_error(429, "rate_limit_exceeded"),
        }
    }
    let lasted = started.elapsed();
    let total: usize = admitted.iter().sum();
    let refilled = lasted.as_secs() as usize;
    eprintln!("burst of {BURST} over 3 replicas in {lasted:?}: admitted {admitted:?} = {total}");
    assert!(total >= 60, "the key's whole allowance is usable across the fleet: {admitted:?}");
    assert!(total <= 60 + refilled, "{total} admitted for a limit of 60 (+{refilled} refilled): {admitted:?}");
    assert!(admitted.iter().all(|count| *count > 0), "every replica took part: {admitted:?}");
    assert_eq!(fleet.stub.requests_to("/v1/chat/completions").len(), total, "refused requests never reach the model");
}

/// The budget race of the limits tests, spread over three replicas: long streams all decided
/// while the first ones still run; exactly as many as the budget's worst cases are served, and
/// what they spent never exceeds the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_race_across_three_replicas_never_overspends() {
    let Some(redis) = redis_or_skip() else { return };
    // A request the budget holds for running ones gives up before they end (see limits.rs).
    let spec = FleetSpec { extra_config: "queue_timeout = \"10ms\"\n", ..FleetSpec::new(redis) };
    let Some(fleet) = Fleet::start(spec).await else { return };
    fleet.stub.set_chunk_gap(Duration::from_millis(400));
    const N: u64 = 4;
    let body = chat_body(20, true);
    let worst_cost = serde_json::to_vec(&body).expect("a body").len() as u64 + 16 + 20;
    let budget = N * worst_cost;
    let (_, key) = fleet.key_with_limits(json!({"budget_per_day": budget as f64})).await;

    let tasks: Vec<_> = (0..10 * N as usize)
        .map(|index| {
            let (url, key, body) = (fleet.replica(index % 3).proxy_url(), key.clone(), body.clone());
            tokio::spawn(async move {
                let response = http()
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .expect("the gateway answers");
                let status = response.status().as_u16();
                let text = response.text().await.expect("a body");
                (status, text)
            })
        })
        .collect();
    let mut served = 0;
    for task in tasks {
        let (status, text) = task.await.expect("the request task ran");
        match status {
            200 => served += 1,
            _ => {
                let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                assert_eq!((status, error["error"]["code"].as_str()), (429, Some("insufficient_quota")), "{text}");
            }
        }
    }
    assert_eq!(served, N, "exactly {N} worst cases fit the budget across the fleet");

    // Spend as the fleet sees it, from any replica: never above the budget.
    let usage = wait_for_requests(fleet.replica(2), &key, N).await;
    let spent = usage["spend"]["today"]["cost"].as_f64().expect("a cost");
    assert!(spent > 0.0 && spent <= budget as f64, "spent {spent} of a {budget} budget: {usage}");
}

/// The quota race of `quota_wait.rs` on three replicas sharing Redis: requests held by the
/// reservations of requests running on any replica wait for them to settle (seen by the poll
/// when they settle elsewhere), the quota is spent, and never past its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_race_across_three_replicas_spends_the_quota_and_refuses_only_what_it_cannot_pay() {
    let Some(redis) = redis_or_skip() else { return };
    let spec = FleetSpec { extra_config: quota_race::QUEUE_TIMEOUT, ..FleetSpec::new(redis) };
    let Some(fleet) = Fleet::start(spec).await else { return };
    quota_race::prepare(&fleet.stub);
    let (key_id, key) = fleet.key_with_limits(json!({"tokens_per_day": quota_race::QUOTA})).await;
    let proxies: Vec<String> = fleet.replicas.iter().map(Gateway::proxy_url).collect();

    let started = Instant::now();
    let replies = quota_race::run(&proxies, &key).await;
    let served = quota_race::check(&replies);
    eprintln!("{served} of {} served over 3 replicas in {:?}", replies.len(), started.elapsed());
    assert_eq!(fleet.stub.requests_to("/v1/chat/completions").len() as u64, served);

    // Every replica sees the fleet's count: all served requests used, nothing held.
    for replica in &fleet.replicas {
        let usage = quota_race::settled_usage(&replica.proxy_url(), &key, served).await;
        let expected = (quota_race::QUOTA, served * quota_race::REAL_USE, 0);
        assert_eq!(quota_race::day_quota(&usage), expected, "{usage}");
    }
    let admin = fleet.replica(1);
    let recorded = quota_race::admin_totals(&admin.admin_url(), admin.admin_token(), &key_id, served).await;
    assert_eq!(recorded, (served, served * quota_race::REAL_USE));
}

/// Polls `/v1/usage` until `spend.today.requests` reaches `requests`.
async fn wait_for_requests(gateway: &Gateway, key: &str, requests: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = send(http().get(format!("{}/v1/usage", gateway.proxy_url())).bearer_auth(key)).await;
        reply.assert_ok();
        if reply.body["spend"]["today"]["requests"].as_u64() >= Some(requests) || Instant::now() > deadline {
            return reply.body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key revoked through replica 0's admin API is refused by replicas 1 and 2 — which both had
/// it cached a moment before — as soon as the change reaches them (tens of milliseconds on an
/// idle machine: the figure is printed), and from then on. The deadline is generous, for a loaded
/// machine; what is asserted is the order: served before, refused after, never served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_replica_and_holds() {
    let Some(redis) = redis_or_skip() else { return };
    let Some(fleet) = Fleet::start(FleetSpec::new(redis)).await else { return };
    let (id, key) = fleet.key_with_limits(json!({})).await;
    let body = chat_body(5, false);
    for replica in &fleet.replicas {
        chat(replica, &key, &body).await.assert_ok();
    }

    let revoked_at = Instant::now();
    let admin = fleet.replica(0);
    let reply =
        send(http().post(format!("{}/admin/v1/keys/{id}/revoke", admin.admin_url())).bearer_auth(admin.admin_token()))
            .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut propagation = Vec::new();
    for index in [1, 2] {
        loop {
            let reply = chat(fleet.replica(index), &key, &body).await;
            if reply.status == 401 {
                reply.assert_error(401, "revoked_api_key");
                propagation.push(revoked_at.elapsed());
                break;
            }
            reply.assert_ok();
            assert!(revoked_at.elapsed() < Duration::from_secs(5), "replica {index} still serves the revoked key");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for replica in &fleet.replicas {
        for _ in 0..5 {
            chat(replica, &key, &body).await.assert_error(401, "revoked_api_key");
        }
    }
    eprintln!("revocation propagation: replica 1 {:?}, replica 2 {:?}", propagation[0], propagation[1]);
}

/// The key scope's `requests_per_minute` as `GET /v1/usage` on `gateway` reports it for `key`.
async fn key_rpm(gateway: &Gateway, key: &str) -> Option<u64> {
    let reply = send(http().get(format!("{}/v1/usage", gateway.proxy_url())).bearer_auth(key)).await;
    reply.assert_ok();
    let scopes = reply.body["limits"].as_array().cloned().unwrap_or_default();
    let key_scope = scopes.iter().find(|scope| scope["scope"]["kind"] == "key")?;
    let limits = key_scope["limits"].as_array()?;
    limits.iter().find(|limit| limit["limit"] == "requests_per_minute")?["max"].as_u64()
}

/// A team moved to another tier through replica 0: its key without a tier of its own is on the
/// new tier on replica 1 too — which had the team cached — as soon as the change reaches it, and
/// from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_moved_to_another_tier_takes_its_keys_along_on_every_replica() {
    let Some(redis) = redis_or_skip() else { return };
    let tiers = "\n[tiers.free]\nrequests_per_minute = 2\n\n[tiers.pro]\nrequests_per_minute = 100\n";
    let Some(fleet) = Fleet::start(FleetSpec { replicas: 2, extra_config: tiers, ..FleetSpec::new(redis) }).await
    else {
        return;
    };
    let admin = fleet.replica(0);
    let admin_call = |request: reqwest::RequestBuilder| send(request.bearer_auth(admin.admin_token()));
    let teams = format!("{}/admin/v1/teams", admin.admin_url());
    let team = admin_call(http().post(&teams).json(&json!({"name": "acme", "tier": "free"}))).await;
    assert_eq!(team.status, 201, "{}", team.text);
    let keys = format!("{}/admin/v1/keys", admin.admin_url());
    let created = admin_call(http().post(&keys).json(&json!({"name": unique_name("follower"), "team": "acme"}))).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let key = str_of(&created.body, "key");
    assert_eq!(key_rpm(fleet.replica(1), &key).await, Some(2), "on the team's tier, and the team cached");

    let moved_at = Instant::now();
    let moved = admin_call(http().patch(format!("{teams}/acme")).json(&json!({"tier": "pro"}))).await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    assert_eq!(key_rpm(admin, &key).await, Some(100), "at once on the replica that made the change");
    while key_rpm(fleet.replica(1), &key).await != Some(100) {
        assert!(moved_at.elapsed() < Duration::from_secs(5), "replica 1 keeps the key on the team's old tier");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("a team's new tier reached replica 1 in {:?}", moved_at.elapsed());
    for _ in 0..5 {
        assert_eq!(key_rpm(fleet.replica(1), &key).await, Some(100));
    }
}

/// Redis stopped under `on_backend_error = "deny"`: requests get 503 `limiter_unavailable`
/// with `Retry-After`, readiness says so; once Redis is back the shared limit holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_denies_by_default_and_limits_hold_after_it() {
    let Some(mut redis) = RedisServer::start_or_skip().await else { return };
    let Some(fleet) = Fleet::start(FleetSpec::new(redis.url())).await else { return };
    let (_, key) = fleet.key_with_limits(json!({"requests_per_minute": 6})).await;
    let body = chat_body(5, false);
    chat(fleet.replica(0), &key, &body).await.assert_ok();

    redis.stop();
    for replica in &fleet.replicas {
        let refused = chat(replica, &key, &body).await;
        refused.assert_error(503, "limiter_unavailable");
        assert!(refused.header("retry-after").is_some(), "{:?}", refused.headers);
    }
    let readiness = ready(fleet.replica(1)).await;
    assert_eq!((readiness["status"].as_str(), readiness["limiter"].as_str()), (Some("degraded"), Some("unavailable")));

    // A restarted Redis is empty: the key gets its 6 again, shared by the fleet, and no more.
    redis.restart().await;
    let admitted = admitted_over_fleet(&fleet, &key, &body, 30, Duration::from_secs(5)).await;
    assert_eq!(admitted, 6, "the shared limit holds again after the outage");
    assert_eq!(ready(fleet.replica(1)).await["status"], "ready");
}

/// Redis stopped under `on_backend_error = "local"`: each of the three replicas admits a third
/// of the limit on its own, so the fleet together stays within it, and says it is degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_under_the_local_policy_splits_each_limit_between_replicas() {
    let Some(mut redis) = RedisServer::start_or_skip().await else { return };
    let mut spec = FleetSpec::new(redis.url());
    spec.on_backend_error = "local";
    let Some(fleet) = Fleet::start(spec).await else { return };
    let (_, key) = fleet.key_with_limits(json!({"requests_per_minute": 9})).await;
    let body = chat_body(5, false);
    chat(fleet.replica(0), &key, &body).await.assert_ok();

    redis.stop();
    let mut admitted = Vec::new();
    for replica in &fleet.replicas {
        let mut count = 0;
        for _ in 0..6 {
            let reply = chat(replica, &key, &body).await;
            match reply.status {
                200 => count += 1,
                _ => reply.assert_error(429, "rate_limit_exceeded"),
            }
        }
        admitted.push(count);
    }
    assert_eq!(admitted, [3, 3, 3], "9 a minute over 3 replicas = 3 each while Redis is away");
    let readiness = ready(fleet.replica(0)).await;
    assert_eq!((readiness["status"].as_str(), readiness["limiter"].as_str()), (Some("degraded"), Some("local")));
    let metrics = send(http().get(format!("{}/metrics", fleet.replica(0).admin_url()))).await.text;
    assert!(metrics.contains("portcullis_limiter_degraded 1"), "{metrics}");

    redis.restart().await;
    let admitted = admitted_over_fleet(&fleet, &key, &body, 30, Duration::from_secs(5)).await;
    assert_eq!(admitted, 9, "shared counting resumes once Redis is back");
}

/// Waits (up to `within`) until every replica reports its limiter shared again — with no
/// traffic: each probes Redis on its own — then sends `attempts` requests round-robin over the
/// fleet; returns how many were admitted.
async fn admitted_over_fleet(fleet: &Fleet, key: &str, body: &Value, attempts: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    for replica in &fleet.replicas {
        loop {
            let readiness = ready(replica).await;
            if readiness["limiter"] == "shared" {
                break;
            }
            assert!(Instant::now() < deadline, "limiter not shared again after the outage: {readiness}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut admitted = 0;
    for index in 0..attempts {
        let reply = chat(fleet.replica(index % fleet.replicas.len()), key, body).await;
        match reply.status {
            200 => admitted += 1,
            _ => reply.assert_error(429, "rate_limit_exceeded"),
        }
    }
    admitted
}

/// A replica killed with `kill -9` in the middle of a stream: every response it completed had
/// its audit record acknowledged first (sync durability), and all of them are in the shared
/// log; the stream's concurrency slot is not stuck past the reservation lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_no_acknowledged_record_and_frees_its_slot() {
    let Some(redis) = redis_or_skip() else { return };
    let Some(mut fleet) = Fleet::start(FleetSpec::new(redis)).await else { return };
    let (_, key) = fleet.key_with_limits(json!({"max_concurrent": 1})).await;
    let body = chat_body(5, false);
    let mut completed = Vec::new();
    for _ in 0..5 {
        let reply = chat(fleet.replica(0), &key, &body).await;
        reply.assert_ok();
        completed.push(reply.header("x-request-id").expect("a request id").to_string());
    }

    let gate = fleet.stub.gated_stream();
    let stream = http()
        .post(format!("{}/v1/chat/completions", fleet.replica(0).proxy_url()))
        .bearer_auth(&key)
        .json(&chat_body(5, true))
        .send()
        .await
        .expect("the stream starts");
    assert_eq!(stream.status(), 200);
    fleet.replicas[0].signal("KILL");
    fleet.replicas[0].wait_exit(Duration::from_secs(5)).await.expect("the replica died");
    let killed_at = Instant::now();
    drop(gate);

    // The dead replica's slot is held until its lease runs out, then freed.
    let survivor = fleet.replica(1);
    let refused = chat(survivor, &key, &body).await;
    refused.assert_error(429, "rate_limit_exceeded");
    let freed = loop {
        let reply = chat(survivor, &key, &body).await;
        if reply.status == 200 {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(LEASE_SECS + 3), "slot still held: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the dead replica's concurrency slot was freed {freed:?} after the kill (lease {LEASE_SECS}s)");

    for request_id in &completed {
        let url = format!("{}/admin/v1/audit?request_id={request_id}", survivor.admin_url());
        let page = send(http().get(url).bearer_auth(survivor.admin_token())).await;
        let records = page.body["data"].as_array().expect("audit records");
        assert_eq!(records.len(), 1, "request {request_id} is in the audit log once: {}", page.text);
        assert_eq!(records[0]["node"], "replica-0");
    }
    let verify =
        send(http().get(format!("{}/admin/v1/audit/verify", survivor.admin_url())).bearer_auth(survivor.admin_token()))
            .await;
    assert_eq!(verify.body["ok"], true, "{}", verify.text);
    let nodes: Vec<&str> =
        verify.body["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["node"].as_str()).collect();
    assert!(nodes.contains(&"replica-0") && nodes.contains(&"replica-1"), "one chain per replica: {nodes:?}");
}

/// PostgreSQL cut off from a replica: keys it has seen keep working (even past their cache
/// age), keys it has not fail closed with 503, audit records go to the spill file and readiness
/// says so; once the store is back the spilled records are replayed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_keeps_known_keys_working_and_loses_no_audit_record() {
    let Some(redis) = redis_or_skip() else { return };
    let Some(db) = PostgresDatabase::create_or_skip().await else { return };
    let relay = TcpRelay::start(postgres_addr(db.url())).await;
    let mut spec = FleetSpec::new(redis);
    spec.replicas = 1;
    spec.cache_max_age = "1s";
    spec.store_url = Some(relayed_url(db.url(), relay.addr()));
    let fleet = Fleet::start_on(spec, db).await;
    let gateway = fleet.replica(0);
    let (_, known) = fleet.key_with_limits(json!({})).await;
    let (_, unseen) = fleet.key_with_limits(json!({})).await;
    let body = chat_body(5, false);
    chat(gateway, &known, &body).await.assert_ok();

    relay.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the cache age
    let mut during = Vec::new();
    for _ in 0..3 {
        let reply = chat(gateway, &known, &body).await;
        reply.assert_ok();
        during.push(reply.header("x-request-id").expect("a request id").to_string());
    }
    chat(gateway, &unseen, &body).await.assert_error(503, "store_unavailable");
    let readiness = ready(gateway).await;
    assert_eq!(
        (readiness["status"].as_str(), readiness["store"].as_str(), readiness["audit"].as_str()),
        (Some("degraded"), Some("unavailable"), Some("spilling")),
        "{readiness}"
    );

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready(gateway).await["status"] != "ready" {
        assert!(Instant::now() < deadline, "still degraded after the store came back: {}", ready(gateway).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chat(gateway, &unseen, &body).await.assert_ok();
    for request_id in &during {
        let url = format!("{}/admin/v1/audit?request_id={request_id}", gateway.admin_url());
        let page = send(http().get(url).bearer_auth(gateway.admin_token())).await;
        let records = page.body["data"].as_array().expect("audit records");
        assert_eq!(records.len(), 1, "request {request_id} replayed exactly once: {}", page.text);
    }
    let verify =
        send(http().get(format!("{}/admin/v1/audit/verify", gateway.admin_url())).bearer_auth(gateway.admin_token()))
            .await;
    assert_eq!(verify.body["ok"], true, "{}", verify.text);
}

fn postgres_addr(url: &str) -> std::net::SocketAddr {
    let url = url::Url::parse(url).expect("a PostgreSQL URL");
    let host = url.host_str().expect("a host");
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).expect("resolvable").next().expect("an address")
}

fn relayed_url(url: &str, relay: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(url).expect("a PostgreSQL URL");
    url.set_host(Some(&relay.ip().to_string())).expect("a host");
    url.set_port(Some(relay.port())).expect("a port");
    url.to_string()
}

/// Two replicas; `extra_config` turns the authorizer on.
fn authz_fleet(redis_url: String, extra_config: &'static str) -> FleetSpec {
    FleetSpec { replicas: 2, extra_config, ..FleetSpec::new(redis_url) }
}

/// A forward-auth check for a chat completion with `key`, as nginx asks it; returns the lease's
/// request id.
async fn authz_allow(gateway: &Gateway, key: &str) -> String {
    let reply = send(
        http()
            .get(format!("http://{}/authz/nginx", gateway.authz_addr()))
            .header("x-original-uri", "/v1/chat/completions")
            .header("x-original-method", "POST")
            .header("x-original-content-length", "84")
            .header("x-portcullis-model", "m")
            .bearer_auth(key),
    )
    .await;
    reply.assert_ok();
    reply.header("x-portcullis-request-id").expect("the lease id").to_string()
}

async fn usage_report(gateway: &Gateway, request_id: &str, prompt: u64, completion: u64) -> Reply {
    let report = json!({"request_id": request_id, "usage": {"prompt_tokens": prompt, "completion_tokens": completion}});
    send(http().post(format!("http://{}/authz/v1/usage", gateway.authz_addr())).json(&report)).await
}

/// The key's tokens today once `/v1/usage` shows a request, or None after `within`.
async fn tokens_today(gateway: &Gateway, key: &str, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    loop {
        let reply = send(http().get(format!("{}/v1/usage", gateway.proxy_url())).bearer_auth(key)).await;
        reply.assert_ok();
        let today = &reply.body["spend"]["today"];
        if today["requests"].as_u64() >= Some(1) {
            return today["tokens"].as_u64();
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reasons of the audit records of the authorizer's request `request_id`, with their nodes.
async fn lease_records(gateway: &Gateway, request_id: &str) -> Vec<(String, String)> {
    let url = format!("{}/admin/v1/audit?request_id={request_id}", gateway.admin_url());
    let page = send(http().get(url).bearer_auth(gateway.admin_token())).await;
    let records = page.body["data"].as_array().expect("audit records");
    records.iter().filter_map(|record| Some((record["reason"].as_str()?.to_string(), str_of(record, "node")))).collect()
}

async fn metrics(gateway: &Gateway) -> String {
    send(http().get(format!("{}/metrics", gateway.admin_url())).bearer_auth(gateway.admin_token())).await.text
}

/// A usage report that reaches a replica other than the one that allowed the request is relayed
/// over Redis and settles the lease where it is: the key is billed the reported figures once,
/// and the lease does not expire charged in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_report_to_another_replica_settles_the_lease_where_it_is() {
    let Some(redis_url) = redis_or_skip() else { return };
    let spec = authz_fleet(redis_url, "[authz]\nlisten = \"127.0.0.1:0\"\nlease = \"2s\"\n");
    let Some(fleet) = Fleet::start(spec).await else { return };
    let (_, key) = fleet.key_with_limits(json!({})).await;
    let request_id = authz_allow(fleet.replica(0), &key).await;

    let relayed = usage_report(fleet.replica(1), &request_id, 7, 9).await;
    assert_eq!(relayed.status, 202, "{}", relayed.text);
    assert_eq!(relayed.body, json!({"request_id": request_id, "relayed": true}));
    assert_eq!(tokens_today(fleet.replica(1), &key, Duration::from_secs(5)).await, Some(16));
    assert!(
        metrics(fleet.replica(1)).await.contains("portcullis_authz_lease_settlements_total{how=\"relayed_out\"} 1")
    );
    let holder = metrics(fleet.replica(0)).await;
    assert!(holder.contains("portcullis_authz_lease_settlements_total{how=\"usage_reported\"} 1"), "{holder}");
    assert!(holder.contains("portcullis_authz_open_leases 0"), "{holder}");

    // Past the lease: nothing more was charged, and the settlement is recorded once, by the holder.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tokens_today(fleet.replica(0), &key, Duration::ZERO).await, Some(16));
    let records = lease_records(fleet.replica(1), &request_id).await;
    let settlements: Vec<_> =
        records.iter().filter(|(reason, _)| reason.starts_with("usage_") || reason.starts_with("lease_")).collect();
    assert_eq!(settlements, [&("usage_reported".to_string(), "replica-0".to_string())], "{records:?}");
    // Nobody holds a lease for an unknown id, but no replica can tell: relayed all the same.
    assert_eq!(usage_report(fleet.replica(1), "req_never_allowed", 1, 1).await.status, 202);
}

/// Redis down: a report that cannot be relayed is refused with 503 so that the reporter retries;
/// once Redis is back the replicas subscribe again and a retried report settles the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_cannot_be_relayed_is_refused_for_a_retry_and_lands_once_redis_is_back() {
    let Some(mut redis) = RedisServer::start_or_skip().await else { return };
    let spec = authz_fleet(redis.url(), "[authz]\nlisten = \"127.0.0.1:0\"\nlease = \"30s\"\n");
    let Some(fleet) = Fleet::start(spec).await else { return };
    let (_, key) = fleet.key_with_limits(json!({})).await;
    let request_id = authz_allow(fleet.replica(0), &key).await;

    redis.stop();
    let refused = usage_report(fleet.replica(1), &request_id, 7, 9).await;
    refused.assert_error(503, "limiter_unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    redis.restart().await;
    // A report relayed before the holder has subscribed again is lost: the reporter retries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let tokens = loop {
        let reply = usage_report(fleet.replica(1), &request_id, 7, 9).await;
        if reply.status == 202
            && let Some(tokens) = tokens_today(fleet.replica(1), &key, Duration::from_secs(1)).await
        {
            break tokens;
        }
        assert!(Instant::now() < deadline, "never settled after Redis came back: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(tokens, 16);
}
