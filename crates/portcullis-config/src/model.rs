//! The configuration file's shape. Every table denies unknown fields, so a typo is an error
//! that names its path instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use portcullis_types::Secret;
use portcullis_types::admin::LimitOverrides;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::duration::ConfigDuration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub authz: crate::AuthzConfig,
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413 `request_too_large`.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// A client must send its complete request head within this time: from accept for the
    /// first request of a connection (whatever its protocol), from its first byte for later ones.
    pub header_read_timeout: ConfigDuration,
    /// A connection with no request in flight is closed after this long: HTTP/1 keep-alive
    /// between requests, HTTP/2 with no open stream.
    pub idle_timeout: ConfigDuration,
    /// Longest silence while a request body is read, and the grace before `min_body_rate`
    /// applies; a body too slow for either gets 408 `request_timeout`.
    pub body_read_timeout: ConfigDuration,
    /// Bytes per second a request body must average once `body_read_timeout` has passed
    /// (0 = no minimum rate).
    pub min_body_rate: u64,
    /// Open connections on this listener; more are shed with a 503 and closed.
    pub max_connections: usize,
    /// Open connections from one client address (peers in `trusted_proxies` are exempt);
    /// 0 = no per-address cap.
    pub max_connections_per_client: usize,
    /// HTTP/2: how often an idle connection is pinged; a ping unanswered for as long closes it.
    pub http2_keepalive_interval: ConfigDuration,
    /// HTTP/2: streams one connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// Deepest nesting of arrays and objects accepted in a request body.
    pub max_json_depth: usize,
    /// On SIGTERM, how long the listeners keep accepting while `/readyz` answers 503 and
    /// every HTTP/1 answer says `Connection: close`, so that a load balancer stops sending and
    /// keep-alive clients move on with an answer, before the drain begins. 0 = drain at once.
    pub drain_delay: ConfigDuration,
    /// Then in-flight requests (streams included) get this long to finish.
    pub shutdown_timeout: ConfigDuration,
    /// Peers whose forwarded-for header is believed when finding the client address.
    pub trusted_proxies: Vec<IpNet>,
    /// Which header a trusted proxy names the client in.
    pub forwarded_header: ForwardedHeader,
    /// TLS termination; absent = plain HTTP.
    pub tls: Option<crate::TlsConfig>,
}

/// The header that carries the client address through trusted proxies. Only the configured one
/// is read: a client could send the other one itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            header_read_timeout: ConfigDuration(Duration::from_secs(10)),
            idle_timeout: ConfigDuration(Duration::from_secs(60)),
            body_read_timeout: ConfigDuration(Duration::from_secs(10)),
            min_body_rate: 32 * 1024,
            max_connections: 10_000,
            max_connections_per_client: 256,
            http2_keepalive_interval: ConfigDuration(Duration::from_secs(20)),
            http2_max_concurrent_streams: 128,
            max_json_depth: 64,
            drain_delay: ConfigDuration(Duration::ZERO),
            shutdown_timeout: ConfigDuration(Duration::from_secs(30)),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Open connections on the admin listener, counted apart from the proxy's so that a flood
    /// of clients never locks operators out.
    pub max_connections: usize,
    /// Open admin connections from one address; 0 = no per-address cap.
    pub max_connections_per_client: usize,
    /// TLS termination; absent = plain HTTP. A client CA here only gates the transport: admin
    /// callers still authenticate with admin tokens.
    pub tls: Option<crate::TlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_connections: 256,
            max_connections_per_client: 64,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` (relative to the working directory) or `postgres://…`.
    #[serde(serialize_with = "crate::fingerprint::secret")]
    pub url: Secret<String>,
    /// PostgreSQL connections per replica.
    pub pool_size: u32,
    /// How often the change log is read when no notification arrived: the bound on how long a
    /// missed notification can keep a changed key or team cached.
    pub change_poll: ConfigDuration,
    /// A cached key or team older than this is read again from the store on its next use; while
    /// the store is unreachable the cached copy keeps serving.
    pub cache_max_age: ConfigDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://portcullis.db".into()),
            pool_size: 16,
            change_poll: ConfigDuration(Duration::from_secs(5)),
            cache_max_age: ConfigDuration(Duration::from_secs(60)),
        }
    }
}

/// Where `store.url` points, as `serve` opens it: the one reading of the URL, so that `config
/// check` refuses exactly what `serve` would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation<'a> {
    /// `sqlite://path` or `sqlite:path` (relative to the working directory).
    Sqlite(&'a std::path::Path),
    /// `postgres://…` or `postgresql://…`.
    Postgres(&'a str),
}

impl StoreConfig {
    /// `store.url` read, or why it cannot be.
    pub fn location(&self) -> Result<StoreLocation<'_>, String> {
        StoreLocation::parse(self.url.expose())
    }
}

impl<'a> StoreLocation<'a> {
    /// The one reading of a store URL.
    pub fn parse(url: &'a str) -> Result<StoreLocation<'a>, String> {
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            return match path {
                "" => Err("names no SQLite file".into()),
                path => Ok(StoreLocation::Sqlite(std::path::Path::new(path))),
            };
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(url));
        }
        let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
        Err(format!("scheme {scheme:?} is not supported; use sqlite:// or postgres://"))
    }
}

impl StoreLocation<'_> {
    /// Whether what the location needs on this host is there: a SQLite file's directory (SQLite
    /// creates the file, not its directory). `serve` and `config check` both say this.
    pub fn check_host(&self) -> Result<(), String> {
        let StoreLocation::Sqlite(path) = self else { return Ok(()) };
        match path.parent().filter(|directory| !directory.as_os_str().is_empty()) {
            Some(directory) if !directory.is_dir() => Err(format!(
                "store.url: the directory {} does not exist (SQLite creates the file, not its directory): \
                 create it, or point store.url elsewhere",
                directory.display()
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterBackend {
    Memory,
    Redis,
}

/// What a shared (Redis) limiter does while its backend is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendError {
    /// Refuse with 503 and `Retry-After`: limits never loosen.
    Deny,
    /// Count in this replica alone, every limit divided by `limits.replicas`.
    Local,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub backend: LimiterBackend,
    #[serde(serialize_with = "crate::fingerprint::optional")]
    pub redis_url: Option<Secret<String>>,
    /// Every Redis key starts with `{prefix}:`, so several gateways can share one Redis.
    pub redis_prefix: String,
    /// The longest a Redis call may take before it counts as an outage.
    pub redis_timeout: ConfigDuration,
    /// A reservation whose replica stopped renewing it (it died) is released and charged in full
    /// after this long.
    pub reservation_lease: ConfigDuration,
    pub on_backend_error: OnBackendError,
    /// Replicas in the fleet; `on_backend_error = "local"` divides every limit by it.
    pub replicas: u32,
    /// Completion tokens reserved, and sent upstream as the cap, when a request names none.
    pub default_max_tokens: u64,
    /// Tier of a key created without one (and whose team names none).
    pub default_tier: String,
    /// Limits over all traffic together, on top of every key's and team's own.
    pub global: LimitOverrides,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            backend: LimiterBackend::Memory,
            redis_url: None,
            redis_prefix: "portcullis".into(),
            redis_timeout: ConfigDuration(Duration::from_millis(250)),
            reservation_lease: ConfigDuration(Duration::from_secs(30)),
            on_backend_error: OnBackendError::Deny,
            replicas: 1,
            default_max_tokens: 1024,
            default_tier: "free".into(),
            global: LimitOverrides::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDurability {
    Async,
    Sync,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub durability: AuditDurability,
    /// An extra JSON Lines sink with the same records.
    pub file: Option<String>,
    /// Also write every record as a JSON line to standard output (for containers).
    pub stdout: bool,
    /// This node's name in its records; one hash chain per node. Default: the host name.
    pub node: Option<String>,
    /// Where records go while the store is unreachable, to be replayed into it once it is back.
    pub spill_file: String,
    /// Records older than this are deleted (a checkpoint keeps what remains verifiable).
    pub retention: Option<ConfigDuration>,
    /// Regexes masked as `[REDACTED:custom]` in captured content, after the built-in rules.
    pub redact: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            durability: AuditDurability::Async,
            file: None,
            stdout: false,
            node: None,
            spill_file: "portcullis-audit-spill.jsonl".into(),
            retention: None,
            redact: Vec::new(),
        }
    }
}

/// Credentials Portcullis did not issue: OAuth 2.0 / OIDC access tokens and client certificates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How often the issuers' key sets are fetched again when their answer gives no `max-age`.
    #[serde(default = "crate::oidc::default_jwks_refresh_interval")]
    pub jwks_refresh_interval: ConfigDuration,
    /// Token issuers, tried by the token's `iss` (JWTs) or in this order (opaque tokens).
    #[serde(default)]
    pub oidc: Vec<crate::oidc::OidcIssuerConfig>,
    /// Client certificate → principal rules; the first match wins.
    #[serde(default)]
    pub certificates: Vec<crate::CertificateMapping>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwks_refresh_interval: crate::oidc::default_jwks_refresh_interval(),
            oidc: Vec::new(),
            certificates: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// When set, key and token hashes are HMAC-SHA-256 with this pepper instead of SHA-256,
    /// so a stolen database alone cannot confirm a guessed key.
    #[serde(serialize_with = "crate::fingerprint::optional")]
    pub key_pepper: Option<Secret<String>>,
    /// Failed authentications from one client address within `auth_failure_window` that get
    /// the address blocked; 0 turns blocking off.
    pub auth_failure_limit: u32,
    pub auth_failure_window: ConfigDuration,
    /// How long a blocked address is refused (429 with `Retry-After`).
    pub block_duration: ConfigDuration,
    /// A key whose requests in one minute exceed this many times its own recent per-minute
    /// average (and at least `anomaly_min_requests`) produces an `anomaly` audit record.
    pub anomaly_factor: f64,
    pub anomaly_min_requests: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            key_pepper: None,
            auth_failure_limit: 20,
            auth_failure_window: ConfigDuration(Duration::from_secs(60)),
            block_duration: ConfigDuration(Duration::from_secs(300)),
            anomaly_factor: 10.0,
            anomaly_min_requests: 60,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
    /// Currency units; 0 means no paid usage at all.
    #[serde(default)]
    pub budget_per_day: Option<f64>,
    #[serde(default)]
    pub budget_per_month: Option<f64>,
    /// Instant allowance of the per-minute request limit; defaults to the whole minute's worth.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Higher is served first when a model server is saturated.
    #[serde(default)]
    pub priority: i64,
    /// Model globs this tier may use; empty means every model.
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// What clients send in `model`.
    pub name: String,
    /// What the model server calls it; defaults to `name`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Origins (optionally with a path prefix) of the servers in this model's pool.
    pub endpoints: Vec<Url>,
    /// Bearer token sent upstream in place of the client's credential.
    #[serde(default, serialize_with = "crate::fingerprint::optional")]
    pub api_key: Option<Secret<String>>,
    /// Requests in flight per endpoint; more wait or are shed with 503 `overloaded`.
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    /// Longest a request waits in the model's queue for a free endpoint slot; more than zero.
    #[serde(default = "defaults::queue_timeout")]
    pub queue_timeout: ConfigDuration,
    /// Requests that may wait for a slot when every endpoint is at `max_concurrent`; 0 sheds
    /// them at once. Only used when `max_concurrent` is set.
    #[serde(default = "defaults::queue_size")]
    pub queue_size: usize,
    #[serde(default)]
    pub price: Price,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    #[serde(default)]
    pub ejection: EjectionConfig,
    /// Further attempts on other endpoints while nothing has reached the client.
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Models tried, in order, when this one's whole pool fails.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// The completion-cap field this model's server reads, written into every request that
    /// names none; overrides the `server` dialect's choice (`"max_completion_tokens"` for an
    /// OpenAI model that refuses `max_tokens`).
    #[serde(default)]
    pub max_tokens_field: Option<String>,
    /// The most bytes one server-sent event of this model's streams may hold; a longer one ends
    /// the stream with an error event.
    #[serde(default = "defaults::max_event_bytes")]
    pub max_event_bytes: usize,
    /// Request fields that steer a server or proxy (`api_base`, `api_key`, `extra_headers`, …)
    /// this model's upstream may receive; every other such field is removed from the body.
    #[serde(default)]
    pub passthrough_fields: Vec<String>,
    /// What kind of server this model's endpoints are: it decides which cap fields the server
    /// obeys, how it reports usage in streams, and where its optional endpoints live.
    #[serde(default)]
    pub server: ModelServer,
    /// Server endpoints beyond the OpenAI and Anthropic inference APIs this model serves; none
    /// unless named here (a client cannot reach what the operator did not open).
    #[serde(default)]
    pub extra_apis: Vec<ExtraApi>,
    /// Answer with the model server's own model name instead of the name the client asked for.
    #[serde(default)]
    pub expose_upstream_model: bool,
    /// Counts a prompt's tokens so that its reservation is close to its real size; without one
    /// the prompt is bounded by the request's bytes.
    #[serde(default)]
    pub tokenizer: Option<TokenizerSource>,
    /// Tokens the model's chat template adds to every prompt beyond the gateway's allowance
    /// (a default system prompt, say); only read with a `tokenizer`.
    #[serde(default)]
    pub template_tokens: u64,
}

/// Where a model's tokenizer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerSource {
    /// The model server's own tokenize endpoint (llama.cpp, vLLM and TGI have one).
    Server,
}

impl ModelServer {
    /// Whether the server has a tokenize endpoint for `tokenizer = "server"`.
    pub fn tokenizes(self) -> bool {
        matches!(self, ModelServer::Llamacpp | ModelServer::Vllm | ModelServer::Tgi)
    }
}

/// The kinds of model server Portcullis knows the dialect of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelServer {
    /// Any server that speaks the OpenAI API as OpenAI defines it.
    #[default]
    Openai,
    /// llama.cpp's `llama-server`.
    Llamacpp,
    Vllm,
    Ollama,
    /// Hugging Face Text Generation Inference.
    Tgi,
}

impl ModelServer {
    /// Where this kind of server serves `POST /v1/rerank`, if it does.
    pub fn rerank_path(self) -> Option<&'static str> {
        match self {
            ModelServer::Llamacpp | ModelServer::Vllm => Some("/v1/rerank"),
            ModelServer::Tgi => Some("/rerank"),
            ModelServer::Ollama | ModelServer::Openai => None,
        }
    }

    /// Where it serves `POST /v1/tokenize`, if it does.
    pub fn tokenize_path(self) -> Option<&'static str> {
        match self {
            ModelServer::Llamacpp | ModelServer::Vllm | ModelServer::Tgi => Some("/tokenize"),
            ModelServer::Ollama | ModelServer::Openai => None,
        }
    }

    /// Where it serves `POST /v1/detokenize`, if it does (TGI does not).
    pub fn detokenize_path(self) -> Option<&'static str> {
        match self {
            ModelServer::Llamacpp | ModelServer::Vllm => Some("/detokenize"),
            ModelServer::Tgi | ModelServer::Ollama | ModelServer::Openai => None,
        }
    }

    /// Whether it has the endpoint `api` opens (for tokenize: its `tokenize`).
    pub fn serves(self, api: ExtraApi) -> bool {
        match api {
            ExtraApi::Rerank => self.rerank_path().is_some(),
            ExtraApi::Tokenize => self.tokenize_path().is_some(),
        }
    }
}

/// An optional server endpoint a model may open to its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraApi {
    /// `POST /v1/rerank`.
    Rerank,
    /// `POST /v1/tokenize` and `POST /v1/detokenize`.
    Tokenize,
}

impl ModelConfig {
    pub fn upstream_model(&self) -> &str {
        self.upstream_model.as_deref().unwrap_or(&self.name)
    }
}

/// `models[].max_event_bytes` when not set: far above any event a model server sends for one
/// token, and far below what would strain the gateway's memory.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_million: f64,
    #[serde(default)]
    pub output_per_million: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    pub connect: ConfigDuration,
    /// Until the response head arrives.
    pub first_byte: ConfigDuration,
    /// Longest silence between two chunks of a response body.
    pub idle: ConfigDuration,
    /// The whole exchange, stream included.
    pub total: ConfigDuration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: ConfigDuration(Duration::from_secs(2)),
            first_byte: ConfigDuration(Duration::from_secs(60)),
            idle: ConfigDuration(Duration::from_secs(30)),
            total: ConfigDuration(Duration::from_secs(600)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    /// Requested with GET on each endpoint; any 2xx is healthy.
    pub path: String,
    pub interval: ConfigDuration,
    pub timeout: ConfigDuration,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/v1/models".into(),
            interval: ConfigDuration(Duration::from_secs(10)),
            timeout: ConfigDuration(Duration::from_secs(2)),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EjectionConfig {
    /// Consecutive failures (connection errors, timeouts, 502/503/504) that take an endpoint
    /// out. Other answers, 4xx and 500 included, are about the request, not the endpoint.
    pub consecutive_failures: u32,
    /// How long an ejected endpoint stays out before it gets traffic again.
    pub duration: ConfigDuration,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self { consecutive_failures: 3, duration: ConfigDuration(Duration::from_secs(30)) }
    }
}

impl TierConfig {
    /// The tier's limits in the shape teams and keys override.
    pub fn limits(&self) -> LimitOverrides {
        LimitOverrides {
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            max_concurrent: self.max_concurrent,
            tokens_per_day: self.tokens_per_day,
            tokens_per_month: self.tokens_per_month,
            budget_per_day: self.budget_per_day,
            budget_per_month: self.budget_per_month,
        }
    }
}

mod defaults {
    use super::*;

    pub fn queue_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(2))
    }

    pub fn queue_size() -> usize {
        64
    }

    pub fn retries() -> u32 {
        1
    }

    pub fn max_event_bytes() -> usize {
        super::DEFAULT_MAX_EVENT_BYTES
    }
}
