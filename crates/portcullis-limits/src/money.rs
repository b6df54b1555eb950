//! Money as exact integers.
//!
//! Budgets are summed over millions of requests; floating point would drift and make "never overspend"
//! unprovable. Everything is kept in pico-units (10^-12 of the configured currency) in a `u64`, which holds
//! up to about 18 million units — far beyond any per-day or per-month budget — and saturates rather than wraps.

/// Pico-units per currency unit.
pub const PICO_PER_UNIT: u64 = 1_000_000_000_000;

/// Money in pico-units of the configured currency (1 unit = 10^12), so sums are exact integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub u64);

impl Money {
    /// No money.
    pub const ZERO: Money = Money(0);

    /// Converts a configured amount in currency units, rounding to the nearest pico-unit.
    ///
    /// Negative amounts and NaN become zero (config validation rejects them; this keeps the limiter total);
    /// amounts too large for a `u64` saturate.
    pub fn from_units(units: f64) -> Money {
        Money(scale_round(units, PICO_PER_UNIT as f64))
    }

    /// The amount in currency units, for display and JSON; lossy above 2^53 pico-units (≈ 9 007 units).
    pub fn to_units(self) -> f64 {
        self.0 as f64 / PICO_PER_UNIT as f64
    }

    /// Sum that stops at `u64::MAX` instead of wrapping: a saturated sum is always "over budget".
    #[must_use]
    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// Difference that stops at zero instead of wrapping.
    #[must_use]
    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }
}

/// `value * factor` rounded to the nearest integer; negative and NaN give 0, too large gives `u64::MAX`.
fn scale_round(value: f64, factor: f64) -> u64 {
    let scaled = (value * factor).round();
    if scaled.is_nan() || scaled <= 0.0 {
        0
    } else if scaled >= u64::MAX as f64 {
        u64::MAX
    } else {
        // In range and integral after the checks above, so the cast is exact.
        scaled as u64
    }
}

/// Per-token prices of one model, fixed at construction so that `cost` is integer-only and exact.
///
/// The config gives prices per million tokens in currency units; one token then costs
/// `price_per_million * 10^6` pico-units, rounded to the nearest pico-unit once, here. A price below
/// 0.0000005 units per million therefore rounds to zero — far below any real price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Price {
    /// Pico-units per prompt (input) token.
    pub input_per_token: Money,
    /// Pico-units per completion (output) token.
    pub output_per_token: Money,
}

impl Price {
    /// Builds a price from the config's `input_per_million` / `output_per_million` (currency units).
    pub fn per_million(input_per_million: f64, output_per_million: f64) -> Price {
        let pico_per_token_per_unit_per_million = (PICO_PER_UNIT / 1_000_000) as f64;
        Price {
            input_per_token: Money(scale_round(input_per_million, pico_per_token_per_unit_per_million)),
            output_per_token: Money(scale_round(output_per_million, pico_per_token_per_unit_per_million)),
        }
    }

    /// A price of zero (free model).
    pub const FREE: Price = Price { input_per_token: Money::ZERO, output_per_token: Money::ZERO };

    /// Exact cost of a request; saturates at `u64::MAX` pico-units, which every budget refuses.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Money {
        let input = self.input_per_token.0.saturating_mul(prompt_tokens);
        let output = self.output_per_token.0.saturating_mul(completion_tokens);
        Money(input.saturating_add(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_units_rounds_to_nearest_pico_unit() {
        assert_eq!(Money::from_units(1.0), Money(PICO_PER_UNIT));
        assert_eq!(Money::from_units(0.05), Money(50_000_000_000));
        assert_eq!(Money::from_units(100.0), Money(100 * PICO_PER_UNIT));
        assert_eq!(Money::from_units(0.4e-12), Money(0));
        assert_eq!(Money::from_units(0.6e-12), Money(1));
    }

    #[test]
    fn from_units_maps_negative_and_nan_to_zero_and_saturates_huge() {
        assert_eq!(Money::from_units(-1.0), Money(0));
        assert_eq!(Money::from_units(f64::NAN), Money(0));
        assert_eq!(Money::from_units(f64::NEG_INFINITY), Money(0));
        assert_eq!(Money::from_units(f64::INFINITY), Money(u64::MAX));
        assert_eq!(Money::from_units(1e30), Money(u64::MAX));
    }

    #[test]
    fn to_units_inverts_from_units_for_ordinary_amounts() {
        for units in [0.0, 0.05, 1.0, 12.34, 100.0] {
            assert!((Money::from_units(units).to_units() - units).abs() < 1e-12);
        }
    }

    #[test]
    fn price_per_token_is_rounded_once_and_cost_is_exact() {
        let price = Price::per_million(0.05, 0.10);
        assert_eq!(price.input_per_token, Money(50_000));
        assert_eq!(price.output_per_token, Money(100_000));
        // One million tokens each way cost exactly 0.15 units, with no float on the way.
        assert_eq!(price.cost(1_000_000, 1_000_000), Money(150_000_000_000));
        assert_eq!(price.cost(0, 0), Money::ZERO);
    }

    #[test]
    fn cost_saturates_instead_of_wrapping() {
        let price = Price::per_million(1_000_000.0, 0.0);
        assert_eq!(price.cost(u64::MAX, 0), Money(u64::MAX));
        assert_eq!(Money(u64::MAX).saturating_add(Money(1)), Money(u64::MAX));
        assert_eq!(Money(1).saturating_sub(Money(2)), Money(0));
    }

    #[test]
    fn free_price_costs_nothing() {
        assert_eq!(Price::FREE.cost(123, 456), Money::ZERO);
        assert_eq!(Price::per_million(0.0, 0.0), Price::FREE);
    }
}
