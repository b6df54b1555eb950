//! The file's shape ([`Config`]) split into what needs a restart ([`Startup`]) and what a reload
//! applies ([`Live`]). Every table is destructured without `..`, so a field added to the file
//! does not compile until it is given to one side; the test below checks that each field lands
//! on exactly one side, under its own path, with its own value.

use portcullis_auth::ModelGlobs;

use crate::live::{AuditLive, AuthLive, LimitsLive, Models, SecurityThresholds, ServerLive, StoreLive, Tier};
use crate::startup::{AuditStartup, LimiterStartup, SecurityStartup, ServerStartup, StoreStartup};
use crate::{
    AuditConfig, AuthConfig, Config, LimitsConfig, Live, SecurityConfig, ServerConfig, Startup, StoreConfig, TierConfig,
};

impl Config {
    /// Splits a validated configuration into its restart-only and its live settings.
    pub fn split(self) -> (Startup, Live) {
        let Config { server, admin, store, limits, audit, security, auth, authz, tiers, models } = self;
        let AuthConfig { jwks_refresh_interval, oidc, certificates } = auth;
        let ServerConfig {
            listen,
            max_body_bytes,
            max_header_bytes,
            max_headers,
            header_read_timeout,
            idle_timeout,
            body_read_timeout,
            min_body_rate,
            max_connections,
            max_connections_per_client,
            http2_keepalive_interval,
            http2_max_concurrent_streams,
            max_json_depth,
            drain_delay,
            shutdown_timeout,
            trusted_proxies,
            forwarded_header,
            tls,
        } = server;
        let StoreConfig { url, pool_size, change_poll, cache_max_age } = store;
        let LimitsConfig {
            backend,
            redis_url,
            redis_prefix,
            redis_timeout,
            reservation_lease,
            on_backend_error,
            replicas,
            default_max_tokens,
            default_tier,
            global,
        } = limits;
        let AuditConfig { durability, file, stdout, node, spill_file, retention, redact } = audit;
        let SecurityConfig {
            key_pepper,
            auth_failure_limit,
            auth_failure_window,
            block_duration,
            anomaly_factor,
            anomaly_min_requests,
        } = security;
        let startup = Startup {
            server: ServerStartup {
                listen,
                max_header_bytes,
                max_headers,
                header_read_timeout,
                idle_timeout,
                body_read_timeout,
                min_body_rate,
                max_connections,
                max_connections_per_client,
                http2_keepalive_interval,
                http2_max_concurrent_streams,
                tls,
            },
            admin,
            authz,
            store: StoreStartup { url, pool_size },
            limits: LimiterStartup {
                backend,
                redis_url,
                redis_prefix,
                redis_timeout,
                reservation_lease,
                on_backend_error,
                replicas,
            },
            audit: AuditStartup { durability, file, stdout, node, spill_file, redact },
            security: SecurityStartup { key_pepper },
        };
        let live = Live {
            server: ServerLive {
                max_body_bytes,
                max_json_depth,
                drain_delay,
                shutdown_timeout,
                trusted_proxies,
                forwarded_header,
            },
            store: StoreLive { change_poll, cache_max_age },
            limits: LimitsLive { default_max_tokens, default_tier, global },
            audit: AuditLive { retention },
            security: SecurityThresholds {
                auth_failure_limit,
                auth_failure_window,
                block_duration,
                anomaly_factor,
                anomaly_min_requests,
            },
            auth: AuthLive { jwks_refresh_interval, oidc, certificates },
            tiers: tiers.into_iter().map(|(name, tier)| (name, compile_tier(tier))).collect(),
            models: Models::new(models),
        };
        (startup, live)
    }
}

fn compile_tier(tier: TierConfig) -> Tier {
    let limits = tier.limits();
    let TierConfig { burst, priority, models, .. } = tier;
    Tier { limits, burst, priority, models: ModelGlobs::new(models) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use crate::Config;
    use crate::startup::leaves;

    /// Every field set, none to its default (a list holds one item, so that its path shows).
    const EVERY_FIELD: &str = r#"
        [server]
        listen = "127.0.0.1:9000"
        max_body_bytes = 1000
        max_header_bytes = 9000
        max_headers = 70
        header_read_timeout = "11s"
        idle_timeout = "61s"
        body_read_timeout = "12s"
        min_body_rate = 1
        max_connections = 7
        max_connections_per_client = 3
        http2_keepalive_interval = "21s"
        http2_max_concurrent_streams = 9
        max_json_depth = 10
        drain_delay = "1s"
        shutdown_timeout = "2s"
        trusted_proxies = ["10.0.0.0/8"]
        forwarded_header = "forwarded"
        [server.tls]
        cert = "proxy.crt"
        key = "proxy.key"
        client_ca = "clients-ca.pem"
        client_auth = "required"
        crls = ["clients.crl"]

        [admin]
        listen = "127.0.0.1:9001"
        max_connections = 8
        max_connections_per_client = 4
        [admin.tls]
        cert = "admin.crt"
        key = "admin.key"
        client_ca = "operators-ca.pem"
        client_auth = "required"
        crls = ["operators.crl"]

        [authz]
        listen = "127.0.0.1:9002"
        gateways = ["10.1.0.0/16"]
        lease = "2m"
        model_header = "x-model"
        max_connections = 5
        [authz.tls]
        cert = "authz.crt"
        key = "authz.key"
        client_ca = "gateways-ca.pem"
        client_auth = "required"
        crls = ["gateways.crl"]

        [store]
        url = "postgres://db/x"
        pool_size = 3
        change_poll = "6s"
        cache_max_age = "7s"

        [limits]
        backend = "redis"
        redis_url = "redis://r"
        redis_prefix = "p"
        redis_timeout = "100ms"
        reservation_lease = "9s"
        on_backend_error = "local"
        replicas = 2
        default_max_tokens = 5
        default_tier = "gold"
        [limits.global]
        requests_per_minute = 1
        tokens_per_minute = 2
        max_concurrent = 3
        tokens_per_day = 4
        tokens_per_month = 5
        budget_per_day = 6.0
        budget_per_month = 7.0

        [audit]
        durability = "sync"
        file = "audit.jsonl"
        stdout = true
        node = "n1"
        spill_file = "spill.jsonl"
        retention = "30d"
        redact = ["ACME-[0-9]+"]

        [security]
        key_pepper = "pepper"
        auth_failure_limit = 2
        auth_failure_window = "2m"
        block_duration = "3m"
        anomaly_factor = 2.0
        anomaly_min_requests = 3

        [auth]
        jwks_refresh_interval = "7m"
        [[auth.oidc]]
        issuer = "https://idp.example.com/realms/acme"
        name = "acme"
        audience = "portcullis"
        algorithms = ["ES256"]
        leeway = "10s"
        jwks_uri = "https://idp.example.com/keys"
        default_tier = "gold"
        default_team = "acme"
        default_models = ["gemma*"]
        default_scopes = ["chat"]
        allowed_teams = ["acme", "research-*"]
        allowed_tiers = ["gold"]
        [auth.oidc.claims]
        team = "org_id"
        tier = "tier"
        models = "models"
        scopes = "scope"
        [auth.oidc.scope_map]
        "chat:write" = ["chat", "completions"]
        [auth.oidc.introspection]
        endpoint = "https://idp.example.com/introspect"
        client_id = "gateway"
        client_secret = "s3cret"
        cache_ttl = "61s"

        [tiers.gold]
        requests_per_minute = 10
        tokens_per_minute = 20
        max_concurrent = 30
        tokens_per_day = 40
        tokens_per_month = 50
        budget_per_day = 1.0
        budget_per_month = 2.0
        burst = 5
        priority = 3
        models = ["a*"]

        [[auth.certificates]]
        name = "batch"
        match = { san_uri = "spiffe://acme/batch" }
        team = "acme"
        tier = "gold"
        models = ["a*"]
        scopes = ["chat"]

        [[models]]
        name = "a"
        endpoints = ["http://h"]
    "#;

    #[test]
    fn every_field_of_the_file_lands_on_exactly_one_side_with_its_value() {
        let config = Config::parse(EVERY_FIELD, |_| None).unwrap();
        let file = leaves(&config);
        let (startup, live) = config.split();
        let (startup, live) = (leaves(&startup), leaves(&live));
        let both: Vec<&String> = startup.keys().filter(|path| live.contains_key(*path)).collect();
        assert!(both.is_empty(), "on both sides: {both:?}");
        let mut split: BTreeMap<String, Value> = startup;
        split.extend(live);
        let missing: Vec<&String> = file.keys().filter(|path| !split.contains_key(*path)).collect();
        assert!(missing.is_empty(), "in neither Startup nor Live: {missing:?}");
        assert_eq!(split, file, "each field keeps its path and value");
    }

    #[test]
    fn no_field_of_the_full_file_is_left_at_its_default() {
        let full = leaves(&Config::parse(EVERY_FIELD, |_| None).unwrap());
        let default = leaves(&Config::parse("", |_| None).unwrap());
        // Tables and lists empty by default have no leaves there; the rest must all differ.
        let same: Vec<&String> =
            default.iter().filter(|(path, value)| full.get(*path) == Some(value)).map(|(path, _)| path).collect();
        assert!(same.is_empty(), "left at the default, so a mix-up would go unseen: {same:?}");
    }

    /// docs/configuration.md lists the settings that need a restart; that list is `Startup`.
    #[test]
    fn the_documented_restart_only_settings_are_exactly_startups_fields() {
        let docs = include_str!("../../../docs/configuration.md");
        let list = docs
            .split("<!-- restart-required -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- /restart-required -->").next())
            .expect("docs/configuration.md marks its restart-required list");
        let documented: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
        let (startup, _) = Config::parse(EVERY_FIELD, |_| None).unwrap().split();
        let startup = leaves(&startup);
        let fields: Vec<&str> = startup.keys().map(String::as_str).collect();
        let mut sorted = documented.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, fields, "docs/configuration.md's restart-required list and Startup differ");
    }
}
