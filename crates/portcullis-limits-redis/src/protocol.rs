//! The script's calling convention, Rust side (the header of `lua/operations.lua` has the script's):
//! an operation's numbers travel as little-endian doubles in one argument — Lua parses decimal text
//! more slowly than it does all of an admission's arithmetic — with u64 amounts as two exact limbs;
//! lease members are opaque bytes; replies are integers. Also the decoding of those replies.

use portcullis_limits::{Demand, LimitKind, Period, WindowCounter};
use redis::Value;

use crate::limits::ScriptLimits;
use crate::rates::{RawBucket, RawGcra};

/// The base of the limbs of an amount: value = hi × 10^9 + lo.
const LIMB: u64 = 1_000_000_000;

/// A reply the script never gives: a bug, or a foreign script under our SHA.
#[derive(Debug)]
pub(crate) struct BadReply(pub(crate) String);

fn bad(what: impl Into<String>) -> BadReply {
    BadReply(what.into())
}

/// An operation's numbers (its ARGV[2]): the first three are now, wall and the keys' expiry.
#[derive(Debug)]
pub(crate) struct Numbers(Vec<u8>);

impl Numbers {
    pub(crate) fn new(now: u64, wall: u64, expire_at: u64) -> Numbers {
        let mut numbers = Numbers(Vec::with_capacity(256));
        numbers.int(now).int(wall).int(expire_at);
        numbers
    }

    /// A time, index, count or clamped rate: all below 2^53, where a double is exact. (A concurrency
    /// limit may be larger and round; no number of requests in flight comes near it.)
    pub(crate) fn int(&mut self, value: u64) -> &mut Numbers {
        self.double(value as f64)
    }

    /// -1 for none.
    pub(crate) fn optional(&mut self, value: Option<u64>) -> &mut Numbers {
        match value {
            Some(value) => self.int(value),
            None => self.double(-1.0),
        }
    }

    /// An amount as its limbs hi, lo, both exact.
    pub(crate) fn amount(&mut self, value: u64) -> &mut Numbers {
        self.int(value / LIMB).int(value % LIMB)
    }

    /// hi = -1 for none.
    pub(crate) fn optional_amount(&mut self, value: Option<u64>) -> &mut Numbers {
        match value {
            Some(value) => self.amount(value),
            None => self.double(-1.0).double(0.0),
        }
    }

    /// One scope's limits, in the order the script reads them.
    pub(crate) fn limits(&mut self, limits: &ScriptLimits) -> &mut Numbers {
        let (rpm, burst) = limits.requests.unzip();
        self.optional(rpm).optional(burst).optional(limits.tokens_per_minute).optional(limits.max_concurrent);
        for quota in limits.quotas {
            self.optional_amount(quota);
        }
        self
    }

    fn double(&mut self, value: f64) -> &mut Numbers {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// What every lease member of one reservation ends with: the demand's tokens and cost as limbs, then
/// the reservation id. The script puts in front what the reservation took from the member's scope.
pub(crate) fn member_tail(demand: Demand, id: &str) -> Vec<u8> {
    let mut tail = Numbers(Vec::with_capacity(32 + id.len()));
    tail.amount(demand.tokens).amount(demand.cost.0);
    tail.0.extend_from_slice(id.as_bytes());
    tail.0
}

/// One scope's header values after an admission: (remaining, reset ms) of each rate it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ScopeRates {
    pub(crate) requests: Option<(u64, u64)>,
    pub(crate) tokens: Option<(u64, u64)>,
}

impl ScopeRates {
    fn new(limits: &ScriptLimits, gcra: RawGcra, bucket: RawBucket, now: u64) -> ScopeRates {
        ScopeRates {
            requests: limits.requests.map(|(rpm, burst)| gcra.remaining_and_reset(rpm, burst, now)),
            tokens: limits.tokens_per_minute.map(|capacity| bucket.available_and_reset(capacity, now)),
        }
    }
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
    /// A quota or budget without room: the counter of the window the script stores, from which follow
    /// whether it is spent or held by reservations, what is left, and the first window the demand fits in.
    Quota(Period, WindowCounter),
}

/// One scope of an admission: its lease member (what settling or renewing names) and header values.
#[derive(Debug)]
pub(crate) struct AdmittedScope {
    pub(crate) member: Vec<u8>,
    pub(crate) rates: ScopeRates,
}

#[derive(Debug)]
pub(crate) enum AdmitReply {
    /// Admitted; scopes in the order sent.
    Admitted(Vec<AdmittedScope>),
    /// Every limit that refused, scopes in the order sent and limits in check order.
    Refused(Vec<Refused>),
}

/// A scope's state for a snapshot, as stored (the windows not yet seen in those of now).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawSnapshot {
    pub(crate) rates: ScopeRates,
    pub(crate) bucket: RawBucket,
    pub(crate) bucket_reserved: u64,
    pub(crate) in_flight: u64,
    pub(crate) day_tokens: WindowCounter,
    pub(crate) day_cost: WindowCounter,
    pub(crate) month_tokens: WindowCounter,
    pub(crate) month_cost: WindowCounter,
}

fn int(value: &Value) -> Result<i64, BadReply> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(bad(format!("{other:?} where an integer was expected"))),
    }
}

fn unsigned(value: &Value) -> Result<u64, BadReply> {
    let n = int(value)?;
    u64::try_from(n).map_err(|_| bad(format!("negative {n}")))
}

fn amount(hi: &Value, lo: &Value) -> Result<u64, BadReply> {
    let (hi, lo) = (unsigned(hi)?, unsigned(lo)?);
    hi.checked_mul(LIMB).and_then(|h| h.checked_add(lo)).filter(|_| lo < LIMB).ok_or_else(|| bad("amount limbs"))
}

fn is_text(value: &Value, text: &str) -> bool {
    matches!(value, Value::BulkString(bytes) if bytes == text.as_bytes())
}

/// A count (settle, renew).
pub(crate) fn parse_count(reply: &Value) -> Result<u64, BadReply> {
    unsigned(reply)
}

/// An admission's answer, for the scopes sent with these limits, admitted at `now`.
pub(crate) fn parse_admit(reply: Value, limits: &[ScriptLimits], now: u64) -> Result<AdmitReply, BadReply> {
    let Value::Array(values) = reply else { return Err(bad(format!("admit reply {reply:?}"))) };
    let scopes = limits.len();
    let tag = values.first();
    if tag.is_some_and(|tag| is_text(tag, "ok")) && values.len() == 1 + scopes * 4 {
        let mut values = values.into_iter().skip(1);
        let admitted = limits.iter().map(|limits| {
            let (Some(Value::BulkString(member)), Some(ms), Some(rem), Some(deficit)) =
                (values.next(), values.next(), values.next(), values.next())
            else {
                return Err(bad("admitted scope"));
            };
            let rpm = limits.requests.map_or(0, |(rpm, _)| rpm);
            // After a take the GCRA is written under this rpm, and the bucket under this capacity as of now
            // (or later), within it.
            let gcra = RawGcra { ms: unsigned(&ms)?, rem: unsigned(&rem)?, per_minute: rpm };
            let capacity = limits.tokens_per_minute.unwrap_or(0);
            let bucket = RawBucket { deficit: unsigned(&deficit)?, last: now, capacity };
            Ok(AdmittedScope { member, rates: ScopeRates::new(limits, gcra, bucket, now) })
        });
        return admitted.collect::<Result<_, _>>().map(AdmitReply::Admitted);
    }
    let mut refusals = values.get(1..).unwrap_or_default();
    if !tag.is_some_and(|tag| is_text(tag, "deny")) || refusals.is_empty() {
        return Err(bad(format!("admit reply of {} values for {scopes} scopes", values.len())));
    }
    // (scope, kind, value), where a quota's value is seven: its stored window's index, used, reserved and
    // quota.
    let mut refused = Vec::new();
    while let [scope, Value::BulkString(kind), value, rest @ ..] = refusals {
        let scope = usize::try_from(unsigned(scope)?).map_err(|_| bad("scope index"))?;
        if scope >= scopes {
            return Err(bad(format!("scope index {scope} of {scopes}")));
        }
        let rate = |limit, why| Ok::<_, BadReply>((limit, why, rest));
        let quota = |limit, period| {
            let (counter, rest) = stored_window(value, rest)?;
            Ok::<_, BadReply>((limit, Why::Quota(period, counter), rest))
        };
        let (limit, why, rest) = match kind.as_slice() {
            b"rpm" => rate(LimitKind::RequestsPerMinute, Why::Wait(unsigned(value)?))?,
            b"tpm" => rate(LimitKind::TokensPerMinute, Why::Wait(unsigned(value)?))?,
            b"tpm_never" => rate(LimitKind::TokensPerMinute, Why::NeverFits)?,
            b"concurrent" => rate(LimitKind::Concurrent, Why::Busy)?,
            b"tokens_day" => quota(LimitKind::TokensPerDay, Period::Day)?,
            b"tokens_month" => quota(LimitKind::TokensPerMonth, Period::Month)?,
            b"budget_day" => quota(LimitKind::BudgetPerDay, Period::Day)?,
            b"budget_month" => quota(LimitKind::BudgetPerMonth, Period::Month)?,
            other => return Err(bad(format!("unknown limit {:?}", String::from_utf8_lossy(other)))),
        };
        refused.push(Refused { scope, limit, why });
        refusals = rest;
    }
    if !refusals.is_empty() {
        return Err(bad(format!("admit refusal of {} values", refusals.len())));
    }
    Ok(AdmitReply::Refused(refused))
}

/// A quota refusal's window, as stored: its index (`index`), then used, reserved and quota (limbs) at the
/// head of `rest`; and what follows them.
fn stored_window<'a>(index: &Value, rest: &'a [Value]) -> Result<(WindowCounter, &'a [Value]), BadReply> {
    let [used_hi, used_lo, reserved_hi, reserved_lo, quota_hi, quota_lo, rest @ ..] = rest else {
        return Err(bad("quota refusal"));
    };
    let counter = WindowCounter {
        index: unsigned(index)?,
        used: amount(used_hi, used_lo)?,
        reserved: amount(reserved_hi, reserved_lo)?,
        quota: amount(quota_hi, quota_lo)?,
    };
    Ok((counter, rest))
}

/// A snapshot's raw state, with the header values of `limits` at `now`.
pub(crate) fn parse_snapshot(reply: &Value, limits: &ScriptLimits, now: u64) -> Result<RawSnapshot, BadReply> {
    let Value::Array(v) = reply else { return Err(bad(format!("snapshot reply {reply:?}"))) };
    if v.len() != 34 {
        return Err(bad(format!("snapshot of {} values", v.len())));
    }
    let gcra = RawGcra { ms: unsigned(&v[0])?, rem: unsigned(&v[1])?, per_minute: unsigned(&v[2])? };
    let bucket = RawBucket { deficit: unsigned(&v[3])?, last: unsigned(&v[4])?, capacity: unsigned(&v[5])? };
    // A window: index; tokens used, reserved, cost used, reserved; tokens quota, cost quota (limbs).
    let window = |at: usize| -> Result<(WindowCounter, WindowCounter), BadReply> {
        let index = unsigned(&v[at])?;
        let limbs = |k: usize| amount(&v[at + k], &v[at + k + 1]);
        Ok((
            WindowCounter { index, used: limbs(1)?, reserved: limbs(3)?, quota: limbs(9)? },
            WindowCounter { index, used: limbs(5)?, reserved: limbs(7)?, quota: limbs(11)? },
        ))
    };
    let ((day_tokens, day_cost), (month_tokens, month_cost)) = (window(8)?, window(21)?);
    Ok(RawSnapshot {
        rates: ScopeRates::new(limits, gcra, bucket, now),
        bucket,
        bucket_reserved: unsigned(&v[6])?,
        in_flight: unsigned(&v[7])?,
        day_tokens,
        day_cost,
        month_tokens,
        month_cost,
    })
}

/// The limbs helper's answer (tests): an amount, or a number.
#[cfg(test)]
pub(crate) fn parse_limbs(reply: &Value) -> Result<String, BadReply> {
    match reply {
        Value::Array(v) if v.len() == 2 => amount(&v[0], &v[1]).map(|a| a.to_string()),
        other => int(other).map(|n| n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn numbers_are_little_endian_doubles_with_exact_limbs() {
        let mut numbers = Numbers::new(1, 2, 3);
        numbers.amount(u64::MAX).optional(None).optional_amount(None);
        let doubles: Vec<f64> =
            numbers.into_bytes().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(doubles, [1.0, 2.0, 3.0, 18_446_744_073.0, 709_551_615.0, -1.0, -1.0, 0.0]);
        let limits = ScriptLimits { requests: Some((60, 5)), ..ScriptLimits::default() };
        assert_eq!(Numbers::new(0, 0, 0).limits(&limits).0.len(), (3 + 12) * 8);
        assert_eq!(member_tail(Demand { tokens: 1, cost: portcullis_limits::Money(2) }, "id").len(), 34);
    }

    #[test]
    fn admit_reply_decodes_rates_and_refusals() {
        let now = 1_816_171_200_000;
        let rate = ScriptLimits { requests: Some((60, 10)), ..ScriptLimits::default() };
        let bucket = ScriptLimits { tokens_per_minute: Some(1_000), ..ScriptLimits::default() };
        let ok = Value::Array(vec![
            text("ok"),
            text("m1"),
            Value::Int(i64::try_from(now).unwrap() + 1_000),
            Value::Int(0),
            Value::Int(0),
            text("m2"),
            Value::Int(0),
            Value::Int(0),
            Value::Int(600 * 60_000),
        ]);
        let AdmitReply::Admitted(scopes) = parse_admit(ok, &[rate, bucket], now).unwrap() else { panic!("admitted") };
        assert_eq!(scopes[0].member, b"m1");
        assert_eq!(scopes[0].rates, ScopeRates { requests: Some((9, 1_000)), tokens: None });
        assert_eq!(scopes[1].rates, ScopeRates { requests: None, tokens: Some((400, 36_000)) });

        let deny = Value::Array(vec![
            text("deny"),
            Value::Int(1),
            text("concurrent"),
            Value::Int(-1),
            Value::Int(1),
            text("budget_month"),
            Value::Int(24_330),
            Value::Int(18_446_744_073),
            Value::Int(709_551_615),
            Value::Int(2),
            Value::Int(3),
            Value::Int(5),
            Value::Int(7),
            Value::Int(0),
            text("tpm"),
            Value::Int(1_500),
        ]);
        let AdmitReply::Refused(refused) = parse_admit(deny, &[rate, bucket], now).unwrap() else { panic!("refused") };
        assert_eq!(refused[0], Refused { scope: 1, limit: LimitKind::Concurrent, why: Why::Busy });
        let window = WindowCounter { index: 24_330, used: u64::MAX, reserved: 2_000_000_003, quota: 5_000_000_007 };
        assert_eq!(
            refused[1],
            Refused { scope: 1, limit: LimitKind::BudgetPerMonth, why: Why::Quota(Period::Month, window) }
        );
        assert_eq!(refused[2], Refused { scope: 0, limit: LimitKind::TokensPerMinute, why: Why::Wait(1_500) });
        assert_eq!(refused.len(), 3);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let limits = [ScriptLimits::default()];
        for reply in [
            vec![text("ok"), Value::Int(1)],
            vec![text("ok"), Value::Int(1), Value::Int(1), Value::Int(1), Value::Int(1)],
            vec![text("deny")],
            vec![text("deny"), Value::Int(5), text("rpm"), Value::Int(1)],
            vec![text("deny"), Value::Int(0), text("bogus"), Value::Int(1)],
            vec![text("deny"), Value::Int(0), text("rpm"), text("x")],
            vec![text("deny"), Value::Int(0), text("rpm"), Value::Int(-3)],
            vec![text("deny"), Value::Int(0), text("tokens_day"), Value::Int(1), Value::Int(0), Value::Int(0)],
            vec![
                text("deny"),
                Value::Int(0),
                text("tokens_day"),
                Value::Int(1),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
            ],
            vec![text("deny"), Value::Int(0), text("rpm"), Value::Int(1), Value::Int(0)],
            vec![],
            vec![text("what")],
        ] {
            assert!(parse_admit(Value::Array(reply.clone()), &limits, 0).is_err(), "{reply:?}");
        }
        assert!(parse_admit(Value::Int(1), &limits, 0).is_err());
        assert!(parse_snapshot(&Value::Array(vec![Value::Int(1); 25]), &limits[0], 0).is_err());
        let mut bad_limbs = vec![Value::Int(0); 34];
        bad_limbs[10] = Value::Int(1_000_000_000);
        assert!(parse_snapshot(&Value::Array(bad_limbs), &limits[0], 0).is_err(), "lo limb out of range");
        assert!(parse_count(&text("1")).is_err());
    }

    #[test]
    fn snapshot_amounts_join_their_limbs() {
        let mut v = vec![Value::Int(0); 34];
        (v[3], v[4], v[5], v[6]) = (Value::Int(90_000), Value::Int(7), Value::Int(1), Value::Int(2));
        v[8] = Value::Int(21_021);
        v[13] = Value::Int(18_446_744_073);
        v[14] = Value::Int(709_551_615);
        v[19] = Value::Int(3);
        v[20] = Value::Int(4);
        v[21] = Value::Int(690);
        v[30] = Value::Int(1);
        let raw = parse_snapshot(&Value::Array(v), &ScriptLimits::default(), 0).unwrap();
        assert_eq!(raw.bucket, RawBucket { deficit: 90_000, last: 7, capacity: 1 });
        assert_eq!(raw.bucket_reserved, 2);
        assert_eq!(raw.day_tokens, WindowCounter { index: 21_021, used: 0, reserved: 0, quota: 0 });
        assert_eq!(raw.day_cost, WindowCounter { index: 21_021, used: u64::MAX, reserved: 0, quota: 3_000_000_004 });
        assert_eq!(raw.month_tokens, WindowCounter { index: 690, used: 0, reserved: 0, quota: 1_000_000_000 });
        assert_eq!(raw.month_cost, WindowCounter { index: 690, used: 0, reserved: 0, quota: 0 });
    }
}
