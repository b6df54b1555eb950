//! One trusted issuer: its settings, its endpoints (discovered or configured), its current key
//! set and the rules for fetching it again.
//!
//! The key set sits behind an `ArcSwap`: verification loads it without a lock and never waits
//! for the network. Fetches are serialised per issuer by an async mutex (single flight: misses
//! that arrive during a fetch wait for it and then use its result), and a miss may trigger a
//! fetch only once per `RefreshPolicy::min_interval` per issuer and within a global budget.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, Validation};
use portcullis_config::{JwtAlgorithm, OidcIssuerConfig};
use serde::Deserialize;

use crate::fetch::{self, FetchError};
use crate::keys::KeySet;
use crate::policy::{RefreshBudget, RefreshPolicy};

/// Endpoints from discovery (or configuration).
#[derive(Debug, Clone, Default)]
struct Endpoints {
    jwks_uri: Option<String>,
    introspection: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    introspection_endpoint: Option<String>,
}

/// When the next scheduled fetch is due and what the last one did.
#[derive(Debug)]
struct Schedule {
    /// The last fetch started (scheduled or on a miss): misses are rate-limited from it.
    last_attempt: Option<Instant>,
    next_refresh: Instant,
    failures: u32,
    last_error: Option<String>,
}

/// Counters for `/metrics`, read at scrape time.
#[derive(Debug, Default)]
pub struct IssuerCounters {
    pub jwks_ok: AtomicU64,
    pub jwks_error: AtomicU64,
    pub introspection_active: AtomicU64,
    pub introspection_inactive: AtomicU64,
    pub introspection_error: AtomicU64,
}

/// The issuer's state for `/readyz` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerHealth {
    pub name: String,
    /// Keys in the current set (0 until the first good fetch).
    pub keys: usize,
    /// The last fetch failed (the previous key set, if any, is still used).
    pub last_error: Option<String>,
    /// `Some(false)` when the last introspection call failed.
    pub introspection_ok: Option<bool>,
}

pub struct Issuer {
    pub config: OidcIssuerConfig,
    /// One validation per allowed algorithm: `jsonwebtoken` checks that all of a validation's
    /// algorithms are of the key's family, so each holds exactly the token's.
    validations: Vec<(Algorithm, Validation)>,
    client: reqwest::Client,
    endpoints: ArcSwap<Option<Endpoints>>,
    keys: ArcSwap<KeySet>,
    /// Bumped by every key set installed; a waiter that sees it move knows a fetch happened.
    generation: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
    schedule: Mutex<Schedule>,
    /// The last introspection call failed (until one succeeds).
    introspection_failing: AtomicBool,
    pub counters: IssuerCounters,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("issuer", &self.config.issuer).field("keys", &self.keys.load().len()).finish()
    }
}

impl Issuer {
    pub fn new(config: OidcIssuerConfig, timeout: Duration) -> Issuer {
        let validations = config
            .algorithms
            .iter()
            .map(|alg| {
                let alg = algorithm(*alg);
                let mut validation = Validation::new(alg);
                validation.algorithms = vec![alg];
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                validation.set_issuer(&[&config.issuer]);
                validation.set_audience(config.audience.values());
                validation.leeway = config.leeway.0.as_secs();
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.validate_aud = true;
                (alg, validation)
            })
            .collect();
        let configured = config.jwks_uri.clone().map(|jwks_uri| Endpoints {
            jwks_uri: Some(jwks_uri),
            introspection: config.introspection.as_ref().and_then(|i| i.endpoint.clone()),
        });
        // Discovery is needed only for what is not configured.
        let endpoints = match configured {
            Some(endpoints) if config.introspection.is_none() || endpoints.introspection.is_some() => Some(endpoints),
            _ => None,
        };
        Issuer {
            validations,
            client: fetch::client(timeout),
            endpoints: ArcSwap::from_pointee(endpoints),
            keys: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
            schedule: Mutex::new(Schedule {
                last_attempt: None,
                next_refresh: Instant::now(),
                failures: 0,
                last_error: None,
            }),
            introspection_failing: AtomicBool::new(false),
            counters: IssuerCounters::default(),
            config,
        }
    }

    pub fn name(&self) -> &str {
        self.config.name()
    }

    /// The rules for a token signed with `alg`, if the issuer allows it.
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations.iter().find(|(allowed, _)| *allowed == alg).map(|(_, validation)| validation)
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Fetches the key set again after a miss, if the rules allow. Returns once a set newer than
    /// the one the miss saw is installed (by this call or one it waited for), or nothing is.
    pub async fn refresh_after_miss(&self, policy: &RefreshPolicy, budget: &RefreshBudget) {
        let seen = self.generation.load(Ordering::Acquire);
        let _flight = self.fetching.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return;
        }
        {
            let mut schedule = lock(&self.schedule);
            let now = Instant::now();
            if schedule.last_attempt.is_some_and(|at| now.duration_since(at) < policy.min_interval) {
                return;
            }
            if !budget.take(now) {
                return;
            }
            schedule.last_attempt = Some(now);
        }
        self.fetch_keys(policy).await;
    }

    /// The background refresh: fetches when due, unless a fetch is under way.
    pub async fn refresh_if_due(&self, policy: &RefreshPolicy) {
        if !self.is_due() {
            return;
        }
        let Ok(_flight) = self.fetching.try_lock() else { return };
        // A fetch that ended between the check and the lock has just moved the schedule.
        if !self.is_due() {
            return;
        }
        lock(&self.schedule).last_attempt = Some(Instant::now());
        self.fetch_keys(policy).await;
    }

    fn is_due(&self) -> bool {
        lock(&self.schedule).next_refresh <= Instant::now()
    }

    /// Fetches and installs the key set; on failure the last good one stays.
    async fn fetch_keys(&self, policy: &RefreshPolicy) {
        let result = self.try_fetch_keys().await;
        let mut schedule = lock(&self.schedule);
        let now = Instant::now();
        match result {
            Ok(max_age) => {
                self.counters.jwks_ok.fetch_add(1, Ordering::Relaxed);
                schedule.failures = 0;
                schedule.last_error = None;
                schedule.next_refresh = now + policy.refresh_after(max_age);
            }
            Err(error) => {
                self.counters.jwks_error.fetch_add(1, Ordering::Relaxed);
                schedule.failures = schedule.failures.saturating_add(1);
                schedule.last_error = Some(error.to_string());
                schedule.next_refresh = now + policy.retry_after(schedule.failures);
                tracing::warn!(issuer = self.name(), error = %error, "fetching the issuer's keys failed; the last good keys stay");
            }
        }
    }

    async fn try_fetch_keys(&self) -> Result<Option<Duration>, FetchError> {
        let endpoints = self.endpoints().await?;
        let jwks_uri = endpoints.jwks_uri.ok_or_else(|| FetchError::Mismatch("discovery names no jwks_uri".into()))?;
        let fetched = fetch::get(&self.client, &jwks_uri).await?;
        let set = KeySet::parse(&fetched.body).ok_or(FetchError::Garbage("a JWKS"))?;
        // A set without one usable key is as good as garbage: keep what works.
        if set.is_empty() {
            return Err(FetchError::Garbage("a JWKS with a usable signature key"));
        }
        self.keys.store(Arc::new(set));
        self.generation.fetch_add(1, Ordering::Release);
        Ok(fetched.max_age)
    }

    /// The configured endpoints, else discovery's (fetched once, then kept).
    async fn endpoints(&self) -> Result<Endpoints, FetchError> {
        if let Some(known) = self.endpoints.load().as_ref() {
            return Ok(known.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let fetched = fetch::get(&self.client, &url).await?;
        let discovery: Discovery =
            serde_json::from_slice(&fetched.body).map_err(|_| FetchError::Garbage("a discovery document"))?;
        if discovery.issuer != self.config.issuer {
            return Err(FetchError::Mismatch(format!(
                "discovery names issuer {:?}, not the configured one",
                discovery.issuer
            )));
        }
        let introspection = self.config.introspection.as_ref();
        let endpoints = Endpoints {
            jwks_uri: self.config.jwks_uri.clone().or(discovery.jwks_uri),
            introspection: introspection.and_then(|i| i.endpoint.clone()).or(discovery.introspection_endpoint),
        };
        self.endpoints.store(Arc::new(Some(endpoints.clone())));
        Ok(endpoints)
    }

    /// The introspection endpoint (configured or discovered).
    pub(crate) async fn introspection_endpoint(&self) -> Result<String, FetchError> {
        self.endpoints()
            .await?
            .introspection
            .ok_or_else(|| FetchError::Mismatch("discovery names no introspection_endpoint".into()))
    }

    pub(crate) fn introspection_result(&self, ok: bool) {
        self.introspection_failing.store(!ok, Ordering::Relaxed);
    }

    pub fn health(&self) -> IssuerHealth {
        let schedule = lock(&self.schedule);
        IssuerHealth {
            name: self.name().to_string(),
            keys: self.keys.load().len(),
            last_error: schedule.last_error.clone(),
            introspection_ok: self
                .config
                .introspection
                .as_ref()
                .map(|_| !self.introspection_failing.load(Ordering::Relaxed)),
        }
    }
}

/// The config's algorithm as `jsonwebtoken` names it.
pub fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// A poisoned schedule is still a schedule: every writer leaves it consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
