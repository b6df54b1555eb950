//! Header values (remaining, reset) of a scope's rates, from the raw GCRA and token-bucket state the
//! script returns. Redis runs scripts on one thread for the whole fleet, so what needs no atomicity is
//! done here: the GCRA with the same arithmetic as `portcullis_limits` (gcra.rs), exact on `u128`; the
//! token bucket, whose state the script keeps in the library's own representation, by the library itself.

use portcullis_limits::{BucketState, TokenBucket};

/// Ticks in a GCRA emission interval, and token-bucket units in a token (see gcra.rs and bucket.rs).
const PER_MINUTE: u128 = 60_000;

/// A scope's GCRA as the script keeps it: the theoretical arrival time (TAT) is `ms` ms plus `rem` ticks
/// of `1 / per_minute` ms, written under rate `per_minute` (0: never written).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawGcra {
    pub(crate) ms: u64,
    pub(crate) rem: u64,
    pub(crate) per_minute: u64,
}

/// A scope's token bucket as the script keeps it: `deficit` units (1/60 000 token) taken and not yet
/// refilled as of `last` ms (a debt included), the last take made under `capacity` (clamped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawBucket {
    pub(crate) deficit: u64,
    pub(crate) last: u64,
    pub(crate) capacity: u64,
}

impl RawGcra {
    /// Requests remaining at `now` (≤ burst) and ms until the whole burst is back (rounded up), under
    /// `rpm` and `burst` as the script was given them (clamped).
    pub(crate) fn remaining_and_reset(&self, rpm: u64, burst: u64, now: u64) -> (u64, u64) {
        let rate = u128::from(rpm.max(1));
        // The TAT in this rate's ticks, converted (rounding up) if it was written under another rate.
        let rem = match self.per_minute {
            0 => u128::from(self.rem),
            old if old == rpm => u128::from(self.rem),
            old => (u128::from(self.rem) * rate).div_ceil(u128::from(old)),
        };
        let tat = u128::from(self.ms) * rate + rem;
        let ahead = tat.saturating_sub(u128::from(now) * rate);
        let remaining = (u128::from(burst) * PER_MINUTE).saturating_sub(ahead) / PER_MINUTE;
        (saturate(remaining), saturate(ahead.div_ceil(rate)))
    }
}

impl RawBucket {
    /// The library's state of this bucket.
    pub(crate) fn state(&self) -> BucketState {
        BucketState::from_parts(u128::from(self.deficit), self.last, self.capacity)
    }

    /// Whole tokens available at `now` and ms until the bucket is full (rounded up, a debt's repayment
    /// included; 0 for a zero capacity), for a bucket of `capacity` tokens per minute (clamped as the
    /// script was given it).
    pub(crate) fn available_and_reset(&self, capacity: u64, now: u64) -> (u64, u64) {
        let (bucket, state) = (TokenBucket::new(capacity), self.state());
        (bucket.available(&state, now), bucket.reset_ms(&state, now))
    }
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_limits::{Gcra, GcraState};

    const T0: u64 = 1_816_171_200_000;

    /// Follows `take`s on both the library's GCRA and the script's representation of it.
    fn take(raw: &mut RawGcra, rpm: u64, now: u64) {
        let (ms, rem) = if raw.ms < now { (now, 0) } else { (raw.ms, raw.rem) };
        let ticks = rem + 60_000;
        *raw = RawGcra { ms: ms + ticks / rpm, rem: ticks % rpm, per_minute: rpm };
    }

    #[test]
    fn gcra_headers_match_the_library_after_takes() {
        for (rpm, burst) in [(60, 10), (7, 3), (1, 1), (1_000_003, 5), (13, 2)] {
            let gcra = Gcra::new(rpm, Some(burst)).unwrap();
            let (mut state, mut raw) = (GcraState::default(), RawGcra::default());
            for step in 0..40u64 {
                let now = T0 + step * step * 97;
                if gcra.take(&mut state, now).is_ok() {
                    take(&mut raw, rpm, now);
                }
                for later in [now, now + 1, now + 8_571, now + 120_000] {
                    assert_eq!(
                        raw.remaining_and_reset(rpm, burst, later),
                        (gcra.remaining(&state, later), gcra.reset_ms(&state, later)),
                        "rpm {rpm} burst {burst} step {step} at +{}",
                        later - now
                    );
                }
            }
        }
    }

    #[test]
    fn a_rate_change_converts_the_tat_rounding_up() {
        // 1 request at rpm 7 leaves the TAT 60 000 ticks of 1/7 ms ahead: 8 571 ms + 3 ticks.
        let raw = RawGcra { ms: T0 + 8_571, rem: 3, per_minute: 7 };
        // At rpm 13 the 3/7 ms remainder becomes ceil(39 / 7) = 6 ticks of 1/13 ms.
        assert_eq!(raw.remaining_and_reset(13, 1, T0), (0, 8_572));
        assert_eq!(raw.remaining_and_reset(13, 2, T0 + 8_571), (1, 1));
        assert_eq!(RawGcra::default().remaining_and_reset(13, 4, T0), (4, 0), "never written: all there");
    }

    #[test]
    fn the_scripts_bucket_is_the_librarys_state() {
        // What the script stores after a take of 700 and an overrun of 900 more at T0 under 1 000 a minute.
        let bucket = TokenBucket::new(1_000);
        let mut state = BucketState::default();
        bucket.take(&mut state, 700, T0).unwrap();
        state.charge(900);
        let raw = RawBucket { deficit: 1_600 * 60_000, last: T0, capacity: 1_000 };
        assert_eq!(raw.state(), state);
        assert_eq!(raw.available_and_reset(1_000, T0 + 30_000), (0, 66_000), "600 below empty at T0, 100 after 30 s");
        assert_eq!(raw.available_and_reset(0, T0), (0, 0), "a zero capacity is empty and never refills");
        assert_eq!(raw.available_and_reset(10, T0), (0, 3_660_000), "a lowered capacity keeps the debt");
        let no_debt = RawBucket { deficit: 700 * 60_000, last: T0, capacity: 1_000 };
        assert_eq!(no_debt.available_and_reset(10, T0), (0, 60_000), "a lowered capacity empties the bucket");
    }
}
