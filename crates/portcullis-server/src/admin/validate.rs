//! Checks on admin input, each failure a 400 naming the parameter.
//!
//! Time arithmetic on client values is checked (an expiry or grace past what `time` holds is a
//! 400, not a panicked worker), and every time a client sends is taken to UTC here, once, so the
//! stores never meet an offset that pushes it out of range. Display strings (names, models,
//! metadata, filters) may not hold invisible or format characters
//! ([`portcullis_types::admin::is_hidden_char`]).

use portcullis_auth::{CidrList, Scopes};
use portcullis_config::{Live, parse_duration};
use portcullis_types::admin::{LimitOverrides, first_hidden_char};
use serde_json::Value;
use time::{OffsetDateTime, UtcOffset};

use crate::error::ApiError;

const MAX_NAME_LEN: usize = 128;
const MAX_LIST_LEN: usize = 256;
const MAX_METADATA_BYTES: usize = 8 * 1024;

/// `param` holds an invisible or format character: refused, naming the character.
fn hidden(param: &'static str, c: char) -> ApiError {
    ApiError::bad_request(
        format!("{param} must not contain invisible or format characters such as U+{:04X}", u32::from(c)),
        Some(param),
    )
}

fn visible(text: &str, param: &'static str) -> Result<(), ApiError> {
    first_hidden_char(text).map_or(Ok(()), |c| Err(hidden(param, c)))
}

/// A key's or token's name: 1-128 bytes of visible text, trimmed.
pub fn name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request("name must be 1-128 printable characters", Some("name")));
    }
    visible(name, "name")?;
    Ok(name.to_string())
}

/// Team names appear in URLs, logs and metrics: keep them plain. `param` is where the name came
/// from (`team` on a key or token, `name` when creating a team).
pub fn team_name(name: &str, param: &'static str) -> Result<String, ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(ApiError::bad_request(format!("{param} must be 1-64 of A-Z a-z 0-9 . _ -"), Some(param)))
    }
}

/// A configured tier; when no tiers are configured any name goes, but it is still shown
/// everywhere a key is, so it must be visible text too.
pub fn tier(live: &Live, tier: &str) -> Result<String, ApiError> {
    if tier.is_empty() || tier.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request("tier must be 1-128 printable characters", Some("tier")));
    }
    visible(tier, "tier")?;
    if live.tiers.is_empty() || live.tiers.contains_key(tier) {
        Ok(tier.to_string())
    } else {
        let known: Vec<&str> = live.tiers.keys().map(String::as_str).collect();
        Err(ApiError::bad_request(
            format!("unknown tier {tier:?}; configured tiers: {}", known.join(", ")),
            Some("tier"),
        ))
    }
}

pub fn models(models: Vec<String>) -> Result<Vec<String>, ApiError> {
    let models: Vec<String> = models.into_iter().map(|m| m.trim().to_string()).collect();
    if models.len() > MAX_LIST_LEN || models.iter().any(|m| m.is_empty() || m.len() > MAX_NAME_LEN) {
        return Err(ApiError::bad_request("models must be non-empty globs such as \"smollm*\"", Some("models")));
    }
    for model in &models {
        visible(model, "models")?;
    }
    Ok(models)
}

/// At least one scope: a key without any could do nothing, and an empty list given in place of
/// "all" (`--scopes ''`) must not pass silently either way.
pub fn scopes(scopes: &[String]) -> Result<Vec<String>, ApiError> {
    if scopes.is_empty() {
        return Err(ApiError::bad_request(
            "scopes must name at least one of chat, completions, embeddings, models, responses, messages, rerank, tokenize (leave it out for all)",
            Some("scopes"),
        ));
    }
    Scopes::parse(scopes).map(Scopes::names).map_err(|error| ApiError::bad_request(error.to_string(), Some("scopes")))
}

pub fn cidrs(cidrs: &[String]) -> Result<Vec<String>, ApiError> {
    CidrList::parse(cidrs)
        .map(|list| list.to_strings())
        .map_err(|error| ApiError::bad_request(error, Some("allowed_cidrs")))
}

/// The last second the `time` crate, and so every store, can hold.
const LAST_TIME: &str = "9999-12-31T23:59:59Z";

/// `now + duration`, in whole seconds rounded up, or a 400 naming `param` when that is past
/// [`LAST_TIME`].
fn later(now: OffsetDateTime, duration: std::time::Duration, param: &'static str) -> Result<OffsetDateTime, ApiError> {
    time::Duration::try_from(duration)
        .ok()
        .and_then(|duration| now.checked_add(duration))
        .and_then(ceil_to_second)
        .ok_or_else(|| ApiError::bad_request(format!("{param} reaches past {LAST_TIME}"), Some(param)))
}

/// `expires_in` (a duration from now) or `expires_at` (a time), not both; never in the past.
pub fn expiry(
    expires_in: Option<&str>,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, ApiError> {
    let at = match (expires_in, expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give expires_in or expires_at, not both", Some("expires_in")));
        }
        (Some(text), None) => {
            let lifetime =
                parse_duration(text).map_err(|error| ApiError::bad_request(error.to_string(), Some("expires_in")))?;
            Some(later(now, lifetime, "expires_in")?)
        }
        (None, Some(at)) => Some(utc(at).ok_or_else(|| {
            ApiError::bad_request(format!("expires_at must be a time no later than {LAST_TIME}"), Some("expires_at"))
        })?),
        (None, None) => None,
    };
    if at.is_some_and(|at| at <= now) {
        return Err(ApiError::bad_request("expiry must be in the future", Some("expires_at")));
    }
    Ok(at)
}

/// Stores keep whole seconds: round ends up, so a lifetime or grace is never cut short. `None`
/// when rounding up passes the last representable second.
pub fn ceil_to_second(at: OffsetDateTime) -> Option<OffsetDateTime> {
    if at.nanosecond() == 0 { Some(at) } else { at.replace_nanosecond(0).ok()?.checked_add(time::Duration::SECOND) }
}

/// When a rotated-out secret stops working: at once for a zero grace, otherwise never earlier
/// than asked; a 400 naming `grace` when that is past the last representable second.
pub fn grace_end(now: OffsetDateTime, grace: std::time::Duration) -> Result<OffsetDateTime, ApiError> {
    if grace.is_zero() { Ok(now) } else { later(now, grace, "grace") }
}

pub fn grace(text: Option<&str>) -> Result<std::time::Duration, ApiError> {
    parse_duration(text.unwrap_or(DEFAULT_GRACE))
        .map_err(|error| ApiError::bad_request(error.to_string(), Some("grace")))
}

/// `at` in UTC, or `None` when its offset takes it out of the representable range
/// (`9999-12-31T23:00:00-23:00` is in year 10000 in UTC).
fn utc(at: OffsetDateTime) -> Option<OffsetDateTime> {
    at.checked_to_offset(UtcOffset::UTC)
}

/// How long a rotated-out secret keeps working when the caller does not say.
pub const DEFAULT_GRACE: &str = "1h";

/// A `since` query parameter: a duration back from `now` (`24h`, `7d`) or an RFC 3339 time.
pub fn since(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
    let text = text.trim();
    let invalid = || {
        ApiError::bad_request(
            "since must be a duration such as 24h or an RFC 3339 time, between years -9999 and 9999",
            Some("since"),
        )
    };
    if let Ok(back) = parse_duration(text) {
        let back = time::Duration::try_from(back).map_err(|_| invalid())?;
        return now.checked_sub(back).ok_or_else(invalid);
    }
    parse_time(text).ok_or_else(invalid)
}

/// RFC 3339, taken to UTC; `None` when it does not parse or lies outside what UTC can hold.
/// A `+` in an offset that reached us unencoded was decoded as a space: put it back.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&text.trim().replace(' ', "+"), &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(utc)
}

/// Longest filter value (key id, team, model, request id) a query may carry.
pub const MAX_FILTER_LEN: usize = 128;

/// A filter value: short and visible.
pub fn filter(value: &str, param: &'static str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > MAX_FILTER_LEN {
        return Err(ApiError::bad_request(format!("{param} must be 1-128 printable characters"), Some(param)));
    }
    visible(value, param)?;
    Ok(value.to_string())
}

/// A JSON object of at most 8 KiB. The CLI and the API show it, so no key or string in it, at
/// any depth, may hold an invisible or format character.
pub fn metadata(metadata: Option<Value>) -> Result<Value, ApiError> {
    let metadata = metadata.unwrap_or_else(|| Value::Object(Default::default()));
    if !metadata.is_object() || metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::bad_request("metadata must be a JSON object of at most 8 KiB", Some("metadata")));
    }
    match hidden_in_json(&metadata) {
        Some(c) => Err(hidden("metadata", c)),
        None => Ok(metadata),
    }
}

/// The first hidden character in any key or string of `value`. serde_json bounds nesting at
/// 128 levels when parsing, so the recursion is bounded too.
fn hidden_in_json(value: &Value) -> Option<char> {
    match value {
        Value::String(text) => first_hidden_char(text),
        Value::Array(items) => items.iter().find_map(hidden_in_json),
        Value::Object(map) => {
            map.iter().find_map(|(key, value)| first_hidden_char(key).or_else(|| hidden_in_json(value)))
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// Limit overrides within the maxima every limiter and store counts exactly (refused, never
/// clamped): see [`LimitOverrides::check_range`].
pub fn limits(limits: Option<LimitOverrides>) -> Result<LimitOverrides, ApiError> {
    let limits = limits.unwrap_or_default();
    limits.check_range().map_err(|error| ApiError::bad_request(format!("limits.{error}"), Some("limits")))?;
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::admin::test_support::param_of;

    #[test]
    fn expiry_rules() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(expiry(Some("30d"), None, now).unwrap(), ceil_to_second(now + Duration::days(30)));
        let end = expiry(Some("1s"), None, now).unwrap().unwrap();
        assert!(end >= now + Duration::SECOND && end.nanosecond() == 0, "never shorter than asked");
        assert_eq!(expiry(None, None, now).unwrap(), None);
        assert!(expiry(Some("1h"), Some(now), now).is_err());
        assert!(expiry(None, Some(now - Duration::seconds(1)), now).is_err());
        assert!(expiry(Some("soon"), None, now).is_err());
    }

    #[test]
    fn team_names_are_plain() {
        assert!(team_name("acme-prod_1.eu", "team").is_ok());
        assert!(team_name("", "team").is_err());
        assert!(team_name("a/b", "team").is_err());
        assert!(team_name("üñí", "team").is_err());
        assert_eq!(param_of(team_name("a\u{202E}b", "name").unwrap_err()), Some("name"));
    }

    /// Item 8 of issue 12: each of these used to overflow `time` and panic the worker.
    #[test]
    fn times_past_the_representable_range_are_400s_naming_the_parameter() {
        let now = time::macros::datetime!(2025-06-10 12:30:00.5 UTC);
        for huge in ["3000000d", "18446744073709551615ms", "213503982334d"] {
            assert_eq!(param_of(expiry(Some(huge), None, now).unwrap_err()), Some("expires_in"), "{huge}");
            let grace = grace(Some(huge)).unwrap();
            assert_eq!(param_of(grace_end(now, grace).unwrap_err()), Some("grace"), "{huge}");
        }
        // Back from now the range reaches year -9999: 3 000 000 days back is fine, more is not.
        assert!(since("3000000d", now).is_ok());
        for huge in ["18446744073709551615ms", "213503982334d"] {
            assert_eq!(param_of(since(huge, now).unwrap_err()), Some("since"), "{huge}");
        }
        // A lifetime up to the last second of year 9999 is fine, one that rounds past it is not.
        let last = time::macros::datetime!(9999-12-31 23:59:59 UTC);
        let whole = now.replace_nanosecond(0).unwrap();
        let to_last = std::time::Duration::try_from(last - whole).unwrap();
        assert_eq!(grace_end(whole, to_last).unwrap(), last);
        assert_eq!(param_of(grace_end(now, to_last).unwrap_err()), Some("grace"));
        assert_eq!(ceil_to_second(time::macros::datetime!(9999-12-31 23:59:59.5 UTC)), None);
        assert_eq!(grace_end(now, std::time::Duration::ZERO).unwrap(), now);
    }

    #[test]
    fn client_times_are_taken_to_utc_or_refused() {
        let now = OffsetDateTime::now_utc();
        let beyond =
            OffsetDateTime::parse("9999-12-31T23:00:00-23:00", &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(param_of(expiry(None, Some(beyond), now).unwrap_err()), Some("expires_at"));
        assert_eq!(parse_time("9999-12-31T23:00:00-23:00"), None);
        assert_eq!(parse_time("0000-01-01T00:00:00+23:59").map(|t| t.offset()), Some(UtcOffset::UTC));
        let east = parse_time("2025-06-02T00:00:00+02:00").unwrap();
        assert_eq!((east, east.offset()), (time::macros::datetime!(2025-06-01 22:00 UTC), UtcOffset::UTC));
        let far =
            OffsetDateTime::parse("9999-12-31T23:59:59+00:00", &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(expiry(None, Some(far), now).unwrap(), Some(far));
        assert_eq!(param_of(since("9999-12-31T23:00:00-23:00", now).unwrap_err()), Some("since"));
    }

    #[test]
    fn display_strings_refuse_invisible_and_format_characters() {
        let config = portcullis_config::Config::parse("", |_| None).unwrap().split().1;
        for c in ['\u{202E}', '\u{2066}', '\u{200B}', '\u{FEFF}', '\u{00AD}', '\u{E0041}', '\u{2028}', '\u{0007}'] {
            let text = format!("a{c}b");
            assert_eq!(param_of(name(&text).unwrap_err()), Some("name"));
            assert_eq!(param_of(tier(&config, &text).unwrap_err()), Some("tier"));
            assert_eq!(param_of(models(vec![text.clone()]).unwrap_err()), Some("models"));
            assert_eq!(param_of(filter(&text, "model").unwrap_err()), Some("model"));
            for value in [
                serde_json::json!({"owner": text}),
                serde_json::json!({text.clone(): 1}),
                serde_json::json!({"a": [1, {"b": [text]}]}),
            ] {
                assert_eq!(param_of(metadata(Some(value)).unwrap_err()), Some("metadata"));
            }
        }
        assert_eq!(name("  café ☕ 東京 ").unwrap(), "café ☕ 東京");
        assert_eq!(tier(&config, "gold").unwrap(), "gold");
        assert!(metadata(Some(serde_json::json!({"owner": "Zoë", "n": [1, null, true]}))).is_ok());
    }

    #[test]
    fn limits_beyond_their_maximum_are_400s_stating_it() {
        let over = LimitOverrides { budget_per_day: Some(18.5e6), ..Default::default() };
        let error = limits(Some(over)).unwrap_err();
        assert!(
            matches!(&error, ApiError::BadRequest { message, .. } if message.contains("limits.budget_per_day") && message.contains("9223372")),
            "{error:?}"
        );
        assert_eq!(param_of(error), Some("limits"));
        let over = LimitOverrides { requests_per_minute: Some(u64::MAX), ..Default::default() };
        assert_eq!(param_of(limits(Some(over)).unwrap_err()), Some("limits"));
        assert_eq!(limits(None).unwrap(), LimitOverrides::default());
    }

    /// The API's maxima are what the shared limiter keeps exactly.
    #[cfg(feature = "redis")]
    #[test]
    fn rate_maxima_match_the_redis_limiter() {
        use portcullis_types::admin::{MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE};
        assert_eq!(MAX_REQUESTS_PER_MINUTE, portcullis_limits_redis::MAX_REQUEST_RATE);
        assert_eq!(MAX_TOKENS_PER_MINUTE, portcullis_limits_redis::MAX_TOKEN_RATE);
    }

    #[test]
    fn lists_are_checked() {
        assert_eq!(scopes(&["models".into(), "chat".into()]).unwrap(), vec!["chat", "models"]);
        assert!(scopes(&["root".into()]).is_err());
        assert_eq!(cidrs(&["10.1.2.3/8".into()]).unwrap(), vec!["10.0.0.0/8"]);
        assert!(models(vec![" ".into()]).is_err());
        assert!(metadata(Some(Value::from(3))).is_err());
    }
}
