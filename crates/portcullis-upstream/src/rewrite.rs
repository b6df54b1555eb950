//! The `model` field of the request body, translated to the name the model server knows.
//!
//! Clients say `"model": "smollm2"`; llama-server, vLLM or Ollama may call the same model
//! `SmolLM2-135M-Instruct`, and a fallback model has a different name again. Most requests need
//! no change, and those pass the client's bytes through untouched: parsing and re-serialising
//! costs time and could alter the JSON (key order, number formatting) for nothing.

use bytes::Bytes;
use serde_json::Value;

/// The body to send upstream: `body` itself (the same `Bytes`, not a copy) when `client_model`
/// is already `target`, when the body already names `target`, or when the body is not a JSON
/// object (the model server then answers for itself; the gateway does not guess); otherwise the
/// body re-serialised with `model` set to `target`.
pub(crate) fn body_for(body: &Bytes, client_model: &str, target: &str) -> Bytes {
    if client_model == target {
        return body.clone();
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    let Some(object) = value.as_object_mut() else {
        return body.clone();
    };
    if object.get("model").and_then(Value::as_str) == Some(target) {
        return body.clone();
    }
    object.insert("model".to_string(), Value::String(target.to_string()));
    match serde_json::to_vec(&value) {
        Ok(rewritten) => Bytes::from(rewritten),
        Err(_) => body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_model_passes_the_same_bytes_through() {
        let body = Bytes::from_static(br#"{"model":"smollm2",  "messages":[]}"#);
        let sent = body_for(&body, "smollm2", "smollm2");
        assert_eq!(sent.as_ptr(), body.as_ptr(), "no copy, no re-serialisation");
        assert_eq!(sent.len(), body.len());
    }

    #[test]
    fn different_upstream_name_replaces_only_the_model_field() {
        let body =
            Bytes::from_static(br#"{"model":"smollm2","stream":true,"messages":[{"role":"user","content":"hi"}]}"#);
        let sent = body_for(&body, "smollm2", "SmolLM2-135M-Instruct");
        let value: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(value["model"], "SmolLM2-135M-Instruct");
        assert_eq!(value["stream"], true);
        assert_eq!(value["messages"][0]["content"], "hi");
    }

    #[test]
    fn body_already_naming_the_target_is_not_reserialised() {
        let body = Bytes::from_static(br#"{"model": "qwen",   "messages": []}"#);
        let sent = body_for(&body, "smollm2", "qwen");
        assert_eq!(sent.as_ptr(), body.as_ptr());
    }

    #[test]
    fn a_missing_model_field_is_added() {
        let body = Bytes::from_static(br#"{"prompt":"hi"}"#);
        let sent = body_for(&body, "smollm2", "qwen");
        let value: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(value["model"], "qwen");
        assert_eq!(value["prompt"], "hi");
    }

    #[test]
    fn bodies_that_are_not_json_objects_pass_through_untouched() {
        for raw in [&b"not json"[..], b"[1,2]", b""] {
            let body = Bytes::copy_from_slice(raw);
            let sent = body_for(&body, "smollm2", "qwen");
            assert_eq!(sent.as_ptr(), body.as_ptr());
        }
    }
}
