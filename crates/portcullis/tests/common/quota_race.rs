//! The quota race of issue 17: many concurrent requests on a key whose day quota holds only a few
//! of their worst cases at once, while each really uses far less. Reservations of running
//! requests must not turn away requests the quota can pay for: they wait for them to settle.
//!
//! The stub reports `prompt_tokens` = words of the prompt and `completion_tokens` = chunks, so a
//! request here uses exactly [`REAL_USE`] tokens, and reserves its worst case: its prompt's bound
//! (at most the body's bytes + 16; a tokenizer's count is tighter) + [`MAX_TOKENS`].

use std::time::Duration;

use portcullis_testkit::StubUpstream;
use serde_json::{Value, json};

use super::{Reply, http, send};

/// The key's `tokens_per_day`.
pub const QUOTA: u64 = 2_000;
/// Concurrent requests: together they need more than the quota.
pub const RACERS: usize = 120;
/// The completion cap every request names, well above what it uses.
pub const MAX_TOKENS: u64 = 60;
/// Words of the prompt.
const PROMPT: &str = "one two three four five";
/// Chunks the stub answers with: 5 prompt words + 13 = 18 tokens a request.
const CHUNKS: usize = 13;
pub const REAL_USE: u64 = 18;
/// Each model's `queue_timeout` in the race: the bound on waiting, far above what the race needs.
pub const QUEUE_TIMEOUT: &str = "queue_timeout = \"10s\"";

pub fn body() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS})
}

/// The largest worst case a request can reserve: with the byte bound of its prompt.
pub fn worst_case_bound() -> u64 {
    serde_json::to_vec(&body()).expect("a body").len() as u64 + 16 + MAX_TOKENS
}

/// Makes the stub's replies use [`REAL_USE`] tokens.
pub fn prepare(stub: &StubUpstream) {
    stub.set_stream_chunks(CHUNKS);
}

/// Sends [`RACERS`] requests at once, spread over `proxies` in turn; returns the answers.
pub async fn run(proxies: &[String], key: &str) -> Vec<Reply> {
    let tasks: Vec<_> = (0..RACERS)
        .map(|index| {
            let url = format!("{}/v1/chat/completions", proxies[index % proxies.len()]);
            let key = key.to_string();
            tokio::spawn(async move { send(http().post(url).bearer_auth(key).json(&body())).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(RACERS);
    for task in tasks {
        replies.push(task.await.expect("the request task ran"));
    }
    replies
}

/// Checks the answers of a race and returns how many were served: each served request used
/// [`REAL_USE`] tokens, every refusal is `insufficient_quota` for a spent quota (none gave up
/// waiting), some were refused, and at least 90 % of the quota is spent, never more than all of
/// it, and what is left is less than a request's worst case (so none was refused while it fit).
pub fn check(replies: &[Reply]) -> u64 {
    let mut served = 0;
    for reply in replies {
        if reply.status == 200 {
            assert_eq!(reply.body["usage"]["total_tokens"].as_u64(), Some(REAL_USE), "{}", reply.text);
            served += 1;
        } else {
            reply.assert_error(429, "insufficient_quota");
            assert!(!reply.message().contains("held by running requests"), "gave up waiting: {}", reply.text);
            assert!(reply.message().contains("tokens_per_day"), "{}", reply.text);
        }
    }
    let spent = served * REAL_USE;
    assert!(served < RACERS as u64, "{RACERS} requests of {REAL_USE} tokens cannot all fit {QUOTA}");
    assert!(spent <= QUOTA, "spent {spent} of {QUOTA}");
    assert!(spent * 10 >= QUOTA * 9, "only {spent} of {QUOTA} spent by {served} requests");
    assert!(QUOTA - spent < worst_case_bound(), "refused with {} left", QUOTA - spent);
    served
}

/// `tokens_per_day` of the key scope in a `/v1/usage` answer: (max, used, reserved).
pub fn day_quota(usage: &Value) -> (u64, u64, u64) {
    let limit = usage["limits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|scope| scope["scope"]["kind"] == "key")
        .flat_map(|scope| scope["limits"].as_array().into_iter().flatten())
        .find(|entry| entry["limit"] == "tokens_per_day")
        .unwrap_or_else(|| panic!("no tokens_per_day of the key in {usage}"));
    let number = |field: &str| limit[field].as_u64().unwrap_or_else(|| panic!("no {field} in {limit}"));
    (number("max"), number("used"), number("reserved"))
}

/// `GET /v1/usage` as `key` until nothing is reserved and `requests` are counted today.
pub async fn settled_usage(proxy: &str, key: &str, requests: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(http().get(format!("{proxy}/v1/usage")).bearer_auth(key)).await;
        reply.assert_ok();
        let settled = day_quota(&reply.body).2 == 0 && reply.body["spend"]["today"]["requests"] == requests;
        if settled || tokio::time::Instant::now() > deadline {
            return reply.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /admin/v1/usage?key=ID`: (requests, tokens) recorded for the key today, polled until
/// `requests` are there (usage reaches the store once a second).
pub async fn admin_totals(admin: &str, token: &str, key_id: &str, requests: u64) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let url = format!("{admin}/admin/v1/usage?key={key_id}&since=1d");
        let reply = send(http().get(url).bearer_auth(token)).await;
        reply.assert_ok();
        let lines = reply.body["data"].as_array().unwrap_or_else(|| panic!("no data in {}", reply.text));
        let sum = |field: &str| lines.iter().filter_map(|line| line[field].as_u64()).sum::<u64>();
        let totals = (sum("requests"), sum("total_tokens"));
        if totals.0 >= requests || tokio::time::Instant::now() > deadline {
            return totals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
