//! A [`portcullis_limits::Limiter`] whose counters live in Redis, so that limits hold across every gateway
//! replica together.
//!
//! [`RedisLimiter`] keeps the guarantees of the `portcullis_limits` crate docs — all or nothing across
//! scopes and limits, no admission beyond a day/month quota, budget or token rate, settlement charging
//! the actual usage in full (token refunds, a token debt below the empty bucket repaid at its rate, quotas
//! and budgets charged past their limit in the windows of the reservation, a window's excess carried into
//! the next ones until repaid), a dropped reservation charged its whole reservation, the same denial
//! choice, retry times and `x-ratelimit` headers — and its GCRA, token bucket and calendar-window
//! arithmetic gives the same results as `MemoryLimiter` for the same inputs (the equivalence test runs
//! both side by side, and `tests/overrun.rs` tells both the same story of overruns). The snapshot's
//! token-bucket and quota figures and a quota refusal's retry time are computed by the library's own
//! functions from the raw state. Nothing here reads a clock for limit math: `now` comes from the caller,
//! exactly as for the in-memory limiter.
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
//! for the state and operations, joined at compile time; run by `EVALSHA` on the one multiplexed
//! connection, its SHA computed once and the script loaded again only if Redis lost it), with one
//! operation per call:
//! - `admit`: one call per admission. Expires overdue leases of its scopes, checks every limit of every
//!   scope, and only if all pass takes the demand from all of them and records the reservation; otherwise
//!   it returns every refusal and changes nothing (Redis runs a script atomically, so no other admission
//!   sees a half-applied one). Never-fits is decided in Rust before the call, from the limits alone.
//! - `settle`: one call per settlement, charging the actual usage (or per dropped reservation, charging
//!   its whole reservation).
//! - `renew`: one call per renewal period for all of this process's running reservations.
//! - `snapshot` and `seed`: one call each.
//!
//! Redis runs every replica's scripts on one thread, so the script is written for cost (some 15–25 µs of
//! Redis time per admission or settlement of two scopes on a small VM; `benches/redis_limiter.rs`): its
//! numbers come packed as little-endian doubles rather than decimal text, which Lua parses slowly; a
//! scope's state is one packed string; a call reads the states of all its scopes with one `MGET`, then
//! per scope adds or removes one lease and overwrites the state; key expiries move about once a month
//! rather than on every call; and the header values (remaining, reset) are computed in Rust from the raw
//! state the script returns.
//!
//! Lua numbers are doubles, exact only below 2^53. Money (pico-units, `u64` up to 1.8 × 10^19) and token
//! counts in the day and month windows are therefore kept as two limbs (`hi`, `lo`) in base 10^9 with
//! exact add, saturating add/sub, compare, and the product of a quota by a window count (what a window
//! carries). Times and rates stay below 2^53: the GCRA's theoretical arrival time is kept as whole ms plus
//! a remainder in ticks (never multiplied out), and the rates are clamped to an exact domain —
//! [`MAX_REQUEST_RATE`] (2^26 requests per minute) and [`MAX_TOKEN_RATE`] (~75 billion tokens per minute),
//! far above any real limit; the headers still report the configured value. A token bucket's deficit, a
//! debt included, is kept up to [`MAX_TOKEN_DEFICIT`] (~75 billion tokens); a deeper one counts as that.
//! `now` must be below 2^53 ms (the year 287 396).
//!
//! # Data layout
//! All keys start with the hash tag `{<prefix>}:` (`key_prefix`, default `portcullis`), then the layout
//! version `v2`. Per scope (`g` global, `t:<id>` team, `k:<id>` key):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:v2:s:<scope>` | string | the scope's state: 36 little-endian `f64` (integers below 2^53, and +∞ in `9`) — `1..3` GCRA arrival time as ms + remainder in ticks of `1/rpm` ms, and the rpm it was written under (0: never); `4..6` token-bucket deficit (1/60 000 tokens, a debt included) as of a ms, and bucket tokens held by running requests; `7` requests in flight; `8` the expiry last given to the scope's keys (ms of `now`); `9` a lower bound of the lease deadlines (wall-clock ms; +∞ for none); `10..18` the day window: its index, then tokens used, tokens reserved, cost used, cost reserved as limbs `hi`, `lo`; `19..27` the month window, the same; `28` the token-bucket capacity of its last take (what tells a debt from a lowered capacity); `29..32` the day window's token quota and budget at its latest reservation (limbs; 0: none), which its excess is carried against; `33..36` the month window's, the same |
//! | `{p}:v2:l:<scope>` | sorted set | running reservations, scored by lease deadline (wall-clock ms): each member is 8 little-endian `f64` — what the reservation took here (concurrency slot 1/0, bucket tokens or −1, its day and month window index) and its demand (tokens and cost as limbs) — followed by the reservation id; plus an end marker, member `""` scored +∞, so that the set is never emptied and deleted |
//!
//! Older layouts — `v1` (the same keys with a 27-double state that settled `min(actual, reserved)`) and
//! the first one (hashes of decimal fields under `{p}:s:`, `{p}:l:` and `{p}:h:`) — are neither read nor
//! written: replicas of an older version and of this one count separately, so during a rolling upgrade
//! each group keeps its own counts (the fleet may admit up to twice a limit until the old replicas are
//! gone; day and month counters of the new layout start from the usage a starting replica seeds); the old
//! keys expire by themselves.
//!
//! A scope's keys live until the end of the current month plus a day, or longer when a burst far above
//! the rate takes longer to replenish, or while a token debt or a window's carried excess lasts (rounded
//! up to an hour), so Redis does not fill with scopes nobody uses and forgets no debt. The script moves
//! their expiry only when that time passes the one it last gave them (kept in the state), so for most
//! scopes once a month; the expiry is never shortened.
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
//! the script records it in every scope's lease set with a deadline (`lease`, default 30 s), as a member
//! that says what it took there; the admitting replica keeps the members to settle and renew with. Every
//! script call first releases the overdue leases of the scopes it touches, charging them in full — the
//! rule for a dropped reservation: the concurrency slot is freed, the reserved tokens and money become
//! used in their own windows if those are still current, no token refund. The state keeps a lower bound
//! of its lease deadlines, so a call looks at the lease set only once that has passed (then it reads the
//! set's earliest deadline again). While a reservation runs, a task of its limiter renews the leases of
//! all of the process's running reservations every `lease / 3` in one call, so a long stream never
//! expires while its replica lives (a renewal only moves existing leases, so an expired reservation is
//! never brought back).
//! Dropping a reservation unsettled spawns its release (tracked: [`RedisLimiter::drain`] waits for them);
//! a settlement that cannot reach Redis is logged and left to the lease, which charges the whole
//! reservation — the limiter may under-count capacity for a lease, never over-admit (only an overrun
//! beyond the reservation is lost with such a settlement). The same holds for an admission that
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
//!
//! # Channels
//! [`RedisLimiter::channel`] gives a pub/sub channel on the same Redis, `{<prefix>}:<name>`, for what the
//! replicas must tell each other besides counting ([`FleetChannel`]).

mod backend;
mod breaker;
mod channel;
mod hold;
mod keys;
mod limits;
mod options;
mod protocol;
mod rates;
mod redis_limiter;

pub use breaker::BackendState;
pub use channel::{ChannelError, FleetChannel};
pub use limits::{MAX_REQUEST_RATE, MAX_TOKEN_DEFICIT, MAX_TOKEN_RATE};
pub use options::{OnBackendError, RedisLimiterError, RedisLimiterOptions};
pub use redis_limiter::RedisLimiter;

#[cfg(test)]
mod script_tests;
