//! Admin API authentication and the role rules.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use http::request::Parts;
use portcullis_auth::{SecretHasher, SecretKind, SecretToken};
use portcullis_store::AdminTokenStore;
use portcullis_types::Secret;
use portcullis_types::admin::Role;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::bearer::bearer_token;
use crate::error::ApiError;
use crate::exchange::Exchange;

/// The shortest bootstrap token accepted from `PORTCULLIS_ADMIN_TOKEN`.
pub const MIN_BOOTSTRAP_TOKEN_LEN: usize = 20;

/// Tells who an admin token belongs to: the bootstrap token (from the environment, held only as
/// a hash), or a stored `pct_` token.
#[derive(Clone)]
pub struct AdminAuth {
    bootstrap: Option<Secret<[u8; 32]>>,
    hasher: SecretHasher,
    tokens: Arc<dyn AdminTokenStore>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
    }
}

impl AdminAuth {
    pub fn new(bootstrap_token: Option<&str>, hasher: SecretHasher, tokens: Arc<dyn AdminTokenStore>) -> AdminAuth {
        let bootstrap = bootstrap_token.map(|token| Secret::new(Sha256::digest(token.as_bytes()).into()));
        AdminAuth { bootstrap, hasher, tokens }
    }

    /// How admin token secrets are hashed for storage (the key pepper's, like API keys').
    pub fn hasher(&self) -> &SecretHasher {
        &self.hasher
    }

    fn is_bootstrap(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.bootstrap.as_ref().is_some_and(|known| bool::from(known.expose().ct_eq(&digest)))
    }
}

/// The admin token behind a request, and the request's record (for the audit of its changes;
/// always there for a request, absent only where unit tests build a caller by hand).
#[derive(Debug, Clone)]
pub struct AdminCaller {
    pub token_id: String,
    pub role: Role,
    pub team: Option<String>,
    pub exchange: Option<Exchange>,
}

impl AdminCaller {
    /// Changes need `admin`, or `team_admin` within its own team.
    pub fn require_writer(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::TeamAdmin => Ok(()),
            Role::Auditor => Err(forbidden("auditor tokens are read-only")),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::TeamAdmin | Role::Auditor => Err(forbidden("this needs an admin token")),
        }
    }

    /// Records an admin change: who (the admin token), what (`key.revoke`…), on what, and the
    /// request it came with.
    pub async fn record_action(&self, action: &str, target: &str, team: Option<&str>) {
        match &self.exchange {
            Some(exchange) => exchange.admin_action(&self.token_id, action, target, team).await,
            None => tracing::error!(action, target, "admin change without a request record; not audited"),
        }
    }

    /// Whether this caller may see things that belong to `team`. A `team_admin` sees its own
    /// team only; asking about any other is answered as if it did not exist.
    pub fn can_see_team(&self, team: Option<&str>) -> bool {
        match self.role {
            Role::Admin | Role::Auditor => true,
            Role::TeamAdmin => self.team.is_some() && team == self.team.as_deref(),
        }
    }
}

pub fn forbidden(message: &str) -> ApiError {
    ApiError::Forbidden { message: message.to_string() }
}

/// Every admin handler takes its caller; any router state that holds an [`AdminAuth`] will do.
impl<S: Send + Sync> FromRequestParts<S> for AdminCaller
where
    AdminAuth: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<AdminCaller, ApiError> {
        let auth = AdminAuth::from_ref(state);
        let exchange = parts.extensions.get::<Exchange>().cloned();
        let token = bearer_token(&parts.headers).ok_or(ApiError::InvalidAdminToken)?;
        if auth.is_bootstrap(token) {
            return Ok(AdminCaller { token_id: "bootstrap".into(), role: Role::Admin, team: None, exchange });
        }
        let secret = SecretToken::parse(SecretKind::AdminToken, token).map_err(|_| ApiError::InvalidAdminToken)?;
        let hash = auth.hasher.hash(&secret);
        let record = auth
            .tokens
            .find_token_by_secret(hash.as_bytes())
            .await
            .map_err(|error| ApiError::from_store(&error, "admin token lookup"))?
            .filter(|record| record.revoked_at.is_none())
            .ok_or(ApiError::InvalidAdminToken)?;
        Ok(AdminCaller { token_id: record.id, role: record.role, team: record.team, exchange })
    }
}
