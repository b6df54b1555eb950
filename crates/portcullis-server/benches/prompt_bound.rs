//! The prompt bound admission reserves, per request: by the body's bytes (no `tokenizer`), by a
//! cached count, and by a fresh count from the model server's tokenize endpoint — the real
//! small model's when `PORTCULLIS_REAL_SLM_URL` is set, else the test kit's stub.
//!
//! Run: `PORTCULLIS_REAL_SLM_URL=http://127.0.0.1:8090 cargo bench -p portcullis-server
//! --features bench --bench prompt_bound -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::expect_used, reason = "a benchmark that cannot set up has nothing to measure")]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_server::bench::PromptBound;
use portcullis_testkit::{StubUpstream, real_slm_url};
use serde_json::json;

const SYSTEM: &str = "You are a helpful assistant. Answer briefly and precisely, in the user's language.";

fn body(model: &str, question: &str) -> Bytes {
    let messages = json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]);
    Bytes::from(json!({"model": model, "max_tokens": 64, "messages": messages}).to_string())
}

fn prompt_bound(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (_stub, endpoint) = match real_slm_url() {
        Some(url) => (None, url),
        None => {
            let stub = runtime.block_on(StubUpstream::start());
            let url = stub.url();
            (Some(stub), url)
        }
    };
    let config = format!(
        "[[models]]\nname = \"bytes\"\nendpoints = [\"{endpoint}\"]\nhealth_check = {{ enabled = false }}\n\n\
         [[models]]\nname = \"counted\"\nendpoints = [\"{endpoint}\"]\nserver = \"llamacpp\"\ntokenizer = \"server\"\n\
         health_check = {{ enabled = false }}\n"
    );
    let bounds = runtime.block_on(async { PromptBound::new(&config) }).expect("a valid configuration");
    let question = "What is the capital of France, and why is it there?";

    let mut group = c.benchmark_group("prompt_bound");
    let plain = body("bytes", question);
    group.bench_function("byte_bound", |b| b.iter(|| runtime.block_on(bounds.of(black_box(plain.clone())))));
    let repeated = body("counted", question);
    let counted = runtime.block_on(bounds.of(repeated.clone()));
    assert!(counted < plain.len() as u64, "the tokenizer answered: {counted}");
    group.bench_function("cached_count", |b| b.iter(|| runtime.block_on(bounds.of(black_box(repeated.clone())))));
    let fresh = AtomicU64::new(0);
    group.bench_function("fresh_count", |b| {
        b.iter(|| {
            let question = format!("{question} ({})", fresh.fetch_add(1, Ordering::Relaxed));
            runtime.block_on(bounds.of(body("counted", &question)))
        })
    });
    group.finish();
}

criterion_group!(benches, prompt_bound);
criterion_main!(benches);
