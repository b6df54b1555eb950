//! For the admin router's tests: the OpenAPI document's schemas read as a checker needs them
//! (`$ref`s followed, `allOf` merged), and an answer checked against the schema of its status.

use axum::Router;
use axum::body::Body;
use http::StatusCode;
use serde_json::{Map, Value};
use tower::ServiceExt;

use super::OPENAPI;

/// The bootstrap admin token [`call`] presents.
pub const TOKEN: &str = "pct_bootstrap_openapi_tests_0123456789";

pub fn document() -> Value {
    serde_json::from_str(OPENAPI).unwrap()
}

/// `(method, operation)` of a path item, leaving out its shared `parameters`.
pub fn operations(item: &Value) -> impl Iterator<Item = (&str, &Value)> {
    ["get", "post", "patch", "delete"].into_iter().filter_map(|method| Some((method, item.get(method)?)))
}

/// `node` with its `$ref` (a local JSON pointer) followed, as often as it takes.
pub fn resolved<'a>(document: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = document.pointer(pointer.trim_start_matches('#'));
            resolved(document, target.unwrap_or_else(|| panic!("dangling $ref {pointer}")))
        }
        None => node,
    }
}

/// The properties and required names of an object schema, its `allOf` parts included.
fn object_shape(document: &Value, schema: &Value) -> (Map<String, Value>, Vec<String>) {
    let schema = resolved(document, schema);
    let mut properties = schema["properties"].as_object().cloned().unwrap_or_default();
    let mut required: Vec<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|name| name.as_str().map(String::from))
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        let (more, needed) = object_shape(document, part);
        properties.extend(more);
        required.extend(needed);
    }
    (properties, required)
}

/// Whether a schema says what it describes: it is not `{}`, and one for an object names the
/// object's properties.
pub fn is_described(document: &Value, schema: &Value) -> bool {
    let schema = resolved(document, schema);
    let says = ["type", "allOf", "oneOf", "anyOf", "const", "enum"].iter().any(|word| schema.get(*word).is_some());
    let object = schema.get("type").is_some_and(|kind| kind == "object") || schema.get("allOf").is_some();
    says && (!object || !object_shape(document, schema).0.is_empty())
}

/// The status and JSON body (`Null` when not JSON) of one call with the bootstrap token.
pub async fn call(router: &Router, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
    let mut request = http::Request::builder().method(method.to_uppercase().as_str()).uri(uri);
    request = request.header("authorization", format!("Bearer {TOKEN}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request.body(Body::from(body.unwrap_or_default().to_string())).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// `value` against `schema`: every property it requires is there and, where the schema names
/// its properties, no other; arrays item by item. `at` says where, for the failure message.
pub fn check(document: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolved(document, schema);
    if let Some(items) = value.as_array() {
        if let Some(item) = schema.get("items") {
            items.iter().enumerate().for_each(|(index, value)| check(document, item, value, &format!("{at}[{index}]")));
        }
        return;
    }
    let Some(object) = value.as_object() else { return };
    let (properties, required) = object_shape(document, schema);
    for name in required {
        assert!(object.contains_key(&name), "{at}: no `{name}`, which the schema requires, in {value}");
    }
    if properties.is_empty() {
        return; // free-form, such as metadata
    }
    for (name, field) in object {
        let property = properties.get(name).unwrap_or_else(|| panic!("{at}: `{name}` is answered but not documented"));
        check(document, property, field, &format!("{at}.{name}"));
    }
}

/// Checks one answer against the documented JSON schema of its status.
pub fn check_answer(document: &Value, path: &str, method: &str, (status, body): &(StatusCode, Value)) {
    let operation = &document["paths"][path][method];
    let response = resolved(document, &operation["responses"][status.as_str()]);
    let schema = response
        .pointer("/content/application~1json/schema")
        .unwrap_or_else(|| panic!("{method} {path} answered {status}, which it does not document as JSON: {body}"));
    check(document, schema, body, &format!("{method} {path} {status}"));
}
