//! `/admin/v1/tokens`: admin tokens, managed like keys. Admins only, auditors may list.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use portcullis_auth::{SecretKind, SecretToken};
use portcullis_store::NewAdminToken;
use portcullis_types::admin::{CreateTokenRequest, CreatedToken, ListResponse, Role, TokenView};
use time::OffsetDateTime;

use super::AdminState;
use super::auth::AdminCaller;
use super::extract::{ApiJson, ApiQuery, NoParams};
use super::refusal::audited;
use super::validate;
use super::views::{insert_error, store_error, token_view};
use crate::error::ApiError;

/// Every admin token, for admins and auditors. There is no filter: a parameter such as `?team=`
/// is a 400, not ignored.
pub async fn list(
    State(state): State<AdminState>,
    caller: AdminCaller,
    query: Result<ApiQuery<NoParams>, ApiError>,
) -> Result<Json<ListResponse<TokenView>>, ApiError> {
    let result = list_tokens(&state, &caller, query).await;
    audited(&caller, "token.list", None, result)
}

/// The role is checked before the query: a team admin is refused whatever it asks.
async fn list_tokens(
    state: &AdminState,
    caller: &AdminCaller,
    query: Result<ApiQuery<NoParams>, ApiError>,
) -> Result<Json<ListResponse<TokenView>>, ApiError> {
    if caller.role == Role::TeamAdmin {
        return Err(super::auth::forbidden("team admins cannot see admin tokens"));
    }
    let ApiQuery(NoParams {}) = query?;
    let tokens = state.stores().tokens.list_tokens().await.map_err(store_error("token"))?;
    Ok(Json(ListResponse { data: tokens.into_iter().map(token_view).collect() }))
}

pub async fn create(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let result = create_token(&state, &caller, request).await;
    audited(&caller, "token.create", None, result)
}

async fn create_token(
    state: &AdminState,
    caller: &AdminCaller,
    request: CreateTokenRequest,
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
    // A team_admin token's team must exist: the store refuses the insert with NotFound, which
    // is the team missing.
    let record = state.stores().tokens.create_token(token).await.map_err(insert_error("token", "team"))?;
    caller.record_action("token.create", &record.id, record.team.as_deref()).await;
    let created = CreatedToken { token: secret.expose().to_string(), view: token_view(record) };
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn revoke(
    State(state): State<AdminState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let result = revoke_token(&state, &caller, &id).await;
    audited(&caller, "token.revoke", Some(&id), result)
}

async fn revoke_token(state: &AdminState, caller: &AdminCaller, id: &str) -> Result<Json<TokenView>, ApiError> {
    caller.require_admin()?;
    let record =
        state.stores().tokens.revoke_token(id, OffsetDateTime::now_utc()).await.map_err(store_error("token"))?;
    caller.record_action("token.revoke", id, record.team.as_deref()).await;
    Ok(Json(token_view(record)))
}
