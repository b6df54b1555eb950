//! Access tokens from an `[[auth.oidc]]` issuer, through the real binary: an identity provider's
//! discovery document and JWKS served by this test on loopback, tokens signed here with its key.
//! A good token gets a chat completion from the stub upstream; refused ones get 401
//! `invalid_token` and an audit record, and a key keeps working beside them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test: a failure is a failed test")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use common::{BINARY, chat, chat_body, http, models_config, send, wait_for_records};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_testkit::{GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

const SIGNING_KEY: &[u8] = include_bytes!("../../portcullis-oidc/testdata/ec_a.pem");

struct Provider {
    url: String,
    jwks_fetches: Arc<AtomicUsize>,
}

/// Discovery and a JWKS with one ES256 key, `kid` "k1".
async fn provider() -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_ec_pem(SIGNING_KEY).unwrap(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = Arc::new(JwkSet { keys: vec![jwk] });
    let jwks_fetches = Arc::new(AtomicUsize::new(0));
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(move || async move { axum::Json(discovery) }))
        .route(
            "/jwks",
            get(|State((jwks, count)): State<(Arc<JwkSet>, Arc<AtomicUsize>)>| async move {
                count.fetch_add(1, Ordering::SeqCst);
                axum::Json(JwkSet::clone(&jwks))
            }),
        )
        .with_state((jwks, jwks_fetches.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Provider { url, jwks_fetches }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(SIGNING_KEY).unwrap()).unwrap()
}

#[tokio::test]
async fn a_token_gets_a_completion_and_a_refused_one_is_audited() {
    let provider = provider().await;
    let stub = StubUpstream::start().await;
    let config = format!(
        "{}\n[tiers.free]\n[tiers.pro]\n[limits]\ndefault_tier = \"free\"\n\
         [[auth.oidc]]\nissuer = \"{}\"\nname = \"acme\"\naudience = \"portcullis\"\n\
         default_team = \"acme\"\nallowed_tiers = [\"free\", \"pro\"]\n\
         [auth.oidc.claims]\ntier = \"tier\"\nscopes = \"scope\"\n",
        models_config(&stub, &["m"]),
        provider.url
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let claims = json!({"iss": provider.url, "aud": "portcullis", "sub": "svc-7", "exp": now() + 600, "tier": "pro", "scope": "chat"});

    let good = token(&claims);
    let reply = chat(&gateway, Some(&good), "m").await;
    reply.assert_ok();
    assert!(reply.body["choices"].is_array(), "{}", reply.text);
    // Cached: the second request verifies nothing and fetches nothing.
    chat(&gateway, Some(&good), "m").await.assert_ok();
    assert_eq!(provider.jwks_fetches.load(Ordering::SeqCst), 1, "one key set fetch at start");

    // The token's scopes hold: `chat` only.
    let models = send(http().get(format!("{}/v1/models", gateway.proxy_url())).bearer_auth(&good)).await;
    models.assert_error(403, "scope_missing");

    let mut refused = Vec::new();
    for (why, bad) in [
        ("wrong audience", token(&with(&claims, "aud", json!("someone-else")))),
        ("expired", token(&with(&claims, "exp", json!(now() - 3600)))),
        ("tier not allowed", token(&with(&claims, "tier", json!("enterprise")))),
        ("string exp", token(&with(&claims, "exp", json!((now() + 600).to_string())))),
        ("tampered", tamper(&good, &token(&with(&claims, "sub", json!("admin"))))),
        ("opaque", "not-a-jwt-and-nobody-introspects".to_string()),
    ] {
        let id = format!("oidc-{}", why.replace(' ', "-"));
        let reply = send(
            http()
                .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
                .header("x-request-id", &id)
                .bearer_auth(&bad)
                .json(&chat_body("m")),
        )
        .await;
        reply.assert_error(401, "invalid_token");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer error=\"invalid_token\""), "{why}");
        assert!(!reply.text.contains(&bad), "{why}: the answer repeats the token");
        refused.push(id);
    }
    for id in refused {
        let records = wait_for_records(&gateway, &format!("request_id={id}"), 1).await;
        let record = records.first().unwrap_or_else(|| panic!("{id}: no audit record"));
        assert_eq!(record["status"], 401, "{record:#}");
        assert_eq!(record["reason"], "invalid_token", "{record:#}");
        assert!(!record.to_string().contains("eyJ"), "{id}: a token in the audit record: {record:#}");
    }

    let ready = send(http().get(format!("{}/readyz", gateway.admin_url()))).await;
    assert_eq!(ready.body["issuers"]["acme"]["keys"], "ok", "{}", ready.text);

    // Explain: which issuer, how each claim mapped, the principal — or exactly why not.
    let explain = |credential: String| {
        let url = format!("{}/admin/v1/auth/explain", gateway.admin_url());
        send(http().post(url).bearer_auth(gateway.admin_token()).json(&json!({ "credential": credential })))
    };
    let accepted = explain(good.clone()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    let body = &accepted.body;
    assert_eq!((body["kind"].as_str(), body["accepted"].as_bool()), (Some("token"), Some(true)), "{body}");
    assert_eq!(body["issuer"].as_str(), Some(provider.url.as_str()), "{body}");
    assert_eq!(body["principal"]["id"], "oidc:acme:svc-7", "{body}");
    assert_eq!(body["principal"]["tier"], "pro", "{body}");
    let tier = body["claims"].as_array().unwrap().iter().find(|mapping| mapping["field"] == "tier").unwrap();
    assert_eq!(
        (&tier["claim"], &tier["value"], &tier["mapped"], &tier["source"]),
        (&json!("tier"), &json!("pro"), &json!("pro"), &json!("claim"))
    );
    let expired = explain(token(&with(&claims, "exp", json!(now() - 3600)))).await;
    assert_eq!(expired.body["refused"]["code"], "invalid_token", "{}", expired.text);
    assert!(expired.body["refused"]["message"].as_str().unwrap().contains("expired"), "{}", expired.text);
    assert!(!accepted.text.contains(&good) && !expired.text.contains("eyJ"), "an explanation repeats the token");

    // Keys work as before beside tokens.
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    chat(&gateway, Some(&key), "m").await.assert_ok();
}

fn with(claims: &Value, name: &str, value: Value) -> Value {
    let mut changed = claims.clone();
    changed[name] = value;
    changed
}

/// `good`'s header and signature around `other`'s payload.
fn tamper(good: &str, other: &str) -> String {
    let good: Vec<&str> = good.split('.').collect();
    let other: Vec<&str> = other.split('.').collect();
    format!("{}.{}.{}", good[0], other[1], good[2])
}
