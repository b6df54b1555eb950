//! Time as the limiter counts it.

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch (0 for a time before it).
pub fn unix_millis(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}
