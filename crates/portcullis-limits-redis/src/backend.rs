//! The Redis side: the connection, the script, and one method per script operation, its arguments
//! packed and its reply decoded (see `protocol`). Every call has a timeout; every outcome is reported to
//! the circuit breaker.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use portcullis_limits::{Demand, LimitScope, Limits, Millis, Period, Usage};
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use tokio_util::task::TaskTracker;

use crate::breaker::{Breaker, duration_ms, wall_ms};
use crate::hold::Lease;
use crate::keys::KeySpace;
use crate::limits::{ScriptLimits, key_expiry};
use crate::protocol::{
    AdmitReply, BadReply, Numbers, RawSnapshot, member_tail, parse_admit, parse_count, parse_snapshot,
};

/// The script source: every state change of the limiter (see the crate docs). Two files, one script:
/// the arithmetic, then the state layout and the operations.
pub(crate) const SCRIPT: &str = concat!(include_str!("lua/rules.lua"), include_str!("lua/operations.lua"));

/// Why a Redis call gave no answer the limiter can use.
#[derive(Debug)]
pub(crate) enum BackendError {
    Timeout(Duration),
    Redis(redis::RedisError),
    /// The script answered something it never answers: a bug or a foreign script under our SHA.
    Reply(String),
    /// A subscription's connection ended.
    Closed,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Timeout(after) => write!(f, "no answer within {} ms", duration_ms(*after)),
            BackendError::Redis(error) => error.fmt(f),
            BackendError::Reply(what) => write!(f, "unexpected script reply: {what}"),
            BackendError::Closed => f.write_str("connection closed"),
        }
    }
}

impl From<BadReply> for BackendError {
    fn from(BadReply(what): BadReply) -> BackendError {
        BackendError::Reply(what)
    }
}

/// Redis state shared by the limiter and its reservations (which outlive nothing but need to settle).
pub(crate) struct Backend {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Connected on first use, so that the limiter can start while Redis is down; reconnects by itself.
    /// One multiplexed connection: every call pipelines on it, none waits for a free connection.
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
    pub(crate) keys: KeySpace,
    pub(crate) timeout: Duration,
    pub(crate) lease: Duration,
    pub(crate) breaker: Breaker,
    /// This process's running Redis reservations (id → their leases), which the renewal extends.
    pub(crate) live: DashMap<Arc<str>, Arc<[Lease]>>,
    /// Background releases of dropped reservations, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("keys", &self.keys)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("breaker", &self.breaker)
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl Backend {
    pub(crate) fn new(
        client: redis::Client,
        keys: KeySpace,
        timeout: Duration,
        lease: Duration,
        retry_interval: Duration,
    ) -> Backend {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            // One attempt per call: the breaker decides when to try again, not a backoff inside a call.
            .set_number_of_retries(0);
        Backend {
            client,
            config,
            connection: OnceCell::new(),
            script: redis::Script::new(SCRIPT),
            keys,
            timeout,
            lease,
            breaker: Breaker::new(retry_interval),
            live: DashMap::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Connects and loads the script, so the first admission is one round trip. Reports to the breaker.
    pub(crate) async fn warm_up(&self) -> Result<(), BackendError> {
        let result = self
            .within_timeout(async {
                let mut connection = self.connection().await?;
                self.script.prepare_invoke().load_async(&mut connection).await.map(drop).map_err(BackendError::Redis)
            })
            .await;
        self.report(&result);
        result
    }

    /// Runs the script by its SHA, one round trip; if Redis lost it (a restart, a flush), loads it and
    /// runs it again. Does not report to the breaker: callers decide what an outcome means.
    async fn eval(&self, keys: &[String], args: &[&[u8]]) -> Result<Value, BackendError> {
        self.within_timeout(async {
            let mut connection = self.connection().await?;
            let mut command = redis::cmd("EVALSHA");
            command.arg(self.script.get_hash()).arg(keys.len()).arg(keys);
            for arg in args {
                command.arg(*arg);
            }
            let reply = match command.query_async(&mut connection).await {
                Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {
                    self.script.prepare_invoke().load_async(&mut connection).await.map_err(BackendError::Redis)?;
                    command.query_async(&mut connection).await
                }
                reply => reply,
            };
            reply.map_err(BackendError::Redis)
        })
        .await
    }

    async fn within_timeout<T>(&self, call: impl Future<Output = Result<T, BackendError>>) -> Result<T, BackendError> {
        tokio::time::timeout(self.timeout, call).await.unwrap_or(Err(BackendError::Timeout(self.timeout)))
    }

    async fn connection(&self) -> Result<ConnectionManager, BackendError> {
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), self.config.clone()))
            .await
            .cloned()
            .map_err(BackendError::Redis)
    }

    /// `PUBLISH` on the shared connection; how many subscribers received the message. Does not report to
    /// the breaker: a channel is not the limiter's business.
    pub(crate) async fn publish(&self, channel: &str, message: &[u8]) -> Result<u64, BackendError> {
        self.within_timeout(async {
            let mut connection = self.connection().await?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async(&mut connection)
                .await
                .map_err(BackendError::Redis)
        })
        .await
    }

    /// A connection of its own subscribed to `channel` (a subscribed connection serves nothing else).
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, BackendError> {
        self.within_timeout(async {
            let mut subscription = self.client.get_async_pubsub().await.map_err(BackendError::Redis)?;
            subscription.subscribe(channel).await.map_err(BackendError::Redis)?;
            Ok(subscription)
        })
        .await
    }

    /// Tells the breaker how a call went.
    pub(crate) fn report<T>(&self, result: &Result<T, BackendError>) {
        match result {
            Ok(_) => self.breaker.success(),
            Err(error) => self.breaker.failure(error),
        }
    }

    /// Checks every scope (by name, with its limits) and takes the demand from all of them, or from none.
    pub(crate) async fn admit(
        &self,
        id: &str,
        scopes: &[(&str, &Limits)],
        demand: Demand,
        now: Millis,
    ) -> Result<AdmitReply, BackendError> {
        let keys = self.keys.script_keys(scopes.iter().map(|(name, _)| *name));
        let configured: Vec<&Limits> = scopes.iter().map(|(_, limits)| *limits).collect();
        let limits: Vec<ScriptLimits> = configured.iter().map(|limits| ScriptLimits::new(limits)).collect();
        let (wall, expire_at) = (wall_ms(), key_expiry(&configured, now));
        let deadline = wall.saturating_add(duration_ms(self.lease));
        let mut numbers = Numbers::new(now, wall, expire_at);
        numbers
            .int(deadline)
            .int(Period::Day.index(now))
            .int(Period::Month.index(now))
            .amount(demand.tokens)
            .amount(demand.cost.0);
        for limits in &limits {
            numbers.limits(limits);
        }
        let (numbers, deadline, tail) = (numbers.into_bytes(), deadline.to_string(), member_tail(demand, id));
        let args: [&[u8]; 4] = [b"admit", &numbers, deadline.as_bytes(), &tail];
        let reply = self.eval(&keys, &args).await?;
        Ok(parse_admit(reply, &limits, now)?)
    }

    /// Settles (`actual` given) or releases charging the whole demand (`None`) a reservation in every scope
    /// that still holds it. Returns how many did (0 when its lease had expired meanwhile).
    pub(crate) async fn settle(
        &self,
        leases: &[Lease],
        actual: Option<Usage>,
        now: Millis,
    ) -> Result<u64, BackendError> {
        let keys = self.keys.script_keys(leases.iter().map(|lease| lease.scope.as_str()));
        let expire_at = key_expiry(&[], now);
        let mut numbers = Numbers::new(now, wall_ms(), expire_at);
        match actual {
            Some(actual) => numbers.amount(actual.tokens).amount(actual.cost.0),
            None => numbers.optional_amount(None).optional_amount(None),
        };
        let numbers = numbers.into_bytes();
        let mut args: Vec<&[u8]> = Vec::with_capacity(2 + leases.len());
        args.extend([b"settle".as_slice(), &numbers]);
        args.extend(leases.iter().map(|lease| lease.member.as_slice()));
        Ok(parse_count(&self.eval(&keys, &args).await?)?)
    }

    /// Extends the lease of every reservation this process holds, in one call. Returns how many leases
    /// moved.
    pub(crate) async fn renew(&self) -> Result<u64, BackendError> {
        let held: Vec<Arc<[Lease]>> = self.live.iter().map(|entry| Arc::clone(entry.value())).collect();
        let mut by_scope: HashMap<&str, Vec<&[u8]>> = HashMap::new();
        for lease in held.iter().flat_map(|leases| leases.iter()) {
            by_scope.entry(&lease.scope).or_default().push(&lease.member);
        }
        if by_scope.is_empty() {
            return Ok(0);
        }
        let scopes: Vec<(&str, Vec<&[u8]>)> = by_scope.into_iter().collect();
        let wall = wall_ms();
        let expire_at = key_expiry(&[], wall);
        let mut numbers = Numbers::new(wall, wall, expire_at);
        for (_, members) in &scopes {
            numbers.int(u64::try_from(members.len()).unwrap_or(u64::MAX));
        }
        let numbers = numbers.into_bytes();
        let deadline = wall.saturating_add(duration_ms(self.lease)).to_string();
        let mut args: Vec<&[u8]> = vec![b"renew", &numbers, deadline.as_bytes()];
        args.extend(scopes.iter().flat_map(|(_, members)| members.iter().copied()));
        let keys = self.keys.script_keys(scopes.iter().map(|(name, _)| *name));
        Ok(parse_count(&self.eval(&keys, &args).await?)?)
    }

    pub(crate) async fn snapshot(&self, name: &str, limits: &Limits, now: Millis) -> Result<RawSnapshot, BackendError> {
        let expire_at = key_expiry(&[], now);
        let numbers = Numbers::new(now, wall_ms(), expire_at);
        let keys = self.keys.script_keys(std::iter::once(name));
        let reply = self.eval(&keys, &[b"snapshot", &numbers.into_bytes()]).await?;
        Ok(parse_snapshot(&reply, &ScriptLimits::new(limits), now)?)
    }

    pub(crate) async fn seed(
        &self,
        scope: &LimitScope,
        day: Usage,
        month: Usage,
        now: Millis,
    ) -> Result<(), BackendError> {
        let name = KeySpace::scope_name(scope);
        let expire_at = key_expiry(&[], now);
        let mut numbers = Numbers::new(now, wall_ms(), expire_at);
        numbers
            .int(Period::Day.index(now))
            .int(Period::Month.index(now))
            .amount(day.tokens)
            .amount(day.cost.0)
            .amount(month.tokens)
            .amount(month.cost.0);
        let keys = self.keys.script_keys(std::iter::once(name.as_str()));
        self.eval(&keys, &[b"seed", &numbers.into_bytes()]).await.map(drop)
    }

    /// The script's u64 helpers on their own (tests): `op` of a and b (and for `fits`, a limit).
    #[cfg(test)]
    pub(crate) async fn limbs(&self, op: &str, operands: &[u64]) -> Result<String, BackendError> {
        let mut numbers = Numbers::new(0, 0, 0);
        for operand in operands.iter().copied().chain(std::iter::repeat(0)).take(3) {
            numbers.amount(operand);
        }
        let numbers = numbers.into_bytes();
        let reply = self.eval(&[], &[b"limbs", &numbers, op.as_bytes()]).await?;
        Ok(crate::protocol::parse_limbs(&reply)?)
    }
}
