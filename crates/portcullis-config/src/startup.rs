//! [`Startup`]: the settings fixed when the gateway starts — what its listeners, accept loops and
//! connections are built with, the store and its pool, the limiter backend, the audit writer, the
//! key pepper and the redaction rules. Changing one takes a restart.
//!
//! A reload compares the new file's `Startup` with the one the gateway is running with and names
//! every field that differs ([`Startup::restart_required`]). The comparison walks `Startup`'s own
//! serialized form, so a field added here is compared without anyone listing it; secrets take
//! part by fingerprint (see `fingerprint`), and only paths ever leave this module.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use portcullis_types::Secret;
use serde::Serialize;
use serde_json::Value;

use crate::{AdminConfig, AuditDurability, ConfigDuration, LimiterBackend, OnBackendError, StoreLocation};

/// Everything that needs a restart. Its tables and fields are named as in the file, so a
/// field's path here is its path there (`server.listen`, `limits.redis_url`).
#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub server: ServerStartup,
    pub admin: AdminConfig,
    pub authz: crate::AuthzConfig,
    pub store: StoreStartup,
    pub limits: LimiterStartup,
    pub audit: AuditStartup,
    pub security: SecurityStartup,
}

/// `[server]` settings the accept loops and each connection's HTTP machinery are built with.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStartup {
    pub listen: SocketAddr,
    pub max_header_bytes: usize,
    /// Also checked per HTTP/2 request, with the value the HTTP/1 gate was built with.
    pub max_headers: usize,
    pub header_read_timeout: ConfigDuration,
    pub idle_timeout: ConfigDuration,
    pub body_read_timeout: ConfigDuration,
    pub min_body_rate: u64,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub http2_keepalive_interval: ConfigDuration,
    pub http2_max_concurrent_streams: u32,
    /// The paths and client policy; the files are read again on every reload.
    pub tls: Option<crate::TlsConfig>,
}

/// `[store]`: the connection, and the caches built on it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStartup {
    #[serde(serialize_with = "crate::fingerprint::secret")]
    pub url: Secret<String>,
    pub pool_size: u32,
}

impl StoreStartup {
    /// `store.url` read, or why it cannot be.
    pub fn location(&self) -> Result<StoreLocation<'_>, String> {
        StoreLocation::parse(self.url.expose())
    }
}

/// `[limits]` settings of the limiter backend, which holds every counter and outlives reloads.
#[derive(Debug, Clone, Serialize)]
pub struct LimiterStartup {
    pub backend: LimiterBackend,
    #[serde(serialize_with = "crate::fingerprint::optional")]
    pub redis_url: Option<Secret<String>>,
    pub redis_prefix: String,
    pub redis_timeout: ConfigDuration,
    pub reservation_lease: ConfigDuration,
    pub on_backend_error: OnBackendError,
    pub replicas: u32,
}

/// `[audit]` settings of the audit writer and its sinks, and the redaction rules.
#[derive(Debug, Clone, Serialize)]
pub struct AuditStartup {
    pub durability: AuditDurability,
    pub file: Option<String>,
    pub stdout: bool,
    pub node: Option<String>,
    pub spill_file: String,
    pub redact: Vec<String>,
}

/// `[security]`: the key pepper (every stored hash depends on it).
#[derive(Debug, Clone, Serialize)]
pub struct SecurityStartup {
    #[serde(serialize_with = "crate::fingerprint::optional")]
    pub key_pepper: Option<Secret<String>>,
}

impl Startup {
    /// The dotted path of every field whose value in `new` differs from `self`, in path order.
    /// A list is one field (`audit.redact`); a secret is compared by fingerprint.
    pub fn restart_required(&self, new: &Startup) -> Vec<String> {
        let (old, new) = (leaves(self), leaves(new));
        let mut changed: Vec<String> =
            old.iter().filter(|(path, value)| new.get(*path) != Some(value)).map(|(path, _)| path.clone()).collect();
        changed.extend(new.keys().filter(|path| !old.contains_key(*path)).cloned());
        changed.sort();
        changed
    }
}

/// Every leaf of `value`'s serialized form by its dotted path; lists are leaves.
pub(crate) fn leaves(value: &impl Serialize) -> BTreeMap<String, Value> {
    // Serializing to a `Value` fails only for maps whose keys are not strings; these types have
    // none (the tests serialize every field of a full configuration).
    let value = serde_json::to_value(value).unwrap_or(Value::Null);
    let mut out = BTreeMap::new();
    collect("", value, &mut out);
    out
}

fn collect(path: &str, value: Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(fields) => {
            for (name, inner) in fields {
                let inner_path = if path.is_empty() { name } else { format!("{path}.{name}") };
                collect(&inner_path, inner, out);
            }
        }
        leaf => {
            out.insert(path.to_string(), leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Startup};

    fn startup(text: &str) -> Startup {
        Config::parse(text, |_| None).unwrap().split().0
    }

    #[test]
    fn each_changed_startup_field_is_named_by_its_path_and_live_ones_are_not() {
        let running = startup("[limits]\nbackend = \"redis\"\nredis_url = \"redis://a\"\n");
        let new = startup(
            "[server]\nlisten = \"127.0.0.1:9999\"\nmax_body_bytes = 1\n\
             [limits]\nbackend = \"redis\"\nredis_url = \"redis://secret@b\"\ndefault_max_tokens = 5\n\
             [audit]\nredact = [\"x+\"]\n",
        );
        assert_eq!(running.restart_required(&new), ["audit.redact", "limits.redis_url", "server.listen"]);
        assert_eq!(new.restart_required(&new.clone()), Vec::<String>::new());
    }

    #[test]
    fn a_secret_set_or_removed_is_a_change_and_its_value_never_shows() {
        let (none, some) = (startup(""), startup("[security]\nkey_pepper = \"pepper-value\"\n"));
        assert_eq!(none.restart_required(&some), ["security.key_pepper"]);
        assert_eq!(some.restart_required(&none), ["security.key_pepper"]);
        let shown = serde_json::to_string(&some).unwrap();
        assert!(!shown.contains("pepper-value"), "{shown}");
    }
}
