//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a public API).
//!
//! Each function takes the fuzzer's bytes, runs a parser on them and asserts what must hold for
//! every input: a failed assertion is how the fuzzer learns of a logic bug, not only a panic.
#![doc(hidden)]
#![allow(clippy::panic, reason = "a broken invariant panics so that the fuzzer records the input")]

use bytes::Bytes;
use serde_json::Value;

pub use crate::client::fuzzing::{chunked_decode, read_sizes, response_head, upstream_path};

/// The `model` translation of a request body (`rewrite::body_for`), for the server's request
/// target to call on bodies its envelope parser accepted. Returns the body to send; asserts
/// that it is the same bytes when nothing needs changing, and otherwise a JSON object that
/// differs from the client's only in `model`.
pub fn model_rewrite(body: &Bytes, client_model: &str, target: &str) -> Bytes {
    let sent = crate::rewrite::body_for(body, client_model, target);
    if sent.as_ptr() == body.as_ptr() && sent.len() == body.len() {
        return sent;
    }
    assert_ne!(client_model, target, "a body was rewritten to the model it already named");
    let (Ok(Value::Object(mut before)), Ok(Value::Object(mut after))) =
        (serde_json::from_slice::<Value>(body), serde_json::from_slice::<Value>(&sent))
    else {
        panic!("a rewritten body is not a JSON object read from one: {:?}", String::from_utf8_lossy(&sent));
    };
    assert_eq!(after.remove("model"), Some(Value::String(target.to_string())));
    before.remove("model");
    assert_eq!(before, after, "the rewrite changed more than the model");
    sent
}
