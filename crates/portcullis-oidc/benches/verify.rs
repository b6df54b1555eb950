//! Per-request cost of an access token, next to the key path's (`portcullis-auth`'s
//! `key_path` bench): a token seen before (the identity cache: SHA-256 of the token and a map
//! lookup), and a token's full check with its issuer's keys already cached (claims peeked,
//! signature verified, claims mapped), for RS256 and ES256. The issuer is a JWKS served on
//! loopback by the benchmark; after the first fetch no request touches the network.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark: a failure is a broken benchmark"
)]

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_config::Config;
use portcullis_oidc::Verifier;
use serde_json::json;

const EC: &[u8] = include_bytes!("../testdata/ec_a.pem");
const RSA: &[u8] = include_bytes!("../testdata/rsa.pem");

fn keys() -> [(Algorithm, &'static str, EncodingKey); 2] {
    [
        (Algorithm::ES256, "ec", EncodingKey::from_ec_pem(EC).unwrap()),
        (Algorithm::RS256, "rsa", EncodingKey::from_rsa_pem(RSA).unwrap()),
    ]
}

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (issuer, verifier) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let set = JwkSet {
            keys: keys()
                .into_iter()
                .map(|(alg, kid, key)| {
                    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
                    jwk.common.key_id = Some(kid.into());
                    jwk
                })
                .collect(),
        };
        let app = Router::new().route("/jwks", get(move || async move { axum::Json(set) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let text = format!(
            "[[auth.oidc]]\nissuer = \"{issuer}\"\naudience = \"portcullis\"\njwks_uri = \"{issuer}/jwks\"\n\
             [auth.oidc.claims]\nscopes = \"scope\"\n"
        );
        let auth = Config::parse(&text, |_| None).unwrap().split().1.auth;
        (issuer.clone(), Verifier::new(&auth, None))
    });
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    for (alg, kid, key) in keys() {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let claims = json!({"iss": issuer, "aud": "portcullis", "sub": "svc", "exp": exp, "scope": "chat models"});
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        // The first check fetches the key set; everything measured after it is local.
        runtime.block_on(verifier.verify(&token)).unwrap();
        c.bench_function(&format!("{alg:?} token seen before (identity cache)"), |b| {
            b.iter(|| runtime.block_on(verifier.verify(black_box(&token))).unwrap())
        });
        c.bench_function(&format!("{alg:?} token checked with cached keys (signature + claims)"), |b| {
            b.iter(|| {
                let explained = runtime.block_on(verifier.explain(black_box(&token)));
                assert!(explained.outcome.is_ok());
                explained
            })
        });
    }
}

criterion_group!(benches, verify);
criterion_main!(benches);
