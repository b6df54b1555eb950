//! The admin CLI (`portcullis keys|teams|tokens|usage|audit|auth ...`): a plain HTTP client of the admin API.
//!
//! [`client`] talks to the server, [`output`] is the only place anything is written to stdout,
//! and each command group lives in its own module. The argument helpers below are shared by all
//! of them so that `--models`, `--metadata` and duration flags behave the same everywhere.

pub mod audit;
pub mod auth;
mod client;
pub mod config;
pub mod keys;
mod output;
pub mod teams;
pub mod tokens;
pub mod usage;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Flattens list flags that may be repeated and may each hold comma-separated values:
/// `--models 'smollm*, gemma*' --models qwen*` gives `["smollm*", "gemma*", "qwen*"]`.
///
/// `None` (flag absent) stays `None` so an update leaves the field alone; an explicitly empty value
/// (`--models ''`) gives `Some([])`, which clears the list. Entries are trimmed, empty entries are
/// dropped and duplicates are removed, keeping the first occurrence.
pub(crate) fn split_list(values: Option<Vec<String>>) -> Option<Vec<String>> {
    let values = values?;
    let mut items: Vec<String> = Vec::new();
    for item in values.iter().flat_map(|value| value.split(',')).map(str::trim) {
        if !item.is_empty() && !items.iter().any(|seen| seen == item) {
            items.push(item.to_string());
        }
    }
    Some(items)
}

/// Clap value parser for `--since`, checked with the server's own rules so a typo fails before
/// any request: a duration back from now (`24h`, `7d`) or an RFC 3339 time.
pub(crate) fn parse_since(text: &str) -> Result<String, String> {
    let text = text.trim();
    if portcullis_config::parse_duration(text).is_ok() || OffsetDateTime::parse(text, &Rfc3339).is_ok() {
        Ok(text.to_string())
    } else {
        Err(format!("{text:?} is neither a duration such as 24h nor an RFC 3339 time"))
    }
}

/// Clap value parser for `--until`: an RFC 3339 time.
pub(crate) fn parse_until(text: &str) -> Result<String, String> {
    let text = text.trim();
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|_| text.to_string())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time such as 2025-06-01T00:00:00Z"))
}

/// Clap value parser for `--metadata`: a JSON object.
pub(crate) fn parse_metadata(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("metadata must be a JSON object, e.g. '{\"owner\":\"ci\"}'".to_string()),
        Err(error) => Err(format!("metadata is not valid JSON: {error}")),
    }
}

/// Clap value parser for durations (`--expires-in 30d`, `--grace 1h`). The server gets the text
/// unchanged; checking it here with the configuration's own parser just fails earlier.
pub(crate) fn parse_duration_arg(text: &str) -> Result<String, String> {
    portcullis_config::parse_duration(text).map(|_| text.trim().to_string()).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(values: &[&str]) -> Option<Vec<String>> {
        Some(values.iter().map(|value| value.to_string()).collect())
    }

    #[test]
    fn lists_split_on_commas_and_repeats() {
        assert_eq!(split_list(owned(&["smollm*,gemma*"])), owned(&["smollm*", "gemma*"]));
        assert_eq!(split_list(owned(&["a", "b"])), owned(&["a", "b"]));
        assert_eq!(split_list(owned(&[" a , b", "c,", ",d"])), owned(&["a", "b", "c", "d"]));
    }

    #[test]
    fn lists_drop_duplicates_keeping_order() {
        assert_eq!(split_list(owned(&["b,a", "b", "c,a"])), owned(&["b", "a", "c"]));
    }

    #[test]
    fn absent_list_stays_absent_and_empty_list_clears() {
        assert_eq!(split_list(None), None);
        assert_eq!(split_list(owned(&[""])), Some(Vec::new()));
        assert_eq!(split_list(owned(&[" , "])), Some(Vec::new()));
    }

    #[test]
    fn metadata_must_be_a_json_object() {
        assert_eq!(parse_metadata(r#"{"owner":"ci"}"#), Ok(serde_json::json!({"owner": "ci"})));
        assert!(parse_metadata("[1]").is_err());
        assert!(parse_metadata("owner=ci").is_err());
    }

    #[test]
    fn durations_are_checked_but_passed_through() {
        assert_eq!(parse_duration_arg("30d"), Ok("30d".to_string()));
        assert_eq!(parse_duration_arg(" 1h "), Ok("1h".to_string()));
        assert!(parse_duration_arg("30 days").is_err());
        assert!(parse_duration_arg("-1h").is_err());
    }
}
