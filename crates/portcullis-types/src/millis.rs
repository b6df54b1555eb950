//! Audit times as RFC 3339 in UTC with exactly three fractional digits (`…T12:00:00.120Z`), so
//! that they line up in columns and sort as strings: `time`'s own RFC 3339 drops trailing zeros
//! (`.12Z`, and no fraction at all on a whole second).

use serde::{Deserialize, Deserializer, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// `at` in UTC to the millisecond, always with three fractional digits.
pub fn format(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    utc.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"))
        .unwrap_or_default()
}

pub fn serialize<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*at))
}

/// Any RFC 3339 time is read back.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OffsetDateTime, D::Error> {
    let text = String::deserialize(deserializer)?;
    OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn three_digits_always_so_that_times_line_up_and_sort_as_text() {
        assert_eq!(format(datetime!(2026-12-07 06:00:00.12 UTC)), "2026-12-07T06:00:00.120Z");
        assert_eq!(format(datetime!(2026-12-07 06:00:00 UTC)), "2026-12-07T06:00:00.000Z");
        assert_eq!(format(datetime!(2026-12-07 07:00:00.5 +01:00)), "2026-12-07T06:00:00.500Z");
        let mut texts = [datetime!(2026-12-07 06:00:00.1 UTC), datetime!(2026-12-07 06:00:00.05 UTC)].map(format);
        texts.sort();
        assert_eq!(texts, ["2026-12-07T06:00:00.050Z", "2026-12-07T06:00:00.100Z"]);
    }
}
