//! Pure Rust parts around the script: which scopes count, the numeric domain the script is exact in,
//! and the per-replica limits of the local fallback.

use portcullis_limits::{Demand, Denial, Gcra, LimitScope, Limits, Money, Usage};

/// Largest requests-per-minute rate and burst the Redis limiter keeps exactly: 2^26 = 67 108 864 per
/// minute (over a million per second for one scope). Larger values are treated as this one.
///
/// Why: the script keeps the GCRA's theoretical arrival time as whole ms plus a remainder in ticks of
/// `1/rpm` ms, and converting it after a rate change multiplies a remainder by the new rate; both stay
/// below 2^53, where Lua's doubles are exact, only while rates stay below 2^26.
pub const MAX_REQUEST_RATE: u64 = 1 << 26;

/// Largest tokens-per-minute rate the Redis limiter keeps exactly: 2^53 / 120 000 ≈ 75 billion tokens per
/// minute. Larger values are treated as this one.
///
/// Why: the token bucket counts in units of 1/60 000 token; the deficit plus one take (each at most the
/// capacity) must stay below 2^53.
pub const MAX_TOKEN_RATE: u64 = (1 << 53) / 120_000;

/// Largest token-bucket deficit, a debt included, that the Redis limiter keeps exactly: 2^52 / 60 000 ≈ 75
/// billion tokens taken and not yet refilled. A deeper debt (an overrun reported that large) is kept as
/// this one — at any real rate still a wait of years.
///
/// Why: the script counts the bucket in units of 1/60 000 token, and a deficit plus a capacity (in units,
/// at most 2^52 by [`MAX_TOKEN_RATE`]) must stay below 2^53.
pub const MAX_TOKEN_DEFICIT: u64 = (1 << 52) / 60_000;

// A deficit and a capacity, in units, add up exactly in the script's doubles.
const _: () = assert!(MAX_TOKEN_DEFICIT * 60_000 + MAX_TOKEN_RATE * 60_000 <= 1 << 53);

/// Positions (in the caller's list) of the entries that count: those with limits, and of a scope listed
/// twice only its first such entry — the rule of `MemoryLimiter`.
pub(crate) fn counted(scopes: &[(LimitScope, Limits)]) -> Vec<usize> {
    (0..scopes.len())
        .filter(|&i| {
            let (scope, limits) = &scopes[i];
            !limits.is_unlimited() && !scopes[..i].iter().any(|(seen, l)| seen == scope && !l.is_unlimited())
        })
        .collect()
}

/// The first counted scope whose whole capacity is below the demand (checked before any state is read).
pub(crate) fn never_fits(scopes: &[(LimitScope, Limits)], counted: &[usize], demand: Demand) -> Option<Denial> {
    counted.iter().find_map(|&i| {
        let (scope, limits) = &scopes[i];
        limits.never_fits_denial(scope, demand)
    })
}

/// One scope's limits as the script takes them: rates clamped to the domain it is exact in, and a zero
/// rate or burst as no rate (`never_fits` refuses those before an admission gets here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ScriptLimits {
    /// Requests per minute and burst.
    pub(crate) requests: Option<(u64, u64)>,
    pub(crate) tokens_per_minute: Option<u64>,
    pub(crate) max_concurrent: Option<u64>,
    /// Tokens per day, tokens per month, budget per day, budget per month (pico-units), exact.
    pub(crate) quotas: [Option<u64>; 4],
}

impl ScriptLimits {
    pub(crate) fn new(limits: &Limits) -> ScriptLimits {
        let gcra = limits.requests_per_minute.and_then(|rpm| Gcra::new(rpm, limits.burst));
        ScriptLimits {
            requests: gcra.map(|g| (g.per_minute().min(MAX_REQUEST_RATE), g.burst().min(MAX_REQUEST_RATE))),
            tokens_per_minute: limits.tokens_per_minute.map(|tpm| tpm.min(MAX_TOKEN_RATE)),
            max_concurrent: limits.max_concurrent,
            quotas: [
                limits.tokens_per_day,
                limits.tokens_per_month,
                limits.budget_per_day.map(|m| m.0),
                limits.budget_per_month.map(|m| m.0),
            ],
        }
    }
}

/// How long a scope's keys must outlive a write at `now`: the rest of the month plus a day (for callers
/// whose `now` lags), or longer when the request rate takes longer to replenish (a burst far above the
/// rate).
pub(crate) fn key_ttl_ms(limits: &[&Limits], now: u64) -> u64 {
    use portcullis_limits::window::DAY_MS;
    let month = portcullis_limits::Period::Month.until_next(now).saturating_add(DAY_MS);
    limits
        .iter()
        .filter_map(|l| {
            let rpm = l.requests_per_minute?.clamp(1, MAX_REQUEST_RATE);
            let burst = l.burst.unwrap_or(rpm).min(MAX_REQUEST_RATE);
            Some((burst.saturating_mul(60_000) / rpm).saturating_add(DAY_MS))
        })
        .fold(month, u64::max)
}

/// Until when (in `now`'s ms) keys written at `now` must live: [`key_ttl_ms`] later, rounded up to a
/// whole hour. The script moves a scope's expiry only when this passes the one it gave last, so the
/// rounding makes that at most once an hour (for most scopes, whose expiry is a month's end plus a day
/// and so already whole, once a month).
pub(crate) fn key_expiry(limits: &[&Limits], now: u64) -> u64 {
    const HOUR_MS: u64 = 3_600_000;
    now.saturating_add(key_ttl_ms(limits, now)).checked_next_multiple_of(HOUR_MS).unwrap_or(u64::MAX)
}

/// The share of a limit one of `replicas` replicas may use on its own: rounded down, but a nonzero limit
/// stays at least 1 (and zero stays zero, which admits nothing).
pub(crate) fn share(limit: u64, replicas: u32) -> u64 {
    if limit == 0 { 0 } else { (limit / u64::from(replicas.max(1))).max(1) }
}

/// Limits for the local fallback: every limit divided among the replicas, so that the fleet as a whole
/// stays within it while each replica counts alone.
pub(crate) fn local_limits(limits: &Limits, replicas: u32) -> Limits {
    let part = |value: Option<u64>| value.map(|v| share(v, replicas));
    let money = |value: Option<Money>| value.map(|m| Money(share(m.0, replicas)));
    let Limits {
        requests_per_minute,
        burst,
        tokens_per_minute,
        max_concurrent,
        tokens_per_day,
        tokens_per_month,
        budget_per_day,
        budget_per_month,
    } = limits;
    Limits {
        requests_per_minute: part(*requests_per_minute),
        burst: part(*burst),
        tokens_per_minute: part(*tokens_per_minute),
        max_concurrent: part(*max_concurrent),
        tokens_per_day: part(*tokens_per_day),
        tokens_per_month: part(*tokens_per_month),
        budget_per_day: money(*budget_per_day),
        budget_per_month: money(*budget_per_month),
    }
}

/// Persisted fleet-wide usage as one replica's share for the local fallback, rounded up so the shares
/// never add up to less than what was spent.
pub(crate) fn local_usage(usage: Usage, replicas: u32) -> Usage {
    let replicas = u64::from(replicas.max(1));
    Usage { tokens: usage.tokens.div_ceil(replicas), cost: Money(usage.cost.0.div_ceil(replicas)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_limits::LimitKind;

    #[test]
    fn share_rounds_down_but_keeps_nonzero_limits_alive() {
        assert_eq!(share(60, 3), 20);
        assert_eq!(share(61, 3), 20);
        assert_eq!(share(2, 3), 1);
        assert_eq!(share(1, 3), 1);
        assert_eq!(share(0, 3), 0);
        assert_eq!(share(u64::MAX, 1), u64::MAX);
        assert_eq!(share(7, 0), 7, "zero replicas is treated as one");
    }

    #[test]
    fn local_limits_divide_every_limit_and_keep_absent_ones_absent() {
        let limits = Limits {
            requests_per_minute: Some(60),
            burst: Some(10),
            tokens_per_minute: Some(1_000),
            max_concurrent: Some(1),
            tokens_per_day: Some(0),
            tokens_per_month: None,
            budget_per_day: Some(Money(3_000_000_000_000_000_000)),
            budget_per_month: Some(Money(0)),
        };
        let local = local_limits(&limits, 3);
        assert_eq!(
            local,
            Limits {
                requests_per_minute: Some(20),
                burst: Some(3),
                tokens_per_minute: Some(333),
                max_concurrent: Some(1),
                tokens_per_day: Some(0),
                tokens_per_month: None,
                budget_per_day: Some(Money(1_000_000_000_000_000_000)),
                budget_per_month: Some(Money(0)),
            }
        );
        assert_eq!(local_limits(&Limits::default(), 3), Limits::default());
    }

    #[test]
    fn local_usage_rounds_up() {
        let usage = Usage { tokens: 10, cost: Money(1) };
        assert_eq!(local_usage(usage, 3), Usage { tokens: 4, cost: Money(1) });
        assert_eq!(local_usage(usage, 1), usage);
    }

    #[test]
    fn the_script_keeps_a_deficit_of_at_most_max_token_deficit() {
        let units = (MAX_TOKEN_DEFICIT * 60_000).to_string();
        assert_eq!(units, "4503599627340000");
        assert!(crate::backend::SCRIPT.contains(&format!("math.min(s[4] + (actual - b) * 60000, {units})")));
    }

    #[test]
    fn script_limits_clamp_rates_and_keep_amounts_exact() {
        let limits = Limits {
            requests_per_minute: Some(u64::MAX),
            tokens_per_minute: Some(u64::MAX),
            budget_per_month: Some(Money(u64::MAX)),
            ..Limits::default()
        };
        let script = ScriptLimits::new(&limits);
        assert_eq!(script.requests, Some((MAX_REQUEST_RATE, MAX_REQUEST_RATE)), "burst defaults to the rate");
        assert_eq!(script.tokens_per_minute, Some(MAX_TOKEN_RATE));
        assert_eq!(script.max_concurrent, None);
        assert_eq!(script.quotas, [None, None, None, Some(u64::MAX)]);
        let burst = Limits { requests_per_minute: Some(60), burst: Some(5), ..Limits::default() };
        assert_eq!(ScriptLimits::new(&burst).requests, Some((60, 5)));
        assert_eq!(ScriptLimits::new(&Limits { burst: Some(5), ..Limits::default() }).requests, None, "burst alone");
        let zero = Limits { requests_per_minute: Some(0), ..Limits::default() };
        assert_eq!(ScriptLimits::new(&zero).requests, None, "a zero rate is no rate");
    }

    #[test]
    fn counted_skips_unlimited_and_repeated_scopes() {
        let limited = Limits { max_concurrent: Some(1), ..Limits::default() };
        let key = LimitScope::Key("k".into());
        let scopes = [
            (key.clone(), Limits::default()),
            (key.clone(), limited.clone()),
            (LimitScope::Global, limited.clone()),
            (key, limited),
        ];
        assert_eq!(counted(&scopes), [1, 2]);
    }

    #[test]
    fn never_fits_names_the_first_counted_scope() {
        let scopes = [
            (LimitScope::Key("k".into()), Limits { tokens_per_day: Some(5), ..Limits::default() }),
            (LimitScope::Global, Limits { tokens_per_minute: Some(5), ..Limits::default() }),
        ];
        let denial = never_fits(&scopes, &[0, 1], Demand { tokens: 6, cost: Money(0) }).unwrap();
        assert_eq!((denial.scope, denial.limit), (LimitScope::Key("k".into()), LimitKind::TokensPerDay));
        assert!(never_fits(&scopes, &[1], Demand { tokens: 5, cost: Money(0) }).is_none());
    }

    #[test]
    fn key_ttl_covers_the_month_and_a_slow_burst() {
        use portcullis_limits::window::DAY_MS;
        let now = 1_816_171_200_000; // 2027-07-21 12:00 UTC
        let month_left = portcullis_limits::Period::Month.until_next(now);
        assert_eq!(key_ttl_ms(&[], now), month_left + DAY_MS);
        let slow = Limits { requests_per_minute: Some(1), burst: Some(100_000), ..Limits::default() };
        assert_eq!(key_ttl_ms(&[&slow], now), 100_000 * 60_000 + DAY_MS);
    }

    #[test]
    fn key_expiry_is_a_whole_hour_and_a_month_end_stays_as_it_is() {
        use portcullis_limits::window::DAY_MS;
        let now = 1_816_171_200_000 + 1_234; // 2027-07-21 12:00:01.234 UTC
        let month_end = now + portcullis_limits::Period::Month.until_next(now);
        assert_eq!(key_expiry(&[], now), month_end + DAY_MS);
        let slow = Limits { requests_per_minute: Some(1), burst: Some(100_000), ..Limits::default() };
        let expiry = key_expiry(&[&slow], now);
        assert_eq!(expiry % 3_600_000, 0);
        assert!(expiry >= now + key_ttl_ms(&[&slow], now) && expiry < now + key_ttl_ms(&[&slow], now) + 3_600_000);
    }
}
