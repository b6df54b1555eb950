//! HTTP to the identity provider: small JSON documents with a deadline and a size cap, no
//! redirects (a configured URL is the only one fetched).

use std::time::Duration;

use reqwest::header::{CACHE_CONTROL, HeaderMap};

/// The largest discovery, JWKS or introspection answer read.
const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unreachable: {0}")]
    Unreachable(&'static str),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("answer is not {0}")]
    Garbage(&'static str),
    #[error("{0}")]
    Mismatch(String),
}

/// A successful answer and how long it may be cached, if it says.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

pub async fn get(client: &reqwest::Client, url: &str) -> Result<Fetched, FetchError> {
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| FetchError::Unreachable(without_url(&error)))?;
    let max_age = max_age(response.headers());
    let body = body(response).await?;
    Ok(Fetched { body, max_age })
}

pub async fn post_form(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
    form: &[(&str, &str)],
) -> Result<Vec<u8>, FetchError> {
    let response = client
        .post(url)
        .basic_auth(user, Some(password))
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|error| FetchError::Unreachable(without_url(&error)))?;
    body(response).await
}

async fn body(mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    if response.content_length().is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(FetchError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| FetchError::Unreachable(without_url(&error)))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Cache-Control: max-age=N`; `no-store` / `no-cache` count as zero.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').map(str::trim).find_map(|directive| {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        name.trim().eq_ignore_ascii_case("max-age").then(|| seconds.trim().parse().ok().map(Duration::from_secs))?
    })
}

/// The error without the URL: an introspection or JWKS URL may carry credentials in its query.
fn without_url(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(CACHE_CONTROL, value.parse().unwrap());
            map
        };
        assert_eq!(max_age(&headers("public, max-age=600")), Some(Duration::from_secs(600)));
        assert_eq!(max_age(&headers("no-store")), Some(Duration::ZERO));
        assert_eq!(max_age(&headers("public")), None);
        assert_eq!(max_age(&HeaderMap::new()), None);
    }
}
