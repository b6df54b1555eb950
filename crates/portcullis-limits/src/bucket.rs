//! Tokens per minute by token bucket.
//!
//! A request takes its whole worst case (`Demand::tokens`) on admission; settlement replaces that by what
//! it really used, so concurrent requests can never together be admitted beyond the bucket. The bucket
//! holds `capacity` tokens and refills `capacity` tokens per 60 000 ms, smoothly.
//!
//! A request that used more than it took (a model server that ignored its completion cap) is charged the
//! rest too: the bucket goes below empty, into *debt*, and nothing more is taken until it has refilled
//! past the debt at its normal rate. An overrun of D tokens on a bucket of C per minute thus costs D / C
//! minutes on top of refilling the bucket itself.
//!
//! Exactness: a refill of `capacity / 60 000` tokens per ms is fractional, so amounts are kept in
//! *token-ms units* (1 token = 60 000 units); a ms then refills exactly `capacity` units and nothing is
//! ever rounded. The state stores the *deficit* (units taken and not yet refilled) rather than the level:
//! a fresh scope is `Default` (deficit 0 = full), and a capacity change on reload keeps "what was used in
//! the last minute" instead of resetting anyone's allowance. The level is `capacity − deficit`, so it can
//! never exceed the capacity by construction; it is below zero exactly while in debt.
//!
//! Reloads: the state also keeps the capacity it was last taken from, which tells a debt from a lowered
//! capacity. Under that capacity the deficit exceeds the capacity only by an overrun's debt. Read under a
//! lower capacity, the part of the deficit within the old capacity is cut to the new one — a lowered
//! capacity empties the bucket, to be refilled in a minute at the new rate, rather than leaving a debt —
//! while a debt is kept whole and repaid at the new rate. The cut applies as of the state's time, before
//! any refill, so that the bucket really is full a minute (plus the debt's time) later.

use crate::{LimitKind, LimitState};

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
    /// Units taken and not yet refilled, as of `last`; above the capacity's units by an overrun's debt.
    deficit: u128,
    /// The latest `now` seen; an older `now` refills nothing (callers' clocks may interleave).
    last: u64,
    /// The capacity of the last take: what a debt is measured against, and what idleness is judged by
    /// without the current limits.
    capacity: u64,
}

impl BucketState {
    /// A state kept elsewhere (the Redis limiter keeps these three numbers): `deficit` token-ms units
    /// taken and not yet refilled as of `last`, the last take made under `capacity`.
    pub fn from_parts(deficit: u128, last: u64, capacity: u64) -> BucketState {
        BucketState { deficit, last, capacity }
    }

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

    /// Charges `tokens` beyond what a take removed (a request that used more than it reserved), below
    /// empty if need be: the debt is then repaid by refilling, at the bucket's rate.
    ///
    /// Like [`BucketState::refund`] it needs neither the time nor the capacity: it is charged as of `last`,
    /// the bucket's latest change, which is no earlier than the admission of the request it settles. The
    /// request is so charged as if it had taken its actual usage instead of its reservation then.
    pub fn charge(&mut self, tokens: u64) {
        self.deficit = self.deficit.saturating_add(units(tokens));
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
    /// A bucket of `capacity` tokens per minute. A capacity of 0 admits only zero-token takes (always: it
    /// never refills, so it could never repay a debt either).
    pub fn new(capacity: u64) -> TokenBucket {
        TokenBucket { capacity }
    }

    /// Tokens per minute (the `x-ratelimit-limit-tokens` value).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether `tokens` could be taken at `now`. Never changes anything. While in debt, the wait covers
    /// repaying the debt and then refilling `tokens`.
    pub fn check(&self, state: &BucketState, tokens: u64, now: u64) -> Result<(), TakeError> {
        if tokens > self.capacity {
            return Err(TakeError::NeverFits);
        }
        if self.capacity == 0 {
            return Ok(());
        }
        let after = self.deficit_at(state, now).saturating_add(units(tokens));
        let capacity = units(self.capacity);
        if after <= capacity {
            return Ok(());
        }
        let wait = (after - capacity).div_ceil(u128::from(self.capacity));
        Err(TakeError::Wait(saturate(wait)))
    }

    /// Takes `tokens` if they are there at `now`; leaves the state unchanged on `Err`.
    pub fn take(&self, state: &mut BucketState, tokens: u64, now: u64) -> Result<(), TakeError> {
        self.check(state, tokens, now)?;
        let deficit = self.deficit_at(state, now).saturating_add(units(tokens));
        *state = BucketState { deficit, last: state.last.max(now), capacity: self.capacity };
        Ok(())
    }

    /// Whole tokens available at `now` (≤ capacity; 0 while in debt).
    pub fn available(&self, state: &BucketState, now: u64) -> u64 {
        saturate(self.level_units(state, now) / UNITS_PER_TOKEN)
    }

    /// The exact level at `now` in token-ms units (1 token = 60 000), stopping at 0 while in debt; for
    /// tests and invariants.
    pub fn level_units(&self, state: &BucketState, now: u64) -> u128 {
        units(self.capacity).saturating_sub(self.deficit_at(state, now))
    }

    /// The exact deficit at `now` in token-ms units: what the bucket lacks to be full, above the capacity's
    /// units by the debt while in debt.
    pub fn deficit_units(&self, state: &BucketState, now: u64) -> u128 {
        self.deficit_at(state, now)
    }

    /// Tokens taken and not yet refilled at `now` (rounded up): `capacity − available`, and more than the
    /// capacity while in debt.
    pub fn taken(&self, state: &BucketState, now: u64) -> u64 {
        saturate(self.deficit_at(state, now).div_ceil(UNITS_PER_TOKEN))
    }

    /// Ms until the bucket is full again (rounded up; 0 when full, and for a zero capacity).
    pub fn reset_ms(&self, state: &BucketState, now: u64) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        saturate(self.deficit_at(state, now).div_ceil(u128::from(self.capacity)))
    }

    /// This bucket's state at `now` for `GET /v1/usage`, `reserved` of its tokens held by running requests:
    /// `used` is what was taken and not yet refilled apart from those, above the limit while in debt.
    pub fn limit_state(&self, state: &BucketState, reserved: u64, now: u64) -> LimitState {
        let taken = self.taken(state, now);
        let reserved = reserved.min(taken);
        LimitState {
            kind: LimitKind::TokensPerMinute,
            limit: self.capacity,
            used: taken - reserved,
            reserved,
            remaining: self.available(state, now),
            reset_ms: Some(self.reset_ms(state, now)),
        }
    }

    /// Deficit refilled up to `now` at this capacity. First, as of the state's time, the part within the
    /// capacity it was written under is cut to this capacity (a lowered capacity empties the bucket) while
    /// the debt beyond it stays whole; see the module doc.
    fn deficit_at(&self, state: &BucketState, now: u64) -> u128 {
        let debt = state.deficit.saturating_sub(units(state.capacity));
        let deficit = state.deficit.min(units(self.capacity).saturating_add(debt));
        let elapsed = u128::from(now.saturating_sub(state.last));
        deficit.saturating_sub(elapsed * u128::from(self.capacity))
    }
}

fn units(tokens: u64) -> u128 {
    u128::from(tokens) * UNITS_PER_TOKEN
}

fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
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

    #[test]
    fn a_lowered_capacity_empties_the_bucket_and_refills_it_in_one_minute_at_the_new_rate() {
        let mut state = BucketState::default();
        TokenBucket::new(1_000).take(&mut state, 1_000, 0).unwrap();
        let lowered = TokenBucket::new(100);
        assert_eq!((lowered.available(&state, 0), lowered.reset_ms(&state, 0)), (0, 60_000));
        assert_eq!(lowered.check(&state, 50, 0), Err(TakeError::Wait(30_000)));
        assert_eq!(lowered.available(&state, 30_000), 50);
        assert_eq!(lowered.available(&state, 60_000), 100);
        assert_eq!(lowered.taken(&state, 0), 100);
    }

    #[test]
    fn an_overrun_puts_the_bucket_into_debt_repaid_at_its_refill_rate() {
        let bucket = TokenBucket::new(600); // 10 tokens a second
        let mut state = BucketState::default();
        bucket.take(&mut state, 100, 0).unwrap();
        state.charge(900); // used 1 000 of a reservation of 100
        assert_eq!(bucket.available(&state, 0), 0);
        assert_eq!(bucket.level_units(&state, 0), 0);
        assert_eq!(bucket.taken(&state, 0), 1_000);
        assert_eq!(bucket.deficit_units(&state, 0), 1_000 * UNITS_PER_TOKEN);
        // 400 below empty: 40 s to repay, then a minute to fill.
        assert_eq!(bucket.reset_ms(&state, 0), 100_000);
        assert_eq!(bucket.deficit_units(&state, 40_000), 600 * UNITS_PER_TOKEN);
        assert_eq!(bucket.check(&state, 0, 0), Err(TakeError::Wait(40_000)));
        assert_eq!(bucket.check(&state, 1, 40_000), Err(TakeError::Wait(100)));
        assert_eq!(bucket.check(&state, 60, 0), Err(TakeError::Wait(46_000)));
        let before = state;
        assert_eq!(bucket.take(&mut state, 60, 45_999), Err(TakeError::Wait(1)));
        assert_eq!(state, before);
        bucket.take(&mut state, 60, 46_000).unwrap();
        assert_eq!((bucket.available(&state, 46_000), bucket.reset_ms(&state, 46_000)), (0, 60_000));
        assert!(!state.is_full_at(105_999) && state.is_full_at(106_000));
    }

    #[test]
    fn a_charge_and_a_refund_net_out() {
        let bucket = TokenBucket::new(1_000);
        let mut state = BucketState::default();
        bucket.take(&mut state, 300, 0).unwrap();
        state.charge(2_000);
        state.refund(1_500);
        assert_eq!(bucket.taken(&state, 0), 800);
        state.refund(10_000);
        assert_eq!(bucket.available(&state, 0), 1_000);
    }

    #[test]
    fn a_debt_survives_a_lowered_capacity_and_is_repaid_at_the_new_rate() {
        let mut state = BucketState::default();
        TokenBucket::new(1_000).take(&mut state, 100, 0).unwrap();
        state.charge(1_400); // 500 below empty
        let lowered = TokenBucket::new(100);
        // Empty at the new size (100) plus the whole debt (500): 6 minutes at 100 a minute.
        assert_eq!(lowered.taken(&state, 0), 600);
        assert_eq!(lowered.reset_ms(&state, 0), 360_000);
        assert_eq!(lowered.check(&state, 100, 0), Err(TakeError::Wait(360_000)));
        assert_eq!(lowered.available(&state, 300_000), 0);
        assert_eq!(lowered.available(&state, 330_000), 50);
        // A raised capacity has room for the debt: it is just tokens taken.
        let raised = TokenBucket::new(5_000);
        assert_eq!((raised.taken(&state, 0), raised.available(&state, 0)), (1_500, 3_500));
        // A take under the new capacity rewrites the state under it: no debt is left to survive.
        let mut taken = state;
        lowered.take(&mut taken, 100, 360_000).unwrap();
        assert_eq!(lowered.reset_ms(&taken, 360_000), 60_000);
    }

    #[test]
    fn a_zero_capacity_admits_zero_takes_even_in_debt() {
        let mut state = BucketState::default();
        TokenBucket::new(10).take(&mut state, 10, 0).unwrap();
        state.charge(100);
        let zero = TokenBucket::new(0);
        assert_eq!(zero.check(&state, 0, 0), Ok(()));
        assert_eq!(zero.check(&state, 1, 0), Err(TakeError::NeverFits));
        assert_eq!((zero.available(&state, 0), zero.reset_ms(&state, 0)), (0, 0));
    }

    #[test]
    fn huge_debts_saturate_instead_of_overflowing() {
        let small = TokenBucket::new(1);
        let mut state = BucketState::default();
        small.take(&mut state, 1, 0).unwrap();
        for _ in 0..1_000 {
            state.charge(u64::MAX);
        }
        assert_eq!(small.available(&state, u64::MAX), 0);
        assert_eq!(small.check(&state, 1, 0), Err(TakeError::Wait(u64::MAX)));
        assert_eq!((small.taken(&state, 0), small.reset_ms(&state, 0)), (u64::MAX, u64::MAX));
        let mut deepest = BucketState::from_parts(u128::MAX, 0, u64::MAX);
        deepest.charge(u64::MAX);
        let big = TokenBucket::new(u64::MAX);
        assert_eq!(big.deficit_units(&deepest, 0), u128::MAX);
        assert_eq!((big.taken(&deepest, 0), big.available(&deepest, 0)), (u64::MAX, 0));
        assert!(matches!(big.check(&deepest, 1, 0), Err(TakeError::Wait(_))));
        assert!(!deepest.is_full_at(u64::MAX));
    }
}
