//! Shared test support: limiters on the machine's Redis under a fresh prefix.
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::time::Duration;

use portcullis_limits::window::{DAY_MS, days_from_civil};
use portcullis_limits::{Demand, LimitScope, Millis, Money, Usage};
use portcullis_limits_redis::{OnBackendError, RedisLimiter, RedisLimiterOptions};

pub const NOON: Millis = 1_816_171_200_000; // 2027-07-21 12:00 UTC

pub fn utc(year: u64, month: u64, day: u64, hour: u64, minute: u64) -> Millis {
    days_from_civil(year, month, day) * DAY_MS + hour * 3_600_000 + minute * 60_000
}

pub fn key(id: &str) -> LimitScope {
    LimitScope::Key(id.into())
}

pub fn team(id: &str) -> LimitScope {
    LimitScope::Team(id.into())
}

pub fn demand(tokens: u64, cost: u64) -> Demand {
    Demand { tokens, cost: Money(cost) }
}

pub fn usage(tokens: u64, cost: u64) -> Usage {
    Usage { tokens, cost: Money(cost) }
}

/// Options for the shared test Redis under a prefix of its own, with a generous timeout (debug builds,
/// parallel tests) unless a test sets its own.
pub fn options(url: &str, prefix: &str) -> RedisLimiterOptions {
    RedisLimiterOptions {
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_secs(2),
        lease: Duration::from_secs(30),
        ..RedisLimiterOptions::new(url)
    }
}

/// A limiter on the machine's Redis under a fresh prefix; `None` (after a loud skip) without Redis.
pub async fn fresh_limiter(name: &str) -> Option<(RedisLimiter, String)> {
    let url = portcullis_testkit::redis_or_skip()?;
    let prefix = portcullis_testkit::unique_name(name);
    let limiter = RedisLimiter::connect(options(&url, &prefix)).await.expect("connect");
    Some((limiter, prefix))
}

pub async fn connect(url: &str, prefix: &str, policy: OnBackendError) -> RedisLimiter {
    RedisLimiter::connect(RedisLimiterOptions { on_backend_error: policy, ..options(url, prefix) })
        .await
        .expect("connect")
}
