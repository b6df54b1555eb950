//! Admin API authentication and the role rules.

use axum::extract::FromRequestParts;
use http::request::Parts;
use portcullis_auth::{SecretKind, SecretToken};
use portcullis_types::Secret;
use portcullis_types::admin::Role;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::bearer::bearer_token;
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::state::AppState;

/// The shortest bootstrap token accepted from `PORTCULLIS_ADMIN_TOKEN`.
pub const MIN_BOOTSTRAP_TOKEN_LEN: usize = 20;

/// Knows the bootstrap token (from the environment, held only as a hash) in addition to the
/// stored `pct_` tokens.
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    bootstrap: Option<Secret<[u8; 32]>>,
}

impl AdminAuth {
    pub fn new(bootstrap_token: Option<&str>) -> AdminAuth {
        AdminAuth { bootstrap: bootstrap_token.map(|token| Secret::new(Sha256::digest(token.as_bytes()).into())) }
    }

    fn is_bootstrap(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.bootstrap.as_ref().is_some_and(|known| bool::from(known.expose().ct_eq(&digest)))
    }
}

/// The admin token behind a request.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    pub token_id: String,
    pub role: Role,
    pub team: Option<String>,
    /// The request's id, for the records of what this caller was refused.
    pub request_id: Option<String>,
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

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<AdminCaller, ApiError> {
        let token = bearer_token(&parts.headers).ok_or(ApiError::InvalidAdminToken)?;
        let request_id = parts.extensions.get::<RequestId>().map(|id| id.as_str().to_string());
        if state.admin_auth().is_bootstrap(token) {
            return Ok(AdminCaller { token_id: "bootstrap".into(), role: Role::Admin, team: None, request_id });
        }
        let secret = SecretToken::parse(SecretKind::AdminToken, token).map_err(|_| ApiError::InvalidAdminToken)?;
        let hash = state.hasher().hash(&secret);
        let record = state
            .stores()
            .tokens
            .find_token_by_secret(hash.as_bytes())
            .await
            .map_err(|error| ApiError::from_store(&error, "admin token lookup"))?
            .filter(|record| record.revoked_at.is_none())
            .ok_or(ApiError::InvalidAdminToken)?;
        Ok(AdminCaller { token_id: record.id, role: record.role, team: record.team, request_id })
    }
}
