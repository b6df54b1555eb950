//! `/admin/v1/tokens`: admin tokens, managed like keys. Admins only, auditors may list.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use portcullis_auth::{SecretKind, SecretToken};
use portcullis_store::NewAdminToken;
use portcullis_types::admin::{CreateTokenRequest, CreatedToken, ListResponse, Role, TokenView};
use time::OffsetDateTime;

use super::auth::AdminCaller;
use super::extract::ApiJson;
use super::validate;
use super::views::{store_error, token_view};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    caller: AdminCaller,
) -> Result<Json<ListResponse<TokenView>>, ApiError> {
    if caller.role == Role::TeamAdmin {
        return Err(super::auth::forbidden("team admins cannot see admin tokens"));
    }
    let tokens = state.stores().tokens.list_tokens().await.map_err(store_error("token"))?;
    Ok(Json(ListResponse { data: tokens.into_iter().map(token_view).collect() }))
}

pub async fn create(
    State(state): State<AppState>,
    caller: AdminCaller,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    caller.require_admin()?;
    let team = match (request.role, request.team) {
        (Role::TeamAdmin, Some(team)) => Some(validate::team_name(&team, "team")?),
        (Role::TeamAdmin, None) => return Err(ApiError::bad_request("a team_admin token needs a team", Some("team"))),
        (_, Some(_)) => return Err(ApiError::bad_request("only team_admin tokens belong to a team", Some("team"))),
        (_, None) => None,
    };
    let secret = SecretToken::generate(SecretKind::AdminToken);
    let token = NewAdminToken {
        id: format!("tok_{}", ulid::Ulid::new()),
        name: validate::name(&request.name)?,
        secret_hash: *state.hasher().hash(&secret).as_bytes(),
        display_prefix: secret.display_prefix(),
        role: request.role,
        team,
        created_by: caller.token_id.clone(),
        created_at: OffsetDateTime::now_utc(),
    };
    let record = state.stores().tokens.create_token(token).await.map_err(store_error("token"))?;
    state.admin_action(&caller, "token.create", &record.id, record.team.as_deref()).await;
    let created = CreatedToken { token: secret.expose().to_string(), view: token_view(record) };
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    caller.require_admin()?;
    let record =
        state.stores().tokens.revoke_token(&id, OffsetDateTime::now_utc()).await.map_err(store_error("token"))?;
    state.admin_action(&caller, "token.revoke", &id, record.team.as_deref()).await;
    Ok(Json(token_view(record)))
}
