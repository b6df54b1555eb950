//! Rules that span fields, checked after parsing. Each failure names the offending path.

use std::collections::HashSet;

use portcullis_types::admin::LimitOverrides;

use crate::{Config, ConfigError, LimiterBackend, ModelConfig, TierConfig};

/// The most header fields `server.max_headers` may allow (the head parser's stack array).
pub const MAX_HEADERS: usize = 256;

/// Model servers parse request bodies recursively: deeper nesting than this is a stack bomb for
/// them whatever the setting says.
const MAX_JSON_DEPTH: usize = 512;

pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    if config.server.max_body_bytes == 0 {
        return invalid("server.max_body_bytes", "must be greater than 0");
    }
    // hyper cannot read a request head into a buffer smaller than 8 KiB.
    if config.server.max_header_bytes < 8192 {
        return invalid("server.max_header_bytes", "must be at least 8192");
    }
    if !(1..=MAX_HEADERS).contains(&config.server.max_headers) {
        return invalid("server.max_headers", &format!("must be 1-{MAX_HEADERS}"));
    }
    let server = &config.server;
    for (path, duration) in [
        ("server.header_read_timeout", server.header_read_timeout),
        ("server.idle_timeout", server.idle_timeout),
        ("server.body_read_timeout", server.body_read_timeout),
        ("server.http2_keepalive_interval", server.http2_keepalive_interval),
    ] {
        if duration.0.is_zero() {
            return invalid(path, "must be greater than 0");
        }
    }
    if server.max_connections == 0 {
        return invalid("server.max_connections", "must be greater than 0");
    }
    if config.admin.max_connections == 0 {
        return invalid("admin.max_connections", "must be greater than 0");
    }
    if server.http2_max_concurrent_streams == 0 {
        return invalid("server.http2_max_concurrent_streams", "must be greater than 0");
    }
    if !(1..=MAX_JSON_DEPTH).contains(&server.max_json_depth) {
        return invalid("server.max_json_depth", &format!("must be 1-{MAX_JSON_DEPTH}"));
    }
    // Port 0 asks the OS for a free port, so two of those never collide.
    if config.server.listen == config.admin.listen && config.server.listen.port() != 0 {
        return invalid("admin.listen", "must differ from server.listen");
    }
    validate_authz(config)?;
    if config.limits.backend == LimiterBackend::Redis && config.limits.redis_url.is_none() {
        return invalid("limits.redis_url", "is required when limits.backend = \"redis\"");
    }
    if config.limits.replicas == 0 {
        return invalid("limits.replicas", "must be at least 1");
    }
    if config.limits.redis_prefix.is_empty() || config.limits.redis_prefix.contains(['{', '}']) {
        return invalid("limits.redis_prefix", "must be non-empty and contain no braces");
    }
    if config.limits.reservation_lease.0 < 3 * config.limits.redis_timeout.0 {
        return invalid("limits.reservation_lease", "must be at least three times limits.redis_timeout");
    }
    if let Err(why) = config.store.location() {
        return invalid("store.url", &why);
    }
    if config.store.pool_size == 0 {
        return invalid("store.pool_size", "must be at least 1");
    }
    if config.store.change_poll.0.is_zero() {
        return invalid("store.change_poll", "must be greater than 0");
    }
    if !config.tiers.is_empty() && !config.tiers.contains_key(&config.limits.default_tier) {
        return invalid(
            "limits.default_tier",
            &format!("names tier {:?}, which is not defined under [tiers]", config.limits.default_tier),
        );
    }
    let factor = config.security.anomaly_factor;
    if !factor.is_finite() || factor < 1.0 {
        return invalid("security.anomaly_factor", "must be a number of at least 1");
    }
    if config.audit.node.as_ref().is_some_and(|node| node.is_empty() || node.len() > 64) {
        return invalid("audit.node", "must be 1-64 characters");
    }
    for (index, pattern) in config.audit.redact.iter().enumerate() {
        validate_redaction(index, pattern)?;
    }
    if let Some(tls) = &config.server.tls {
        crate::tls::validate_tls("server.tls", tls)?;
    }
    if let Some(tls) = &config.admin.tls {
        crate::tls::validate_tls("admin.tls", tls)?;
    }
    crate::tls::validate_certificates(config)?;
    validate_limits("limits.global", &config.limits.global)?;
    for (name, tier) in &config.tiers {
        validate_tier(name, tier)?;
    }
    let mut seen = HashSet::new();
    for (index, model) in config.models.iter().enumerate() {
        if !seen.insert(model.name.as_str()) {
            return invalid(&format!("models[{index}].name"), &format!("{:?} is defined twice", model.name));
        }
        validate_model(index, model, config)?;
    }
    crate::oidc::validate(config)
}

/// A custom redaction rule must compile, and must not match the empty string: that would put a
/// `[REDACTED:custom]` between every two characters of captured content.
fn validate_redaction(index: usize, pattern: &str) -> Result<(), ConfigError> {
    let path = format!("audit.redact[{index}]");
    match regex::Regex::new(pattern) {
        Err(error) => invalid(&path, &format!("is not a valid regex: {error}")),
        Ok(regex) if regex.is_match("") => invalid(&path, "must not match the empty string"),
        Ok(_) => Ok(()),
    }
}

/// Limits beyond what the limiters and stores count exactly are refused, never clamped (the
/// maxima are in `portcullis_types::admin`: budgets, rates, token quotas).
fn validate_limits(path: &str, limits: &LimitOverrides) -> Result<(), ConfigError> {
    limits.check_range().or_else(|error| invalid(&format!("{path}.{}", error.field), &error.problem))
}

fn validate_tier(name: &str, tier: &TierConfig) -> Result<(), ConfigError> {
    validate_limits(&format!("tiers.{name}"), &tier.limits())?;
    if tier.max_concurrent == Some(0) {
        return invalid(&format!("tiers.{name}.max_concurrent"), "must be at least 1 (omit it for no limit)");
    }
    if let Some(burst) = tier.burst {
        if burst == 0 {
            return invalid(&format!("tiers.{name}.burst"), "must be at least 1");
        }
        if tier.requests_per_minute.is_some_and(|rpm| burst > rpm) {
            return invalid(
                &format!("tiers.{name}.burst"),
                "may lower the instant allowance, not exceed requests_per_minute",
            );
        }
    }
    Ok(())
}

fn validate_model(index: usize, model: &ModelConfig, config: &Config) -> Result<(), ConfigError> {
    let path = |field: &str| format!("models[{index}].{field}");
    if model.name.trim().is_empty() {
        return invalid(&path("name"), "must not be empty");
    }
    if model.endpoints.is_empty() {
        return invalid(&path("endpoints"), "needs at least one endpoint");
    }
    for (at, endpoint) in model.endpoints.iter().enumerate() {
        let field = path(&format!("endpoints[{at}]"));
        if !matches!(endpoint.scheme(), "http" | "https") {
            return invalid(&field, "must be an http:// or https:// URL");
        }
        if endpoint.host_str().is_none() || endpoint.query().is_some() || endpoint.fragment().is_some() {
            return invalid(&field, "must be an origin with an optional path prefix, no query or fragment");
        }
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return invalid(&field, "must not carry credentials; use api_key");
        }
    }
    if model
        .max_tokens_field
        .as_deref()
        .is_some_and(|field| !portcullis_types::openai::COMPLETION_CAP_FIELDS.contains(&field))
    {
        let known = portcullis_types::openai::COMPLETION_CAP_FIELDS.join(", ");
        return invalid(&path("max_tokens_field"), &format!("must be one of {known}"));
    }
    if model.tokenizer == Some(crate::TokenizerSource::Server) && !model.server.tokenizes() {
        return invalid(
            &path("tokenizer"),
            "\"server\" needs a server with a tokenize endpoint: llamacpp, vllm or tgi",
        );
    }
    if model.max_event_bytes < 1024 {
        return invalid(&path("max_event_bytes"), "must be at least 1024");
    }
    if model.passthrough_fields.iter().any(|field| field.is_empty()) {
        return invalid(&path("passthrough_fields"), "must not contain an empty name");
    }
    if let Some(api) = model.extra_apis.iter().find(|api| !model.server.serves(**api)) {
        let server = serde_json::to_value(model.server).unwrap_or_default();
        let api = serde_json::to_value(api).unwrap_or_default();
        return invalid(&path("extra_apis"), &format!("names {api}, which server = {server} does not serve"));
    }
    if model.max_concurrent == Some(0) {
        return invalid(&path("max_concurrent"), "must be at least 1 (omit it for no limit)");
    }
    // Elsewhere a zero timeout means "no limit"; here that would be an unbounded wait, and
    // "no wait" is spelled queue_size = 0, so zero is refused rather than guessed at.
    if model.queue_timeout.0.is_zero() {
        return invalid(&path("queue_timeout"), "must be greater than 0 (set queue_size = 0 to shed at once)");
    }
    for (field, value) in [
        ("price.input_per_million", model.price.input_per_million),
        ("price.output_per_million", model.price.output_per_million),
    ] {
        if !value.is_finite() || value < 0.0 {
            return invalid(&path(field), "must be a non-negative number");
        }
    }
    if !model.health_check.path.starts_with('/') {
        return invalid(&path("health_check.path"), "must start with /");
    }
    if model.retries > 10 {
        return invalid(&path("retries"), "must be at most 10");
    }
    for (at, fallback) in model.fallbacks.iter().enumerate() {
        if fallback == &model.name {
            return invalid(&path(&format!("fallbacks[{at}]")), "a model cannot fall back to itself");
        }
        if config.model(fallback).is_none() {
            return invalid(&path(&format!("fallbacks[{at}]")), &format!("names unknown model {fallback:?}"));
        }
    }
    Ok(())
}

/// The authorizer: its own port, gateways to answer, a lease within bounds, a header name.
fn validate_authz(config: &Config) -> Result<(), ConfigError> {
    let authz = &config.authz;
    let Some(listen) = authz.listen else { return Ok(()) };
    if listen.port() != 0 && (listen == config.server.listen || listen == config.admin.listen) {
        return invalid("authz.listen", "must differ from server.listen and admin.listen");
    }
    if authz.gateways.is_empty() {
        return invalid("authz.gateways", "must name at least one gateway address when authz.listen is set");
    }
    if !(crate::MIN_LEASE..=crate::MAX_LEASE).contains(&authz.lease.0) {
        return invalid("authz.lease", "must be between 1s and 1h");
    }
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if authz.model_header.is_empty() || !authz.model_header.chars().all(token_char) {
        return invalid("authz.model_header", "must be a valid header name");
    }
    if authz.max_connections == 0 {
        return invalid("authz.max_connections", "must be greater than 0");
    }
    if let Some(tls) = &authz.tls {
        crate::tls::validate_tls("authz.tls", tls)?;
    }
    Ok(())
}

fn invalid(path: &str, message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { path: path.to_string(), message: message.to_string() })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{Config, ConfigError, TokenizerSource};

    const REFERENCE: &str = include_str!("../../../examples/portcullis.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, |_| None)
    }

    fn error_path(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Parse { path, .. } | ConfigError::Invalid { path, .. }) => path,
            other => panic!("expected a parse or validation error, got {other:?}"),
        }
    }

    #[test]
    fn reference_configuration_loads_unchanged() {
        let config = parse(REFERENCE).unwrap();
        assert_eq!(config.models[0].name, "smollm2");
        assert_eq!(config.models[0].upstream_model(), "SmolLM2-135M-Instruct");
        assert_eq!(config.tiers["pro"].budget_per_month, Some(100.0));
        assert_eq!(config.limits.default_max_tokens, 1024);
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.admin.listen.port(), 8081);
        assert_eq!(config.server.max_body_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn unknown_field_is_an_error_naming_its_table() {
        assert_eq!(error_path("[server]\nlisten_on = \"1.2.3.4:1\"\n"), "server.listen_on");
        let path = error_path("[[models]]\nname = \"a\"\nendpoints = [\"http://h\"]\nprice = { input = 1.0 }\n");
        assert_eq!(path, "models[0].price.input");
    }

    #[test]
    fn wrong_type_names_the_field_path() {
        assert_eq!(error_path("[server]\nmax_body_bytes = \"big\"\n"), "server.max_body_bytes");
        assert_eq!(error_path("[tiers.free]\nrequests_per_minute = -1\n"), "tiers.free.requests_per_minute");
    }

    #[test]
    fn bad_duration_names_the_field_path() {
        let text = "[[models]]\nname = \"a\"\nendpoints = [\"http://h\"]\nqueue_timeout = \"soon\"\n";
        assert_eq!(error_path(text), "models[0].queue_timeout");
    }

    #[test]
    fn an_extra_api_the_models_server_lacks_is_refused() {
        let model = "[[models]]\nname = \"a\"\nendpoints = [\"http://h\"]\n";
        for refused in ["extra_apis = [\"rerank\"]\n", "server = \"ollama\"\nextra_apis = [\"tokenize\"]\n"] {
            assert_eq!(error_path(&format!("{model}{refused}")), "models[0].extra_apis", "{refused}");
        }
        for server in ["llamacpp", "vllm", "tgi"] {
            let text = format!("{model}server = \"{server}\"\nextra_apis = [\"rerank\", \"tokenize\"]\n");
            assert!(parse(&text).is_ok(), "{server}");
        }
    }

    #[test]
    fn a_server_tokenizer_needs_a_server_with_a_tokenize_endpoint() {
        let model = "[[models]]\nname = \"a\"\nendpoints = [\"http://h\"]\ntokenizer = \"server\"\n";
        assert_eq!(error_path(model), "models[0].tokenizer", "the default server, openai, has none");
        assert_eq!(error_path(&format!("{model}server = \"ollama\"\n")), "models[0].tokenizer");
        let config = parse(&format!("{model}server = \"llamacpp\"\ntemplate_tokens = 20\n")).unwrap();
        assert_eq!((config.models[0].tokenizer, config.models[0].template_tokens), (Some(TokenizerSource::Server), 20));
        assert_eq!(
            error_path(&format!("{model}server = \"vllm\"\nmax_tokens_field = \"length\"\n")),
            "models[0].max_tokens_field"
        );
    }

    #[test]
    fn queue_defaults_and_zero_timeout() {
        let model = "[[models]]\nname = \"a\"\nendpoints = [\"http://h\"]\n";
        let config = parse(model).unwrap();
        assert_eq!(config.models[0].queue_size, 64);
        assert_eq!(config.models[0].queue_timeout.0, std::time::Duration::from_secs(2));
        assert_eq!(parse(&format!("{model}queue_size = 0\n")).unwrap().models[0].queue_size, 0);
        assert_eq!(error_path(&format!("{model}queue_timeout = \"0s\"\n")), "models[0].queue_timeout");
        assert_eq!(error_path(&format!("{model}queue_size = -1\n")), "models[0].queue_size");
    }

    #[test]
    fn unknown_fallback_is_rejected() {
        let text = "[[models]]\nname = \"a\"\nendpoints = [\"http://h\"]\nfallbacks = [\"b\"]\n";
        assert_eq!(error_path(text), "models[0].fallbacks[0]");
    }

    #[test]
    fn duplicate_model_is_rejected() {
        let one = "[[models]]\nname = \"a\"\nendpoints = [\"http://h\"]\n";
        assert_eq!(error_path(&format!("{one}{one}")), "models[1].name");
    }

    #[test]
    fn endpoint_must_be_http_origin() {
        let text = "[[models]]\nname = \"a\"\nendpoints = [\"ftp://h\"]\n";
        assert_eq!(error_path(text), "models[0].endpoints[0]");
        let text = "[[models]]\nname = \"a\"\nendpoints = [\"http://user:pw@h\"]\n";
        assert_eq!(error_path(text), "models[0].endpoints[0]");
    }

    #[test]
    fn default_tier_must_exist_when_tiers_are_defined() {
        assert_eq!(error_path("[tiers.gold]\npriority = 1\n"), "limits.default_tier");
    }

    #[test]
    fn custom_redaction_rules_must_compile_and_match_something() {
        let config = parse("[audit]\nredact = [\"ACME-[0-9]{6}\", \"(?i)secret\"]\n").unwrap();
        assert_eq!(config.audit.redact, ["ACME-[0-9]{6}", "(?i)secret"]);
        assert!(parse("").unwrap().audit.redact.is_empty());
        assert_eq!(error_path("[audit]\nredact = [\"ok\", \"(unclosed\"]\n"), "audit.redact[1]");
        assert_eq!(error_path("[audit]\nredact = [\"x*\"]\n"), "audit.redact[0]");
    }

    #[test]
    fn fleet_settings_are_checked() {
        assert_eq!(error_path("[limits]\nreplicas = 0\n"), "limits.replicas");
        assert_eq!(error_path("[limits]\nredis_prefix = \"a{b}\"\n"), "limits.redis_prefix");
        assert_eq!(error_path("[limits]\nreservation_lease = \"500ms\"\n"), "limits.reservation_lease");
        assert_eq!(error_path("[store]\npool_size = 0\n"), "store.pool_size");
        assert_eq!(error_path("[store]\nurl = \"mysql://db/x\"\n"), "store.url");
        assert_eq!(error_path("[store]\nurl = \"sqlite://\"\n"), "store.url");
        assert_eq!(error_path("[store]\nchange_poll = \"0s\"\n"), "store.change_poll");
    }

    #[test]
    fn limits_beyond_their_maximum_name_their_path_and_the_maximum() {
        let message = |text: &str| match parse(text) {
            Err(ConfigError::Invalid { path, message }) => format!("{path}: {message}"),
            other => panic!("expected a validation error, got {other:?}"),
        };
        let error = message("[tiers.free]\nbudget_per_day = 18500000.0\n");
        assert!(error.starts_with("tiers.free.budget_per_day: ") && error.contains("9223372"), "{error}");
        assert_eq!(error_path("[tiers.free]\nbudget_per_month = -1.0\n"), "tiers.free.budget_per_month");
        assert_eq!(error_path("[tiers.free]\nbudget_per_month = nan\n"), "tiers.free.budget_per_month");
        assert_eq!(error_path("[tiers.free]\nbudget_per_month = inf\n"), "tiers.free.budget_per_month");
        let error = message("[limits.global]\nbudget_per_month = 2e7\n");
        assert!(error.starts_with("limits.global.budget_per_month: ") && error.contains("9223372"), "{error}");
        assert_eq!(error_path("[limits.global]\nbudget_per_day = -0.5\n"), "limits.global.budget_per_day");
        let error = message("[tiers.free]\nrequests_per_minute = 67108865\n");
        assert!(error.starts_with("tiers.free.requests_per_minute: ") && error.contains("67108864"), "{error}");
        assert_eq!(error_path("[limits.global]\ntokens_per_minute = 75059993790\n"), "limits.global.tokens_per_minute");

        let top = "[tiers.free]\nbudget_per_day = 9223372.0\nrequests_per_minute = 67108864\n\
                   tokens_per_minute = 75059993789\ntokens_per_month = 9223372036854775807\n\n\
                   [limits.global]\nbudget_per_month = 9223372\n";
        let config = parse(top).unwrap();
        assert_eq!(config.tiers["free"].budget_per_day, Some(9_223_372.0));
        assert_eq!(config.limits.global.budget_per_month, Some(9_223_372.0));
    }

    #[test]
    fn redis_backend_needs_a_url() {
        assert_eq!(error_path("[limits]\nbackend = \"redis\"\n"), "limits.redis_url");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(parse("[server\n"), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn environment_variables_are_substituted() {
        let text = "[[models]]\nname = \"a\"\nendpoints = [\"http://h\"]\napi_key = \"${UP_KEY}\"\n";
        let config = Config::parse(text, |name| (name == "UP_KEY").then(|| "sk-up".into())).unwrap();
        assert_eq!(config.models[0].api_key.as_ref().unwrap().expose(), "sk-up");
        assert!(!format!("{config:?}").contains("sk-up"), "Debug must redact the upstream key");
    }

    #[test]
    fn a_missing_environment_variable_is_named_with_its_field() {
        let text = "[[models]]\nname = \"a\"\nendpoints = [\"http://h\", \"${HOST}\"]\n";
        let error = Config::parse(text, |_| None).unwrap_err().to_string();
        assert_eq!(error, "models[0].endpoints[1]: environment variable HOST is referenced as ${HOST} but not set");
        let error = Config::parse("[store]\nurl = \"${DB}\"\n", |_| None).unwrap_err().to_string();
        assert!(error.starts_with("store.url: "), "{error}");
    }

    #[test]
    fn an_unreadable_file_says_why_once() {
        let error = Config::load(Path::new("/nonexistent/portcullis.toml")).unwrap_err();
        let chain = error_chain(&error);
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }

    /// The error and its sources, `: `-joined, as the CLI prints them.
    fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    /// Every complete example of docs/identity-providers.md — each ```toml block with an
    /// `[[auth.oidc]]` table, DESIGN §5's snippet first — loads; `${VAR}`s are set.
    #[test]
    fn identity_provider_examples_load() {
        let docs = include_str!("../../../docs/identity-providers.md");
        let examples: Vec<&str> = docs
            .split("```toml\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .filter(|block| block.contains("[[auth.oidc]]"))
            .collect();
        assert!(examples.len() >= 5, "DESIGN §5's snippet, Keycloak, Auth0, Okta, Entra ID: {}", examples.len());
        assert!(examples[0].contains("issuer = \"https://idp.example.com/realms/acme\""), "DESIGN §5's snippet first");
        for example in examples {
            if let Err(error) = Config::parse(example, |_| Some("from-the-environment".into())) {
                panic!("docs/identity-providers.md example does not load: {error:?}\n{example}");
            }
        }
    }
}
