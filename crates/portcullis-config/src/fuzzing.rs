//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a public API).
//!
//! Each function takes the fuzzer's bytes, runs a parser on them and asserts what must hold for
//! every input: a failed assertion is how the fuzzer learns of a logic bug, not only a panic.
#![doc(hidden)]
#![allow(clippy::panic, reason = "a broken invariant panics so that the fuzzer records the input")]

use std::collections::HashSet;

use crate::{Config, ConfigError, LimiterBackend, parse_duration};

/// `${VAR}` lookups during a fuzzed parse: two variables are set, any other is missing.
fn lookup(name: &str) -> Option<String> {
    match name {
        "KEY" => Some("sk-upstream".into()),
        "URL" => Some("http://127.0.0.1:8000/v1".into()),
        _ => None,
    }
}

/// [`Config::parse`] of the bytes as TOML text. A configuration it accepts satisfies the
/// cross-field rules on which the rest of the gateway relies (re-checked here independently of
/// `validate`), and parsing is deterministic. Every string is also tried as a duration.
pub fn config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    for piece in text.split(['"', '\'', '\n']) {
        duration(piece);
    }
    let parsed = Config::parse(text, lookup);
    let again = Config::parse(text, lookup);
    assert_eq!(format!("{parsed:?}"), format!("{again:?}"), "parsing is not deterministic");
    match parsed {
        Ok(config) => check(&config),
        Err(ConfigError::Parse { path, .. } | ConfigError::Invalid { path, .. }) => {
            assert!(!path.is_empty(), "an error that names no field");
        }
        Err(ConfigError::Env { .. }) => {}
        Err(error @ ConfigError::Read { .. }) => panic!("parsing text read a file: {error}"),
    }
}

fn check(config: &Config) {
    assert!(config.server.max_body_bytes > 0);
    assert!(config.server.max_header_bytes >= 8192);
    assert!(config.limits.replicas >= 1);
    assert!(config.limits.backend != LimiterBackend::Redis || config.limits.redis_url.is_some());
    assert!(!config.limits.redis_prefix.is_empty() && !config.limits.redis_prefix.contains(['{', '}']));
    assert!(config.tiers.is_empty() || config.tiers.contains_key(&config.limits.default_tier));
    assert!(config.security.anomaly_factor.is_finite() && config.security.anomaly_factor >= 1.0);
    for pattern in &config.audit.redact {
        assert!(regex::Regex::new(pattern).is_ok_and(|regex| !regex.is_match("")), "redact rule {pattern:?}");
    }
    let mut names = HashSet::new();
    for model in &config.models {
        assert!(names.insert(model.name.as_str()), "model {:?} twice", model.name);
        assert!(!model.name.trim().is_empty());
        assert!(!model.endpoints.is_empty());
        for url in &model.endpoints {
            assert!(matches!(url.scheme(), "http" | "https"), "{url}");
            assert!(url.host_str().is_some_and(|host| !host.is_empty()), "{url}: no host");
            assert!(url.query().is_none() && url.fragment().is_none(), "{url}");
            assert!(url.username().is_empty() && url.password().is_none(), "{url}: credentials in the URL");
        }
        assert!(model.health_check.path.starts_with('/'));
        assert!(!model.queue_timeout.0.is_zero());
        assert!(model.retries <= 10);
        for fallback in &model.fallbacks {
            assert!(fallback != &model.name && config.model(fallback).is_some(), "fallback {fallback:?}");
        }
    }
}

/// [`parse_duration`]: surrounding whitespace does not matter, and an accepted duration is a
/// whole number of milliseconds that reads back from its millisecond form.
fn duration(text: &str) {
    let Ok(parsed) = parse_duration(text) else { return };
    assert_eq!(parse_duration(text.trim()), Ok(parsed));
    let millis = parsed.as_millis();
    assert_eq!(parse_duration(&format!("{millis}ms")), Ok(parsed), "{text:?}");
}
