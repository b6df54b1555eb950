//! The HTTP side of the admin CLI: one authenticated client, typed helpers, error mapping.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use portcullis_types::Secret;
use portcullis_types::admin::is_hidden_char;
use portcullis_types::openai::ErrorBody;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::output::clean;

/// Environment variable holding the admin bearer token.
pub const TOKEN_ENV: &str = "PORTCULLIS_ADMIN_TOKEN";

/// How long one admin call may take, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a streamed answer (an export) may go without sending more: it has no total time limit.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A response body twice: as the server sent it (for `--json`) and as the type the CLI reads.
#[derive(Debug)]
pub struct Fetched<T> {
    pub raw: Value,
    pub body: T,
}

impl<T> Fetched<T> {
    /// A string field of the raw body that the typed view does not carry (a freshly issued secret).
    pub fn raw_str(&self, field: &str) -> anyhow::Result<&str> {
        self.raw
            .get(field)
            .and_then(Value::as_str)
            .with_context(|| format!("the admin API response has no string field `{field}`"))
    }
}

pub struct AdminClient {
    http: reqwest::Client,
    base: Url,
    authorization: Secret<HeaderValue>,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base.as_str())
            .field("authorization", &self.authorization)
            .finish()
    }
}

impl AdminClient {
    /// Reads the token from [`TOKEN_ENV`] and checks the base URL; fails before any request is made.
    pub fn new(global: &crate::GlobalArgs) -> anyhow::Result<Self> {
        let token = match std::env::var(TOKEN_ENV) {
            Ok(token) => Some(token),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => bail!("{TOKEN_ENV} is not valid UTF-8"),
        };
        Self::from_parts(&global.admin_url, token)
    }

    fn from_parts(admin_url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = Url::parse(admin_url).with_context(|| format!("--admin-url {admin_url:?} is not a valid URL"))?;
        match base.scheme() {
            "http" => {}
            "https" => bail!(
                "--admin-url {admin_url}: this build talks plain http only; reach the admin listener over \
                 loopback or a tunnel"
            ),
            other => bail!("--admin-url {admin_url}: unsupported scheme {other:?}, expected http"),
        }
        if base.cannot_be_a_base() || base.query().is_some() || base.fragment().is_some() {
            bail!("--admin-url {admin_url} must be a plain base URL such as http://127.0.0.1:8081");
        }
        let token = token.map(|token| token.trim().to_string()).unwrap_or_default();
        if token.is_empty() {
            bail!(
                "{TOKEN_ENV} is not set: export an admin token to use admin commands — the one `portcullis serve` \
                 printed on its first start, or the one it was started with in {TOKEN_ENV}"
            );
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("{TOKEN_ENV} contains characters that cannot be sent in an HTTP header"))?;
        authorization.set_sensitive(true);
        // No total timeout on the client: JSON calls set [`REQUEST_TIMEOUT`] each, while a streamed
        // answer may take longer as long as it keeps arriving.
        let http = reqwest::Client::builder()
            .connect_timeout(REQUEST_TIMEOUT)
            .read_timeout(STREAM_READ_TIMEOUT)
            // The bearer token must go straight to the admin listener, never through a proxy taken
            // from the environment, and never be replayed to wherever a redirect points.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { http, base, authorization: Secret::new(authorization) })
    }

    /// `GET /admin/v1/{path...}?{query}`.
    pub async fn get<T: DeserializeOwned>(&self, path: &[&str], query: &[(&str, &str)]) -> anyhow::Result<Fetched<T>> {
        self.send(Method::GET, path, query, None).await
    }

    /// `POST /admin/v1/{path...}` with a JSON body.
    pub async fn post<T: DeserializeOwned>(&self, path: &[&str], body: &impl Serialize) -> anyhow::Result<Fetched<T>> {
        let body = serde_json::to_value(body).context("cannot encode the request body")?;
        self.send(Method::POST, path, &[], Some(body)).await
    }

    /// `POST /admin/v1/{path...}` without a body (actions such as revoke).
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &[&str]) -> anyhow::Result<Fetched<T>> {
        self.send(Method::POST, path, &[], None).await
    }

    /// `PATCH /admin/v1/{path...}` with a JSON body.
    pub async fn patch<T: DeserializeOwned>(&self, path: &[&str], body: &impl Serialize) -> anyhow::Result<Fetched<T>> {
        let body = serde_json::to_value(body).context("cannot encode the request body")?;
        self.send(Method::PATCH, path, &[], Some(body)).await
    }

    /// `GET /admin/v1/{path...}?{query}`, its body to be read as it arrives (`Response::chunk`):
    /// for answers that may outlast [`REQUEST_TIMEOUT`] (an export), bounded only by the connect
    /// and each wait for more data. A refusal is an error, as for every other call.
    pub async fn get_stream(&self, path: &[&str], query: &[(&str, &str)]) -> anyhow::Result<reqwest::Response> {
        let url = self.url(path, query)?;
        let request = self.http.get(url.clone()).header(AUTHORIZATION, self.authorization.expose().clone());
        let response = request.send().await.map_err(|error| self.transport_error(&url, error))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(|error| self.transport_error(&url, error))?;
            return Err(api_error(status, &body));
        }
        Ok(response)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Fetched<T>> {
        let url = self.url(path, query)?;
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .timeout(REQUEST_TIMEOUT)
            .header(AUTHORIZATION, self.authorization.expose().clone());
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| self.transport_error(&url, error))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|error| self.transport_error(&url, error))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let raw: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {url} answered {status} with a body that is not JSON"))?;
        let body = T::deserialize(&raw)
            .with_context(|| format!("{method} {url} answered with a body this CLI does not understand"))?;
        Ok(Fetched { raw, body })
    }

    /// The base URL plus `admin/v1` plus each segment, percent-encoded.
    fn url(&self, path: &[&str], query: &[(&str, &str)]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        for segment in path {
            // `Url` drops `.`/`..` segments (even percent-encoded ones), and an empty one would hit
            // the collection instead of the item: such names cannot be addressed, so say so.
            if matches!(*segment, "" | "." | "..") {
                bail!("{segment:?} cannot be used as a name or id in a URL path");
            }
        }
        url.path_segments_mut()
            .map_err(|()| anyhow!("--admin-url {} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(["admin", "v1"])
            .extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    fn transport_error(&self, url: &Url, error: reqwest::Error) -> anyhow::Error {
        let what = if error.is_timeout() {
            format!("the admin API at {} did not answer within {}s ({url})", self.base, REQUEST_TIMEOUT.as_secs())
        } else if error.is_connect() {
            format!("cannot reach the admin API at {} (is `portcullis serve` running there?)", self.base)
        } else {
            format!("request to the admin API failed: {url}")
        };
        anyhow::Error::new(error).context(what)
    }
}

/// `"<status>: <message> (<code>)"` from the server's error body, or the best available summary.
fn api_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) {
        return match error.code {
            Some(code) => anyhow!("{status}: {} ({})", clean(&error.message), clean(&code)),
            None => anyhow!("{status}: {}", clean(&error.message)),
        };
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).map(|c| if is_hidden_char(c) { ' ' } else { c }).collect();
    if text.is_empty() { anyhow!("{status}") } else { anyhow!("{status}: {text}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> anyhow::Result<AdminClient> {
        AdminClient::from_parts(base, Some("pat_test".to_string()))
    }

    #[test]
    fn missing_or_blank_token_fails_before_any_request() {
        for token in [None, Some(String::new()), Some("  \n".to_string())] {
            let error = AdminClient::from_parts("http://127.0.0.1:8081", token).err().map(|e| e.to_string());
            assert!(error.is_some_and(|e| e.contains(TOKEN_ENV)));
        }
    }

    #[test]
    fn only_plain_http_base_urls_are_accepted() {
        assert!(client("https://admin.example").is_err());
        assert!(client("ftp://admin.example").is_err());
        assert!(client("not a url").is_err());
        assert!(client("http://127.0.0.1:8081?x=1").is_err());
    }

    #[test]
    fn debug_output_hides_the_token() -> anyhow::Result<()> {
        let debug = format!("{:?}", client("http://127.0.0.1:8081")?);
        assert!(!debug.contains("pat_test"), "{debug}");
        Ok(())
    }

    #[test]
    fn path_segments_are_percent_encoded() -> anyhow::Result<()> {
        let admin = client("http://127.0.0.1:8081")?;
        assert_eq!(
            admin.url(&["teams", "acme/eu west?#%"], &[])?.as_str(),
            "http://127.0.0.1:8081/admin/v1/teams/acme%2Feu%20west%3F%23%25"
        );
        let url = admin.url(&["keys"], &[("team", "a&b c"), ("include_revoked", "true")])?;
        assert_eq!(url.as_str(), "http://127.0.0.1:8081/admin/v1/keys?team=a%26b+c&include_revoked=true");
        Ok(())
    }

    #[test]
    fn base_url_path_prefix_is_kept() -> anyhow::Result<()> {
        let admin = client("http://gw.internal:8081/portcullis/")?;
        assert_eq!(admin.url(&["keys", "k1"], &[])?.as_str(), "http://gw.internal:8081/portcullis/admin/v1/keys/k1");
        Ok(())
    }

    #[test]
    fn dot_and_empty_segments_are_refused() -> anyhow::Result<()> {
        let admin = client("http://127.0.0.1:8081")?;
        for bad in ["", ".", ".."] {
            assert!(admin.url(&["teams", bad], &[]).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn streamed_calls_refuse_dot_and_empty_segments_before_any_request() -> anyhow::Result<()> {
        // Nothing listens on the discard port: a request made would fail differently.
        let admin = client("http://127.0.0.1:9")?;
        for bad in ["", ".", ".."] {
            let error = admin.get_stream(&["audit", bad], &[]).await.err().map(|error| error.to_string());
            assert!(error.as_deref().is_some_and(|e| e.contains("cannot be used as a name")), "{bad:?}: {error:?}");
        }
        Ok(())
    }

    #[test]
    fn api_errors_read_status_message_and_code() {
        let body = br#"{"error":{"message":"no such key","type":"invalid_request_error","code":"key_not_found","param":null}}"#;
        assert_eq!(api_error(StatusCode::NOT_FOUND, body).to_string(), "404 Not Found: no such key (key_not_found)");
        let body = br#"{"error":{"message":"denied","type":"permission_error","code":null,"param":null}}"#;
        assert_eq!(api_error(StatusCode::FORBIDDEN, body).to_string(), "403 Forbidden: denied");
        assert_eq!(api_error(StatusCode::BAD_GATEWAY, b"upstream\nboom").to_string(), "502 Bad Gateway: upstream boom");
        assert_eq!(api_error(StatusCode::UNAUTHORIZED, b"").to_string(), "401 Unauthorized");
        let body = "{\"error\":{\"message\":\"no \\u202e key\",\"type\":\"t\",\"code\":\"x\\n\",\"param\":null}}";
        assert_eq!(
            api_error(StatusCode::NOT_FOUND, body.as_bytes()).to_string(),
            "404 Not Found: no \\u{202e} key (x\\n)"
        );
        assert_eq!(api_error(StatusCode::BAD_GATEWAY, "a\u{202E}b".as_bytes()).to_string(), "502 Bad Gateway: a b");
    }

    #[test]
    fn issued_secrets_are_read_from_the_raw_body() -> anyhow::Result<()> {
        let fetched = Fetched { raw: serde_json::json!({"id": "k1", "key": "pcl_x"}), body: () };
        assert_eq!(fetched.raw_str("key")?, "pcl_x");
        assert!(fetched.raw_str("token").is_err());
        Ok(())
    }
}
