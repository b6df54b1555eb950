//! The `model` field of the request body, translated to the name the model server knows.
//!
//! Clients say `"model": "smollm2"`; llama-server, vLLM or Ollama may call the same model
//! `SmolLM2-135M-Instruct`, and a fallback model has a different name again. Most requests need
//! no change, and those pass the client's bytes through untouched. Those that do are edited in
//! place: only the `model` value's bytes are replaced, because re-serialising would alter the
//! JSON — key order, number formatting, and numbers themselves (serde_json reads integers past
//! u64 and long decimals inexactly), so the model server would be sent other values.

use std::ops::Range;

use bytes::Bytes;
use serde_json::Value;

/// The body to send upstream: `body` itself (the same `Bytes`, not a copy) when `client_model`
/// is already `target`, when the body already names `target`, or when the body is not a JSON
/// object (the model server then answers for itself; the gateway does not guess); otherwise the
/// body with the value of each top-level `model` member replaced by `target`, or with a `model`
/// member added first when it has none.
pub(crate) fn body_for(body: &Bytes, client_model: &str, target: &str) -> Bytes {
    if client_model == target {
        return body.clone();
    }
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    if object.get("model").and_then(Value::as_str) == Some(target) {
        return body.clone();
    }
    let Ok(target) = serde_json::to_string(target) else {
        return body.clone();
    };
    let spans = member_values(body, "model");
    let mut sent = Vec::with_capacity(body.len() + target.len() + 10);
    if spans.is_empty() {
        // Parsed as an object above, so the first non-blank byte is its `{`.
        let open = body.iter().position(|&byte| byte == b'{').map_or(0, |at| at + 1);
        sent.extend_from_slice(&body[..open]);
        sent.extend_from_slice(b"\"model\":");
        sent.extend_from_slice(target.as_bytes());
        if !object.is_empty() {
            sent.push(b',');
        }
        sent.extend_from_slice(&body[open..]);
    } else {
        let mut copied = 0;
        for span in spans {
            sent.extend_from_slice(&body[copied..span.start]);
            sent.extend_from_slice(target.as_bytes());
            copied = span.end;
        }
        sent.extend_from_slice(&body[copied..]);
    }
    Bytes::from(sent)
}

/// Where the values of the top-level members called `name` lie, in a body already known to be
/// one well-formed JSON object (so the scan needs no error handling of its own).
fn member_values(body: &[u8], name: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut at = skip_blank(body, 0) + 1;
    loop {
        at = skip_blank(body, at);
        if body.get(at) != Some(&b'"') {
            return spans;
        }
        let key_end = string_end(body, at);
        let key = serde_json::from_slice::<String>(&body[at..key_end]).unwrap_or_default();
        let start = skip_blank(body, skip_blank(body, key_end) + 1);
        let end = value_end(body, start);
        if key == name {
            spans.push(start..end);
        }
        at = skip_blank(body, end);
        if body.get(at) != Some(&b',') {
            return spans;
        }
        at += 1;
    }
}

fn skip_blank(body: &[u8], mut at: usize) -> usize {
    while body.get(at).is_some_and(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// Just past the string whose opening quote is at `at`.
fn string_end(body: &[u8], mut at: usize) -> usize {
    at += 1;
    while let Some(&byte) = body.get(at) {
        match byte {
            b'\\' => at += 2,
            b'"' => return at + 1,
            _ => at += 1,
        }
    }
    body.len()
}

/// Just past the value that starts at `at`.
fn value_end(body: &[u8], mut at: usize) -> usize {
    match body.get(at) {
        Some(b'"') => string_end(body, at),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while let Some(&byte) = body.get(at) {
                match byte {
                    b'"' => {
                        at = string_end(body, at);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return at + 1;
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
            body.len()
        }
        _ => {
            while body.get(at).is_some_and(|byte| !matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                at += 1;
            }
            at
        }
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

    /// Found by the request_body fuzz target: re-serialising changed numbers (serde_json reads
    /// integers past u64 and long floats inexactly and writes them back in another form), so
    /// the model server was sent other values than the client's.
    #[test]
    fn only_the_model_value_changes_and_every_other_byte_is_kept() {
        let body = Bytes::from_static(
            br#"{ "seed":18446748192515361616189, "model" : "smollm2","t":0.30000000000000004,"x":1e2 }"#,
        );
        let sent = body_for(&body, "smollm2", "qwen");
        assert_eq!(
            std::str::from_utf8(&sent).unwrap(),
            r#"{ "seed":18446748192515361616189, "model" : "qwen","t":0.30000000000000004,"x":1e2 }"#
        );
    }

    #[test]
    fn an_escaped_or_non_string_model_member_is_replaced_and_an_empty_object_gets_one() {
        let sent = body_for(&Bytes::from_static(br#"{"mod\u0065l":"a","n":1}"#), "a", "b");
        assert_eq!(&sent[..], br#"{"mod\u0065l":"b","n":1}"#);
        let sent = body_for(&Bytes::from_static(br#"{"model":{"x":["}"]},"n":1}"#), "a", "b");
        assert_eq!(&sent[..], br#"{"model":"b","n":1}"#);
        assert_eq!(&body_for(&Bytes::from_static(b" {} "), "a", "b")[..], br#" {"model":"b"} "#);
        let sent = body_for(&Bytes::from_static(br#"{"prompt":"say \"model\""}"#), "a", "b\"c");
        assert_eq!(&sent[..], br#"{"model":"b\"c","prompt":"say \"model\""}"#);
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
