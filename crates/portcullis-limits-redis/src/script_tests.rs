//! The script's u64 limb arithmetic on its own, against the machine's Redis (money above 2^53 must stay
//! exact in Lua's doubles).

use std::time::Duration;

use crate::backend::Backend;
use crate::keys::KeySpace;

async fn backend() -> Option<Backend> {
    let url = portcullis_testkit::redis_or_skip()?;
    let client = redis::Client::open(url).unwrap();
    let keys = KeySpace::new(&portcullis_testkit::unique_name("limbs")).unwrap();
    let second = Duration::from_secs(1);
    Some(Backend::new(client, keys, second, 3 * second, second))
}

#[tokio::test]
async fn limb_sums_are_exact_far_above_two_to_the_53() {
    let Some(backend) = backend().await else { return };
    let big = (1u64 << 53) + 1; // not a double
    let cases = [
        (0, 0),
        (1, 999_999_999),
        (999_999_999, 1),
        (big, 1),
        (big, big),
        (123_456_789_012_345_678, 876_543_210_987_654_321),
        (u64::MAX - 1, 1),
        (u64::MAX, 1),
        (u64::MAX, u64::MAX),
    ];
    for (a, b) in cases {
        assert_eq!(backend.limbs("add", &[a, b]).await.unwrap(), a.saturating_add(b).to_string(), "{a} + {b}");
        assert_eq!(backend.limbs("sub", &[a, b]).await.unwrap(), a.saturating_sub(b).to_string(), "{a} - {b}");
        assert_eq!(backend.limbs("sub", &[b, a]).await.unwrap(), b.saturating_sub(a).to_string(), "{b} - {a}");
        let order = match a.cmp(&b) {
            std::cmp::Ordering::Less => "-1",
            std::cmp::Ordering::Equal => "0",
            std::cmp::Ordering::Greater => "1",
        };
        assert_eq!(backend.limbs("cmp", &[a, b]).await.unwrap(), order, "{a} <=> {b}");
    }
}

#[tokio::test]
async fn fits_never_wraps_past_u64_max() {
    let Some(backend) = backend().await else { return };
    // used + amount <= limit, with the sum computed exactly (as `checked_add` in the in-memory limiter).
    for (used, amount, limit, fits) in [
        (u64::MAX - 1, 1, u64::MAX, true),
        (u64::MAX, 1, u64::MAX, false),
        (u64::MAX, 0, 0, true), // a zero amount always fits
        ((1 << 53) + 1, 1, (1 << 53) + 2, true),
        ((1 << 53) + 1, 2, (1 << 53) + 2, false),
    ] {
        let answer = backend.limbs("fits", &[used, amount, limit]).await.unwrap();
        assert_eq!(answer, if fits { "1" } else { "0" }, "{used} + {amount} <= {limit}");
    }
}

#[tokio::test]
async fn carried_excess_is_exact_for_any_quota_and_window_count() {
    let Some(backend) = backend().await else { return };
    let big = (1u64 << 53) + 1;
    // used - k * quota, stopping at zero (window.rs `at`); a zero quota carries nothing.
    for (used, quota, k) in [
        (3_500, 1_000, 1),
        (3_500, 1_000, 3),
        (3_500, 1_000, 4),
        (3_500, 0, 1),
        (0, 1_000, 1),
        (u64::MAX, 1, 1),
        (u64::MAX, 1, 99_999_999),
        (u64::MAX, 999_999_999, 12_345),
        (u64::MAX, 1_000_000_000, 18_446_744),
        (u64::MAX, 1_000_000_000, 18_446_743),
        (u64::MAX, u64::MAX / 2, 1),
        (u64::MAX, u64::MAX / 2, 2),
        (u64::MAX, u64::MAX / 2, 3),
        (u64::MAX, 123_456_789_987, 149_425_839),
        (big * 2_000, big, 1_999),
        (big * 2_000, big + 1, 1_999),
        (987_654_321_987_654_321, 7_654_321_987, 99_999),
        (987_654_321_987_654_321, 7_654_321_987, 129_032_258),
    ] {
        let expected = if quota == 0 { 0 } else { used.saturating_sub(quota.saturating_mul(k)) };
        assert_eq!(
            backend.limbs("carry", &[used, quota, k]).await.unwrap(),
            expected.to_string(),
            "{used} - {k} * {quota}"
        );
    }
}
