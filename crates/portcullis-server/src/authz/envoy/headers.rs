//! Headers between Envoy's protobuf shapes and `http`'s.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap as EnvoyHeaderMap, HeaderValue as EnvoyHeader, HeaderValueOption,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// A request's headers as Envoy sends them: a map of lowercase names (repeated headers joined
/// with commas), or — with `encode_raw_headers` — a list of raw values. Pseudo-headers
/// (`:path`, `:method`, …) and anything `http` cannot carry are left out.
pub fn from_envoy<'a>(
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
    raw: Option<&'a EnvoyHeaderMap>,
) -> HeaderMap {
    let listed =
        raw.into_iter().flat_map(|raw| raw.headers.iter()).map(|header| (header.key.as_str(), value_of(header)));
    let mapped = map.into_iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
    let mut headers = HeaderMap::new();
    for (name, value) in mapped.chain(listed) {
        if name.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    headers
}

/// One header's value: `raw_value` when Envoy sends bytes, else `value`.
pub fn value_of(header: &EnvoyHeader) -> &[u8] {
    if header.raw_value.is_empty() { header.value.as_bytes() } else { &header.raw_value }
}

/// The value of `name` in one of Envoy's header lists.
pub fn find<'a>(headers: Option<&'a EnvoyHeaderMap>, name: &str) -> Option<&'a [u8]> {
    headers?.headers.iter().find(|header| header.key.eq_ignore_ascii_case(name)).map(value_of)
}

/// `headers` as options that replace what the request or response already has under each
/// name (so a client cannot pass off its own `x-portcullis-*` values as the authorizer's).
pub fn to_envoy(headers: &HeaderMap) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some(HeaderValueOption {
                header: Some(EnvoyHeader {
                    key: name.as_str().to_string(),
                    value: value.to_string(),
                    raw_value: vec![],
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                ..HeaderValueOption::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn pseudo_headers_are_left_out_and_raw_values_read() {
        let map = HashMap::from([
            (":path".to_string(), "/v1/models".to_string()),
            ("authorization".to_string(), "Bearer pk_x".to_string()),
        ]);
        let raw = EnvoyHeaderMap {
            headers: vec![EnvoyHeader { key: "x-api-key".into(), value: String::new(), raw_value: b"pk_y".to_vec() }],
        };
        let headers = from_envoy(&map, Some(&raw));
        assert_eq!(headers.len(), 2);
        assert_eq!(headers["authorization"], "Bearer pk_x");
        assert_eq!(headers["x-api-key"], "pk_y");
        assert_eq!(find(Some(&raw), "X-API-KEY"), Some(&b"pk_y"[..]));
    }

    #[test]
    fn headers_go_out_as_overwrites() {
        let mut headers = HeaderMap::new();
        headers.insert("x-portcullis-team", HeaderValue::from_static("blue"));
        let options = to_envoy(&headers);
        assert_eq!(options.len(), 1);
        assert_eq!(options[0].append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        let header = options[0].header.as_ref().unwrap();
        assert_eq!((header.key.as_str(), header.value.as_str()), ("x-portcullis-team", "blue"));
    }
}
