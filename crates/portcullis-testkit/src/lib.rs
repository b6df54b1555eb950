//! Test support for Portcullis' black-box tests (`crates/portcullis/tests/`).
//!
//! - [`StubUpstream`]: a scripted OpenAI-compatible model server (faults, gated streams, request log).
//! - [`Gateway`] / [`GatewayBuilder`]: the real `portcullis` binary on free ports in a temp dir,
//!   plus its CLI as a client of that gateway.
//! - Optional real services, found from the environment: [`openai_python`] (a Python with the
//!   official `openai` SDK), [`real_slm_url`] (a real small model behind `llama-server`), and
//!   [`skip_or_fail`] to skip loudly on a developer machine but fail when `CI=true`.
//! - A real OIDC provider ([`OidcProvider`], npm's `oidc-provider` under `node`) for the token
//!   tests: client-credentials JWTs and opaque tokens, introspection, revocation, key rotation.
//! - Data services for fleet tests: a fresh [`PostgresDatabase`] per test, Redis ([`redis_or_skip`]),
//!   and a [`TcpRelay`] to cut a gateway off from one of them.
//! - [`WebGateway`]: a real nginx or Caddy run from the configuration shipped in `examples/`,
//!   asking a Portcullis authorizer about every request it forwards.
//!
//! ```no_run
//! # async fn example() {
//! use portcullis_testkit::{GatewayBuilder, StubUpstream};
//! let stub = StubUpstream::start().await;
//! // In crates/portcullis/tests/: GatewayBuilder::new(env!("CARGO_BIN_EXE_portcullis"))
//! let gateway = GatewayBuilder::new("target/debug/portcullis")
//!     .config(&format!("[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\n", stub.url()))
//!     .start()
//!     .await;
//! let (_id, _secret) = gateway.create_key(&["--models", "m"]);
//! # }
//! ```

mod env;
mod gateway;
mod idp;
mod relay;
mod services;
mod stub;
mod web_gateway;

pub use env::{
    SdkCheck, SdkScript, free_port, in_ci, real_slm_url, real_slm_url_or_skip, skip_or_fail, workspace_root,
};
pub use gateway::{Gateway, GatewayBuilder, GatewayError};
pub use idp::{
    DEFAULT_AUDIENCE, INTROSPECTION_CLIENT_ID, INTROSPECTION_CLIENT_SECRET, IdpClient, IdpStats, OidcProvider,
    OidcProviderBuilder, SigningAlg, idp_fixture_dir,
};
pub use relay::TcpRelay;
pub use services::{PostgresDatabase, RedisServer, postgres_url, redis_or_skip, redis_url, unique_name};
pub use stub::{
    DEFAULT_MODELS, DEFAULT_STREAM_CHUNKS, EMBEDDING_DIMENSIONS, Fault, GatedStream, LEAKED_SECRETS, RecordedRequest,
    STUB_SERVER_HEADERS, StubUpstream, embedding_of, reply_pieces, reply_text,
};
pub use web_gateway::{WebGateway, WebServer, fill_in};
