//! [`RedisLimiter`]: the `Limiter` whose counters live in Redis, with its outage policy.

use std::cmp::Reverse;
use std::sync::Arc;

use portcullis_limits::{
    Demand, Denial, DenialReason, Gcra, LimitKind, LimitScope, LimitState, Limiter, Limits, MemoryLimiter, Millis,
    Period, RateHeaders, RateState, Refusal, Reservation, TokenBucket, Usage,
};

use crate::limits::MAX_TOKEN_RATE;

use crate::backend::Backend;
use crate::breaker::BackendState;
use crate::channel::FleetChannel;
use crate::hold::{Lease, RedisHold, renew_leases};
use crate::keys::{KeySpace, PrefixError};
use crate::limits::{counted, local_limits, local_usage, never_fits};
use crate::options::{OnBackendError, RedisLimiterError, RedisLimiterOptions};
use crate::protocol::{AdmitReply, AdmittedScope, RawSnapshot, Refused, Why};

/// A [`Limiter`] whose counters live in Redis, shared by every replica that uses the same key prefix.
/// See the crate docs for the data layout, leases and the outage policy.
#[derive(Debug)]
pub struct RedisLimiter {
    backend: Arc<Backend>,
    /// Admits while Redis cannot be reached, under [`OnBackendError::Local`].
    local: MemoryLimiter,
    policy: OnBackendError,
    /// The lease renewal and recovery probe tasks, stopped with the limiter.
    renewal: tokio::task::AbortHandle,
    recovery: tokio::task::AbortHandle,
}

impl RedisLimiter {
    /// Builds the limiter and tries Redis once. An unreachable Redis is not an error: the limiter starts
    /// [`BackendState::Degraded`] and shares counters as soon as Redis answers. Malformed options are.
    /// Must run inside a Tokio runtime (it spawns the lease renewal).
    pub async fn connect(options: RedisLimiterOptions) -> Result<RedisLimiter, RedisLimiterError> {
        options.validate()?;
        let keys = KeySpace::new(&options.key_prefix).map_err(|error| RedisLimiterError::KeyPrefix {
            prefix: options.key_prefix.clone(),
            why: match error {
                PrefixError::Empty => "must not be empty",
                PrefixError::Brace => "must not contain { or } (it becomes the Redis Cluster hash tag)",
            },
        })?;
        let client = redis::Client::open(options.url.as_str()).map_err(RedisLimiterError::Url)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RedisLimiterError::NoRuntime)?;
        let backend = Arc::new(Backend::new(client, keys, options.timeout, options.lease, options.retry_interval));
        let renewal = runtime.spawn(renew_leases(Arc::downgrade(&backend), options.lease / 3)).abort_handle();
        let recovery =
            runtime.spawn(probe_while_degraded(Arc::downgrade(&backend), options.retry_interval)).abort_handle();
        // A failure is logged by the breaker and leaves the limiter degraded; nothing else to do here.
        let _ = backend.warm_up().await;
        Ok(RedisLimiter { backend, local: MemoryLimiter::new(), policy: options.on_backend_error, renewal, recovery })
    }

    /// Whether counters are shared in Redis right now, or the outage policy decides.
    pub fn backend_state(&self) -> BackendState {
        self.backend.breaker.state()
    }

    /// How many admissions the outage policy decided (refused as unavailable, or admitted locally) since
    /// the limiter was built.
    pub fn fallback_count(&self) -> u64 {
        self.backend.breaker.fallbacks()
    }

    /// The pub/sub channel `name` of this limiter's Redis and key prefix, which every replica sharing the
    /// limits hears.
    pub fn channel(&self, name: &str) -> FleetChannel {
        FleetChannel::new(self.backend.clone(), name)
    }

    /// Waits until the background releases of dropped reservations started so far have finished (each
    /// takes at most one timeout). For shutdown, and for tests that drop reservations.
    pub async fn drain(&self) {
        let tasks = &self.backend.tasks;
        tasks.close();
        tasks.wait().await;
        tasks.reopen();
    }

    fn fallback(&self, scopes: &[(LimitScope, Limits)], demand: Demand, now: Millis) -> Result<Reservation, Refusal> {
        let breaker = &self.backend.breaker;
        breaker.count_fallback();
        let unavailable = Refusal::Unavailable { retry_after_ms: breaker.retry_after_ms() };
        match self.policy {
            OnBackendError::Deny => Err(unavailable),
            OnBackendError::Local { replicas } => {
                let local: Vec<(LimitScope, Limits)> =
                    scopes.iter().map(|(scope, limits)| (scope.clone(), local_limits(limits, replicas))).collect();
                match self.local.admit_sync(&local, demand, now) {
                    Ok(reservation) => Ok(reservation),
                    // It fits the fleet's limit (checked before) but not one replica's share of it: it can
                    // pass once Redis is back, so this is an outage answer, not a "never".
                    Err(denial) if denial.reason == DenialReason::NeverFits => Err(unavailable),
                    Err(denial) => Err(denial.into()),
                }
            }
        }
    }

    fn fallback_snapshot(&self, scope: &LimitScope, limits: &Limits, now: Millis) -> Vec<LimitState> {
        match self.policy {
            // Nothing known beats something made up.
            OnBackendError::Deny => Vec::new(),
            OnBackendError::Local { replicas } => self.local.snapshot_sync(scope, &local_limits(limits, replicas), now),
        }
    }

    fn reservation(
        &self,
        scopes: &[(LimitScope, Limits)],
        counted: &[usize],
        names: Vec<String>,
        id: Arc<str>,
        admitted: Vec<AdmittedScope>,
        demand: Demand,
    ) -> Reservation {
        // Header ties go to the earlier scope in `LimitScope` order, as in `MemoryLimiter`.
        let mut order: Vec<usize> = (0..counted.len()).collect();
        order.sort_by(|&a, &b| scopes[counted[a]].0.cmp(&scopes[counted[b]].0));
        let mut headers = RateHeaders::default();
        for &k in &order {
            let limits = &scopes[counted[k]].1;
            let rates = admitted[k].rates;
            let requests = limits
                .requests_per_minute
                .and_then(|rpm| Gcra::new(rpm, limits.burst))
                .zip(rates.requests)
                .map(|(gcra, (remaining, reset_ms))| RateState { limit: gcra.per_minute(), remaining, reset_ms });
            let tokens = limits.tokens_per_minute.zip(rates.tokens).map(|(limit, (remaining, reset_ms))| RateState {
                limit,
                remaining,
                reset_ms,
            });
            headers.requests = tightest(headers.requests, requests);
            headers.tokens = tightest(headers.tokens, tokens);
        }
        let leases: Arc<[Lease]> =
            names.into_iter().zip(admitted).map(|(scope, admitted)| Lease { scope, member: admitted.member }).collect();
        self.backend.live.insert(Arc::clone(&id), Arc::clone(&leases));
        let held_scopes = order.iter().map(|&k| scopes[counted[k]].0.clone()).collect();
        let hold = RedisHold { backend: Arc::clone(&self.backend), id, scopes: held_scopes, leases };
        Reservation::external(headers, demand, Box::new(hold))
    }
}

impl Drop for RedisLimiter {
    fn drop(&mut self) {
        self.renewal.abort();
        self.recovery.abort();
    }
}

/// While degraded, probes Redis once per retry interval even when no request comes, so that a
/// replica without traffic reports (and is) shared again as soon as Redis is back.
async fn probe_while_degraded(backend: std::sync::Weak<Backend>, retry_interval: std::time::Duration) {
    loop {
        tokio::time::sleep(retry_interval).await;
        let Some(backend) = backend.upgrade() else { return };
        if matches!(backend.breaker.state(), BackendState::Degraded { .. }) && backend.breaker.should_try() {
            // The outcome is reported to the breaker, which logs the transition.
            let _ = backend.warm_up().await;
        }
    }
}

/// The tighter of two header states: fewer remaining, then the longer reset (`MemoryLimiter`'s rule).
fn tightest(current: Option<RateState>, candidate: Option<RateState>) -> Option<RateState> {
    match (current, candidate) {
        (Some(c), Some(n)) => {
            Some(if (n.remaining, Reverse(n.reset_ms)) < (c.remaining, Reverse(c.reset_ms)) { n } else { c })
        }
        (c, n) => c.or(n),
    }
}

/// The refusal that lasts longest ([`DenialReason::rank`], then the longer wait); ties go to the earlier
/// scope in the caller's list, then to the earlier limit in check order.
fn longest_refusal(
    refused: &[Refused],
    scopes: &[(LimitScope, Limits)],
    counted: &[usize],
    demand: Demand,
    now: Millis,
) -> Option<Denial> {
    let mut worst: Option<((u8, u64), Denial)> = None;
    for refusal in refused {
        let limits = &scopes[counted[refusal.scope]].1;
        let (reason, retry_after_ms, available) = match refusal.why {
            Why::Wait(ms) => (DenialReason::RateLimited, Some(ms), None),
            Why::Busy => (DenialReason::RateLimited, None, None),
            Why::NeverFits => (DenialReason::NeverFits, None, limits.capacity(refusal.limit)),
            Why::Quota(period, window) => {
                // Spent or held, what is left, and the first window the demand fits in: as `MemoryLimiter`
                // finds them. (The script refuses only configured quotas, by the same rule: a quota that
                // fits here is Redis and this replica disagreeing on the limit, answered as spent.)
                let (amount, quota) = quota(limits, refusal.limit, demand);
                match quota.and_then(|quota| window.refusal(period, now, amount, quota)) {
                    Some(found) => (found.reason, found.retry_after_ms, Some(found.available)),
                    None => {
                        let next = period.start(window.index.max(period.index(now)).saturating_add(1));
                        (DenialReason::QuotaExhausted, Some(next.saturating_sub(now)), Some(0))
                    }
                }
            }
        };
        let severity = (reason.rank(), retry_after_ms.unwrap_or(0));
        if worst.as_ref().is_none_or(|(w, _)| severity > *w) {
            let scope = scopes[counted[refusal.scope]].0.clone();
            worst = Some((severity, Denial { scope, limit: refusal.limit, reason, retry_after_ms, available }));
        }
    }
    worst.map(|(_, denial)| denial)
}

/// A quota's demand and limit: tokens or money.
fn quota(limits: &Limits, kind: LimitKind, demand: Demand) -> (u64, Option<u64>) {
    match kind {
        LimitKind::TokensPerDay => (demand.tokens, limits.tokens_per_day),
        LimitKind::TokensPerMonth => (demand.tokens, limits.tokens_per_month),
        LimitKind::BudgetPerDay => (demand.cost.0, limits.budget_per_day.map(|m| m.0)),
        LimitKind::BudgetPerMonth => (demand.cost.0, limits.budget_per_month.map(|m| m.0)),
        LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute | LimitKind::Concurrent => (0, None),
    }
}

/// Every configured limit's state, in `LimitKind` order, as `MemoryLimiter` reports it: the token bucket
/// and the quotas by the library's own functions, from the raw state seen at `now`.
fn limit_states(raw: &RawSnapshot, limits: &Limits, now: Millis) -> Vec<LimitState> {
    let mut out = Vec::with_capacity(7);
    let gcra = limits.requests_per_minute.and_then(|rpm| Gcra::new(rpm, limits.burst));
    if let Some((gcra, (remaining, reset_ms))) = gcra.zip(raw.rates.requests) {
        out.push(LimitState {
            kind: LimitKind::RequestsPerMinute,
            limit: gcra.per_minute(),
            used: gcra.burst().saturating_sub(remaining),
            reserved: 0,
            remaining,
            reset_ms: Some(reset_ms),
        });
    }
    if let Some(limit) = limits.tokens_per_minute {
        // Counted at the capacity the script keeps exactly; reported with the configured one.
        let bucket = TokenBucket::new(limit.min(MAX_TOKEN_RATE));
        let state = bucket.limit_state(&raw.bucket.state(), raw.bucket_reserved, now);
        out.push(LimitState { limit, ..state });
    }
    if let Some(max) = limits.max_concurrent {
        out.push(LimitState {
            kind: LimitKind::Concurrent,
            limit: max,
            used: raw.in_flight,
            reserved: 0,
            remaining: max.saturating_sub(raw.in_flight),
            reset_ms: None,
        });
    }
    let quotas = [
        (LimitKind::TokensPerDay, limits.tokens_per_day, Period::Day, &raw.day_tokens),
        (LimitKind::TokensPerMonth, limits.tokens_per_month, Period::Month, &raw.month_tokens),
        (LimitKind::BudgetPerDay, limits.budget_per_day.map(|m| m.0), Period::Day, &raw.day_cost),
        (LimitKind::BudgetPerMonth, limits.budget_per_month.map(|m| m.0), Period::Month, &raw.month_cost),
    ];
    for (kind, quota, period, window) in quotas {
        if let Some(quota) = quota {
            out.push(window.limit_state(kind, quota, period, now));
        }
    }
    out
}

#[async_trait::async_trait]
impl Limiter for RedisLimiter {
    async fn admit(
        &self,
        scopes: &[(LimitScope, Limits)],
        demand: Demand,
        now: Millis,
    ) -> Result<Reservation, Refusal> {
        let counted = counted(scopes);
        if let Some(denial) = never_fits(scopes, &counted, demand) {
            return Err(denial.into());
        }
        if counted.is_empty() {
            // Nothing to count: an empty reservation, which holds nothing anywhere.
            return Ok(self.local.admit_sync(&[], demand, now)?);
        }
        if !self.backend.breaker.should_try() {
            return self.fallback(scopes, demand, now);
        }
        let names: Vec<String> = counted.iter().map(|&i| KeySpace::scope_name(&scopes[i].0)).collect();
        let sent: Vec<(&str, &Limits)> =
            names.iter().map(String::as_str).zip(counted.iter().map(|&i| &scopes[i].1)).collect();
        let id: Arc<str> = ulid::Ulid::new().to_string().into();
        let result = self.backend.admit(&id, &sent, demand, now).await;
        self.backend.report(&result);
        match result {
            Ok(AdmitReply::Admitted(admitted)) => Ok(self.reservation(scopes, &counted, names, id, admitted, demand)),
            Ok(AdmitReply::Refused(refused)) => match longest_refusal(&refused, scopes, &counted, demand, now) {
                Some(denial) => Err(denial.into()),
                None => self.fallback(scopes, demand, now),
            },
            Err(_) => self.fallback(scopes, demand, now),
        }
    }

    async fn snapshot(&self, scope: &LimitScope, limits: &Limits, now: Millis) -> Vec<LimitState> {
        if limits.is_unlimited() {
            return Vec::new();
        }
        if self.backend.breaker.is_open() {
            return self.fallback_snapshot(scope, limits, now);
        }
        let result = self.backend.snapshot(&KeySpace::scope_name(scope), limits, now).await;
        self.backend.report(&result);
        match result {
            Ok(raw) => limit_states(&raw, limits, now),
            Err(_) => self.fallback_snapshot(scope, limits, now),
        }
    }

    /// Sets `used` of the current day and month to the larger of Redis's value and the seeded one: Redis is
    /// shared by every replica and may already be ahead of the store. The local fallback gets this
    /// replica's share of the seeded usage.
    async fn seed(&self, scope: &LimitScope, day: Usage, month: Usage, now: Millis) {
        if let OnBackendError::Local { replicas } = self.policy {
            self.local.seed_sync(scope, local_usage(day, replicas), local_usage(month, replicas), now);
        }
        if self.backend.breaker.is_open() {
            tracing::debug!(%scope, "Redis limiter degraded; seeding only the local fallback");
            return;
        }
        let result = self.backend.seed(scope, day, month, now).await;
        self.backend.report(&result);
        if let Err(error) = result {
            tracing::warn!(%scope, %error, "seeding the Redis limiter failed");
        }
    }
}
