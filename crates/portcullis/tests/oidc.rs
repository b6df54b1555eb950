//! OAuth 2.0 / OIDC access tokens through the real binary, against a real OIDC provider on
//! loopback (npm's `oidc-provider`, `portcullis_testkit::OidcProvider`; DESIGN §5, issue 15):
//! client-credentials JWTs accepted; forged, broken and mis-addressed tokens refused with 401
//! `invalid_token` and audited; key rotation and an unreachable provider; JWKS fetches under a
//! flood of unknown `kid`s; opaque tokens by RFC 7662 introspection (active, inactive, revoked
//! mid-cache, expired, endpoint down); claims → team, tier, models and scopes; a token
//! principal's own limits, and a team budget shared with a key under a race.
//!
//! The gateway's side is configured exactly as docs/identity-providers.md shows. Tokens with
//! wrong claims but a good signature come from the provider's test-only signing route
//! ([`OidcProvider::sign`]); tokens an attacker would make (unknown keys, `alg: none`, HS256
//! keyed with the public key) are made here.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{BINARY, Reply, chat_body, http, model_ids, send, the_record, wait_for_records};
use futures_util::StreamExt as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis_testkit::{
    Gateway, GatewayBuilder, INTROSPECTION_CLIENT_ID, INTROSPECTION_CLIENT_SECRET, IdpClient, OidcProvider, SigningAlg,
    StubUpstream, TcpRelay,
};
use serde_json::{Value, json};

/// `name` of the `[[auth.oidc]]` issuer: principals are `oidc:test-idp:<sub>`.
const ISSUER_NAME: &str = "test-idp";
const CHAT_SCOPES: &str = "chat:write models:read";
/// How long a test waits for the gateway to pick up a rotated key.
const ROTATION_WAIT: Duration = Duration::from_secs(90);

// --- the provider's clients -------------------------------------------------------------------

/// Every client the tests use; each token's `sub` is its client's id.
fn clients() -> Vec<IdpClient> {
    vec![
        // Team, tier and models all from claims.
        IdpClient::new(
            "svc-acme",
            CHAT_SCOPES,
            json!({"org_id": "acme", "tier": "pro", "models": ["gemma*", "llama*"]}),
        ),
        // Two subjects on the free tier of the same team.
        IdpClient::new("svc-free", CHAT_SCOPES, json!({"org_id": "acme", "tier": "free"})),
        IdpClient::new("svc-free-2", CHAT_SCOPES, json!({"org_id": "acme", "tier": "free"})),
        // No claims at all: the issuer's defaults.
        IdpClient::new("svc-bare", CHAT_SCOPES, json!({})),
        // Portcullis' own scope names, which map to themselves.
        IdpClient::new("svc-native", "chat models", json!({"org_id": "acme"})),
        // May read the model list, not chat.
        IdpClient::new("svc-reader", "models:read", json!({"org_id": "acme"})),
        // Claims a tier the issuer may not grant.
        IdpClient::new("svc-rogue", CHAT_SCOPES, json!({"org_id": "acme", "tier": "enterprise"})),
        // Claims a team the issuer may not place callers in.
        IdpClient::new("svc-globex", CHAT_SCOPES, json!({"org_id": "globex", "tier": "free"})),
    ]
}

async fn provider(alg: SigningAlg) -> Option<OidcProvider> {
    clients()
        .into_iter()
        .fold(OidcProvider::builder().alg(alg), |builder, client| builder.client(client))
        .start_or_skip()
        .await
}

// --- the gateway ------------------------------------------------------------------------------

/// What varies between the tests' `[auth]` configurations.
#[derive(Debug, Clone)]
struct Auth {
    audience: String,
    leeway: &'static str,
    /// `Some(endpoint)` configures introspection (`None` inside = the endpoint from discovery).
    introspection: Option<Option<String>>,
    cache_ttl: &'static str,
}

impl Auth {
    fn jwt() -> Auth {
        Auth { audience: "\"urn:portcullis\"".into(), leeway: "30s", introspection: None, cache_ttl: "60s" }
    }

    fn introspecting(endpoint: Option<String>, cache_ttl: &'static str) -> Auth {
        Auth { introspection: Some(endpoint), cache_ttl, ..Auth::jwt() }
    }

    fn toml(&self, idp: &OidcProvider) -> String {
        let mut text = format!(
            r#"
[auth]
jwks_refresh_interval = "5m"

[[auth.oidc]]
issuer = "{issuer}"
name = "{ISSUER_NAME}"
audience = {audience}
algorithms = ["RS256", "ES256", "EdDSA"]
leeway = "{leeway}"
default_tier = "free"
default_team = "acme"
allowed_teams = ["acme"]
allowed_tiers = ["free", "pro"]
default_models = ["gemma*"]
default_scopes = ["chat", "models"]

[auth.oidc.claims]
team = "org_id"
tier = "tier"
models = "models"
scopes = "scope"

[auth.oidc.scope_map]
"chat:write" = ["chat", "completions"]
"models:read" = ["models"]
"#,
            issuer = idp.issuer(),
            audience = self.audience,
            leeway = self.leeway,
        );
        if let Some(endpoint) = &self.introspection {
            text.push_str("\n[auth.oidc.introspection]\n");
            if let Some(endpoint) = endpoint {
                text.push_str(&format!("endpoint = \"{endpoint}\"\n"));
            }
            text.push_str(&format!(
                "client_id = \"{INTROSPECTION_CLIENT_ID}\"\nclient_secret = \"${{IDP_RS_SECRET}}\"\ncache_ttl = \"{}\"\n",
                self.cache_ttl
            ));
        }
        text
    }
}

/// Models `gemma-3`, `llama-3` and `mistral` on `stub`; tiers `free` (gemma only, `free_limits`
/// added) and `pro` (everything); failed authentications never block the loopback address,
/// since these tests fail many on purpose.
fn gateway_config(stub: &StubUpstream, idp: &OidcProvider, auth: &Auth, free_limits: &str) -> String {
    format!(
        "{models}\n[limits]\ndefault_tier = \"free\"\n\n[security]\nauth_failure_limit = 0\n\n\
         [tiers.free]\nmodels = [\"gemma*\"]\n{free_limits}\n\n[tiers.pro]\nmodels = [\"*\"]\n{auth}",
        models = common::models_config(stub, &["gemma-3", "llama-3", "mistral"]),
        auth = auth.toml(idp),
    )
}

async fn start_gateway(stub: &StubUpstream, idp: &OidcProvider, auth: &Auth, free_limits: &str) -> Gateway {
    let gateway = GatewayBuilder::new(BINARY)
        .config(&gateway_config(stub, idp, auth, free_limits))
        .env("IDP_RS_SECRET", INTROSPECTION_CLIENT_SECRET)
        .start()
        .await;
    gateway.cli_json(&["teams", "create", "acme"]);
    wait_for_key_set(&gateway, idp).await;
    gateway
}

/// Start-up does not wait for an issuer: until its first key set arrives its tokens get 503
/// `auth_unavailable` (docs/configuration.md). Waits until a token of `svc-bare` gets past that.
async fn wait_for_key_set(gateway: &Gateway, idp: &OidcProvider) {
    const LOADING_WAIT: Duration = Duration::from_secs(10);
    let token = idp.token("svc-bare", CHAT_SCOPES).await;
    let started = Instant::now();
    loop {
        let reply = send(http().get(format!("{}/v1/models", gateway.proxy_url())).bearer_auth(&token)).await;
        if reply.status != 503 {
            return;
        }
        assert!(
            started.elapsed() < LOADING_WAIT,
            "the issuer's key set did not load in {LOADING_WAIT:?}: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stub, a provider signing with `alg` and a gateway trusting it; `None` when the provider
/// cannot run here (skipped loudly).
async fn setup_with(alg: SigningAlg, auth: &Auth, free_limits: &str) -> Option<(StubUpstream, OidcProvider, Gateway)> {
    let idp = provider(alg).await?;
    let stub = StubUpstream::start().await;
    let gateway = start_gateway(&stub, &idp, auth, free_limits).await;
    Some((stub, idp, gateway))
}

async fn setup(auth: &Auth) -> Option<(StubUpstream, OidcProvider, Gateway)> {
    setup_with(SigningAlg::Rs256, auth, "").await
}

// --- requests ---------------------------------------------------------------------------------

/// `POST /v1/chat/completions` for `model` with `Authorization: Bearer <token>` and this request id.
async fn chat_as(gateway: &Gateway, token: &str, model: &str, request_id: &str) -> Reply {
    send(
        http()
            .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
            .header("x-request-id", request_id)
            .bearer_auth(token)
            .json(&chat_body(model)),
    )
    .await
}

async fn chat(gateway: &Gateway, token: &str, model: &str) -> Reply {
    chat_as(gateway, token, model, &format!("rid-{}", rand::random::<u64>())).await
}

/// Asserts the OpenAI-shaped 401 of a refused token.
#[track_caller]
fn assert_invalid_token(reply: &Reply, what: &str) {
    assert_eq!((reply.status, reply.code()), (401, "invalid_token"), "{what}: {}", reply.text);
    assert_eq!(reply.body["error"]["type"], "authentication_error", "{what}: {}", reply.text);
    assert!(reply.body["error"]["message"].is_string(), "{what}: {}", reply.text);
}

/// Asserts that the request `request_id` has one `deny` record with status 401 and reason
/// `invalid_token`, and that the record does not contain `token`.
async fn assert_refusal_audited(gateway: &Gateway, request_id: &str, token: &str) {
    let record = the_record(gateway, request_id).await;
    let outcome = (record["status"].as_u64(), record["decision"].as_str(), record["reason"].as_str());
    assert_eq!(outcome, (Some(401), Some("deny"), Some("invalid_token")), "{request_id}: {record:#}");
    if token.len() >= 16 {
        assert!(!record.to_string().contains(token), "the audit record holds the token: {record:#}");
    }
}

// --- tokens made here -------------------------------------------------------------------------

fn now() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    i64::try_from(since_epoch.as_secs()).expect("seconds fit")
}

/// Claims the gateway accepts from `idp` for `svc-acme`, valid for ten minutes.
fn good_claims(idp: &OidcProvider) -> Value {
    let now = now();
    json!({
        "iss": idp.issuer(), "aud": idp.audience(), "sub": "svc-acme", "client_id": "svc-acme",
        "iat": now, "exp": now + 600, "jti": format!("jti-{}", rand::random::<u64>()),
        "scope": CHAT_SCOPES, "org_id": "acme", "tier": "pro",
    })
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JSON encodes"))
}

/// A compact JWS with exactly this header, signed by `key` with `alg`.
fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("the test key signs");
    format!("{input}.{signature}")
}

/// An Ed25519 key the provider has never seen, as PKCS#8 DER (RFC 8410: a fixed prefix, then
/// the 32-byte seed; any seed is a valid key).
fn stranger_key() -> EncodingKey {
    const PKCS8_ED25519_PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let seed: [u8; 32] = rand::random();
    let der: Vec<u8> = PKCS8_ED25519_PREFIX.iter().chain(seed.iter()).copied().collect();
    EncodingKey::from_ed_der(&der)
}

/// A token with good claims and this `kid`, signed by a key the provider does not have.
fn stranger_token(idp: &OidcProvider, key: &EncodingKey, kid: &str) -> String {
    sign_raw(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}), &good_claims(idp), key, Algorithm::EdDSA)
}

/// The provider's RSA public key (from its JWKS) as SubjectPublicKeyInfo DER and PEM: what an
/// attacker would feed to a verifier that lets the token choose HS256.
async fn public_key_encodings(idp: &OidcProvider) -> (Vec<u8>, String) {
    let jwks = idp.jwks().await;
    let key = &jwks["keys"][0];
    let component = |name: &str| {
        URL_SAFE_NO_PAD.decode(key[name].as_str().unwrap_or_else(|| panic!("no {name} in {jwks}"))).expect("base64url")
    };
    let rsa_public_key = der(0x30, &[der_integer(&component("n")), der_integer(&component("e"))].concat());
    let algorithm =
        der(0x30, &[der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]), der(0x05, &[])].concat());
    let bit_string = der(0x03, &[&[0u8][..], &rsa_public_key].concat());
    let spki = der(0x30, &[algorithm, bit_string].concat());
    let base64 = base64::engine::general_purpose::STANDARD.encode(&spki);
    let lines: Vec<&str> = base64.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).expect("ASCII")).collect();
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"));
    (spki, pem)
}

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = content.len();
    if length < 0x80 {
        out.push(u8::try_from(length).expect("short form"));
    } else {
        let bytes: Vec<u8> = length.to_be_bytes().into_iter().skip_while(|byte| *byte == 0).collect();
        out.push(0x80 | u8::try_from(bytes.len()).expect("few length bytes"));
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER from unsigned big-endian bytes (a leading zero keeps it positive).
fn der_integer(unsigned: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = unsigned.iter().copied().skip_while(|byte| *byte == 0).collect();
    let content =
        if trimmed.first().is_some_and(|byte| byte & 0x80 != 0) { [&[0u8][..], &trimmed].concat() } else { trimmed };
    der(0x02, &content)
}

/// `token` with its payload replaced by `edit`ed claims, the signature kept.
fn tampered(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS has three parts: {token}");
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url")).expect("JSON");
    edit(&mut claims);
    format!("{}.{}.{}", parts[0], b64_json(&claims), parts[2])
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

// --- accepted tokens --------------------------------------------------------------------------

/// A client-credentials token is accepted: the chat is served, the model list is what its
/// `models` claim and tier allow, and the token never travels upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_token_is_accepted() {
    let Some((stub, idp, gateway)) = setup(&Auth::jwt()).await else { return };
    let token = idp.token("svc-acme", CHAT_SCOPES).await;

    chat(&gateway, &token, "gemma-3").await.assert_ok();
    chat(&gateway, &token, "llama-3").await.assert_ok();
    chat(&gateway, &token, "mistral").await.assert_error(403, "model_not_allowed");
    assert_eq!(model_ids(&gateway, &token).await, ["gemma-3", "llama-3"], "its models claim, within tier pro");

    // On the free tier with no models claim: the issuer's default_models, within the tier's.
    let free = idp.token("svc-free", CHAT_SCOPES).await;
    assert_eq!(model_ids(&gateway, &free).await, ["gemma-3"]);
    chat(&gateway, &free, "gemma-3").await.assert_ok();
    chat(&gateway, &free, "llama-3").await.assert_error(403, "model_not_allowed");

    let relayed = stub.requests_to("/v1/chat/completions");
    assert_eq!(relayed.len(), 3, "exactly the allowed chats reach the model server");
    for request in &relayed {
        let headers = format!("{:?}", request.headers);
        assert!(!headers.contains(&token) && !headers.contains(&free), "a token went upstream: {headers}");
    }
}

/// Keys of every default algorithm verify, and an audience list matches any of its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_tokens_are_accepted_for_any_listed_audience() {
    let auth = Auth { audience: "[\"urn:elsewhere\", \"urn:portcullis\"]".into(), ..Auth::jwt() };
    for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
        let Some((_stub, idp, gateway)) = setup_with(alg, &auth, "").await else { return };
        let token = idp.token("svc-acme", CHAT_SCOPES).await;
        let reply = chat(&gateway, &token, "gemma-3").await;
        assert_eq!(reply.status, 200, "{}: {}", alg.name(), reply.text);
    }
}

// --- refused tokens ---------------------------------------------------------------------------

/// Every way a token can be wrong is a 401 `invalid_token`, audited, and nothing reaches the
/// model server. The first token is the control: the provider's signing route with good claims
/// is accepted, so each refusal below is for the one thing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_broken_and_misaddressed_tokens_are_refused_and_audited() {
    let Some((stub, idp, gateway)) = setup(&Auth::jwt()).await else { return };
    let now = now();
    let good = good_claims(&idp);
    let with = |changes: Value| {
        let mut claims = good.clone();
        for (name, value) in changes.as_object().expect("an object of changes") {
            if value.is_null() {
                claims.as_object_mut().expect("claims are an object").remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    };

    let control = idp.sign(json!({}), good.clone()).await;
    chat(&gateway, &control, "gemma-3").await.assert_ok();
    let issued = idp.token("svc-acme", CHAT_SCOPES).await;
    chat(&gateway, &issued, "gemma-3").await.assert_ok();
    stub.clear_requests();

    let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": idp.kid()});
    let (public_der, public_pem) = public_key_encodings(&idp).await;
    let hs256 = |secret: &[u8]| {
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": idp.kid()});
        sign_raw(&header, &good, &EncodingKey::from_secret(secret).expect("a non-empty secret"), Algorithm::HS256)
    };
    let stranger = stranger_key();
    let parts: Vec<&str> = issued.split('.').collect();

    let cases: Vec<(&str, String)> = vec![
        ("expired", idp.sign(json!({}), with(json!({"iat": now - 7200, "exp": now - 3600}))).await),
        ("expired beyond the leeway", idp.sign(json!({}), with(json!({"iat": now - 600, "exp": now - 45}))).await),
        ("not yet valid (nbf)", idp.sign(json!({}), with(json!({"nbf": now + 3600}))).await),
        ("no exp", idp.sign(json!({}), with(json!({"exp": null}))).await),
        ("string-typed exp", idp.sign(json!({}), with(json!({"exp": (now + 600).to_string()}))).await),
        ("string-typed nbf", idp.sign(json!({}), with(json!({"nbf": (now - 60).to_string()}))).await),
        ("wrong audience (issued)", idp.token_for_resource("svc-acme", "urn:somebody-else", CHAT_SCOPES).await),
        ("wrong audience (array)", idp.sign(json!({}), with(json!({"aud": ["urn:a", "urn:b"]}))).await),
        ("no audience", idp.sign(json!({}), with(json!({"aud": null}))).await),
        ("wrong issuer", idp.sign(json!({}), with(json!({"iss": "http://127.0.0.1:1"}))).await),
        ("issuer with a trailing slash", idp.sign(json!({}), with(json!({"iss": format!("{}/", idp.issuer())}))).await),
        (
            "alg none",
            format!("{}.{}.", b64_json(&json!({"alg": "none", "typ": "at+jwt", "kid": idp.kid()})), b64_json(&good)),
        ),
        (
            "alg none, signature kept",
            format!("{}.{}.{}", b64_json(&json!({"alg": "none", "kid": idp.kid()})), parts[1], parts[2]),
        ),
        ("HS256 keyed with the public key's PEM", hs256(public_pem.as_bytes())),
        ("HS256 keyed with the public key's DER", hs256(&public_der)),
        ("unknown kid", stranger_token(&idp, &stranger, "not-a-provider-kid")),
        ("the provider's kid, another key", stranger_token(&idp, &stranger, idp.kid())),
        ("no kid, another key", sign_raw(&json!({"alg": "EdDSA"}), &good, &stranger, Algorithm::EdDSA)),
        (
            "jku pointing at the attacker's keys",
            sign_raw(
                &json!({"alg": "EdDSA", "kid": "attacker", "jku": format!("{}/jwks", idp.issuer())}),
                &good,
                &stranger,
                Algorithm::EdDSA,
            ),
        ),
        ("tampered payload (tier)", tampered(&issued, |claims| claims["tier"] = json!("enterprise"))),
        ("tampered payload (sub)", tampered(&issued, |claims| claims["sub"] = json!("svc-free"))),
        (
            "tampered header (alg)",
            format!("{}.{}.{}", b64_json(&json!({"alg": "RS384", "kid": idp.kid()})), parts[1], parts[2]),
        ),
        ("truncated signature", issued[..issued.len() - 10].to_string()),
        ("no signature part", format!("{}.{}", parts[0], parts[1])),
        ("header only", parts[0].to_string()),
        ("empty signature", format!("{}.{}.", parts[0], parts[1])),
        ("not base64", format!("{}.{}!.{}", parts[0], parts[1], parts[2])),
        ("a sealed header with signature bytes as payload", format!("{}.{}.{}", parts[0], parts[2], parts[2])),
        ("RS256 header over a claims-less body", idp.sign(header.clone(), json!({})).await),
    ];

    for (index, (what, token)) in cases.iter().enumerate() {
        let request_id = format!("rid-refused-{index}");
        let reply = chat_as(&gateway, token, "gemma-3", &request_id).await;
        assert_invalid_token(&reply, what);
    }
    for (index, (_, token)) in cases.iter().enumerate() {
        assert_refusal_audited(&gateway, &format!("rid-refused-{index}"), token).await;
    }
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 0, "a refused token reached the model server");
    // And the real token still works after all that.
    chat(&gateway, &issued, "gemma-3").await.assert_ok();
}

// --- keys: rotation, outage, floods -----------------------------------------------------------

/// The provider restarts with a new key: tokens it signs from then on are accepted without
/// restarting the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_at_the_provider_is_picked_up_without_a_restart() {
    let Some((_stub, mut idp, gateway)) = setup(&Auth::jwt()).await else { return };
    let before = idp.token("svc-acme", CHAT_SCOPES).await;
    chat(&gateway, &before, "gemma-3").await.assert_ok();
    let old_kid = idp.kid().to_string();

    idp.restart().await;
    assert_ne!(idp.kid(), old_kid);
    let after = idp.token("svc-acme", CHAT_SCOPES).await;
    let started = Instant::now();
    loop {
        let reply = chat(&gateway, &after, "gemma-3").await;
        if reply.status == 200 {
            break;
        }
        assert_invalid_token(&reply, "a token of the new key, before the gateway refetched");
        assert!(started.elapsed() < ROTATION_WAIT, "the rotated key was not picked up within {ROTATION_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(idp.stats().await.jwks >= 1, "the new key set was fetched from the restarted provider");
}

/// With the provider down, the last good key set keeps verifying tokens whose keys it holds;
/// a token with a new `kid` is refused, not waved through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_provider_down_cached_keys_still_verify_and_new_kids_are_refused() {
    let Some((stub, mut idp, gateway)) = setup(&Auth::jwt()).await else { return };
    let seen = idp.token("svc-acme", CHAT_SCOPES).await;
    let unseen = idp.token("svc-free", CHAT_SCOPES).await;
    chat(&gateway, &seen, "gemma-3").await.assert_ok();

    idp.stop().await;
    chat(&gateway, &seen, "gemma-3").await.assert_ok();
    chat(&gateway, &unseen, "gemma-3").await.assert_ok();
    let stranger = stranger_key();
    for attempt in 0..3 {
        let token = stranger_token(&idp, &stranger, &format!("rotated-{attempt}"));
        let request_id = format!("rid-new-kid-{attempt}");
        assert_invalid_token(&chat_as(&gateway, &token, "gemma-3", &request_id).await, "a new kid, provider down");
        assert_refusal_audited(&gateway, &request_id, &token).await;
    }
    chat(&gateway, &seen, "gemma-3").await.assert_ok();
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 4);
}

/// 10 000 tokens, each with a `kid` nobody has, cost the provider a handful of JWKS fetches:
/// refetching on an unknown `kid` is rate-limited. Valid tokens keep working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_random_kids_makes_only_a_handful_of_jwks_fetches() {
    const TOKENS: usize = 10_000;
    const MAX_FETCHES: u64 = 5;
    let Some((_stub, idp, gateway)) = setup(&Auth::jwt()).await else { return };
    let valid = idp.token("svc-acme", CHAT_SCOPES).await;
    chat(&gateway, &valid, "gemma-3").await.assert_ok();
    let before = idp.stats().await.jwks;

    let stranger = stranger_key();
    let tokens: Vec<String> =
        (0..TOKENS).map(|_| stranger_token(&idp, &stranger, &format!("kid-{:032x}", rand::random::<u128>()))).collect();
    let url = format!("{}/v1/models", gateway.proxy_url());
    let client = http();
    let started = Instant::now();
    let statuses: Vec<u16> = futures_util::stream::iter(tokens)
        .map(|token| {
            let request = client.get(&url).bearer_auth(token);
            async move { request.send().await.map_or(0, |response| response.status().as_u16()) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let refused = statuses.iter().filter(|status| **status == 401).count();
    assert_eq!(refused, TOKENS, "every token with an unknown kid is refused (in {elapsed:?})");

    let fetches = idp.stats().await.jwks - before;
    assert!(fetches <= MAX_FETCHES, "{TOKENS} unknown kids in {elapsed:?} made {fetches} JWKS fetches");
    chat(&gateway, &valid, "gemma-3").await.assert_ok();
    let records = wait_for_records(&gateway, "status=401", TOKENS).await;
    assert!(records.len() >= TOKENS, "each refusal is audited: {} of {TOKENS}", records.len());
}

// --- opaque tokens: introspection -------------------------------------------------------------

/// An active opaque token is accepted, and its answer cached (the second request asks nobody);
/// an unknown string and a token revoked before first use are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_accepted_while_active_and_refused_otherwise() {
    let Some((stub, idp, gateway)) = setup(&Auth::introspecting(None, "60s")).await else { return };
    let active = idp.opaque_token("svc-acme", CHAT_SCOPES).await;
    chat(&gateway, &active, "gemma-3").await.assert_ok();
    let asked = idp.stats().await.introspection;
    assert!(asked >= 1, "the gateway introspected the token");
    chat(&gateway, &active, "llama-3").await.assert_ok();
    assert_eq!(idp.stats().await.introspection, asked, "a cached answer is not asked for again");
    assert_eq!(model_ids(&gateway, &active).await, ["gemma-3", "llama-3"], "claims from the introspection answer");

    let revoked = idp.opaque_token("svc-acme", CHAT_SCOPES).await;
    idp.revoke("svc-acme", &revoked).await;
    let garbage = "0pAqU3-but-never-issued-by-anyone-xxxxxxxxxxx".to_string();
    for (what, token) in [("revoked before first use", &revoked), ("never issued", &garbage)] {
        let request_id = format!("rid-inactive-{}", what.len());
        assert_invalid_token(&chat_as(&gateway, token, "gemma-3", &request_id).await, what);
        assert_refusal_audited(&gateway, &request_id, token).await;
    }
    // `active: false` is not remembered as success: the same token stays refused.
    assert_invalid_token(&chat(&gateway, &revoked, "gemma-3").await, "revoked, asked again");
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 2);
}

/// A token revoked at the provider while its answer is cached keeps working until that cache
/// entry ends — at most `cache_ttl` after it was introspected (docs/identity-providers.md) —
/// and is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_opaque_token_is_refused_once_its_cache_entry_ends() {
    const CACHE_TTL: Duration = Duration::from_secs(2);
    let Some((_stub, idp, gateway)) = setup(&Auth::introspecting(None, "2s")).await else { return };
    let token = idp.opaque_token("svc-acme", CHAT_SCOPES).await;
    let introspected_at = Instant::now();
    chat(&gateway, &token, "gemma-3").await.assert_ok();
    idp.revoke("svc-acme", &token).await;
    assert_eq!(idp.introspect(&token).await["active"], false, "revoked at the provider");
    if introspected_at.elapsed() < CACHE_TTL / 2 {
        chat(&gateway, &token, "gemma-3").await.assert_ok(); // still cached: the documented bound
    }

    let bound = CACHE_TTL + Duration::from_secs(1);
    loop {
        let reply = chat(&gateway, &token, "gemma-3").await;
        if reply.status == 401 {
            assert_invalid_token(&reply, "revoked, cache entry over");
            break;
        }
        reply.assert_ok();
        assert!(introspected_at.elapsed() < bound, "a revoked token still worked {bound:?} after its introspection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(introspected_at.elapsed() <= bound + Duration::from_secs(1));
}

/// An opaque token's cached answer lasts no longer than the token: with `cache_ttl` at a minute,
/// a token living 3 s is refused once it expires (and the 1 s leeway has passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_token_is_cached_no_longer_than_it_lives() {
    let auth = Auth { leeway: "1s", ..Auth::introspecting(None, "60s") };
    let Some((_stub, idp, gateway)) = setup(&auth).await else { return };
    let token = idp.opaque_token_with_ttl("svc-acme", CHAT_SCOPES, 3).await;
    chat(&gateway, &token, "gemma-3").await.assert_ok();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_invalid_token(&chat(&gateway, &token, "gemma-3").await, "expired opaque token, answer cached for 60 s");
}

/// With the introspection endpoint unreachable, a token the gateway has not seen is refused
/// (fail closed), while one whose active answer is cached keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_introspection_endpoint_down_unseen_opaque_tokens_are_refused() {
    let Some(idp) = provider(SigningAlg::Rs256).await else { return };
    let relay = TcpRelay::start(([127, 0, 0, 1], idp.port()).into()).await;
    let endpoint = format!("http://{}/token/introspection", relay.addr());
    let stub = StubUpstream::start().await;
    let gateway = start_gateway(&stub, &idp, &Auth::introspecting(Some(endpoint), "60s"), "").await;
    let seen = idp.opaque_token("svc-acme", CHAT_SCOPES).await;
    let unseen = idp.opaque_token("svc-free", CHAT_SCOPES).await;
    chat(&gateway, &seen, "gemma-3").await.assert_ok();

    relay.cut();
    let reply = chat_as(&gateway, &unseen, "gemma-3", "rid-introspection-down").await;
    assert!(
        matches!((reply.status, reply.code()), (401, "invalid_token") | (503, _)),
        "an unseen token with introspection down must be refused: {}",
        reply.text
    );
    let record = the_record(&gateway, "rid-introspection-down").await;
    assert_eq!(record["status"].as_u64(), Some(u64::from(reply.status)), "{record:#}");
    assert_ne!(record["decision"], "allow", "{record:#}");
    chat(&gateway, &seen, "gemma-3").await.assert_ok();
    // JWTs need no introspection: they still work.
    chat(&gateway, &idp.token("svc-acme", CHAT_SCOPES).await, "gemma-3").await.assert_ok();

    // Back: the unseen token is introspected and accepted (within a few seconds of backoff).
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = chat(&gateway, &unseen, "gemma-3").await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "introspection back, the token still refused: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 4);
}

// --- claims to principal ----------------------------------------------------------------------

/// Team from `org_id`, tier and models from their claims or the issuer's defaults, scopes through
/// `scope_map`; a tier or team outside the allow-lists is a 401, a missing scope a 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_map_to_team_tier_models_and_scopes() {
    let Some((stub, idp, gateway)) = setup(&Auth::jwt()).await else { return };

    let acme = idp.token("svc-acme", CHAT_SCOPES).await;
    chat_as(&gateway, &acme, "llama-3", "rid-claims-acme").await.assert_ok();
    assert_eq!(the_record(&gateway, "rid-claims-acme").await["team"], "acme");

    // No claims: default team, tier free, default_models.
    let bare = idp.token("svc-bare", CHAT_SCOPES).await;
    chat_as(&gateway, &bare, "gemma-3", "rid-claims-bare").await.assert_ok();
    assert_eq!(the_record(&gateway, "rid-claims-bare").await["team"], "acme");
    chat(&gateway, &bare, "llama-3").await.assert_error(403, "model_not_allowed");

    // Portcullis' own scope names map to themselves.
    let native = idp.token("svc-native", "chat models").await;
    chat(&gateway, &native, "gemma-3").await.assert_ok();
    assert_eq!(model_ids(&gateway, &native).await, ["gemma-3"]);

    // `models:read` alone maps to `models`: the list, but no chat.
    let reader = idp.token("svc-reader", "models:read").await;
    assert_eq!(model_ids(&gateway, &reader).await, ["gemma-3"]);
    chat(&gateway, &reader, "gemma-3").await.assert_error(403, "scope_missing");
    // A token of a client that may chat, asking only for the model list, may not chat either.
    let narrowed = idp.token("svc-acme", "models:read").await;
    chat(&gateway, &narrowed, "gemma-3").await.assert_error(403, "scope_missing");

    // A tier the issuer may not grant, a team it may not place callers in.
    for (client, request_id) in [("svc-rogue", "rid-claims-rogue"), ("svc-globex", "rid-claims-globex")] {
        let token = idp.token(client, CHAT_SCOPES).await;
        assert_invalid_token(&chat_as(&gateway, &token, "gemma-3", request_id).await, client);
        assert_refusal_audited(&gateway, request_id, &token).await;
    }
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 3);
}

// --- limits -----------------------------------------------------------------------------------

/// A token principal has limits of its own, from its tier, keyed by issuer and `sub`: a new
/// token of the same subject does not start afresh, another subject of the team is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_subject_has_its_own_rate_limit() {
    let Some((_stub, idp, gateway)) = setup_with(SigningAlg::Rs256, &Auth::jwt(), "requests_per_minute = 2").await
    else {
        return;
    };
    let first = idp.token("svc-free", CHAT_SCOPES).await;
    chat(&gateway, &first, "gemma-3").await.assert_ok();
    chat(&gateway, &first, "gemma-3").await.assert_ok();
    chat(&gateway, &first, "gemma-3").await.assert_error(429, "rate_limit_exceeded");
    let fresh_token_same_subject = idp.token("svc-free", CHAT_SCOPES).await;
    assert_ne!(claims_of(&first)["jti"], claims_of(&fresh_token_same_subject)["jti"]);
    chat(&gateway, &fresh_token_same_subject, "gemma-3").await.assert_error(429, "rate_limit_exceeded");

    let other = idp.token("svc-free-2", CHAT_SCOPES).await;
    chat(&gateway, &other, "gemma-3").await.assert_ok();

    // `/v1/usage` answers for a token principal: who it is (its `principal` object comes with
    // the `principal` branch), and its own rate.
    let usage = send(http().get(format!("{}/v1/usage", gateway.proxy_url())).bearer_auth(&other)).await;
    usage.assert_ok();
    assert!(usage.text.contains("requests_per_minute"), "{}", usage.text);
    let principal = &usage.body["principal"];
    assert_eq!(principal["id"], format!("oidc:{ISSUER_NAME}:svc-free-2"), "{}", usage.text);
    assert_eq!((principal["kind"].as_str(), principal["subject"].as_str()), (Some("token"), Some("svc-free-2")));
}

/// A token principal and a key principal of one team race for its daily budget: exactly the
/// requests whose worst case fits are served, whichever credential they carry (the key-only
/// race is `budget_race_never_overspends` in limits.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_and_a_key_sharing_a_team_budget_never_overspend_it() {
    const N: u64 = 5;
    const MAX_TOKENS: u64 = 20;
    let Some(idp) = provider(SigningAlg::Rs256).await else { return };
    let stub = StubUpstream::start().await;
    stub.set_chunk_gap(Duration::from_millis(500));
    let mut config = gateway_config(&stub, &idp, &Auth::jwt(), "");
    // 1 currency unit per token: a cost in units is a count of tokens. A short queue_timeout: a
    // request the budget holds for running ones gives up before they end (see limits.rs).
    config = config.replace(
        &format!("name = \"gemma-3\"\nendpoints = [\"{}\"]\n", stub.url()),
        &format!(
            "name = \"gemma-3\"\nendpoints = [\"{}\"]\nprice = {{ input_per_million = 1000000.0, output_per_million = 1000000.0 }}\nqueue_timeout = \"10ms\"\n",
            stub.url()
        ),
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    gateway.cli_json(&["teams", "create", "acme"]);
    wait_for_key_set(&gateway, &idp).await;
    let (_key_id, key) = gateway.create_key(&["--team", "acme"]);
    let token = idp.token("svc-free", CHAT_SCOPES).await;

    let body = json!({
        "model": "gemma-3", "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": MAX_TOKENS, "stream": true, "stream_options": {"include_usage": true},
    });
    // What the gateway reserves: the body's bytes + 16 template tokens + max_tokens.
    let worst_cost = serde_json::to_vec(&body).expect("JSON").len() as u64 + 16 + MAX_TOKENS;
    let budget = N * worst_cost;
    let patched = send(
        http()
            .patch(format!("{}/admin/v1/teams/acme", gateway.admin_url()))
            .bearer_auth(gateway.admin_token())
            .json(&json!({"limits": {"budget_per_day": budget as f64}})),
    )
    .await;
    patched.assert_ok();

    let started = Instant::now();
    let tasks: Vec<_> = (0..10 * N)
        .map(|index| {
            let credential = if index % 2 == 0 { key.clone() } else { token.clone() };
            let (url, body) = (format!("{}/v1/chat/completions", gateway.proxy_url()), body.clone());
            tokio::spawn(async move {
                let response = http()
                    .post(url)
                    .bearer_auth(credential)
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&body).expect("JSON"))
                    .send()
                    .await
                    .expect("the gateway answers");
                let decided_at = started.elapsed();
                let status = response.status().as_u16();
                let text = response.text().await.expect("the whole body");
                (status, decided_at, started.elapsed(), text)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the request task ran"));
    }

    let latest_decision = results.iter().map(|(_, decided, _, _)| *decided).max().expect("results");
    let first_end =
        results.iter().filter(|(status, ..)| *status == 200).map(|(_, _, ended, _)| *ended).min().expect("some served");
    assert!(
        latest_decision < first_end,
        "setup too slow: decided at {latest_decision:?}, a stream ended at {first_end:?}"
    );
    for (status, _, _, text) in results.iter().filter(|(status, ..)| *status != 200) {
        let error: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        assert_eq!((*status, error["error"]["code"].as_str()), (429, Some("insufficient_quota")), "{text}");
        assert!(text.contains("budget_per_day"), "{text}");
    }
    let served = results.iter().filter(|(status, ..)| *status == 200).count() as u64;
    assert_eq!(served, N, "exactly {N} of {} worst cases fit the team's budget", 10 * N);
    assert_eq!(stub.requests_to("/v1/chat/completions").len() as u64, N);

    // What the team spent, as both of its principals see it, is within the budget.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let usage = send(http().get(format!("{}/v1/usage", gateway.proxy_url())).bearer_auth(&key)).await;
        usage.assert_ok();
        let team = usage.body["limits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|scope| scope["scope"]["kind"] == "team")
            .flat_map(|scope| scope["limits"].as_array().into_iter().flatten())
            .find(|limit| limit["limit"] == "budget_per_day")
            .cloned()
            .unwrap_or_else(|| panic!("no team budget_per_day in {}", usage.text));
        let used = team["used"].as_f64().expect("used");
        assert!(used <= budget as f64, "the team spent {used} of a {budget} budget");
        if team["reserved"].as_f64() == Some(0.0) {
            assert!(used > 0.0, "{team}");
            break;
        }
        assert!(Instant::now() < deadline, "reservations never settled: {team}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- audit ------------------------------------------------------------------------------------

/// Records of token callers say who: the issuer, the subject, the token's `jti` (or `sha256:…`
/// of an opaque token), principal kind `token` — and never the token.
/// (The caller columns come with the `principal` branch's audit change; every assertion on
/// them is in this test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_of_token_callers_name_issuer_subject_and_credential() {
    let Some((_stub, idp, gateway)) = setup(&Auth::introspecting(None, "60s")).await else { return };
    let jwt = idp.token("svc-acme", CHAT_SCOPES).await;
    chat_as(&gateway, &jwt, "gemma-3", "rid-audit-jwt").await.assert_ok();
    let opaque = idp.opaque_token("svc-free", CHAT_SCOPES).await;
    chat_as(&gateway, &opaque, "gemma-3", "rid-audit-opaque").await.assert_ok();

    let record = the_record(&gateway, "rid-audit-jwt").await;
    assert!(!record.to_string().contains(&jwt), "the record holds the token: {record:#}");
    assert_eq!(record["principal_kind"], "token", "{record:#}");
    assert_eq!(record["issuer"], idp.issuer(), "{record:#}");
    assert_eq!(record["subject"], "svc-acme", "{record:#}");
    assert_eq!(record["credential_id"], claims_of(&jwt)["jti"], "{record:#}");
    assert_eq!(record["team"], "acme", "{record:#}");

    let record = the_record(&gateway, "rid-audit-opaque").await;
    assert!(!record.to_string().contains(&opaque), "the record holds the token: {record:#}");
    assert_eq!(record["principal_kind"], "token", "{record:#}");
    assert_eq!(record["subject"], "svc-free", "{record:#}");
    let credential = record["credential_id"].as_str().unwrap_or_default();
    assert!(credential.starts_with("sha256:"), "an opaque token without jti is named by its hash: {record:#}");
    assert!(!opaque.starts_with(credential.trim_start_matches("sha256:")), "{record:#}");
}
