//! The verifier against a real HTTP identity provider written here: discovery, a JWKS and an
//! introspection endpoint on 127.0.0.1, each counting its calls and able to fail on demand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_auth::{Scope, Scopes};
use portcullis_config::{AuthLive, Config};
use serde_json::{Value, json};

use crate::{RefreshPolicy, Refusal, Verifier};

const EC_A: &[u8] = include_bytes!("../testdata/ec_a.pem");
const EC_B: &[u8] = include_bytes!("../testdata/ec_b.pem");
const RSA: &[u8] = include_bytes!("../testdata/rsa.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../testdata/rsa_public.pem");
const ED: &[u8] = include_bytes!("../testdata/ed25519.pem");

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Up,
    Down,
    Garbage,
}

struct ProviderState {
    issuer: Mutex<String>,
    keys: Mutex<Vec<Jwk>>,
    mode: Mutex<Mode>,
    max_age: Mutex<Option<u64>>,
    introspection: Mutex<Value>,
    discovery_calls: AtomicUsize,
    jwks_calls: AtomicUsize,
    introspection_calls: AtomicUsize,
    last_form: Mutex<String>,
}

struct Provider {
    url: String,
    state: Arc<ProviderState>,
}

impl Provider {
    async fn start() -> Provider {
        let state = Arc::new(ProviderState {
            issuer: Mutex::new(String::new()),
            keys: Mutex::new(Vec::new()),
            mode: Mutex::new(Mode::Up),
            max_age: Mutex::new(None),
            introspection: Mutex::new(json!({"active": false})),
            discovery_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            introspection_calls: AtomicUsize::new(0),
            last_form: Mutex::new(String::new()),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/introspect", post(introspect))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        *state.issuer.lock().unwrap() = url.clone();
        Provider { url, state }
    }

    fn publish(&self, key: &[u8], alg: Algorithm, kid: &str) {
        let mut jwk = Jwk::from_encoding_key(&encoding_key(key, alg), alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        self.state.keys.lock().unwrap().push(jwk);
    }

    fn mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn jwks_calls(&self) -> usize {
        self.state.jwks_calls.load(Ordering::SeqCst)
    }
}

async fn discovery(State(state): State<Arc<ProviderState>>) -> Response {
    state.discovery_calls.fetch_add(1, Ordering::SeqCst);
    if *state.mode.lock().unwrap() == Mode::Down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = state.issuer.lock().unwrap().clone();
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "introspection_endpoint": format!("{issuer}/introspect"),
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<ProviderState>>) -> Response {
    state.jwks_calls.fetch_add(1, Ordering::SeqCst);
    match *state.mode.lock().unwrap() {
        Mode::Down => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Garbage => return "<html>maintenance</html>".into_response(),
        Mode::Up => {}
    }
    let set = JwkSet { keys: state.keys.lock().unwrap().clone() };
    let mut headers = HeaderMap::new();
    if let Some(max_age) = *state.max_age.lock().unwrap() {
        headers.insert(header::CACHE_CONTROL, format!("max-age={max_age}").parse().unwrap());
    }
    (headers, axum::Json(set)).into_response()
}

async fn introspect(State(state): State<Arc<ProviderState>>, headers: HeaderMap, body: String) -> Response {
    state.introspection_calls.fetch_add(1, Ordering::SeqCst);
    if *state.mode.lock().unwrap() == Mode::Down {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("gateway:s3cret"));
    if headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()) != Some(expected.as_str()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    *state.last_form.lock().unwrap() = body;
    axum::Json(state.introspection.lock().unwrap().clone()).into_response()
}

fn encoding_key(pem: &[u8], alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
        _ => EncodingKey::from_secret(pem).unwrap(),
    }
}

fn now() -> i64 {
    crate::verifier::unix_now()
}

fn sign(pem: &[u8], alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &encoding_key(pem, alg)).unwrap()
}

fn claims(provider: &Provider) -> Value {
    json!({"iss": provider.url, "aud": "portcullis", "sub": "svc-1", "exp": now() + 600, "jti": "t-1"})
}

fn auth(provider: &Provider, extra: &str) -> AuthLive {
    let text =
        format!("[[auth.oidc]]\nissuer = \"{}\"\nname = \"acme\"\naudience = \"portcullis\"\n{extra}", provider.url);
    Config::parse(&text, |_| None).unwrap().split().1.auth
}

fn policy(min_interval: Duration) -> RefreshPolicy {
    RefreshPolicy { min_interval, ..RefreshPolicy::new(Duration::from_secs(300)) }
}

async fn provider_with_key() -> Provider {
    let provider = Provider::start().await;
    provider.publish(EC_A, Algorithm::ES256, "a");
    provider
}

#[tokio::test]
async fn a_good_token_of_each_default_algorithm_maps_to_its_identity() {
    let provider = provider_with_key().await;
    provider.publish(RSA, Algorithm::RS256, "r");
    provider.publish(ED, Algorithm::EdDSA, "e");
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::from_secs(10)));
    for (pem, alg, kid) in [(EC_A, Algorithm::ES256, "a"), (RSA, Algorithm::RS256, "r"), (ED, Algorithm::EdDSA, "e")] {
        let identity = verifier.verify(&sign(pem, alg, kid, &claims(&provider))).await.unwrap();
        assert_eq!(identity.id, "oidc:acme:svc-1");
        assert_eq!(identity.issuer, provider.url);
        assert_eq!(identity.credential_id, "t-1");
        assert_eq!(identity.scopes, Scopes::all());
        assert_eq!((identity.team.as_deref(), identity.tier.as_deref()), (None, None));
    }
    let mut without_jti = claims(&provider);
    without_jti.as_object_mut().unwrap().remove("jti");
    let token = sign(EC_A, Algorithm::ES256, "a", &without_jti);
    let identity = verifier.verify(&token).await.unwrap();
    assert_eq!(identity.credential_id, crate::token_hash_id(&token));
    assert_eq!(identity.credential_id.len(), "sha256:".len() + 32);
    assert!(!identity.credential_id.contains(&token[..20]));
}

#[tokio::test]
async fn forged_and_doomed_tokens_are_refused_each_for_its_reason() {
    let provider = provider_with_key().await;
    let verifier = Verifier::with_policy(
        &auth(&provider, "algorithms = [\"ES256\", \"RS256\"]"),
        None,
        policy(Duration::from_secs(10)),
    );
    let good = claims(&provider);
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &good)).await.unwrap();
    let with = |change: Value| {
        let mut claims = good.clone();
        for (name, value) in change.as_object().unwrap() {
            claims[name] = value.clone();
        }
        claims
    };
    let refused = |token: String| {
        let verifier = verifier.clone();
        async move { verifier.verify(&token).await.unwrap_err() }
    };
    // alg none: an unsigned token, with and without a signature segment.
    let unsigned = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"a"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    assert_eq!(refused(format!("{unsigned}.")).await, Refusal::UnknownIssuer, "not a JWT; nobody introspects");
    assert_eq!(refused(format!("{unsigned}.c2ln")).await.code(), "algorithm_not_allowed");
    // HS256 keyed with the issuer's public key.
    let confused = sign(RSA_PUBLIC, Algorithm::HS256, "a", &good);
    assert_eq!(refused(confused).await.code(), "algorithm_not_allowed");
    // An allowed algorithm that is not the key's.
    assert_eq!(refused(sign(RSA, Algorithm::RS256, "a", &good)).await.code(), "algorithm_not_allowed");
    let string_exp = with(json!({"exp": (now() + 600).to_string()}));
    assert_eq!(refused(sign(EC_A, Algorithm::ES256, "a", &string_exp)).await.code(), "invalid_claim");
    assert_eq!(
        refused(sign(EC_A, Algorithm::ES256, "a", &with(json!({"aud": "other"})))).await,
        Refusal::WrongAudience
    );
    assert_eq!(
        refused(sign(EC_A, Algorithm::ES256, "a", &with(json!({"aud": ["x", 1]})))).await.code(),
        "invalid_claim"
    );
    assert_eq!(
        refused(sign(EC_A, Algorithm::ES256, "a", &with(json!({"iss": "https://evil"})))).await,
        Refusal::UnknownIssuer
    );
    assert_eq!(refused(sign(EC_A, Algorithm::ES256, "a", &with(json!({"exp": now() - 60})))).await, Refusal::Expired);
    assert_eq!(
        refused(sign(EC_A, Algorithm::ES256, "a", &with(json!({"nbf": now() + 600})))).await,
        Refusal::NotYetValid
    );
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(refused(sign(EC_A, Algorithm::ES256, "a", &no_aud)).await.code(), "invalid_claim");
    // Within the leeway (30 s) an expired token still passes.
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &with(json!({"exp": now() - 5})))).await.unwrap();
    // Tampered payload: another subject under the original signature.
    let token = sign(EC_A, Algorithm::ES256, "a", &good);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(with(json!({"sub": "admin"})).to_string());
    assert_eq!(refused(format!("{}.{forged}.{}", parts[0], parts[2])).await, Refusal::BadSignature);
    // Truncated: a signature cut short, or a segment lost.
    let cut = refused(token[..token.len() - 4].to_string()).await;
    assert!(matches!(cut, Refusal::BadSignature | Refusal::Malformed(_)), "{cut:?}");
    assert_eq!(refused(format!("{}.{}", parts[0], parts[1])).await, Refusal::UnknownIssuer, "opaque now");
    assert_eq!(refused("not a token".into()).await, Refusal::UnknownIssuer, "opaque, and nobody introspects");
}

#[tokio::test]
async fn a_burst_of_unknown_kids_causes_a_handful_of_fetches_at_most() {
    let provider = provider_with_key().await;
    // One fetch per second at most: the burst may outlast a second on a slow machine.
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::from_secs(1)));
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let before = provider.jwks_calls();
    // Signing 10 000 tokens would take long in a debug build; the kid is refused before any
    // signature is looked at, so one signed token under 10 000 headers will do.
    let signed = sign(EC_A, Algorithm::ES256, "a", &claims(&provider));
    let body = signed.split_once('.').unwrap().1;
    let tokens: Vec<String> = (0..10_000)
        .map(|_| {
            let header = json!({"alg": "ES256", "typ": "JWT", "kid": format!("k{}", rand::random::<u64>())});
            format!("{}.{body}", URL_SAFE_NO_PAD.encode(header.to_string()))
        })
        .collect();
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let verifier = verifier.clone();
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap_err(), Refusal::UnknownKey);
    }
    let fetches = provider.jwks_calls() - before;
    assert!((1..=5).contains(&fetches), "{fetches} fetches for 10 000 unknown kids");
}

#[tokio::test]
async fn the_global_budget_caps_fetches_when_the_per_issuer_interval_would_not() {
    let provider = provider_with_key().await;
    let policy = RefreshPolicy { global_per_minute: 3, ..policy(Duration::ZERO) };
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy);
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    let before = provider.jwks_calls();
    for index in 0..50 {
        let token = sign(EC_A, Algorithm::ES256, &format!("x{index}"), &claims(&provider));
        assert_eq!(verifier.verify(&token).await.unwrap_err(), Refusal::UnknownKey);
    }
    assert!(provider.jwks_calls() - before <= 3, "{} fetches", provider.jwks_calls() - before);
}

#[tokio::test]
async fn a_doomed_token_with_an_unknown_kid_never_causes_a_fetch() {
    let provider = provider_with_key().await;
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::ZERO));
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    let before = provider.jwks_calls();
    let mut expired = claims(&provider);
    expired["exp"] = json!(now() - 3600);
    let mut foreign = claims(&provider);
    foreign["aud"] = json!("someone-else");
    let mut stranger = claims(&provider);
    stranger["iss"] = json!("https://elsewhere");
    for (claims, alg) in [(&expired, Algorithm::ES256), (&foreign, Algorithm::ES256), (&stranger, Algorithm::ES256)] {
        assert!(verifier.verify(&sign(EC_A, alg, "new-kid", claims)).await.is_err());
    }
    assert!(verifier.verify(&sign(RSA, Algorithm::PS256, "new-kid", &claims(&provider))).await.is_err());
    assert_eq!(provider.jwks_calls(), before);
}

#[tokio::test]
async fn a_rotation_is_picked_up_on_an_unknown_kid() {
    let provider = provider_with_key().await;
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::from_millis(100)));
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    provider.publish(EC_B, Algorithm::ES256, "b");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let identity = verifier.verify(&sign(EC_B, Algorithm::ES256, "b", &claims(&provider))).await.unwrap();
    assert_eq!(identity.subject, "svc-1");
}

#[tokio::test]
async fn an_unreachable_or_garbled_issuer_keeps_its_last_good_keys() {
    let provider = provider_with_key().await;
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::ZERO));
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    provider.publish(EC_B, Algorithm::ES256, "b");
    for mode in [Mode::Down, Mode::Garbage] {
        provider.mode(mode);
        let before = provider.jwks_calls();
        let new_kid = sign(EC_B, Algorithm::ES256, "b", &claims(&provider));
        assert_eq!(verifier.verify(&new_kid).await.unwrap_err(), Refusal::UnknownKey, "{mode:?}");
        assert!(provider.jwks_calls() > before, "the miss did try the issuer");
        let mut fresh = claims(&provider);
        fresh["jti"] = json!(format!("{mode:?}"));
        verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &fresh)).await.unwrap();
        let health = &verifier.health()[0];
        assert!(health.last_error.is_some() && health.keys == 1, "{health:?}");
    }
    provider.mode(Mode::Up);
    verifier.verify(&sign(EC_B, Algorithm::ES256, "b", &claims(&provider))).await.unwrap();
    assert_eq!(verifier.health()[0].last_error, None);
}

#[tokio::test]
async fn an_issuer_never_reached_is_unavailable_not_an_unknown_key() {
    let provider = provider_with_key().await;
    provider.mode(Mode::Down);
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::ZERO));
    let refusal = verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap_err();
    assert!(refusal.is_unavailable(), "{refusal:?}");
    provider.mode(Mode::Up);
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let provider = provider_with_key().await;
    *provider.state.issuer.lock().unwrap() = "https://impostor".into();
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::ZERO));
    assert!(
        verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap_err().is_unavailable()
    );
    assert!(verifier.health()[0].last_error.as_deref().unwrap().contains("impostor"));
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background_by_max_age() {
    let provider = provider_with_key().await;
    *provider.state.max_age.lock().unwrap() = Some(1);
    let _verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::ZERO));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let fetches = provider.jwks_calls();
    assert!((2..=5).contains(&fetches), "{fetches} background fetches in 3.5 s with max-age=1");
}

#[tokio::test]
async fn a_reload_keeps_the_keys_of_an_unchanged_issuer() {
    let provider = provider_with_key().await;
    let first = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::from_secs(10)));
    first.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    provider.mode(Mode::Down);
    let second = Verifier::with_policy(&auth(&provider, ""), Some(&first), policy(Duration::from_secs(10)));
    let mut fresh = claims(&provider);
    fresh["jti"] = json!("after-reload");
    second.verify(&sign(EC_A, Algorithm::ES256, "a", &fresh)).await.unwrap();
    let changed =
        Verifier::with_policy(&auth(&provider, "leeway = \"1s\""), Some(&second), policy(Duration::from_secs(10)));
    assert!(changed.verify(&sign(EC_A, Algorithm::ES256, "a", &fresh)).await.unwrap_err().is_unavailable());
}

#[tokio::test]
async fn claims_map_to_team_tier_models_and_scopes_within_the_allow_lists() {
    let provider = provider_with_key().await;
    let mapping = r#"
        default_team = "acme"
        default_tier = "free"
        allowed_teams = ["acme", "research-*"]
        allowed_tiers = ["free", "pro"]
        [auth.oidc.claims]
        team = "org.id"
        tier = "tier"
        models = "models"
        scopes = "scope"
        [auth.oidc.scope_map]
        "chat:write" = ["chat", "completions"]
    "#;
    let verifier = Verifier::with_policy(&auth(&provider, mapping), None, policy(Duration::from_secs(10)));
    let mut full = claims(&provider);
    full["org"] = json!({"id": "research-nlp"});
    full["tier"] = json!("pro");
    full["models"] = json!("gemma* llama3");
    full["scope"] = json!("openid chat:write models");
    let identity = verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &full)).await.unwrap();
    assert_eq!(identity.team.as_deref(), Some("research-nlp"));
    assert_eq!(identity.tier.as_deref(), Some("pro"));
    assert_eq!(identity.models.patterns(), ["gemma*", "llama3"]);
    assert!(identity.scopes.contains(Scope::Completions) && identity.scopes.contains(Scope::Models));
    assert!(!identity.scopes.contains(Scope::Embeddings));

    let bare = verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    assert_eq!((bare.team.as_deref(), bare.tier.as_deref()), (Some("acme"), Some("free")));
    assert!(bare.models.is_unrestricted());

    for (claim, value, refusal) in [
        ("tier", json!("enterprise"), Refusal::NotAllowed { field: "tier", value: "enterprise".into() }),
        ("org", json!({"id": "finance"}), Refusal::NotAllowed { field: "team", value: "finance".into() }),
    ] {
        let mut wrong = claims(&provider);
        wrong[claim] = value;
        assert_eq!(verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &wrong)).await.unwrap_err(), refusal);
    }
    let mut typed = claims(&provider);
    typed["models"] = json!([1, 2]);
    assert_eq!(verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &typed)).await.unwrap_err().code(), "invalid_claim");

    let explained = verifier.explain(&sign(EC_A, Algorithm::ES256, "a", &full)).await;
    assert_eq!(explained.issuer_name.as_deref(), Some("acme"));
    assert_eq!(explained.issuer.as_deref(), Some(provider.url.as_str()));
    let fields: Vec<(&str, &str)> = explained.mapping.iter().map(|field| (field.field, field.source.name())).collect();
    assert_eq!(fields, [("team", "claim"), ("tier", "claim"), ("models", "claim"), ("scopes", "claim")]);
    assert_eq!(explained.mapping[0].claim.as_deref(), Some("org.id"));
    assert!(explained.outcome.is_ok());
}

fn introspecting(provider: &Provider) -> AuthLive {
    auth(
        provider,
        "[auth.oidc.introspection]\nclient_id = \"gateway\"\nclient_secret = \"s3cret\"\ncache_ttl = \"60s\"",
    )
}

#[tokio::test]
async fn an_active_opaque_token_is_introspected_once_and_cached() {
    let provider = provider_with_key().await;
    *provider.state.introspection.lock().unwrap() =
        json!({"active": true, "iss": provider.url, "aud": ["portcullis"], "client_id": "batch", "exp": now() + 600});
    let verifier = Verifier::with_policy(&introspecting(&provider), None, policy(Duration::from_secs(10)));
    let identity = verifier.verify("opaque-token-1").await.unwrap();
    assert_eq!(identity.id, "oidc:acme:batch");
    assert_eq!(identity.credential_id, crate::token_hash_id("opaque-token-1"));
    assert!(provider.state.last_form.lock().unwrap().contains("token=opaque-token-1"));
    verifier.verify("opaque-token-1").await.unwrap();
    assert_eq!(provider.state.introspection_calls.load(Ordering::SeqCst), 1);
    // Another token with the same start is another cache entry.
    verifier.verify("opaque-token-10").await.unwrap();
    assert_eq!(provider.state.introspection_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_inactive_token_is_refused_at_once_and_never_cached() {
    let provider = provider_with_key().await;
    let verifier = Verifier::with_policy(&introspecting(&provider), None, policy(Duration::from_secs(10)));
    assert_eq!(verifier.verify("revoked").await.unwrap_err(), Refusal::Inactive);
    *provider.state.introspection.lock().unwrap() = json!({"active": true, "sub": "u", "aud": "elsewhere"});
    assert_eq!(verifier.verify("revoked").await.unwrap_err(), Refusal::WrongAudience);
    *provider.state.introspection.lock().unwrap() = json!({"active": true, "sub": "u", "iss": "https://other"});
    assert_eq!(verifier.verify("revoked").await.unwrap_err(), Refusal::UnknownIssuer);
    *provider.state.introspection.lock().unwrap() = json!({"active": true, "sub": "u", "exp": now() + 1});
    verifier.verify("short-lived").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(verifier.verify("short-lived").await.is_err(), "cached beyond its exp");
    assert_eq!(provider.state.introspection_calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn an_unreachable_introspection_endpoint_fails_closed_and_shows() {
    let provider = provider_with_key().await;
    let verifier = Verifier::with_policy(&introspecting(&provider), None, policy(Duration::from_secs(10)));
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    provider.mode(Mode::Down);
    let refusal = verifier.verify("never-seen").await.unwrap_err();
    assert!(refusal.is_unavailable(), "{refusal:?}");
    assert_eq!(verifier.health()[0].introspection_ok, Some(false));
    let errors = verifier.issuer_counts().into_iter().find(|m| m.metric == "introspections" && m.outcome == "error");
    assert_eq!(errors.unwrap().value, 1);
    assert!(verifier.verification_counts().contains(&("unavailable", 1)));
}

#[tokio::test]
async fn urls_in_the_token_header_are_never_fetched() {
    let provider = provider_with_key().await;
    let verifier = Verifier::with_policy(&auth(&provider, ""), None, policy(Duration::from_secs(10)));
    verifier.verify(&sign(EC_A, Algorithm::ES256, "a", &claims(&provider))).await.unwrap();
    let before = (provider.jwks_calls(), provider.state.discovery_calls.load(Ordering::SeqCst));
    // Signed by a key the issuer never published, pointing at "its" key set.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("a".into());
    header.jku = Some(format!("{}/jwks", provider.url));
    header.x5u = Some(format!("{}/.well-known/openid-configuration", provider.url));
    let token = jsonwebtoken::encode(&header, &claims(&provider), &encoding_key(EC_B, Algorithm::ES256)).unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap_err(), Refusal::BadSignature);
    assert_eq!((provider.jwks_calls(), provider.state.discovery_calls.load(Ordering::SeqCst)), before);
}
