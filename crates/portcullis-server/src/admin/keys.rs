//! `/admin/v1/keys`: the API key lifecycle.

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use http::StatusCode;
use portcullis_auth::{Scopes, SecretKind, SecretToken};
use portcullis_store::{KeyFilter, KeyPatch, KeyRecord, NewKey, NewTeam, Rotation, StoreError};
use portcullis_types::admin::{
    CreateKeyRequest, CreatedKey, KeyView, ListResponse, Role, RotateKeyRequest, UpdateKeyRequest,
};
use serde::Deserialize;
use time::OffsetDateTime;

use super::auth::{AdminCaller, forbidden};
use super::extract::{ApiJson, ApiQuery};
use super::validate;
use super::views::{key_view, store_error};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    team: Option<String>,
    #[serde(default)]
    include_revoked: bool,
}

pub async fn list(
    State(state): State<AppState>,
    caller: AdminCaller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ListResponse<KeyView>>, ApiError> {
    // A team admin's list is its own team's, whatever it asked for.
    let team = if caller.role == Role::TeamAdmin { caller.team.clone() } else { query.team };
    let filter = KeyFilter { team, include_revoked: query.include_revoked };
    let records = state.stores().keys.list_keys(&filter).await.map_err(store_error("key"))?;
    let now = OffsetDateTime::now_utc();
    let data = records.into_iter().filter(|key| caller.can_see_team(key.team.as_deref())).map(|key| key_view(key, now));
    Ok(Json(ListResponse { data: data.collect() }))
}

pub async fn create(
    State(state): State<AppState>,
    caller: AdminCaller,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require_writer()?;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(OffsetDateTime::now_utc());
    let team = match (&caller.team, request.team) {
        (Some(own), None) => Some(own.clone()),
        (_, team) => team.map(|team| validate::team_name(&team, "team")).transpose()?,
    };
    if !caller.can_see_team(team.as_deref()) {
        return Err(forbidden("a team admin can create keys for its own team only"));
    }
    let team_tier = match &team {
        Some(team) => ensure_team(&state, &caller, team, now).await?,
        None => None,
    };
    let config = state.runtime().config.clone();
    let team_default = team_tier.unwrap_or_else(|| config.limits.default_tier.clone());
    let tier = validate::tier(&config, request.tier.as_deref().unwrap_or(&team_default))?;
    // A team admin must not mint keys on a richer plan than its team has.
    if caller.role == Role::TeamAdmin && tier != team_default {
        return Err(forbidden("a team admin cannot give a key a tier other than its team's"));
    }
    if request.capture_content {
        may_change_capture(&caller)?;
    }
    let secret = SecretToken::generate(SecretKind::ApiKey);
    let new_key = NewKey {
        id: format!("key_{}", ulid::Ulid::new()),
        name: validate::name(&request.name)?,
        secret_hash: *state.hasher().hash(&secret).as_bytes(),
        display_prefix: secret.display_prefix(),
        team,
        tier,
        models: validate::models(request.models.unwrap_or_default())?,
        scopes: match request.scopes {
            Some(scopes) => validate::scopes(&scopes)?,
            None => Scopes::all().names(),
        },
        allowed_cidrs: validate::cidrs(&request.allowed_cidrs.unwrap_or_default())?,
        limits: validate::limits(request.limits)?,
        metadata: validate::metadata(request.metadata)?,
        expires_at: validate::expiry(request.expires_in.as_deref(), request.expires_at, now)?,
        capture_content: request.capture_content,
        created_by: caller.token_id.clone(),
        created_at: now,
    };
    let record = state.stores().keys.create_key(new_key).await.map_err(store_error("key"))?;
    state.admin_action(&caller, "key.create", &record.id, record.team.as_deref()).await;
    Ok((StatusCode::CREATED, Json(created(record, secret, now))))
}

pub async fn get(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let record = visible_key(&state, &caller, &id).await?;
    Ok(Json(key_view(record, OffsetDateTime::now_utc())))
}

pub async fn update(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateKeyRequest>,
) -> Result<Json<KeyView>, ApiError> {
    caller.require_writer()?;
    let existing = visible_key(&state, &caller, &id).await?;
    let config = state.runtime().config.clone();
    let now = OffsetDateTime::now_utc();
    if caller.team.is_some() && request.tier.as_ref().is_some_and(|tier| tier != &existing.tier) {
        return Err(forbidden("a team admin cannot change a key's tier"));
    }
    if request.capture_content.is_some_and(|capture| capture != existing.capture_content) {
        may_change_capture(&caller)?;
    }
    let expires_at = if request.clear_expiry {
        if request.expires_in.is_some() || request.expires_at.is_some() {
            return Err(ApiError::bad_request(
                "clear_expiry cannot be combined with a new expiry",
                Some("clear_expiry"),
            ));
        }
        Some(None)
    } else {
        validate::expiry(request.expires_in.as_deref(), request.expires_at, now)?.map(Some)
    };
    let patch = KeyPatch {
        name: request.name.as_deref().map(validate::name).transpose()?,
        tier: request.tier.as_deref().map(|tier| validate::tier(&config, tier)).transpose()?,
        models: request.models.map(validate::models).transpose()?,
        scopes: request.scopes.as_deref().map(validate::scopes).transpose()?,
        allowed_cidrs: request.allowed_cidrs.as_deref().map(validate::cidrs).transpose()?,
        limits: request.limits.map(|limits| validate::limits(Some(limits))).transpose()?,
        metadata: request.metadata.map(|metadata| validate::metadata(Some(metadata))).transpose()?,
        expires_at,
        capture_content: request.capture_content,
    };
    let record = state.stores().keys.update_key(&id, patch).await.map_err(store_error("key"))?;
    state.keys().invalidate_key(&id);
    state.admin_action(&caller, "key.update", &id, record.team.as_deref()).await;
    Ok(Json(key_view(record, now)))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    caller.require_writer()?;
    visible_key(&state, &caller, &id).await?;
    let now = OffsetDateTime::now_utc();
    let record = state.stores().keys.revoke_key(&id, now).await.map_err(store_error("key"))?;
    state.keys().invalidate_key(&id);
    state.admin_action(&caller, "key.revoke", &id, record.team.as_deref()).await;
    Ok(Json(key_view(record, now)))
}

/// Issues a new secret; the old one keeps working until the grace period ends.
pub async fn rotate(
    State(state): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<CreatedKey>, ApiError> {
    // The body is optional: `POST .../rotate` with none uses the default grace period.
    let request: RotateKeyRequest =
        if body.is_empty() { RotateKeyRequest::default() } else { super::extract::json_body(&body)? };
    caller.require_writer()?;
    let existing = visible_key(&state, &caller, &id).await?;
    if existing.revoked_at.is_some() {
        return Err(ApiError::Conflict { message: "a revoked key cannot be rotated".into() });
    }
    let grace = validate::grace(request.grace.as_deref())?;
    let now = OffsetDateTime::now_utc();
    let secret = SecretToken::generate(SecretKind::ApiKey);
    let rotation = Rotation {
        new_secret: *state.hasher().hash(&secret).as_bytes(),
        new_display_prefix: secret.display_prefix(),
        old_valid_until: validate::grace_end(now, grace)?,
    };
    let record = state.stores().keys.rotate_key(&id, rotation).await.map_err(store_error("key"))?;
    state.keys().invalidate_key(&id);
    state.admin_action(&caller, "key.rotate", &id, record.team.as_deref()).await;
    Ok(Json(created(record, secret, now)))
}

/// Recording prompts and completions is a privacy decision for the whole deployment, not for a
/// team: only an admin turns capture on or off (a team admin may resend the current value).
fn may_change_capture(caller: &AdminCaller) -> Result<(), ApiError> {
    match caller.role {
        Role::Admin => Ok(()),
        Role::TeamAdmin | Role::Auditor => Err(forbidden("only an admin can turn content capture on or off")),
    }
}

/// The key, if it exists and the caller may see it; otherwise the same 404 either way.
async fn visible_key(state: &AppState, caller: &AdminCaller, id: &str) -> Result<KeyRecord, ApiError> {
    let record = state.stores().keys.get_key(id).await.map_err(store_error("key"))?;
    if caller.can_see_team(record.team.as_deref()) { Ok(record) } else { Err(ApiError::NotFound { what: "key" }) }
}

/// Makes sure a key's team exists (creating it on first use) and returns the team's tier.
async fn ensure_team(
    state: &AppState,
    caller: &AdminCaller,
    team: &str,
    now: OffsetDateTime,
) -> Result<Option<String>, ApiError> {
    match state.stores().teams.get_team(team).await {
        Ok(record) => Ok(record.tier),
        Err(StoreError::NotFound) => {
            let new_team = NewTeam {
                name: team.to_string(),
                tier: None,
                limits: Default::default(),
                metadata: validate::metadata(None)?,
                capture_content: false,
                created_at: now,
            };
            match state.stores().teams.create_team(new_team).await {
                Ok(_) | Err(StoreError::Conflict(_)) => {
                    state.admin_action(caller, "team.create", team, Some(team)).await;
                    Ok(None)
                }
                Err(error) => Err(store_error("team")(error)),
            }
        }
        Err(error) => Err(store_error("team")(error)),
    }
}

fn created(record: KeyRecord, secret: SecretToken, now: OffsetDateTime) -> CreatedKey {
    CreatedKey { key: secret.expose().to_string(), view: key_view(record, now) }
}
