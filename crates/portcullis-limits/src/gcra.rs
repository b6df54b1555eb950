//! Requests per minute by GCRA (generic cell rate algorithm).
//!
//! GCRA keeps a single number per scope, the theoretical arrival time (TAT) of the next request, so a
//! check is a comparison and an admission is one addition: no timestamps list, no background refill.
//! It admits up to `burst` requests at once, then exactly one every `60 000 / rpm` ms.
//!
//! Exactness: `60 000 / rpm` is rarely an integer number of ms (rpm = 7 gives 8 571.428… ms), and
//! rounding the interval would let a fraction of a request leak per minute. Time is therefore measured in
//! *ticks* of `1 / rpm` ms: the emission interval is then exactly 60 000 ticks for every rpm, and `now` in
//! ticks is `now_ms * rpm`. All arithmetic is on `u128`, which cannot overflow for any `u64` inputs.
//!
//! Because the tick length depends on rpm, the state remembers the rpm it was written with; when the rpm
//! changes (config reload) the TAT is converted to the new ticks, rounding up so a change never grants an
//! extra request.

/// Emission interval in ticks: one request per 60 000 ms is 60 000 ticks of `1 / rpm` ms.
const INTERVAL_TICKS: u128 = 60_000;

/// A configured request rate: `per_minute` requests per minute with `burst` of them allowed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    per_minute: u64,
    burst: u64,
}

/// What GCRA stores for one scope: the TAT in ticks of `1 / per_minute` ms.
///
/// `Default` is a fresh scope whose whole burst is available.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcraState {
    tat: u128,
    /// The rpm `tat` is expressed in; 0 for a state that was never written.
    per_minute: u64,
}

impl GcraState {
    /// True when the whole burst is available at `now` under any rate, i.e. this state acts as a fresh one.
    pub fn is_idle_at(&self, now: u64) -> bool {
        self.tat <= u128::from(now) * u128::from(self.per_minute)
    }
}

impl Gcra {
    /// A rate of `per_minute` with an instant allowance of `burst` (default: `per_minute`).
    ///
    /// Returns `None` when either is zero: such a limit admits nothing ever, which the limiter reports as
    /// `NeverFits` instead of computing a wait that never ends.
    pub fn new(per_minute: u64, burst: Option<u64>) -> Option<Gcra> {
        let burst = burst.unwrap_or(per_minute);
        (per_minute > 0 && burst > 0).then_some(Gcra { per_minute, burst })
    }

    /// Requests per minute (the `x-ratelimit-limit-requests` value).
    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    /// Requests allowed at once.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Admits one request if the rate allows it, otherwise returns the wait in ms (rounded up) after which
    /// it would be admitted. Leaves the state unchanged on `Err`.
    pub fn take(&self, state: &mut GcraState, now: u64) -> Result<(), u64> {
        self.check(state, now)?;
        let start = self.tat(state).max(self.ticks(now));
        *state = GcraState { tat: start.saturating_add(INTERVAL_TICKS), per_minute: self.per_minute };
        Ok(())
    }

    /// Whether one request would be admitted at `now`; `Err(wait_ms)` if not. Never changes anything.
    pub fn check(&self, state: &GcraState, now: u64) -> Result<(), u64> {
        let ahead = self.ahead(state, now);
        let tolerance = u128::from(self.burst - 1) * INTERVAL_TICKS;
        if ahead <= tolerance { Ok(()) } else { Err(self.ticks_to_ms_ceil(ahead - tolerance)) }
    }

    /// How many requests would be admitted at `now` if they arrived together (≤ burst).
    pub fn remaining(&self, state: &GcraState, now: u64) -> u64 {
        let capacity = u128::from(self.burst) * INTERVAL_TICKS;
        let free = capacity.saturating_sub(self.ahead(state, now)) / INTERVAL_TICKS;
        u64::try_from(free).unwrap_or(u64::MAX)
    }

    /// Ms until the whole burst is available again (TAT − now, rounded up; 0 when already full).
    pub fn reset_ms(&self, state: &GcraState, now: u64) -> u64 {
        self.ticks_to_ms_ceil(self.ahead(state, now))
    }

    /// How far the TAT is ahead of `now`, in ticks (0 when the scope is idle).
    fn ahead(&self, state: &GcraState, now: u64) -> u128 {
        self.tat(state).saturating_sub(self.ticks(now))
    }

    fn ticks(&self, ms: u64) -> u128 {
        u128::from(ms) * u128::from(self.per_minute)
    }

    fn ticks_to_ms_ceil(&self, ticks: u128) -> u64 {
        let ms = ticks.div_ceil(u128::from(self.per_minute));
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// The state's TAT in this rate's ticks, converted (rounding up) if it was written under another rpm.
    fn tat(&self, state: &GcraState) -> u128 {
        if state.per_minute == self.per_minute || state.per_minute == 0 {
            return state.tat;
        }
        let (old, new) = (u128::from(state.per_minute), u128::from(self.per_minute));
        let whole_ms = state.tat / old;
        let rest = (state.tat % old) * new;
        whole_ms.saturating_mul(new).saturating_add(rest.div_ceil(old))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(per_minute: u64, burst: Option<u64>) -> Gcra {
        Gcra::new(per_minute, burst).unwrap()
    }

    #[test]
    fn zero_rate_or_zero_burst_is_not_a_rate() {
        assert_eq!(Gcra::new(0, None), None);
        assert_eq!(Gcra::new(10, Some(0)), None);
        assert_eq!(gcra(10, None).burst(), 10);
    }

    #[test]
    fn full_burst_at_once_then_one_per_interval() {
        let rate = gcra(60, None); // one per second, 60 at once
        let mut state = GcraState::default();
        let t0 = 1_700_000_000_000;
        for _ in 0..60 {
            rate.take(&mut state, t0).unwrap();
        }
        assert_eq!(rate.take(&mut state, t0), Err(1_000));
        assert_eq!(rate.take(&mut state, t0 + 999), Err(1));
        rate.take(&mut state, t0 + 1_000).unwrap();
        assert_eq!(rate.take(&mut state, t0 + 1_000), Err(1_000));
        rate.take(&mut state, t0 + 2_000).unwrap();
    }

    #[test]
    fn burst_lowers_the_instant_allowance_but_not_the_rate() {
        let rate = gcra(600, Some(5)); // one per 100 ms, 5 at once
        let mut state = GcraState::default();
        for _ in 0..5 {
            rate.take(&mut state, 0).unwrap();
        }
        assert_eq!(rate.take(&mut state, 0), Err(100));
        // Over the next minute exactly 600 more fit when spaced evenly.
        let admitted = (100..=60_000u64).step_by(100).filter(|t| rate.take(&mut state, *t).is_ok()).count();
        assert_eq!(admitted, 600);
    }

    #[test]
    fn rate_that_does_not_divide_a_minute_stays_exact() {
        // 7 per minute (one per 8 571.43 ms), hammered as fast as it allows for 100 000 minutes: a rounded
        // interval (8 571 or 8 572 ms) would drift by dozens of requests; the exact one admits 7 + 700 000.
        let rate = gcra(7, None);
        let mut state = GcraState::default();
        let end = 100_000 * 60_000;
        let (mut now, mut admitted) = (0u64, 0u64);
        while now <= end {
            match rate.take(&mut state, now) {
                Ok(()) => admitted += 1,
                Err(wait) => now += wait,
            }
        }
        assert_eq!(admitted, 7 + 700_000);
    }

    #[test]
    fn retry_after_is_the_exact_wait_rounded_up_to_the_ms() {
        let rate = gcra(7, Some(1));
        let mut state = GcraState::default();
        rate.take(&mut state, 0).unwrap();
        assert_eq!(rate.check(&state, 0), Err(8_572));
        assert_eq!(rate.check(&state, 8_571), Err(1));
        rate.take(&mut state, 8_572).unwrap();
    }

    #[test]
    fn remaining_and_reset_describe_the_burst() {
        let rate = gcra(60, Some(3));
        let mut state = GcraState::default();
        assert_eq!((rate.remaining(&state, 0), rate.reset_ms(&state, 0)), (3, 0));
        rate.take(&mut state, 0).unwrap();
        assert_eq!((rate.remaining(&state, 0), rate.reset_ms(&state, 0)), (2, 1_000));
        rate.take(&mut state, 0).unwrap();
        rate.take(&mut state, 0).unwrap();
        assert_eq!((rate.remaining(&state, 0), rate.reset_ms(&state, 0)), (0, 3_000));
        assert_eq!((rate.remaining(&state, 1_500), rate.reset_ms(&state, 1_500)), (1, 1_500));
        assert_eq!((rate.remaining(&state, 10_000), rate.reset_ms(&state, 10_000)), (3, 0));
        assert!(!state.is_idle_at(2_999));
        assert!(state.is_idle_at(3_000));
        assert!(GcraState::default().is_idle_at(0));
    }

    #[test]
    fn rate_change_converts_the_tat_without_granting_extra() {
        let old = gcra(60, Some(1));
        let mut state = GcraState::default();
        old.take(&mut state, 0).unwrap(); // TAT = 1 000 ms
        let new = gcra(7, Some(1));
        // 1 000 ms is still 1 000 ms in the new ticks.
        assert_eq!(new.reset_ms(&state, 0), 1_000);
        assert_eq!(new.check(&state, 999), Err(1));
        new.take(&mut state, 1_000).unwrap();
        assert_eq!(new.reset_ms(&state, 1_000), 8_572); // 60 000 / 7 rounded up
    }

    #[test]
    fn a_clock_behind_the_tat_is_not_a_refill() {
        let rate = gcra(60, Some(1));
        let mut state = GcraState::default();
        rate.take(&mut state, 10_000).unwrap();
        // A caller whose `now` is slightly older must not be admitted early.
        assert_eq!(rate.take(&mut state, 9_000), Err(2_000));
    }

    #[test]
    fn huge_inputs_do_not_overflow() {
        let rate = gcra(u64::MAX, Some(u64::MAX));
        let mut state = GcraState::default();
        rate.take(&mut state, u64::MAX).unwrap();
        assert!(rate.remaining(&state, u64::MAX) > 0);
        let slow = gcra(1, Some(1));
        assert!(slow.check(&state, 0).is_err());
    }
}
