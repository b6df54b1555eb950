//! The Redis side: the connection, the script, and one method per script operation with its reply
//! decoded. Every call has a timeout; every outcome is reported to the circuit breaker.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use portcullis_limits::{Demand, LimitKind, Limits, Millis, Period, Scope, Usage};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use tokio_util::task::TaskTracker;

use crate::breaker::{Breaker, duration_ms, wall_ms};
use crate::keys::KeySpace;
use crate::limits::{key_ttl_ms, script_args};

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
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Timeout(after) => write!(f, "no answer within {} ms", duration_ms(*after)),
            BackendError::Redis(error) => error.fmt(f),
            BackendError::Reply(what) => write!(f, "unexpected script reply: {what}"),
        }
    }
}

/// Redis state shared by the limiter and its reservations (which outlive nothing but need to settle).
pub(crate) struct Backend {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Connected on first use, so that the limiter can start while Redis is down; reconnects by itself.
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
    pub(crate) keys: KeySpace,
    pub(crate) timeout: Duration,
    pub(crate) lease: Duration,
    pub(crate) breaker: Breaker,
    /// This process's running Redis reservations (id → scope names), whose leases the renewal extends.
    pub(crate) live: DashMap<Arc<str>, Arc<[String]>>,
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

/// One scope's header values after an admission: (remaining, reset ms) of each rate it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ScopeRates {
    pub(crate) requests: Option<(u64, u64)>,
    pub(crate) tokens: Option<(u64, u64)>,
}

/// A limit that refused, as the script reports it: the scope's position among those sent, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) scope: usize,
    pub(crate) limit: LimitKind,
    pub(crate) why: Why,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// A rate; retry after this many ms.
    Wait(u64),
    /// Concurrency: no predictable retry time.
    Busy,
    /// More than the (clamped) capacity.
    NeverFits,
    /// A quota spent in the window with this index.
    Spent(Period, u64),
}

#[derive(Debug)]
pub(crate) enum AdmitReply {
    /// Admitted; rates per scope in the order sent.
    Admitted(Vec<ScopeRates>),
    /// Every limit that refused, scopes in the order sent and limits in check order.
    Refused(Vec<Refused>),
}

/// A scope's raw state for a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawSnapshot {
    pub(crate) rates: ScopeRates,
    pub(crate) bucket_reserved: u64,
    pub(crate) in_flight: u64,
    /// Day then month: (window index, tokens used, tokens reserved, cost used, cost reserved).
    pub(crate) windows: [(u64, u64, u64, u64, u64); 2],
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

    /// Runs the script. Does not report to the breaker: callers decide what an outcome means.
    async fn eval(&self, keys: &[String], args: &[String]) -> Result<Vec<String>, BackendError> {
        self.within_timeout(async {
            let mut connection = self.connection().await?;
            let mut invocation = self.script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async(&mut connection).await.map_err(BackendError::Redis)
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

    /// Tells the breaker how a call went.
    pub(crate) fn report<T>(&self, result: &Result<T, BackendError>) {
        match result {
            Ok(_) => self.breaker.success(),
            Err(error) => self.breaker.failure(error),
        }
    }

    fn triples<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        names.into_iter().flat_map(|name| self.keys.triple(name)).collect()
    }

    /// Checks every scope and takes the demand from all of them, or from none.
    pub(crate) async fn admit(
        &self,
        id: &str,
        scopes: &[(&String, &Limits)],
        demand: Demand,
        now: Millis,
    ) -> Result<AdmitReply, BackendError> {
        let keys = self.triples(scopes.iter().map(|(name, _)| *name));
        let wall = wall_ms();
        let limits: Vec<&Limits> = scopes.iter().map(|(_, limits)| *limits).collect();
        let mut args = vec![
            "admit".to_owned(),
            now.to_string(),
            wall.to_string(),
            wall.saturating_add(duration_ms(self.lease)).to_string(),
            id.to_owned(),
            demand.tokens.to_string(),
            demand.cost.0.to_string(),
            Period::Day.index(now).to_string(),
            Period::Month.index(now).to_string(),
            key_ttl_ms(&limits, now).to_string(),
        ];
        args.extend(limits.iter().flat_map(|limits| script_args(limits)));
        let reply = self.eval(&keys, &args).await?;
        parse_admit(&reply, scopes.len())
    }

    /// Settles (`actual` given) or releases charging the whole demand (`None`) a reservation in every scope
    /// that still holds it. Returns how many did (0 when its lease had expired meanwhile).
    pub(crate) async fn settle(
        &self,
        id: &str,
        names: &[String],
        actual: Option<Usage>,
        now: Millis,
    ) -> Result<u64, BackendError> {
        let (tokens, cost) = actual.map(|a| (a.tokens.to_string(), a.cost.0.to_string())).unwrap_or_default();
        let args =
            ["settle".to_owned(), wall_ms().to_string(), id.to_owned(), tokens, cost, key_ttl_ms(&[], now).to_string()];
        let reply = self.eval(&self.triples(names), &args).await?;
        single_number(&reply)
    }

    /// Extends the lease of every reservation this process holds, in one call. Returns how many leases
    /// moved.
    pub(crate) async fn renew(&self) -> Result<u64, BackendError> {
        let mut by_scope: HashMap<String, Vec<Arc<str>>> = HashMap::new();
        for entry in &self.live {
            for name in entry.value().iter() {
                by_scope.entry(name.clone()).or_default().push(Arc::clone(entry.key()));
            }
        }
        if by_scope.is_empty() {
            return Ok(0);
        }
        let wall = wall_ms();
        let mut keys = Vec::with_capacity(by_scope.len() * 3);
        let mut args = vec![
            "renew".to_owned(),
            wall.saturating_add(duration_ms(self.lease)).to_string(),
            key_ttl_ms(&[], wall).to_string(),
        ];
        for (scope, ids) in &by_scope {
            keys.extend(self.keys.triple(scope));
            args.push(ids.len().to_string());
            args.extend(ids.iter().map(|id| id.to_string()));
        }
        let reply = self.eval(&keys, &args).await?;
        single_number(&reply)
    }

    pub(crate) async fn snapshot(
        &self,
        name: &String,
        limits: &Limits,
        now: Millis,
    ) -> Result<RawSnapshot, BackendError> {
        let [rpm, burst, tpm, ..] = script_args(limits);
        let args = [
            "snapshot".to_owned(),
            now.to_string(),
            wall_ms().to_string(),
            Period::Day.index(now).to_string(),
            Period::Month.index(now).to_string(),
            rpm,
            burst,
            tpm,
        ];
        let reply = self.eval(&self.triples([name]), &args).await?;
        parse_snapshot(&reply)
    }

    pub(crate) async fn seed(&self, scope: &Scope, day: Usage, month: Usage, now: Millis) -> Result<(), BackendError> {
        let name = KeySpace::scope_name(scope);
        let args = [
            "seed".to_owned(),
            wall_ms().to_string(),
            Period::Day.index(now).to_string(),
            Period::Month.index(now).to_string(),
            day.tokens.to_string(),
            day.cost.0.to_string(),
            month.tokens.to_string(),
            month.cost.0.to_string(),
            key_ttl_ms(&[], now).to_string(),
        ];
        self.eval(&self.triples([&name]), &args).await.map(drop)
    }

    /// The script's u64 helpers on their own (tests).
    #[cfg(test)]
    pub(crate) async fn limbs(&self, op: &str, operands: &[u64]) -> Result<String, BackendError> {
        let mut args = vec!["limbs".to_owned(), op.to_owned()];
        args.extend(operands.iter().map(u64::to_string));
        let reply: String = self
            .within_timeout(async {
                let mut connection = self.connection().await?;
                let mut invocation = self.script.prepare_invoke();
                for arg in &args {
                    invocation.arg(arg);
                }
                invocation.invoke_async(&mut connection).await.map_err(BackendError::Redis)
            })
            .await?;
        Ok(reply)
    }
}

fn bad(what: impl Into<String>) -> BackendError {
    BackendError::Reply(what.into())
}

fn number(text: &str) -> Result<u64, BackendError> {
    text.parse().map_err(|_| bad(format!("not a number: {text:?}")))
}

fn optional_pair(first: &str, second: &str) -> Result<Option<(u64, u64)>, BackendError> {
    if first.is_empty() { Ok(None) } else { Ok(Some((number(first)?, number(second)?))) }
}

fn single_number(reply: &[String]) -> Result<u64, BackendError> {
    match reply {
        [n] => number(n),
        _ => Err(bad(format!("{} values where one was expected", reply.len()))),
    }
}

fn parse_rates(values: &[String]) -> Result<ScopeRates, BackendError> {
    match values {
        [rr, rs, tr, ts] => Ok(ScopeRates { requests: optional_pair(rr, rs)?, tokens: optional_pair(tr, ts)? }),
        _ => Err(bad("rates need four values")),
    }
}

pub(crate) fn parse_admit(reply: &[String], scopes: usize) -> Result<AdmitReply, BackendError> {
    match reply.split_first() {
        Some((tag, rest)) if tag == "ok" && rest.len() == scopes * 4 => {
            rest.chunks_exact(4).map(parse_rates).collect::<Result<_, _>>().map(AdmitReply::Admitted)
        }
        Some((tag, rest)) if tag == "deny" && !rest.is_empty() && rest.len() % 3 == 0 => rest
            .chunks_exact(3)
            .map(|refusal| {
                let scope = usize::try_from(number(&refusal[0])?).map_err(|_| bad("scope index"))?;
                if scope >= scopes {
                    return Err(bad(format!("scope index {scope} of {scopes}")));
                }
                let value = &refusal[2];
                let spent = |period| Ok::<_, BackendError>(Why::Spent(period, number(value)?));
                let (limit, why) = match refusal[1].as_str() {
                    "rpm" => (LimitKind::RequestsPerMinute, Why::Wait(number(value)?)),
                    "tpm" => (LimitKind::TokensPerMinute, Why::Wait(number(value)?)),
                    "tpm_never" => (LimitKind::TokensPerMinute, Why::NeverFits),
                    "concurrent" => (LimitKind::Concurrent, Why::Busy),
                    "tokens_day" => (LimitKind::TokensPerDay, spent(Period::Day)?),
                    "tokens_month" => (LimitKind::TokensPerMonth, spent(Period::Month)?),
                    "budget_day" => (LimitKind::BudgetPerDay, spent(Period::Day)?),
                    "budget_month" => (LimitKind::BudgetPerMonth, spent(Period::Month)?),
                    other => return Err(bad(format!("unknown limit {other:?}"))),
                };
                Ok(Refused { scope, limit, why })
            })
            .collect::<Result<_, _>>()
            .map(AdmitReply::Refused),
        _ => Err(bad(format!("admit reply of {} values for {scopes} scopes", reply.len()))),
    }
}

fn parse_snapshot(reply: &[String]) -> Result<RawSnapshot, BackendError> {
    if reply.len() != 16 {
        return Err(bad(format!("snapshot of {} values", reply.len())));
    }
    let window = |at: usize| -> Result<(u64, u64, u64, u64, u64), BackendError> {
        Ok((
            number(&reply[at])?,
            number(&reply[at + 1])?,
            number(&reply[at + 2])?,
            number(&reply[at + 3])?,
            number(&reply[at + 4])?,
        ))
    };
    Ok(RawSnapshot {
        rates: parse_rates(&reply[..4])?,
        bucket_reserved: number(&reply[4])?,
        in_flight: number(&reply[5])?,
        windows: [window(6)?, window(11)?],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn admit_reply_decodes_rates_and_refusals() {
        let ok = parse_admit(&strings(&["ok", "9", "6000", "", "", "", "", "400", "36000"]), 2).unwrap();
        let AdmitReply::Admitted(rates) = ok else { panic!("admitted") };
        assert_eq!(rates[0], ScopeRates { requests: Some((9, 6_000)), tokens: None });
        assert_eq!(rates[1], ScopeRates { requests: None, tokens: Some((400, 36_000)) });

        let deny = parse_admit(&strings(&["deny", "1", "concurrent", "", "1", "budget_month", "24330"]), 2).unwrap();
        let AdmitReply::Refused(refused) = deny else { panic!("refused") };
        assert_eq!(refused[0], Refused { scope: 1, limit: LimitKind::Concurrent, why: Why::Busy });
        assert_eq!(
            refused[1],
            Refused { scope: 1, limit: LimitKind::BudgetPerMonth, why: Why::Spent(Period::Month, 24_330) }
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for reply in [
            &["ok", "1"][..],
            &["deny"],
            &["deny", "5", "rpm", "1"],
            &["deny", "0", "bogus", "1"],
            &["deny", "0", "rpm", "x"],
            &[],
            &["what"],
        ] {
            assert!(parse_admit(&strings(reply), 1).is_err(), "{reply:?}");
        }
        assert!(parse_snapshot(&strings(&["1"; 15])).is_err());
        assert!(single_number(&strings(&["1", "2"])).is_err());
    }
}
