//! The set of trusted issuers and the one entry point the gateway calls: a bearer credential
//! that is not a Portcullis key in, an identity or a refusal out.
//!
//! Verified identities are cached under the SHA-256 of the whole token until the token expires
//! (an introspected one for at most `cache_ttl`), so a token seen before costs a hash and a map
//! lookup. The cache belongs to this set: a reload builds a new set (keeping the key sets of
//! unchanged issuers) and so forgets identities mapped under the old rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Validation};
use portcullis_auth::ExternalIdentity;
use portcullis_config::AuthLive;
use sha2::{Digest, Sha256};

use crate::claims::{self, MappedField};
use crate::introspection;
use crate::issuer::{Issuer, IssuerHealth};
use crate::policy::{RefreshBudget, RefreshPolicy};
use crate::refusal::Refusal;
use crate::unverified::{self, MAX_TOKEN_BYTES};

/// Identities cached at most (each a few hundred bytes).
const CACHE_CAPACITY: u64 = 100_000;

/// What a token was taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Jwt,
    Opaque,
}

/// Everything `explain` can say about a token, without calling a model.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub kind: TokenKind,
    /// The issuer whose rules applied (its `issuer`, the tokens' `iss`), if one matched.
    pub issuer: Option<String>,
    /// That issuer's configured `name` (principal ids are `oidc:<name>:<sub>`).
    pub issuer_name: Option<String>,
    /// Each mapped field, as far as mapping got.
    pub mapping: Vec<MappedField>,
    pub outcome: Result<ExternalIdentity, Refusal>,
}

/// Outcomes of verifications, for `/metrics`.
const OUTCOMES: [&str; 14] = [
    "ok",
    "cached",
    "malformed",
    "unknown_issuer",
    "algorithm_not_allowed",
    "invalid_claim",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "unknown_key",
    "bad_signature",
    "not_allowed",
    "inactive",
    "unavailable",
];

/// Counters that outlive reloads (handed from one set to the next).
#[derive(Debug, Default)]
struct Shared {
    outcomes: [AtomicU64; OUTCOMES.len()],
}

impl Shared {
    fn count(&self, outcome: &str) {
        if let Some(index) = OUTCOMES.iter().position(|known| *known == outcome) {
            self.outcomes[index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Per issuer, for `/metrics`: `(issuer name, counter, outcome, value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerMetric {
    pub issuer: String,
    pub metric: &'static str,
    pub outcome: &'static str,
    pub value: u64,
}

#[derive(Debug, Clone)]
struct Cached {
    identity: Arc<ExternalIdentity>,
    ttl: Duration,
}

struct CachedUntil;

impl moka::Expiry<[u8; 32], Cached> for CachedUntil {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Cached, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The trusted issuers. Cheap to clone.
#[derive(Clone)]
pub struct Verifier(Arc<Inner>);

struct Inner {
    issuers: Vec<Arc<Issuer>>,
    by_iss: HashMap<String, Arc<Issuer>>,
    policy: RefreshPolicy,
    budget: Arc<RefreshBudget>,
    identities: moka::sync::Cache<[u8; 32], Cached>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("issuers", &self.0.issuers).finish_non_exhaustive()
    }
}

impl Verifier {
    /// The issuers of `auth`, keeping the key sets and counters of `previous`'s unchanged ones.
    /// Inside a Tokio runtime this also starts the background refresh (discovery and keys, at
    /// once and then on schedule); it stops when the set is dropped.
    pub fn new(auth: &AuthLive, previous: Option<&Verifier>) -> Verifier {
        Verifier::with_policy(auth, previous, RefreshPolicy::new(auth.jwks_refresh_interval.0))
    }

    pub fn with_policy(auth: &AuthLive, previous: Option<&Verifier>, policy: RefreshPolicy) -> Verifier {
        let reusable: HashMap<String, &Arc<Issuer>> = previous
            .map(|previous| previous.0.issuers.iter().map(|issuer| (fingerprint(&issuer.config), issuer)).collect())
            .unwrap_or_default();
        let issuers: Vec<Arc<Issuer>> = auth
            .oidc
            .iter()
            .map(|config| match reusable.get(&fingerprint(config)) {
                Some(kept) => Arc::clone(kept),
                None => Arc::new(Issuer::new(config.clone(), policy.timeout)),
            })
            .collect();
        let by_iss = issuers.iter().map(|issuer| (issuer.config.issuer.clone(), Arc::clone(issuer))).collect();
        let inner = Arc::new(Inner {
            by_iss,
            issuers,
            budget: previous.map_or_else(
                || Arc::new(RefreshBudget::new(policy.global_per_minute)),
                |previous| Arc::clone(&previous.0.budget),
            ),
            policy,
            identities: moka::sync::Cache::builder().max_capacity(CACHE_CAPACITY).expire_after(CachedUntil).build(),
            shared: previous.map_or_else(Arc::default, |previous| Arc::clone(&previous.0.shared)),
        });
        if !inner.issuers.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(refresh_loop(Arc::downgrade(&inner)));
        }
        Verifier(inner)
    }

    /// No issuer is configured: bearer credentials are keys or nothing.
    pub fn is_empty(&self) -> bool {
        self.0.issuers.is_empty()
    }

    /// Verifies a token (a JWT by its issuer's keys, else by introspection), from the cache
    /// when it was verified before and has not expired.
    pub async fn verify(&self, token: &str) -> Result<Arc<ExternalIdentity>, Refusal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some(cached) = self.0.identities.get(&key)
            && cached.identity.expires_at.is_none_or(|end| now < end)
        {
            self.0.shared.count("cached");
            return Ok(cached.identity);
        }
        let result = self.check(token, now, &mut Trace::default()).await;
        self.0.shared.count(result.as_ref().map_or_else(Refusal::code, |_| "ok"));
        let (identity, ttl) = result?;
        let identity = Arc::new(identity);
        if !ttl.is_zero() {
            self.0.identities.insert(key, Cached { identity: Arc::clone(&identity), ttl });
        }
        Ok(identity)
    }

    /// What verifying `token` decides and why, step by step; the cache is not consulted.
    pub async fn explain(&self, token: &str) -> Explanation {
        let mut trace = Trace::default();
        let kind = if unverified::is_jwt_shaped(token) { TokenKind::Jwt } else { TokenKind::Opaque };
        let outcome = self.check(token, unix_now(), &mut trace).await.map(|(identity, _)| identity);
        let (issuer, issuer_name) = trace.issuer.map(|(issuer, name)| (Some(issuer), Some(name))).unwrap_or_default();
        Explanation { kind, issuer, issuer_name, mapping: trace.mapping, outcome }
    }

    async fn check(&self, token: &str, now: i64, trace: &mut Trace) -> Result<(ExternalIdentity, Duration), Refusal> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Malformed("empty or too long"));
        }
        if unverified::is_jwt_shaped(token) {
            self.check_jwt(token, now, trace).await
        } else {
            self.introspect(token, now, trace).await
        }
    }

    async fn check_jwt(
        &self,
        token: &str,
        now: i64,
        trace: &mut Trace,
    ) -> Result<(ExternalIdentity, Duration), Refusal> {
        let peeked = unverified::peek(token)?;
        let iss = unverified::issuer(&peeked.claims)?;
        let issuer = self.0.by_iss.get(iss).ok_or(Refusal::UnknownIssuer)?;
        trace.matched(issuer);
        let (alg, validation) = allowed_algorithm(issuer, &peeked.alg)?;
        // Everything that can refuse the token without its key, before a key is looked up (and
        // perhaps fetched): a doomed token never causes a fetch.
        let registered = unverified::registered(&peeked.claims)?;
        let leeway = issuer.config.leeway.0.as_secs() as i64;
        if registered.exp.saturating_add(leeway) <= now {
            return Err(Refusal::Expired);
        }
        if registered.nbf.is_some_and(|nbf| nbf.saturating_sub(leeway) > now) {
            return Err(Refusal::NotYetValid);
        }
        let audiences = issuer.config.audience.values();
        if !registered.aud.iter().any(|aud| audiences.iter().any(|want| want == aud)) {
            return Err(Refusal::WrongAudience);
        }
        let keys = self.keys_for(issuer, peeked.kid.as_deref(), alg).await?;
        let key = keys.find(peeked.kid.as_deref(), alg).ok_or(Refusal::UnknownKey)?;
        if !key.verifies(alg) {
            return Err(Refusal::AlgorithmNotAllowed(format!("{alg:?} with a key of another type")));
        }
        jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, validation)
            .map_err(|error| refusal(&error, alg))?;
        let exp = registered.exp;
        let identity = claims::identity(&issuer.config, &peeked.claims, token, Some(exp), &mut trace.mapping)?;
        Ok((identity, Duration::from_secs(u64::try_from(exp - now).unwrap_or(0))))
    }

    /// The issuer's key set, fetched again first if it lacks the token's key and the rules allow.
    async fn keys_for(
        &self,
        issuer: &Issuer,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<arc_swap::Guard<Arc<crate::keys::KeySet>>, Refusal> {
        let keys = issuer.keys();
        if keys.find(kid, alg).is_some() {
            return Ok(keys);
        }
        drop(keys);
        issuer.refresh_after_miss(&self.0.policy, &self.0.budget).await;
        let keys = issuer.keys();
        // Never fetched (and not now either): the token may be good, so not "unknown key".
        if keys.is_empty() {
            return Err(Refusal::Unavailable("the issuer's keys could not be fetched"));
        }
        Ok(keys)
    }

    /// Opaque tokens: the introspecting issuers in order; the first active answer wins.
    async fn introspect(
        &self,
        token: &str,
        now: i64,
        trace: &mut Trace,
    ) -> Result<(ExternalIdentity, Duration), Refusal> {
        let mut refusal = Refusal::UnknownIssuer;
        for issuer in self.0.issuers.iter().filter(|issuer| issuer.config.introspection.is_some()) {
            trace.matched(issuer);
            trace.mapping.clear();
            match introspection::introspect(issuer, token, now, &mut trace.mapping).await {
                Ok(found) => return Ok(found),
                // An unreachable endpoint outranks "inactive" elsewhere: the token may be good.
                Err(error) if error.is_unavailable() || matches!(refusal, Refusal::UnknownIssuer) => refusal = error,
                Err(_) => {}
            }
        }
        if matches!(refusal, Refusal::UnknownIssuer) {
            trace.issuer = None;
        }
        Err(refusal)
    }

    /// Each issuer's state, for `/readyz`.
    pub fn health(&self) -> Vec<IssuerHealth> {
        self.0.issuers.iter().map(|issuer| issuer.health()).collect()
    }

    /// Verification outcomes so far (`ok`, `cached`, or a [`Refusal::code`]).
    pub fn verification_counts(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES
            .iter()
            .zip(&self.0.shared.outcomes)
            .map(|(name, count)| (*name, count.load(Ordering::Relaxed)))
            .collect()
    }

    /// JWKS fetches and introspection calls per issuer and outcome.
    pub fn issuer_counts(&self) -> Vec<IssuerMetric> {
        let mut metrics = Vec::new();
        for issuer in &self.0.issuers {
            let counters = &issuer.counters;
            for (metric, outcome, counter) in [
                ("jwks_fetches", "ok", &counters.jwks_ok),
                ("jwks_fetches", "error", &counters.jwks_error),
                ("introspections", "active", &counters.introspection_active),
                ("introspections", "refused", &counters.introspection_inactive),
                ("introspections", "error", &counters.introspection_error),
            ] {
                let value = counter.load(Ordering::Relaxed);
                metrics.push(IssuerMetric { issuer: issuer.name().to_string(), metric, outcome, value });
            }
        }
        metrics
    }
}

#[derive(Debug, Default)]
struct Trace {
    /// The matched issuer's `issuer` and `name`.
    issuer: Option<(String, String)>,
    mapping: Vec<MappedField>,
}

impl Trace {
    fn matched(&mut self, issuer: &Issuer) {
        self.issuer = Some((issuer.config.issuer.clone(), issuer.name().to_string()));
    }
}

/// The header's `alg`, if the issuer allows it (which `none` and `HS*` never are).
fn allowed_algorithm<'a>(issuer: &'a Issuer, alg: &str) -> Result<(Algorithm, &'a Validation), Refusal> {
    let not_allowed = || Refusal::AlgorithmNotAllowed(alg.chars().take(16).collect());
    let parsed: Algorithm = alg.parse().map_err(|_| not_allowed())?;
    issuer.validation(parsed).map(|validation| (parsed, validation)).ok_or_else(not_allowed)
}

fn refusal(error: &jsonwebtoken::errors::Error, alg: Algorithm) -> Refusal {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidIssuer => Refusal::UnknownIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            Refusal::AlgorithmNotAllowed(format!("{alg:?} (for this key)"))
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            Refusal::InvalidClaim { claim: claim.clone(), problem: "is required" }
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            Refusal::InvalidClaim { claim: claim.clone(), problem: "has the wrong type" }
        }
        _ => Refusal::Malformed("not a valid JWS"),
    }
}

/// Settings equal (a secret compares by its in-process fingerprint): the issuer can be kept.
fn fingerprint(config: &portcullis_config::OidcIssuerConfig) -> String {
    serde_json::to_string(config).unwrap_or_default()
}

/// Fetches every issuer's keys at once and then on schedule, for as long as the set lives.
async fn refresh_loop(set: Weak<Inner>) {
    loop {
        {
            let Some(set) = set.upgrade() else { return };
            for issuer in &set.issuers {
                let (issuer, policy) = (Arc::clone(issuer), set.policy.clone());
                tokio::spawn(async move { issuer.refresh_if_due(&policy).await });
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs() as i64)
}
