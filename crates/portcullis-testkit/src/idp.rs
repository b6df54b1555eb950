//! [`OidcProvider`]: a real OAuth 2.0 / OIDC provider on loopback for the token tests — npm's
//! `oidc-provider` run by `node` from the fixture in `crates/portcullis-testkit/idp/` (`idp.mjs`;
//! `scripts/idp.sh install` puts its `node_modules` there).
//!
//! It issues client-credentials access tokens (signed JWTs, or opaque ones that only its RFC 7662
//! introspection endpoint can read), revokes them (RFC 7009), and serves discovery and its JWKS.
//! It makes a new signing key, with a new `kid`, at every start: [`OidcProvider::restart`] is a key
//! rotation on the same issuer URL. Two test-only routes count the requests it served
//! ([`OidcProvider::stats`]) and sign any header and claims with its key ([`OidcProvider::sign`]).
#![allow(clippy::panic, clippy::expect_used, reason = "test support: a failure here is a failed test")]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::env::{skip_or_fail, workspace_root};

/// The audience tokens carry unless a test asks for another resource.
pub const DEFAULT_AUDIENCE: &str = "urn:portcullis";
/// The resource server's credentials for the introspection endpoint.
pub const INTROSPECTION_CLIENT_ID: &str = "portcullis-rs";
pub const INTROSPECTION_CLIENT_SECRET: &str = "portcullis-rs-secret";

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The algorithm of the provider's signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    Rs256,
    Es256,
    EdDsa,
}

impl SigningAlg {
    /// The JOSE name (`RS256`, `ES256`, `EdDSA`).
    pub fn name(self) -> &'static str {
        match self {
            SigningAlg::Rs256 => "RS256",
            SigningAlg::Es256 => "ES256",
            SigningAlg::EdDsa => "EdDSA",
        }
    }
}

/// A client-credentials client of the provider. Its `claims` are added to each of its access
/// tokens (and to introspection answers about them); its tokens' `sub` is its id.
#[derive(Debug, Clone)]
pub struct IdpClient {
    pub id: String,
    pub secret: String,
    /// The scopes it may ask for, space-separated.
    pub scope: String,
    pub claims: Value,
}

impl IdpClient {
    /// A client whose secret is `<id>-secret`.
    pub fn new(id: &str, scope: &str, claims: Value) -> IdpClient {
        IdpClient { id: id.to_string(), secret: format!("{id}-secret"), scope: scope.to_string(), claims }
    }
}

/// Requests the provider served, by endpoint, since it (re)started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct IdpStats {
    pub discovery: u64,
    pub jwks: u64,
    pub token: u64,
    pub introspection: u64,
    pub revocation: u64,
}

/// Builds an [`OidcProvider`].
#[derive(Debug, Clone)]
pub struct OidcProviderBuilder {
    audience: String,
    alg: SigningAlg,
    clients: Vec<IdpClient>,
}

impl OidcProviderBuilder {
    /// The default audience (default [`DEFAULT_AUDIENCE`]).
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = audience.to_string();
        self
    }

    /// The signing key's algorithm (default RS256).
    pub fn alg(mut self, alg: SigningAlg) -> Self {
        self.alg = alg;
        self
    }

    pub fn client(mut self, client: IdpClient) -> Self {
        self.clients.push(client);
        self
    }

    /// Starts the provider on a free port. When `node` or the fixture's `node_modules` is
    /// missing this skips loudly (fails with `CI=true`) and returns `None`.
    pub async fn start_or_skip(self) -> Option<OidcProvider> {
        if let Err(why) = fixture_ready() {
            skip_or_fail("OIDC provider (node + npm oidc-provider)", &why);
            return None;
        }
        let mut provider =
            OidcProvider { options: self, port: 0, kid: String::new(), child: None, http: http_client() };
        provider.launch().await;
        Some(provider)
    }
}

/// A running `oidc-provider` (killed when dropped).
#[derive(Debug)]
pub struct OidcProvider {
    options: OidcProviderBuilder,
    port: u16,
    kid: String,
    child: Option<Child>,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct ReadyLine {
    port: u16,
    kid: String,
}

impl OidcProvider {
    pub fn builder() -> OidcProviderBuilder {
        OidcProviderBuilder { audience: DEFAULT_AUDIENCE.to_string(), alg: SigningAlg::Rs256, clients: Vec::new() }
    }

    /// `http://127.0.0.1:PORT`: the `iss` of its tokens; discovery is below it.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn audience(&self) -> &str {
        &self.options.audience
    }

    pub fn alg(&self) -> SigningAlg {
        self.options.alg
    }

    /// The `kid` of the key it signs with now (new at every start).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `{issuer}/token/introspection`, for a config that names it.
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }

    /// A JWT access token for `client` with these scopes (space-separated), for the default audience.
    pub async fn token(&self, client: &str, scope: &str) -> String {
        self.token_for_resource(client, &self.options.audience, scope).await
    }

    /// An access token for `client` whose resource indicator is `resource`: its `aud` is
    /// `resource` without a query; `?format=opaque` makes it opaque, `ttl=N` sets its lifetime.
    pub async fn token_for_resource(&self, client: &str, resource: &str, scope: &str) -> String {
        let client = self.client(client);
        let mut form = vec![("grant_type", "client_credentials"), ("resource", resource)];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        let response = self
            .http
            .post(format!("{}/token", self.issuer()))
            .basic_auth(&client.id, Some(&client.secret))
            .form(&form)
            .send()
            .await
            .expect("the OIDC provider answers a token request");
        let status = response.status();
        let body: Value = response.json().await.expect("a token response is JSON");
        assert!(
            status.is_success(),
            "token request for {} ({resource}, {scope:?}) refused: {status} {body}",
            client.id
        );
        body["access_token"].as_str().unwrap_or_else(|| panic!("no access_token in {body}")).to_string()
    }

    /// An opaque access token for `client` (default audience, 600 s).
    pub async fn opaque_token(&self, client: &str, scope: &str) -> String {
        self.token_for_resource(client, &format!("{}?format=opaque", self.options.audience), scope).await
    }

    /// An opaque access token that expires after `ttl_seconds`.
    pub async fn opaque_token_with_ttl(&self, client: &str, scope: &str, ttl_seconds: u64) -> String {
        let resource = format!("{}?format=opaque&ttl={ttl_seconds}", self.options.audience);
        self.token_for_resource(client, &resource, scope).await
    }

    /// The provider's RFC 7662 answer about `token`, asked as the resource server.
    pub async fn introspect(&self, token: &str) -> Value {
        let response = self
            .http
            .post(self.introspection_endpoint())
            .basic_auth(INTROSPECTION_CLIENT_ID, Some(INTROSPECTION_CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("the OIDC provider answers an introspection request");
        assert!(response.status().is_success(), "introspection failed: {}", response.status());
        response.json().await.expect("an introspection answer is JSON")
    }

    /// Revokes `token` (RFC 7009) as `client`, the client it was issued to.
    pub async fn revoke(&self, client: &str, token: &str) {
        let client = self.client(client);
        let response = self
            .http
            .post(format!("{}/token/revocation", self.issuer()))
            .basic_auth(&client.id, Some(&client.secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("the OIDC provider answers a revocation request");
        let status = response.status();
        assert!(status.is_success(), "revocation refused: {status} {}", response.text().await.unwrap_or_default());
    }

    /// Its JWKS (public keys).
    pub async fn jwks(&self) -> Value {
        self.get_json("/jwks").await
    }

    /// Its discovery document.
    pub async fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration").await
    }

    /// A compact JWS over `claims`, signed with the provider's current key; `header` overrides
    /// or adds header fields (default `alg` = its algorithm, `kid` = [`OidcProvider::kid`],
    /// `typ` = `at+jwt`). For tokens whose claims are wrong but whose signature is good.
    pub async fn sign(&self, header: Value, claims: Value) -> String {
        let response = self
            .http
            .post(format!("{}/__test/sign", self.issuer()))
            .json(&json!({"header": header, "claims": claims}))
            .send()
            .await
            .expect("the OIDC provider answers /__test/sign");
        assert!(response.status().is_success(), "/__test/sign failed: {}", response.status());
        response.text().await.expect("a signed token")
    }

    /// Requests served since the provider last started.
    pub async fn stats(&self) -> IdpStats {
        serde_json::from_value(self.get_json("/__test/stats").await).expect("stats have every counter")
    }

    /// Stops it and starts it again on the same port: same issuer, new key and `kid`, counters
    /// and issued opaque tokens forgotten.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// Kills it: its port refuses connections until [`OidcProvider::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    fn client(&self, id: &str) -> &IdpClient {
        self.options
            .clients
            .iter()
            .find(|client| client.id == id)
            .unwrap_or_else(|| panic!("no client {id} was configured for the OIDC provider"))
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.issuer()))
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path} at the OIDC provider: {error}"));
        assert!(response.status().is_success(), "GET {path} at the OIDC provider: {}", response.status());
        response.json().await.unwrap_or_else(|error| panic!("GET {path} at the OIDC provider: not JSON: {error}"))
    }

    async fn launch(&mut self) {
        let clients: Vec<Value> = self
            .options
            .clients
            .iter()
            .map(|client| {
                json!({"client_id": client.id, "client_secret": client.secret, "scope": client.scope, "claims": client.claims})
            })
            .collect();
        let mut child = Command::new(node())
            .arg(fixture_dir().join("idp.mjs"))
            .current_dir(fixture_dir())
            .env("IDP_PORT", self.port.to_string())
            .env("IDP_AUDIENCE", &self.options.audience)
            .env("IDP_ALG", self.options.alg.name())
            .env("IDP_CLIENTS", Value::Array(clients).to_string())
            .env("IDP_RS_CLIENT_ID", INTROSPECTION_CLIENT_ID)
            .env("IDP_RS_CLIENT_SECRET", INTROSPECTION_CLIENT_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run node: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // Its errors go to this process's stderr; its start-up warnings (Node.js version, the
        // in-memory store, both expected here) do not.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.contains("WARNING") {
                    let _ = std::io::stderr().write_all(format!("[oidc-provider] {line}\n").as_bytes());
                }
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(ready) = serde_json::from_str::<ReadyLine>(&line) {
                    return Some(ready);
                }
            }
            None
        })
        .await;
        let ready = match ready {
            Ok(Some(ready)) => ready,
            Ok(None) => panic!("the OIDC provider exited before it was ready: {:?}", child.wait().await),
            Err(_) => panic!("the OIDC provider printed no ready line within {READY_TIMEOUT:?}"),
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.port = ready.port;
        self.kid = ready.kid;
        self.child = Some(child);
        let discovery = self.discovery().await;
        assert_eq!(discovery["issuer"], self.issuer(), "discovery names its issuer: {discovery}");
    }
}

/// `crates/portcullis-testkit/idp/`.
pub fn idp_fixture_dir() -> PathBuf {
    fixture_dir()
}

fn fixture_dir() -> PathBuf {
    workspace_root().join("crates/portcullis-testkit/idp")
}

/// `$PORTCULLIS_NODE`, else `node` from `PATH`.
fn node() -> PathBuf {
    std::env::var_os("PORTCULLIS_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

fn fixture_ready() -> Result<(), String> {
    let version = std::process::Command::new(node())
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run `node` (Debian package nodejs): {error}"))?;
    if !version.status.success() {
        return Err(format!("`node --version` failed: {}", version.status));
    }
    let package = fixture_dir().join("node_modules/oidc-provider/package.json");
    if !package.exists() {
        return Err(format!("{} is missing: run scripts/idp.sh install", package.display()));
    }
    Ok(())
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("build an HTTP client")
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn payload(jwt: &str) -> Value {
        let part = jwt.split('.').nth(1).expect("a JWT has a payload");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("a JSON payload")
    }

    fn header(jwt: &str) -> Value {
        let part = jwt.split('.').next().expect("a JWT has a header");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("a JSON header")
    }

    fn acme() -> IdpClient {
        IdpClient::new("svc-acme", "chat:write models:read", json!({"org_id": "acme", "tier": "pro"}))
    }

    /// The fixture works: a JWT with the client's claims, an opaque token that introspects as
    /// active until revoked, the JWKS holding the signing key, and a restart rotating it.
    #[tokio::test]
    async fn the_provider_issues_introspects_revokes_and_rotates() {
        let Some(mut idp) = OidcProvider::builder().client(acme()).start_or_skip().await else { return };

        let jwt = idp.token("svc-acme", "chat:write").await;
        let (head, claims) = (header(&jwt), payload(&jwt));
        assert_eq!((head["alg"].as_str(), head["typ"].as_str()), (Some("RS256"), Some("at+jwt")), "{head}");
        assert_eq!(head["kid"], idp.kid());
        assert_eq!(claims["iss"], idp.issuer());
        assert_eq!(claims["aud"], DEFAULT_AUDIENCE);
        assert_eq!((claims["sub"].as_str(), claims["org_id"].as_str()), (Some("svc-acme"), Some("acme")), "{claims}");
        assert_eq!(claims["scope"], "chat:write");
        assert!(claims["jti"].is_string() && claims["exp"].is_i64(), "{claims}");
        let keys = idp.jwks().await;
        assert_eq!(keys["keys"][0]["kid"], idp.kid(), "{keys}");
        assert!(keys["keys"][0].get("d").is_none(), "the JWKS must not hold the private key: {keys}");

        let opaque = idp.opaque_token("svc-acme", "chat:write models:read").await;
        assert_eq!(opaque.split('.').count(), 1, "an opaque token is not a JWT: {opaque}");
        let answer = idp.introspect(&opaque).await;
        assert_eq!(answer["active"], true, "{answer}");
        assert_eq!((answer["sub"].as_str(), answer["tier"].as_str()), (Some("svc-acme"), Some("pro")), "{answer}");
        assert_eq!(answer["aud"], DEFAULT_AUDIENCE, "{answer}");
        assert_eq!(idp.introspect("not-a-token").await["active"], false);
        idp.revoke("svc-acme", &opaque).await;
        assert_eq!(idp.introspect(&opaque).await["active"], false, "revoked");

        let forged = idp.sign(json!({}), json!({"exp": "9999999999"})).await;
        assert_eq!(header(&forged)["kid"], idp.kid());
        assert_eq!(payload(&forged)["exp"], "9999999999");

        let stats = idp.stats().await;
        assert_eq!((stats.jwks, stats.token, stats.introspection, stats.revocation), (1, 2, 3, 1), "{stats:?}");

        let (issuer, old_kid) = (idp.issuer(), idp.kid().to_string());
        idp.restart().await;
        assert_eq!(idp.issuer(), issuer, "a restart keeps the issuer");
        assert_ne!(idp.kid(), old_kid, "a restart rotates the key");
        assert_eq!(header(&idp.token("svc-acme", "").await)["kid"], idp.kid());
        assert_eq!(idp.stats().await.jwks, 0, "counters start again");
        idp.stop().await;
        assert!(reqwest::get(format!("{issuer}/jwks")).await.is_err(), "stopped");
    }

    #[tokio::test]
    async fn every_signing_algorithm_works() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            let Some(idp) = OidcProvider::builder().alg(alg).client(acme()).start_or_skip().await else { return };
            let jwt = idp.token("svc-acme", "").await;
            assert_eq!(header(&jwt)["alg"], alg.name());
            assert_eq!(idp.jwks().await["keys"][0]["alg"], alg.name());
            assert_eq!(header(&idp.sign(json!({}), json!({})).await)["alg"], alg.name());
        }
    }
}
