//! Tokens per minute by token bucket.
//!
//! A request takes its whole worst case (`Demand::tokens`) on admission and gets back what it did not
//! use on settlement, so concurrent requests can never together exceed the bucket. The bucket holds
//! `capacity` tokens and refills `capacity` tokens per 60 000 ms, smoothly.
//!
//! Exactness: a refill of `capacity / 60 000` tokens per ms is fractional, so amounts are kept in
//! *token-ms units* (1 token = 60 000 units); a ms then refills exactly `capacity` units and nothing is
//! ever rounded. The state stores the *deficit* (units taken and not yet refilled) rather than the level:
//! a fresh scope is `Default` (deficit 0 = full), and a capacity change on reload keeps "what was used in
//! the last minute" instead of resetting anyone's allowance. The level is `capacity − deficit`, so it can
//! never exceed the capacity by construction.

/// Units per token: one token is 60 000 token-ms units (see the module doc).
const UNITS_PER_TOKEN: u128 = 60_000;

/// A configured bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    capacity: u64,
}

/// What the bucket stores for one scope. `Default` is a full bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// Units taken and not yet refilled, as of `last`.
    deficit: u128,
    /// The latest `now` seen; an older `now` refills nothing (callers' clocks may interleave).
    last: u64,
    /// The capacity of the last change, so idleness can be judged without the current limits.
    capacity: u64,
}

impl BucketState {
    /// Gives back `tokens` that a take removed. The level stops at the capacity, so a refund can restore
    /// what a take removed but never mint tokens beyond a full bucket.
    ///
    /// It needs neither the time nor the capacity: the deficit is stored as of `last`, and lowering it there
    /// gives the same level at every later time as lowering it at the moment of the refund (both are
    /// `max(0, deficit − refill − refund)`, capped by the capacity when read). So a settlement after a
    /// config reload gives back exactly what was taken, whatever the bucket's size is now.
    pub fn refund(&mut self, tokens: u64) {
        self.deficit = self.deficit.saturating_sub(units(tokens));
    }

    /// True when the bucket is certainly full at `now`, i.e. this state equals a fresh one.
    pub fn is_full_at(&self, now: u64) -> bool {
        let refilled = u128::from(now.saturating_sub(self.last)) * u128::from(self.capacity);
        self.deficit <= refilled
    }
}

/// Why a take was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeError {
    /// Enough tokens will have refilled after this many ms (rounded up), if nobody else takes them.
    Wait(u64),
    /// More than the capacity: no amount of waiting helps.
    NeverFits,
}

impl TokenBucket {
    /// A bucket of `capacity` tokens per minute. A capacity of 0 admits only zero-token takes.
    pub fn new(capacity: u64) -> TokenBucket {
        TokenBucket { capacity }
    }

    /// Tokens per minute (the `x-ratelimit-limit-tokens` value).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether `tokens` could be taken at `now`. Never changes anything.
    pub fn check(&self, state: &BucketState, tokens: u64, now: u64) -> Result<(), TakeError> {
        if tokens > self.capacity {
            return Err(TakeError::NeverFits);
        }
        let after = self.deficit_at(state, now) + units(tokens);
        let capacity = units(self.capacity);
        if after <= capacity {
            return Ok(());
        }
        // `tokens <= capacity` here, so capacity > 0 and the division is defined.
        let wait = (after - capacity).div_ceil(u128::from(self.capacity));
        Err(TakeError::Wait(u64::try_from(wait).unwrap_or(u64::MAX)))
    }

    /// Takes `tokens` if they are there at `now`; leaves the state unchanged on `Err`.
    pub fn take(&self, state: &mut BucketState, tokens: u64, now: u64) -> Result<(), TakeError> {
        self.check(state, tokens, now)?;
        let deficit = self.deficit_at(state, now) + units(tokens);
        *state = BucketState { deficit, last: state.last.max(now), capacity: self.capacity };
        Ok(())
    }

    /// Whole tokens available at `now` (≤ capacity).
    pub fn available(&self, state: &BucketState, now: u64) -> u64 {
        let level = units(self.capacity) - self.deficit_at(state, now);
        u64::try_from(level / UNITS_PER_TOKEN).unwrap_or(u64::MAX)
    }

    /// The exact level at `now` in token-ms units (1 token = 60 000); for tests and invariants.
    pub fn level_units(&self, state: &BucketState, now: u64) -> u128 {
        units(self.capacity) - self.deficit_at(state, now)
    }

    /// Ms until the bucket is full again (rounded up; 0 when full).
    pub fn reset_ms(&self, state: &BucketState, now: u64) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        let ms = self.deficit_at(state, now).div_ceil(u128::from(self.capacity));
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// Deficit after refilling up to `now`, capped at the capacity (a lowered capacity empties the bucket
    /// rather than leaving a debt that would outlast a minute).
    fn deficit_at(&self, state: &BucketState, now: u64) -> u128 {
        let elapsed = u128::from(now.saturating_sub(state.last));
        let refilled = elapsed * u128::from(self.capacity);
        state.deficit.saturating_sub(refilled).min(units(self.capacity))
    }
}

fn units(tokens: u64) -> u128 {
    u128::from(tokens) * UNITS_PER_TOKEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_bucket_is_full() {
        let bucket = TokenBucket::new(1_000);
        let state = BucketState::default();
        assert_eq!(bucket.available(&state, 5), 1_000);
        assert_eq!(bucket.reset_ms(&state, 5), 0);
    }

    #[test]
    fn take_then_smooth_refill_at_capacity_per_minute() {
        let bucket = TokenBucket::new(6_000); // 100 tokens per second
        let mut state = BucketState::default();
        bucket.take(&mut state, 6_000, 0).unwrap();
        assert_eq!(bucket.available(&state, 0), 0);
        assert_eq!(bucket.check(&state, 1, 0), Err(TakeError::Wait(10)));
        assert_eq!(bucket.available(&state, 1_000), 100);
        assert_eq!(bucket.available(&state, 30_000), 3_000);
        assert_eq!(bucket.reset_ms(&state, 30_000), 30_000);
        assert!(!state.is_full_at(59_999));
        assert!(state.is_full_at(60_000));
        assert_eq!(bucket.available(&state, 60_000), 6_000);
        assert_eq!(bucket.available(&state, 600_000), 6_000);
    }

    #[test]
    fn fractional_refill_is_kept_not_rounded_away() {
        let bucket = TokenBucket::new(7); // one token per 8 571.43 ms
        let mut state = BucketState::default();
        bucket.take(&mut state, 7, 0).unwrap();
        assert_eq!(bucket.check(&state, 1, 0), Err(TakeError::Wait(8_572)));
        // Taking one token the moment it is there, 7 000 times, ends exactly 1 000 minutes later.
        let mut now = 0;
        for _ in 0..7_000 {
            match bucket.take(&mut state, 1, now) {
                Ok(()) => {}
                Err(TakeError::Wait(ms)) => {
                    now += ms;
                    bucket.take(&mut state, 1, now).unwrap();
                }
                Err(TakeError::NeverFits) => unreachable!(),
            }
        }
        assert_eq!(now, 60_000_000);
    }

    #[test]
    fn more_than_capacity_never_fits() {
        let bucket = TokenBucket::new(100);
        assert_eq!(bucket.check(&BucketState::default(), 101, 0), Err(TakeError::NeverFits));
        assert_eq!(TokenBucket::new(0).check(&BucketState::default(), 1, 0), Err(TakeError::NeverFits));
        assert_eq!(TokenBucket::new(0).check(&BucketState::default(), 0, 0), Ok(()));
    }

    #[test]
    fn failed_take_changes_nothing() {
        let bucket = TokenBucket::new(100);
        let mut state = BucketState::default();
        bucket.take(&mut state, 80, 0).unwrap();
        let before = state;
        assert_eq!(bucket.take(&mut state, 30, 0), Err(TakeError::Wait(6_000)));
        assert_eq!(state, before);
    }

    #[test]
    fn refund_restores_unused_tokens_but_never_past_capacity() {
        let bucket = TokenBucket::new(1_000);
        let mut state = BucketState::default();
        bucket.take(&mut state, 800, 0).unwrap();
        state.refund(500);
        assert_eq!(bucket.available(&state, 0), 700);
        state.refund(10_000);
        assert_eq!(bucket.available(&state, 0), 1_000);
        assert_eq!(state, BucketState { deficit: 0, last: 0, capacity: 1_000 });
        assert!(state.is_full_at(0));
    }

    #[test]
    fn refund_at_a_later_time_equals_refund_at_that_time() {
        let bucket = TokenBucket::new(600); // 10 per second
        let mut state = BucketState::default();
        bucket.take(&mut state, 600, 0).unwrap();
        state.refund(100);
        assert_eq!(bucket.available(&state, 0), 100);
        assert_eq!(bucket.available(&state, 10_000), 200);
        // Once refilled, a refund changes nothing.
        let mut full = state;
        full.refund(600);
        assert_eq!(bucket.available(&full, 60_000), 600);
    }

    #[test]
    fn older_now_does_not_refill() {
        let bucket = TokenBucket::new(60);
        let mut state = BucketState::default();
        bucket.take(&mut state, 60, 10_000).unwrap();
        assert_eq!(bucket.available(&state, 9_000), 0);
        bucket.take(&mut state, 0, 9_000).unwrap();
        assert_eq!(bucket.available(&state, 11_000), 1);
    }

    #[test]
    fn capacity_change_keeps_the_recent_usage() {
        let mut state = BucketState::default();
        TokenBucket::new(1_000).take(&mut state, 400, 0).unwrap();
        assert_eq!(TokenBucket::new(2_000).available(&state, 0), 1_600);
        assert_eq!(TokenBucket::new(300).available(&state, 0), 0);
    }
}
