//! The per-request key path: parse the presented key (format + checksum), hash it, look the
//! hash up in an in-memory cache of 100 000 keys — against a naive baseline that validates with
//! a regex-free string scan, hashes to hex and looks the hex string up in a `Mutex<HashMap>`.

#![allow(clippy::unwrap_used, clippy::panic, reason = "a benchmark: a failure is a broken benchmark")]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_auth::{SecretHasher, SecretKind, SecretToken};
use sha2::{Digest, Sha256};

const KEYS: usize = 100_000;

fn key_path(c: &mut Criterion) {
    let hasher = SecretHasher::new(None);
    let secrets: Vec<SecretToken> = (0..KEYS).map(|_| SecretToken::generate(SecretKind::ApiKey)).collect();
    let presented = secrets[KEYS / 2].expose().to_string();

    let cache: moka::sync::Cache<[u8; 32], Arc<String>> = moka::sync::Cache::new(KEYS as u64 * 2);
    for (i, secret) in secrets.iter().enumerate() {
        cache.insert(*hasher.hash(secret).as_bytes(), Arc::new(format!("key_{i}")));
    }
    c.bench_function("key parse + hash + cache lookup", |b| {
        b.iter(|| {
            let secret = SecretToken::parse(SecretKind::ApiKey, black_box(&presented)).unwrap();
            let hash = hasher.hash(&secret);
            black_box(cache.get(hash.as_bytes()).unwrap())
        })
    });

    let naive: Mutex<HashMap<String, Arc<String>>> = Mutex::new(
        secrets
            .iter()
            .enumerate()
            .map(|(i, s)| (hex::encode(Sha256::digest(s.expose())), Arc::new(format!("key_{i}"))))
            .collect(),
    );
    c.bench_function("naive: scan + hex hash + locked map", |b| {
        b.iter(|| {
            let text = black_box(&presented);
            assert!(
                text.starts_with("pcl_") && text.len() == 42 && text[4..].chars().all(|c| c.is_ascii_alphanumeric())
            );
            let hash = hex::encode(Sha256::digest(text.as_bytes()));
            black_box(naive.lock().unwrap().get(&hash).cloned().unwrap())
        })
    });
}

criterion_group!(benches, key_path);
criterion_main!(benches);
