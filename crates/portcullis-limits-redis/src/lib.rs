//! A [`portcullis_limits::Limiter`] whose counters live in Redis, so that limits hold across every gateway
//! replica together.
//!
//! [`RedisLimiter`] keeps the guarantees of the `portcullis_limits` crate docs — all or nothing across
//! scopes and limits, no overspend of day/month quotas and budgets, settlement charging
//! `min(actual, reserved)` into the windows of the reservation, token refunds, a dropped reservation
//! charged in full, the same denial choice, retry times and `x-ratelimit` headers — and its GCRA, token
//! bucket and calendar-window arithmetic gives the same results as `MemoryLimiter` for the same inputs
//! (the equivalence test runs both side by side). Nothing here reads a clock for limit math: `now` comes
//! from the caller, exactly as for the in-memory limiter.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis_limits_redis::{OnBackendError, RedisLimiter, RedisLimiterOptions};
//! let limiter = RedisLimiter::connect(RedisLimiterOptions {
//!     on_backend_error: OnBackendError::Local { replicas: 3 },
//!     ..RedisLimiterOptions::new("redis://127.0.0.1:6379")
//! })
//! .await?;
//! # let _ = limiter.backend_state();
//! # Ok(()) }
//! ```
//!
//! # The script
//! Every state change is one Lua script (`src/lua/rules.lua` for the arithmetic and `src/lua/operations.lua`
//! for the state and operations, joined at compile time; run by `EVALSHA` through `redis::Script`, its SHA
//! computed once), with one operation per call:
//! - `admit`: one call per admission. Expires overdue leases of its scopes, checks every limit of every
//!   scope, and only if all pass takes the demand from all of them and records the reservation; otherwise
//!   it returns every refusal and changes nothing (Redis runs a script atomically, so no other admission
//!   sees a half-applied one). Never-fits is decided in Rust before the call, from the limits alone.
//! - `settle`: one call per settlement (or per dropped reservation, charging it in full).
//! - `renew`: one call per renewal period for all of this process's running reservations.
//! - `snapshot` and `seed`: one call each.
//!
//! Lua numbers are doubles, exact only below 2^53. Money (pico-units, `u64` up to 1.8 × 10^19) and token
//! counts in the day and month windows are therefore kept as two limbs (`hi`, `lo`) in base 10^9 with
//! exact add, saturating add/sub and compare, and stored as decimal strings. Times and rates stay below
//! 2^53: the GCRA's theoretical arrival time is kept as whole ms plus a remainder in ticks (never
//! multiplied out), and the rates are clamped to an exact domain — [`MAX_REQUEST_RATE`] (2^26 requests
//! per minute) and [`MAX_TOKEN_RATE`] (~75 billion tokens per minute), far above any real limit; the
//! headers still report the configured value. `now` must be below 2^53 ms (the year 287 396).
//!
//! # Data layout
//! All keys start with the hash tag `{<prefix>}:` (`key_prefix`, default `portcullis`). Per scope
//! (`g` global, `t:<id>` team, `k:<id>` key):
//!
//! | key | type | fields |
//! |---|---|---|
//! | `{p}:s:<scope>` | hash | `gt` `gr` `gp`: GCRA arrival time as ms + remainder in ticks of `1/gp` ms, and the rpm it was written under; `bd` `bl`: token-bucket deficit (1/60 000 tokens) as of `bl` ms; `br`: bucket tokens held by running requests; `c`: requests in flight; `di`/`mi`: day/month window index; `dtu` `dtr` `dcu` `dcr` and `mtu` … `mcr`: tokens/cost used/reserved in that day/month (decimal `u64`) |
//! | `{p}:l:<scope>` | sorted set | running reservation ids, scored by lease deadline (wall-clock ms) |
//! | `{p}:h:<scope>` | hash | running reservation id → what it took here: concurrency 0/1, bucket tokens, day and month window, demand tokens and cost |
//!
//! Each write extends (never shortens) the keys' expiry to the end of the current month plus a day, or
//! longer when a burst far above the rate takes longer to replenish, so Redis does not fill with scopes
//! nobody uses.
//!
//! # Redis Cluster
//! Cluster refuses a script whose keys lie in different hash slots, and an admission must check and
//! change the key, team and global scopes in one atomic step. Cluster hashes only the `{…}` part of a
//! key, so every key of a prefix is in one slot: **all limiter keys of a prefix live on one shard**.
//! Cluster then gives failover (a replica of that shard takes over), not sharding of the limiter; the
//! load is one small script per admission and per settlement, which one Redis core handles at tens of
//! thousands per second. Deployments that need more can give unrelated tenants different prefixes.
//! A failover may lose the last writes that had not reached the replica (Redis replication is
//! asynchronous): counts can briefly lag by those, as after any Redis crash without AOF fsync.
//!
//! # Leases
//! A replica that dies cannot settle its reservations. Each reservation is therefore held under a lease:
//! the script records it in every scope's lease set with a deadline (`lease`, default 30 s) and in the
//! holds hash with what it took. Every script call first releases the overdue leases of the scopes it
//! touches, charging them in full — the rule for a dropped reservation: the concurrency slot is freed,
//! the reserved tokens and money become used in their own windows if those are still current, no token
//! refund. While a reservation runs, a task of its limiter renews the leases of all of the process's
//! running reservations every `lease / 3` in one call, so a long stream never expires while its replica
//! lives (a renewal only moves existing leases, so an expired reservation is never brought back).
//! Dropping a reservation unsettled spawns its release (tracked: [`RedisLimiter::drain`] waits for them);
//! a settlement that cannot reach Redis is logged and left to the lease, which charges it in full — the
//! limiter may under-count capacity for a lease, never over-admit. The same holds for an admission that
//! Redis applied but whose answer never arrived (a timeout, or the caller's future dropped): nobody
//! renews it, so its lease releases it, charged in full.
//!
//! # Clocks
//! Limit math uses the caller's `now`, so the replicas' clocks must be synchronised (NTP): a replica
//! whose clock runs ahead refills rates early and rolls days over early for everyone. Leases use each
//! process's wall clock, and must agree across replicas to well within a lease.
//!
//! # Outages
//! Every Redis call (connecting included) has a `timeout` (default 250 ms). A failure opens a circuit
//! breaker: for `retry_interval` (default 1 s) admissions skip Redis and follow the policy at once, then
//! one admission probes Redis; when it answers, counting is shared again. [`RedisLimiter::backend_state`]
//! reports [`BackendState::Shared`] or [`BackendState::Degraded`] with the outage's start, and
//! [`RedisLimiter::fallback_count`] counts policy decisions; a warning is logged once per transition.
//! The policy ([`OnBackendError`]):
//! - `Deny` refuses with [`portcullis_limits::Refusal::Unavailable`] and the time to the next probe.
//! - `Local { replicas }` admits through an in-process `MemoryLimiter` with every limit divided by
//!   `replicas` (rounded down, a nonzero limit stays ≥ 1), so the fleet as a whole stays within the rates
//!   and concurrency. Quotas and budgets are counted per replica from the start of the outage (plus its
//!   share of the seeded usage): spend that Redis counted before the outage is not known locally, so a
//!   long outage can let a window's spend exceed its budget by up to the budget. A request that fits a
//!   limit but not one replica's share is refused as unavailable, not as never fitting. Local
//!   reservations settle locally.
//!
//! Connecting does not need Redis: a limiter built while Redis is down starts degraded and recovers. A
//! malformed URL or option is an error ([`RedisLimiterError`]).

mod backend;
mod breaker;
mod hold;
mod keys;
mod limits;
mod options;
mod redis_limiter;

pub use breaker::BackendState;
pub use limits::{MAX_REQUEST_RATE, MAX_TOKEN_RATE};
pub use options::{OnBackendError, RedisLimiterError, RedisLimiterOptions};
pub use redis_limiter::RedisLimiter;

#[cfg(test)]
mod script_tests;
