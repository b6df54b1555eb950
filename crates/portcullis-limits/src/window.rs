//! Calendar windows in UTC (day, month) and the reserve/settle counter kept per window.
//!
//! Quotas and budgets are "per day" and "per month" as people read a calendar, not rolling 24 h: the
//! counter restarts at 00:00 UTC and on the 1st of the month, and a refused client is told exactly when.
//! A window is named by an index (days since the epoch; `year * 12 + month − 1`) so that "is this still
//! the same window" is one integer comparison. The civil-date conversion is Howard Hinnant's
//! `civil_from_days` / `days_from_civil` (public domain), done here to keep the crate free of a date
//! library and the hot path free of allocation.

use crate::{DenialReason, LimitKind, LimitState, Millis};

/// Ms in one UTC day (no leap seconds in Unix time).
pub const DAY_MS: u64 = 86_400_000;

/// A calendar window kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// 00:00 UTC to the next 00:00 UTC.
    Day,
    /// The 1st 00:00 UTC to the next month's 1st.
    Month,
}

impl Period {
    /// Index of the window that contains `now`.
    pub fn index(self, now: Millis) -> u64 {
        match self {
            Period::Day => now / DAY_MS,
            Period::Month => {
                let (year, month, _) = civil_from_days(now / DAY_MS);
                year * 12 + (month - 1)
            }
        }
    }

    /// Start (ms since the epoch) of the window with the given index.
    pub fn start(self, index: u64) -> Millis {
        match self {
            Period::Day => index.saturating_mul(DAY_MS),
            Period::Month => days_from_civil(index / 12, index % 12 + 1, 1).saturating_mul(DAY_MS),
        }
    }

    /// Ms from `now` until the next window starts (≥ 1).
    pub fn until_next(self, now: Millis) -> u64 {
        self.start(self.index(now).saturating_add(1)).saturating_sub(now)
    }
}

/// (year, month 1..=12, day 1..=31) of a day number counted from 1970-01-01.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let z = days.saturating_add(719_468);
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], March-based
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Day number counted from 1970-01-01 of a civil date (month 1..=12, day 1..=31; dates before 1970 give 0,
/// absurdly far ones saturate).
pub fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let (month, day) = (month.clamp(1, 12), day.max(1));
    let year = if month <= 2 { year.saturating_sub(1) } else { year };
    let era = year / 400;
    let yoe = year - era * 400; // [0, 399]
    let mp = if month > 2 { month - 3 } else { month + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.saturating_mul(146_097).saturating_add(doe).saturating_sub(719_468)
}

/// A quota's or budget's refusal of an amount (see [`WindowCounter::refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaRefusal {
    /// `QuotaExhausted` or `HeldByReservations`.
    pub reason: DenialReason,
    /// Until the first window the amount fits in; `None` when held by reservations.
    pub retry_after_ms: Option<u64>,
    /// `limit − used − reserved` now, saturating.
    pub available: u64,
}

/// Reserve/settle counter of one quantity (tokens or pico-units) in one calendar window.
///
/// Admission: an amount is reserved only if `used + reserved + amount ≤ limit` (a zero amount always fits),
/// so no admission ever starts beyond the quota. Settlement replaces the reservation by the actual use *in
/// full*, even past the limit (a model server that ignored its completion cap generated it, and a
/// non-streamed answer cannot be cut): `used` may then exceed the limit, and every non-zero amount is
/// refused until the excess is repaid.
///
/// Repayment: when the window ends, what it used beyond its quota is carried into the next window as used,
/// and every window after it repays one quota's worth, so an overrun is never forgiven by a rollover; a
/// window that stayed within its quota carries nothing. The quota that an excess is measured against and
/// repaid by is the one in force at the window's latest reservation (`quota`). All sums saturate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounter {
    /// The window these numbers belong to.
    pub index: u64,
    /// Settled (real) consumption in the window, including what was carried into it.
    pub used: u64,
    /// Worst-case demand of requests admitted in the window and not yet settled.
    pub reserved: u64,
    /// The quota in force at the window's latest reservation; 0 when it had none (or a zero one), and then
    /// nothing carries.
    pub quota: u64,
}

impl WindowCounter {
    /// The counter as seen in window `index`: the stored one if it is that window (or a later one, when a
    /// caller's `now` lags another's), otherwise the counter of `index` with what the stored window carries
    /// into it and nothing reserved.
    pub fn at(&self, index: u64) -> WindowCounter {
        if index > self.index {
            let used = match self.quota {
                0 => 0,
                quota => self.used.saturating_sub(quota.saturating_mul(index - self.index)),
            };
            WindowCounter { index, used, reserved: 0, quota: self.quota }
        } else {
            *self
        }
    }

    /// Whether `amount` more fits under `limit` in window `index`. A zero amount always fits, so a
    /// spent budget still admits free requests.
    pub fn fits(&self, index: u64, amount: u64, limit: u64) -> bool {
        let current = self.at(index);
        amount == 0
            || current
                .used
                .checked_add(current.reserved)
                .and_then(|s| s.checked_add(amount))
                .is_some_and(|s| s <= limit)
    }

    /// Why `amount` does not fit under `limit` in the window of `now`, or `None` if it fits: spent, or held by
    /// running requests when it would fit if they all settled at nothing (`used + amount ≤ limit`); with
    /// what is left now and, for a spent quota, when a retry can succeed (the first window it fits in).
    pub fn refusal(&self, period: Period, now: Millis, amount: u64, limit: u64) -> Option<QuotaRefusal> {
        let index = period.index(now);
        if self.fits(index, amount, limit) {
            return None;
        }
        let available = self.remaining(index, limit);
        let settled = WindowCounter { reserved: 0, ..self.at(index) };
        if settled.fits(index, amount, limit) {
            return Some(QuotaRefusal { reason: DenialReason::HeldByReservations, retry_after_ms: None, available });
        }
        // The next window, or a later one while an overrun carried from this one leaves too little room (a
        // lagging `now` may see a later window than its own: counted from that one).
        let next = period.start(self.first_fitting(index, amount, limit));
        Some(QuotaRefusal {
            reason: DenialReason::QuotaExhausted,
            retry_after_ms: Some(next.saturating_sub(now)),
            available,
        })
    }

    /// Reserves `amount` in window `index` (rolling over first) under `quota` (the limit in force, if any)
    /// and returns the window it was reserved in.
    pub fn reserve(&mut self, index: u64, amount: u64, quota: Option<u64>) -> u64 {
        *self = self.at(index);
        self.reserved = self.reserved.saturating_add(amount);
        self.quota = quota.unwrap_or(0);
        self.index
    }

    /// Replaces a reservation of `reserved` made in window `index` by `actual` of use, in full. If the
    /// counter has moved on to a later window, the reserved window is gone: its reservation is charged to
    /// nothing, but what `actual` exceeds it by is charged to the current window (an overrun is never lost).
    pub fn settle(&mut self, index: u64, reserved: u64, actual: u64) {
        if self.index == index {
            self.reserved = self.reserved.saturating_sub(reserved);
            self.used = self.used.saturating_add(actual);
        } else if self.index > index {
            self.used = self.used.saturating_add(actual.saturating_sub(reserved));
        }
    }

    /// What is left under `limit` in window `index`.
    pub fn remaining(&self, index: u64, limit: u64) -> u64 {
        let current = self.at(index);
        limit.saturating_sub(current.used.saturating_add(current.reserved))
    }

    /// The first window after the one `index` sees in which `amount` (at most `limit`) fits under `limit`:
    /// the next one, unless the excess carried from this one still leaves too little room there. For a
    /// refusal's retry time; reservations are not looked at (the next window has none).
    pub fn first_fitting(&self, index: u64, amount: u64, limit: u64) -> u64 {
        let current = self.at(index);
        // Window `current.index + m` carries `used − m·quota`; `amount` fits once that is ≤ limit − amount.
        let excess = current.used.saturating_sub(limit.saturating_sub(amount));
        current.index.saturating_add(current.windows_to_repay(excess))
    }

    /// The first window after the one `index` sees into which nothing is carried: when the quota is whole
    /// again.
    pub fn first_clear(&self, index: u64) -> u64 {
        let current = self.at(index);
        current.index.saturating_add(current.windows_to_repay(current.used))
    }

    /// The state of a quota of `limit` kept by this counter, at `now`: `used` includes what an overrun
    /// carried into the current window (and exceeds the limit while overdrawn), and `reset_ms` is the time
    /// until the quota is whole again: the next window, or the first one an overrun no longer reaches.
    pub fn limit_state(&self, kind: LimitKind, limit: u64, period: Period, now: Millis) -> LimitState {
        let index = period.index(now);
        let current = self.at(index);
        LimitState {
            kind,
            limit,
            used: current.used,
            reserved: current.reserved,
            remaining: self.remaining(index, limit),
            reset_ms: Some(period.start(self.first_clear(index)).saturating_sub(now)),
        }
    }

    /// How many windows after this one it takes to repay `excess` (at least 1: the next).
    fn windows_to_repay(&self, excess: u64) -> u64 {
        match self.quota {
            0 => 1,
            quota => excess.div_ceil(quota).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ms since the epoch of a UTC date and time, via an independent route (day counting by hand).
    fn utc(year: u64, month: u64, day: u64, hour: u64, minute: u64) -> Millis {
        let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let mut days: u64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum();
        let lengths = [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        days += lengths[..(month - 1) as usize].iter().sum::<u64>() + day - 1;
        days * DAY_MS + hour * 3_600_000 + minute * 60_000
    }

    #[test]
    fn civil_conversion_round_trips_over_centuries() {
        for days in (0..200_000).step_by(7).chain([0, 1, 59, 60, 11_016, 21_183, 21_184]) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(utc(2028, 2, 29, 0, 0) / DAY_MS, days_from_civil(2028, 2, 29));
    }

    #[test]
    fn day_rolls_at_utc_midnight() {
        let before = utc(2027, 6, 15, 23, 59) + 59_999;
        let after = utc(2027, 6, 16, 0, 0);
        assert_eq!(before + 1, after);
        assert_eq!(Period::Day.index(before) + 1, Period::Day.index(after));
        assert_eq!(Period::Day.until_next(before), 1);
        assert_eq!(Period::Day.until_next(after), DAY_MS);
        assert_eq!(Period::Day.until_next(utc(2027, 6, 16, 18, 0)), 6 * 3_600_000);
    }

    #[test]
    fn leap_day_belongs_to_february_and_march_starts_after_it() {
        let leap_day = utc(2028, 2, 29, 12, 0);
        let march = utc(2028, 3, 1, 0, 0);
        assert_eq!(Period::Month.index(leap_day), 2028 * 12 + 1);
        assert_eq!(Period::Month.index(march), 2028 * 12 + 2);
        assert_eq!(Period::Month.index(march - 1), 2028 * 12 + 1);
        assert_eq!(Period::Month.until_next(leap_day), 12 * 3_600_000);
        assert_eq!(Period::Month.start(Period::Month.index(leap_day)), utc(2028, 2, 1, 0, 0));
        // A common year's February has 28 days.
        assert_eq!(Period::Month.until_next(utc(2027, 2, 1, 0, 0)), 28 * DAY_MS);
        assert_eq!(Period::Month.until_next(utc(2028, 2, 1, 0, 0)), 29 * DAY_MS);
        // 2100 is not a leap year, 2000 was.
        assert_eq!(Period::Month.until_next(utc(2100, 2, 1, 0, 0)), 28 * DAY_MS);
        assert_eq!(Period::Month.until_next(utc(2000, 2, 1, 0, 0)), 29 * DAY_MS);
    }

    #[test]
    fn december_rolls_into_january_of_the_next_year() {
        let last = utc(2027, 12, 31, 23, 59) + 59_999;
        let first = utc(2028, 1, 1, 0, 0);
        assert_eq!(Period::Month.index(last), 2027 * 12 + 11);
        assert_eq!(Period::Month.index(first), 2028 * 12);
        assert_eq!(Period::Month.until_next(last), 1);
        assert_eq!(Period::Month.start(2028 * 12), first);
        assert_eq!(Period::Month.until_next(first), 31 * DAY_MS);
    }

    #[test]
    fn counter_starts_at_zero_in_a_new_window() {
        let mut counter = WindowCounter::default();
        counter.reserve(10, 70, Some(100));
        counter.settle(10, 70, 60);
        assert_eq!(counter, WindowCounter { index: 10, used: 60, reserved: 0, quota: 100 });
        assert!(!counter.fits(10, 41, 100));
        assert!(counter.fits(10, 40, 100));
        assert!(counter.fits(11, 100, 100));
        assert_eq!(counter.remaining(11, 100), 100);
    }

    #[test]
    fn zero_amount_fits_even_a_spent_or_overdrawn_window() {
        let counter = WindowCounter { index: 1, used: 120, reserved: 0, quota: 100 };
        assert!(counter.fits(1, 0, 100));
        assert!(!counter.fits(1, 1, 100));
        assert!(WindowCounter::default().fits(0, 0, 0));
    }

    #[test]
    fn settling_into_a_rolled_window_charges_nothing() {
        let mut counter = WindowCounter::default();
        let window = counter.reserve(5, 50, Some(100));
        counter.reserve(6, 10, Some(100)); // the next day's first admission rolls the counter
        counter.settle(window, 50, 50);
        assert_eq!(counter, WindowCounter { index: 6, used: 0, reserved: 10, quota: 100 });
    }

    #[test]
    fn settle_charges_the_whole_actual_even_past_the_limit() {
        let mut counter = WindowCounter::default();
        counter.reserve(0, 30, Some(100));
        counter.settle(0, 30, 1_000);
        assert_eq!(counter, WindowCounter { index: 0, used: 1_000, reserved: 0, quota: 100 });
        assert!(!counter.fits(0, 1, 100));
        assert_eq!(counter.remaining(0, 100), 0);
    }

    #[test]
    fn an_overrun_settled_after_its_window_ended_charges_the_excess_to_the_current_one() {
        let mut counter = WindowCounter::default();
        let window = counter.reserve(5, 50, Some(100));
        counter.reserve(6, 10, Some(100));
        counter.settle(window, 50, 80);
        assert_eq!((counter.index, counter.used, counter.reserved), (6, 30, 10));
    }

    #[test]
    fn a_refusal_is_held_by_reservations_only_while_the_demand_fits_what_is_used() {
        let noon = utc(2027, 6, 15, 12, 0);
        let day = Period::Day.index(noon);
        let counter = WindowCounter { index: day, used: 1_000, reserved: 800, quota: 2_000 };
        assert_eq!(counter.refusal(Period::Day, noon, 200, 2_000), None, "used + reserved + demand = limit fits");
        let held = QuotaRefusal { reason: DenialReason::HeldByReservations, retry_after_ms: None, available: 200 };
        assert_eq!(counter.refusal(Period::Day, noon, 201, 2_000), Some(held));
        assert_eq!(counter.refusal(Period::Day, noon, 1_000, 2_000), Some(held), "used + demand = limit");
        let spent =
            QuotaRefusal { reason: DenialReason::QuotaExhausted, retry_after_ms: Some(12 * 3_600_000), available: 200 };
        assert_eq!(counter.refusal(Period::Day, noon, 1_001, 2_000), Some(spent));
        // Reserved beyond the limit (the limit was lowered): nothing is available, nothing negative either.
        let lowered = counter.refusal(Period::Day, noon, 10, 1_500);
        assert_eq!(lowered.map(|r| (r.reason, r.available)), Some((DenialReason::HeldByReservations, 0)));
    }

    #[test]
    fn reservations_of_an_ended_window_hold_nothing_in_the_next() {
        let evening = utc(2027, 6, 15, 23, 0);
        let day = Period::Day.index(evening);
        // Overdrawn by 500 yesterday, with 300 still reserved there: today starts with the 500 carried.
        let counter = WindowCounter { index: day - 1, used: 2_500, reserved: 300, quota: 2_000 };
        let refusal = counter.refusal(Period::Day, evening, 1_600, 2_000).unwrap();
        assert_eq!((refusal.reason, refusal.available), (DenialReason::QuotaExhausted, 1_500));
        assert_eq!(refusal.retry_after_ms, Some(3_600_000));
        assert_eq!(counter.refusal(Period::Day, evening, 1_500, 2_000), None);
    }

    #[test]
    fn an_excess_carries_into_the_next_windows_one_quota_each() {
        let mut counter = WindowCounter::default();
        counter.reserve(10, 100, Some(1_000));
        counter.settle(10, 100, 3_500);
        let used = |index| counter.at(index).used;
        assert_eq!([used(10), used(11), used(12), used(13), used(14), used(99)], [3_500, 2_500, 1_500, 500, 0, 0]);
        assert!(!counter.fits(12, 1, 1_000) && !counter.fits(13, 501, 1_000) && counter.fits(13, 500, 1_000));
        assert_eq!(counter.remaining(13, 1_000), 500);
        // 10 more fit on window 13 (carrying 500); the quota is whole again on window 14.
        assert_eq!(counter.first_fitting(10, 10, 1_000), 13);
        assert_eq!(counter.first_fitting(12, 10, 1_000), 13);
        assert_eq!(counter.first_fitting(13, 600, 1_000), 14);
        assert_eq!(counter.first_clear(10), 14);
        assert_eq!(counter.first_clear(14), 15);
        // Rolling over keeps what is carried, and the next reservation's quota.
        let mut rolled = counter;
        rolled.reserve(12, 10, Some(2_000));
        assert_eq!(rolled, WindowCounter { index: 12, used: 1_500, reserved: 10, quota: 2_000 });
        assert_eq!(rolled.at(13).used, 0);
    }

    #[test]
    fn a_window_within_its_quota_or_without_one_carries_nothing() {
        let mut within = WindowCounter::default();
        within.reserve(3, 900, Some(1_000));
        within.settle(3, 900, 1_000);
        assert_eq!((within.at(4).used, within.first_fitting(3, 1, 1_000), within.first_clear(3)), (0, 4, 4));
        let mut unlimited = WindowCounter::default();
        unlimited.reserve(3, 10, None);
        unlimited.settle(3, 10, 5_000);
        assert_eq!((unlimited.at(4).used, unlimited.first_clear(3)), (0, 4));
        let mut zero = WindowCounter::default();
        zero.reserve(3, 0, Some(0));
        zero.settle(3, 0, 5);
        assert_eq!((zero.at(4).used, zero.first_fitting(3, 0, 0)), (0, 4));
    }

    #[test]
    fn carrying_saturates_instead_of_overflowing() {
        let counter = WindowCounter { index: 1, used: u64::MAX, reserved: 0, quota: 1 };
        assert_eq!(counter.at(2).used, u64::MAX - 1);
        assert_eq!(counter.first_clear(1), u64::MAX);
        assert_eq!(counter.first_fitting(u64::MAX, 1, 1), u64::MAX);
        let big = WindowCounter { index: 1, used: u64::MAX, reserved: 0, quota: u64::MAX / 2 };
        assert_eq!(big.at(2).used, u64::MAX - u64::MAX / 2);
        assert_eq!(big.at(3).used, 1);
        assert_eq!(big.at(4).used, 0);
        assert_eq!(big.first_clear(1), 4);
    }

    #[test]
    fn lagging_now_uses_the_latest_window() {
        let mut counter = WindowCounter::default();
        counter.reserve(9, 5, Some(100));
        assert_eq!(counter.reserve(8, 5, Some(100)), 9);
        assert_eq!(counter.reserved, 10);
    }

    #[test]
    fn far_future_window_starts_saturate_instead_of_overflowing() {
        assert_eq!(Period::Month.start(u64::MAX), u64::MAX);
        assert_eq!(Period::Day.start(u64::MAX), u64::MAX);
        assert!(Period::Month.until_next(u64::MAX - 1) <= 1);
        assert_eq!(days_from_civil(1969, 12, 31), 0);
    }

    #[test]
    fn overflowing_sums_do_not_fit() {
        let counter = WindowCounter { index: 0, used: u64::MAX - 1, reserved: 1, quota: u64::MAX };
        assert!(!counter.fits(0, 1, u64::MAX));
    }
}
