//! `[[auth.oidc]]`: the OAuth 2.0 / OIDC issuers whose access tokens are accepted, how their
//! claims map to a team, tier, models and scopes, and (optionally) their RFC 7662 introspection.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use portcullis_types::Secret;
use serde::{Deserialize, Serialize};

use crate::duration::ConfigDuration;

/// The longest `leeway` accepted: more would keep expired tokens working for minutes.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// One trusted token issuer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Equals the tokens' `iss`; discovery is at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Names the issuer in principal ids (`oidc:<name>:<sub>`), metrics and logs; default: `issuer`.
    #[serde(default)]
    pub name: Option<String>,
    /// A token's `aud` must contain one of these.
    pub audience: Audience,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    #[serde(default = "default_leeway")]
    pub leeway: ConfigDuration,
    /// Overrides the `jwks_uri` of the discovery document.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub default_tier: Option<String>,
    #[serde(default)]
    pub default_team: Option<String>,
    #[serde(default)]
    pub default_models: Option<Vec<String>>,
    /// Scopes when the token carries no scopes claim; absent: all of Portcullis' scopes.
    #[serde(default)]
    pub default_scopes: Option<Vec<String>>,
    /// Globs of the teams a token may claim; absent: only `default_team`.
    #[serde(default)]
    pub allowed_teams: Option<Vec<String>>,
    /// Tiers a token may claim; absent: only `default_tier`.
    #[serde(default)]
    pub allowed_tiers: Option<Vec<String>>,
    #[serde(default)]
    pub claims: ClaimNames,
    /// Token scope → Portcullis scopes, for scopes not named like Portcullis' own.
    #[serde(default)]
    pub scope_map: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

impl OidcIssuerConfig {
    /// The issuer's name in ids, metrics and logs.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.issuer)
    }
}

/// Which claims carry the team, tier, models and scopes (dotted paths reach nested claims).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimNames {
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub models: Option<String>,
    #[serde(default)]
    pub scopes: Option<String>,
}

/// RFC 7662 introspection of opaque tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// Default: the discovery document's `introspection_endpoint`.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub client_id: String,
    #[serde(serialize_with = "crate::fingerprint::secret")]
    pub client_secret: Secret<String>,
    /// The longest an active answer is cached (never beyond the token's `exp`).
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl: ConfigDuration,
}

/// One audience or several.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn values(&self) -> &[String] {
        match self {
            Audience::One(one) => std::slice::from_ref(one),
            Audience::Many(many) => many,
        }
    }
}

/// The signature algorithms an issuer may use. HMAC (`HS*`) and `none` are not among them: a
/// gateway holds no shared secret, and an HMAC check keyed with a public key is forgeable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 9] = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    /// The name in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for JwtAlgorithm {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        if let Some(algorithm) = JwtAlgorithm::ALL.into_iter().find(|algorithm| algorithm.as_str() == name) {
            return Ok(algorithm);
        }
        Err(if name.eq_ignore_ascii_case("none") {
            "\"none\" would accept unsigned tokens".to_string()
        } else if name.starts_with("HS") {
            format!("{name:?} is an HMAC algorithm, which would let a token be signed with the issuer's public key")
        } else {
            let names: Vec<&str> = JwtAlgorithm::ALL.iter().map(|algorithm| algorithm.as_str()).collect();
            format!("unknown algorithm {name:?}, expected one of {}", names.join(", "))
        })
    }
}

impl From<JwtAlgorithm> for String {
    fn from(algorithm: JwtAlgorithm) -> String {
        algorithm.as_str().to_string()
    }
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA]
}

fn default_leeway() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_introspection_ttl() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

pub(crate) fn default_jwks_refresh_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

/// Cross-field rules of `[auth]`; each failure names its path.
pub(crate) fn validate(config: &crate::Config) -> Result<(), crate::ConfigError> {
    let auth = &config.auth;
    if auth.jwks_refresh_interval.0 < Duration::from_secs(1) {
        return invalid("auth.jwks_refresh_interval", "must be at least 1s");
    }
    let mut names = std::collections::HashSet::new();
    let mut issuers = std::collections::HashSet::new();
    for (index, issuer) in auth.oidc.iter().enumerate() {
        let path = |field: &str| format!("auth.oidc[{index}].{field}");
        check_url(&path("issuer"), &issuer.issuer)?;
        if !issuers.insert(issuer.issuer.as_str()) {
            return invalid(&path("issuer"), &format!("{:?} is configured twice", issuer.issuer));
        }
        if issuer.name().is_empty() || !names.insert(issuer.name()) {
            return invalid(&path("name"), &format!("{:?} must be non-empty and unique", issuer.name()));
        }
        if issuer.audience.values().is_empty() || issuer.audience.values().iter().any(String::is_empty) {
            return invalid(&path("audience"), "must name at least one non-empty audience");
        }
        if issuer.algorithms.is_empty() {
            return invalid(&path("algorithms"), "must allow at least one algorithm");
        }
        if issuer.leeway.0 > MAX_LEEWAY {
            return invalid(&path("leeway"), "must be at most 5m");
        }
        if let Some(uri) = &issuer.jwks_uri {
            check_url(&path("jwks_uri"), uri)?;
        }
        let tiers = issuer.default_tier.iter().map(|tier| ("default_tier", tier));
        let allowed = issuer.allowed_tiers.iter().flatten().map(|tier| ("allowed_tiers", tier));
        for (field, tier) in tiers.chain(allowed) {
            if !config.tiers.is_empty() && !config.tiers.contains_key(tier) {
                return invalid(&path(field), &format!("names tier {tier:?}, which is not defined under [tiers]"));
            }
        }
        for scope in issuer.default_scopes.iter().flatten() {
            check_scope(&path("default_scopes"), scope)?;
        }
        for (from, scopes) in &issuer.scope_map {
            for scope in scopes {
                check_scope(&path(&format!("scope_map.{from:?}")), scope)?;
            }
        }
        for (field, claim) in [
            ("team", &issuer.claims.team),
            ("tier", &issuer.claims.tier),
            ("models", &issuer.claims.models),
            ("scopes", &issuer.claims.scopes),
        ] {
            if claim.as_ref().is_some_and(|claim| claim.is_empty() || claim.split('.').any(str::is_empty)) {
                return invalid(&path(&format!("claims.{field}")), "must be a claim name or a dotted path");
            }
        }
        if let Some(introspection) = &issuer.introspection {
            if let Some(endpoint) = &introspection.endpoint {
                check_url(&path("introspection.endpoint"), endpoint)?;
            }
            if introspection.cache_ttl.0.is_zero() {
                return invalid(&path("introspection.cache_ttl"), "must be greater than 0");
            }
        }
    }
    Ok(())
}

fn check_url(path: &str, text: &str) -> Result<(), crate::ConfigError> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        _ => invalid(path, &format!("{text:?} is not an http(s) URL")),
    }
}

fn check_scope(path: &str, scope: &str) -> Result<(), crate::ConfigError> {
    match scope.parse::<portcullis_auth::Scope>() {
        Ok(_) => Ok(()),
        Err(_) => invalid(
            path,
            &format!(
                "{scope:?} is not a scope (chat, completions, embeddings, models, responses, messages, rerank, tokenize)"
            ),
        ),
    }
}

fn invalid(path: &str, message: &str) -> Result<(), crate::ConfigError> {
    Err(crate::ConfigError::Invalid { path: path.into(), message: message.into() })
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError, JwtAlgorithm};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, |name| (name == "IDP_SECRET").then(|| "s3cret".to_string()))
    }

    fn refused(text: &str) -> String {
        parse(text).map(|_| ()).unwrap_err().to_string()
    }

    const ISSUER: &str = "[[auth.oidc]]\nissuer = \"https://idp.example.com\"\naudience = \"portcullis\"\n";

    #[test]
    fn the_design_snippet_and_the_full_shape_load() {
        let design = r#"
            [[auth.oidc]]
            issuer = "https://idp.example.com/realms/acme"
            audience = "portcullis"
            algorithms = ["RS256", "ES256", "EdDSA"]
            leeway = "30s"
            default_tier = "free"
            [auth.oidc.claims]
            team = "org_id"
            tier = "tier"
            models = "models"
            scopes = "scope"
        "#;
        let config = parse(design).unwrap();
        let issuer = &config.auth.oidc[0];
        assert_eq!(issuer.name(), "https://idp.example.com/realms/acme");
        assert_eq!(issuer.claims.team.as_deref(), Some("org_id"));
        let full = r#"
            [auth]
            jwks_refresh_interval = "5m"
            [[auth.oidc]]
            issuer = "https://idp.example.com/realms/acme"
            name = "acme"
            audience = ["portcullis", "other"]
            allowed_teams = ["acme", "research-*"]
            allowed_tiers = ["free", "pro"]
            [auth.oidc.claims]
            team = "realm_access.org"
            [auth.oidc.scope_map]
            "chat:write" = ["chat", "completions"]
            [auth.oidc.introspection]
            client_id = "gateway-rs"
            client_secret = "${IDP_SECRET}"
            [tiers.free]
            [tiers.pro]
        "#;
        let config = parse(full).unwrap();
        let issuer = &config.auth.oidc[0];
        assert_eq!(issuer.audience.values(), ["portcullis", "other"]);
        assert_eq!(issuer.algorithms, [JwtAlgorithm::RS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA]);
        assert_eq!(issuer.leeway.0.as_secs(), 30);
        let introspection = issuer.introspection.as_ref().unwrap();
        assert_eq!(introspection.client_secret.expose(), "s3cret");
        assert_eq!(introspection.cache_ttl.0.as_secs(), 60);
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn none_and_hmac_algorithms_are_refused_by_name() {
        let error = refused(&format!("{ISSUER}algorithms = [\"none\"]"));
        assert!(error.contains("auth.oidc[0].algorithms") && error.contains("unsigned"), "{error}");
        let error = refused(&format!("{ISSUER}algorithms = [\"RS256\", \"HS256\"]"));
        assert!(error.contains("HMAC"), "{error}");
        assert!(refused(&format!("{ISSUER}algorithms = []")).contains("at least one"));
    }

    #[test]
    fn leeway_is_bounded_and_named_tiers_and_scopes_must_exist() {
        assert!(refused(&format!("{ISSUER}leeway = \"6m\"")).contains("auth.oidc[0].leeway"));
        assert!(parse(&format!("{ISSUER}leeway = \"5m\"")).is_ok());
        let error = refused(&format!("{ISSUER}allowed_tiers = [\"gold\"]\n[tiers.free]"));
        assert!(error.contains("auth.oidc[0].allowed_tiers") && error.contains("gold"), "{error}");
        assert!(refused(&format!("{ISSUER}default_scopes = [\"admin\"]")).contains("default_scopes"));
        assert!(refused(&format!("{ISSUER}[auth.oidc.scope_map]\nx = [\"nope\"]")).contains("scope_map"));
    }

    #[test]
    fn issuers_are_urls_and_their_names_unique() {
        assert!(refused("[[auth.oidc]]\nissuer = \"idp\"\naudience = \"a\"").contains("auth.oidc[0].issuer"));
        let twice =
            format!("{ISSUER}name = \"a\"\n[[auth.oidc]]\nissuer = \"https://b\"\naudience = \"a\"\nname = \"a\"");
        assert!(refused(&twice).contains("auth.oidc[1].name"));
        assert!(refused("[[auth.oidc]]\nissuer = \"https://i\"\naudience = []").contains("auth.oidc[0].audience"));
    }
}
