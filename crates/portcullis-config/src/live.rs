//! [`Live`]: everything a request or a background loop reads, in the shape they read it —
//! tiers with their model globs compiled, models found by name. A reload builds a new `Live`
//! and swaps it in whole; the next request sees every change.

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use portcullis_auth::ModelGlobs;
use portcullis_types::admin::LimitOverrides;
use serde::{Serialize, Serializer};

use crate::{ConfigDuration, ForwardedHeader, ModelConfig};

/// Everything that takes effect on reload. Tables and fields are named as in the file.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub server: ServerLive,
    pub store: StoreLive,
    pub limits: LimitsLive,
    pub audit: AuditLive,
    pub security: SecurityThresholds,
    pub auth: AuthLive,
    pub tiers: BTreeMap<String, Tier>,
    pub models: Models,
}

/// `[server]` settings read per request, per connection or at shutdown.
#[derive(Debug, Clone, Serialize)]
pub struct ServerLive {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub drain_delay: ConfigDuration,
    pub shutdown_timeout: ConfigDuration,
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded_header: ForwardedHeader,
}

/// `[store]`: the change follower's poll, read before each wait, and the key and team caches'
/// maximum age, read with each lookup.
#[derive(Debug, Clone, Serialize)]
pub struct StoreLive {
    pub change_poll: ConfigDuration,
    pub cache_max_age: ConfigDuration,
}

/// `[limits]` settings read per request.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsLive {
    pub default_max_tokens: u64,
    pub default_tier: String,
    pub global: LimitOverrides,
}

/// `[audit]`: retention, applied by the housekeeping loop.
#[derive(Debug, Clone, Serialize)]
pub struct AuditLive {
    pub retention: Option<ConfigDuration>,
}

/// `[security]` thresholds of the misuse detector; its counters outlive a change of them.
#[derive(Debug, Clone, Serialize)]
pub struct SecurityThresholds {
    pub auth_failure_limit: u32,
    pub auth_failure_window: ConfigDuration,
    pub block_duration: ConfigDuration,
    pub anomaly_factor: f64,
    pub anomaly_min_requests: u32,
}

/// `[auth]`: how credentials Portcullis did not issue map to principals.
#[derive(Debug, Clone, Serialize)]
pub struct AuthLive {
    pub jwks_refresh_interval: ConfigDuration,
    /// The token issuers; a reload rebuilds the verifiers (keeping the key sets of issuers whose
    /// settings did not change).
    pub oidc: Vec<crate::OidcIssuerConfig>,
    /// Client certificate rules, in the file's order (the first match wins).
    pub certificates: Vec<crate::CertificateMapping>,
}

/// A tier, its model globs compiled once.
#[derive(Debug, Clone, Serialize)]
pub struct Tier {
    #[serde(flatten)]
    pub limits: LimitOverrides,
    pub burst: Option<u64>,
    pub priority: i64,
    #[serde(serialize_with = "patterns")]
    pub models: ModelGlobs,
}

fn patterns<S: Serializer>(globs: &ModelGlobs, serializer: S) -> Result<S::Ok, S::Error> {
    globs.patterns().serialize(serializer)
}

/// The configured models in file order, found by name in constant time. Each model's table is
/// kept as validated: the routes are built from it, and requests read its price and body rules.
#[derive(Debug, Clone, Default)]
pub struct Models {
    list: Vec<ModelConfig>,
    by_name: HashMap<String, usize>,
}

impl Models {
    /// Validation refuses a name twice; were one here twice, the first would win.
    pub(crate) fn new(list: Vec<ModelConfig>) -> Models {
        let mut by_name = HashMap::with_capacity(list.len());
        for (index, model) in list.iter().enumerate() {
            by_name.entry(model.name.clone()).or_insert(index);
        }
        Models { list, by_name }
    }

    pub fn get(&self, name: &str) -> Option<&ModelConfig> {
        self.by_name.get(name).and_then(|&index| self.list.get(index))
    }

    /// In file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ModelConfig> {
        self.list.iter()
    }
}

impl Serialize for Models {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.list.serialize(serializer)
    }
}

impl Live {
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.get(name)
    }

    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }
}
