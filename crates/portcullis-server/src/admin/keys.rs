//! `/admin/v1/keys`: the API key lifecycle.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use http::StatusCode;
use portcullis_auth::{Scopes, SecretKind, SecretToken};
use portcullis_store::{KeyFilter, KeyPatch, KeyRecord, NewKey, NewTeam, Rotation, StoreError, TeamRecord};
use portcullis_types::admin::{
    CreateKeyRequest, CreatedKey, KeyView, ListResponse, Role, RotateKeyRequest, UpdateKeyRequest,
};
use serde::Deserialize;
use time::OffsetDateTime;

use super::AdminState;
use super::auth::{AdminCaller, forbidden};
use super::extract::{ApiJson, ApiQuery};
use super::refusal::audited;
use super::views::{insert_error, key_view, store_error};
use super::{plan, validate};
use crate::error::ApiError;
use crate::principal::key_tier;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    team: Option<String>,
    #[serde(default)]
    include_revoked: bool,
}

/// A team admin lists its own team's keys; asking for another team finds none (the same answer
/// as for a team without keys), never its own keys under the other team's name.
pub async fn list(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ListResponse<KeyView>>, ApiError> {
    let asked = query.team.as_deref().map(|team| validate::team_name(team, "team")).transpose()?;
    let team = match (caller.role, &caller.team, asked) {
        (Role::Admin | Role::Auditor, _, asked) => asked,
        (Role::TeamAdmin, Some(own), asked) if asked.as_ref().is_none_or(|asked| asked == own) => Some(own.clone()),
        (Role::TeamAdmin, _, _) => return Ok(Json(ListResponse { data: Vec::new() })),
    };
    let filter = KeyFilter { team, include_revoked: query.include_revoked };
    let records = state.stores().keys.list_keys(&filter).await.map_err(store_error("key"))?;
    let visible: Vec<KeyRecord> = records.into_iter().filter(|key| caller.can_see_team(key.team.as_deref())).collect();
    // Each team's tier once, for the keys that follow it.
    let mut team_tiers: HashMap<String, Option<String>> = HashMap::new();
    for team in visible.iter().filter_map(|key| key.team.as_deref()) {
        if !team_tiers.contains_key(team) {
            team_tiers.insert(team.to_string(), team_of(&state, team).await?.and_then(|team| team.tier));
        }
    }
    let default_tier = state.runtime().live.limits.default_tier.clone();
    let now = OffsetDateTime::now_utc();
    let data = visible.into_iter().map(|key| {
        let team_tier = key.team.as_ref().and_then(|team| team_tiers.get(team)).and_then(Option::as_deref);
        key_view(key, team_tier, &default_tier, now)
    });
    Ok(Json(ListResponse { data: data.collect() }))
}

pub async fn create(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let result = create_key(&state, &caller, request).await;
    audited(&caller, "key.create", None, result)
}

async fn create_key(
    state: &AdminState,
    caller: &AdminCaller,
    request: CreateKeyRequest,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require_writer()?;
    // The expiry is reckoned from the exact time (and rounded up): a key created at 12.7 s with
    // a 3 s life lives until 16 s, not 15 s. Its creation time is kept in whole seconds.
    let exact_now = OffsetDateTime::now_utc();
    let now = exact_now.replace_nanosecond(0).unwrap_or(exact_now);
    let team = match (&caller.team, request.team) {
        (Some(own), None) => Some(own.clone()),
        (_, team) => team.map(|team| validate::team_name(&team, "team")).transpose()?,
    };
    if !caller.can_see_team(team.as_deref()) {
        return Err(forbidden("a team admin can create keys for its own team only"));
    }
    let team_record = match &team {
        Some(team) => Some(ensure_team(state, caller, team, now).await?),
        None => None,
    };
    let live = state.runtime().live.clone();
    let team_tier = team_record.as_ref().and_then(|team| team.tier.as_deref());
    let team_default = key_tier(None, team_tier, &live.limits.default_tier).0.to_string();
    let own_tier = request.tier.as_deref().map(|tier| validate::tier(&live, tier)).transpose()?;
    let own_tier = match caller.role {
        // A team admin must not mint keys on a richer plan than its team has; its keys follow
        // the team's tier, so a change of plan moves them too.
        Role::TeamAdmin if own_tier.as_ref().is_some_and(|tier| tier != &team_default) => {
            return Err(forbidden("a team admin cannot give a key a tier other than its team's"));
        }
        Role::TeamAdmin => None,
        Role::Admin | Role::Auditor => own_tier,
    };
    let tier = own_tier.clone().unwrap_or(team_default);
    if request.capture_content {
        may_change_capture(caller)?;
    }
    let limits = request.limits.unwrap_or_default();
    // Before the range check: a team admin reaching past its plan is refused (and recorded) as
    // such, whatever else is wrong with the value.
    if caller.role == Role::TeamAdmin
        && let Some(why) = plan::widening(&live, &tier, team_record.as_ref(), &Default::default(), &limits)
    {
        return Err(forbidden(&why));
    }
    let secret = SecretToken::generate(SecretKind::ApiKey);
    let new_key = NewKey {
        id: format!("key_{}", ulid::Ulid::new()),
        name: validate::name(&request.name)?,
        secret_hash: *state.hasher().hash(&secret).as_bytes(),
        display_prefix: secret.display_prefix(),
        team,
        tier: own_tier,
        models: validate::models(request.models.unwrap_or_default())?,
        scopes: match request.scopes {
            Some(scopes) => validate::scopes(&scopes)?,
            None => Scopes::all().names(),
        },
        allowed_cidrs: validate::cidrs(&request.allowed_cidrs.unwrap_or_default())?,
        limits: validate::limits(Some(limits))?,
        metadata: validate::metadata(request.metadata)?,
        expires_at: validate::expiry(request.expires_in.as_deref(), request.expires_at, exact_now)?,
        capture_content: request.capture_content,
        created_by: caller.token_id.clone(),
        created_at: now,
    };
    // The team was made above; it is missing here only if it vanished since.
    let record = state.stores().keys.create_key(new_key).await.map_err(insert_error("key", "team"))?;
    caller.record_action("key.create", &record.id, record.team.as_deref()).await;
    Ok((StatusCode::CREATED, Json(created(shown(state, record, now).await?, secret))))
}

pub async fn get(
    State(state): State<AdminState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let record = visible_key(&state, &caller, &id).await?;
    Ok(Json(shown(&state, record, OffsetDateTime::now_utc()).await?))
}

pub async fn update(
    State(state): State<AdminState>,
    caller: AdminCaller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateKeyRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let result = update_key(&state, &caller, &id, request).await;
    audited(&caller, "key.update", Some(&id), result)
}

async fn update_key(
    state: &AdminState,
    caller: &AdminCaller,
    id: &str,
    request: UpdateKeyRequest,
) -> Result<Json<KeyView>, ApiError> {
    caller.require_writer()?;
    let existing = visible_key(state, caller, id).await?;
    let live = state.runtime().live.clone();
    let now = OffsetDateTime::now_utc();
    let team = match existing.team.as_deref() {
        Some(team) => team_of(state, team).await?,
        None => None,
    };
    let team_tier = team.as_ref().and_then(|team| team.tier.as_deref());
    let (current_tier, _) = key_tier(existing.tier.as_deref(), team_tier, &live.limits.default_tier);
    if request.inherit_tier && request.tier.is_some() {
        return Err(ApiError::bad_request("inherit_tier cannot be combined with a tier", Some("inherit_tier")));
    }
    let tier = match (request.tier.as_deref(), request.inherit_tier) {
        (Some(tier), _) => Some(Some(validate::tier(&live, tier)?)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    // A team admin may resend its key's tier; it neither changes it nor gives a key that
    // follows its team a tier of its own.
    let tier = match caller.role {
        Role::TeamAdmin => match tier {
            Some(Some(tier)) if tier != current_tier => {
                return Err(forbidden("a team admin cannot change a key's tier"));
            }
            Some(None) if existing.tier.is_some() => {
                return Err(forbidden("a team admin cannot change a key's tier"));
            }
            _ => None,
        },
        Role::Admin | Role::Auditor => tier,
    };
    if request.capture_content.is_some_and(|capture| capture != existing.capture_content) {
        may_change_capture(caller)?;
    }
    if caller.role == Role::TeamAdmin
        && let Some(limits) = &request.limits
        && let Some(why) = plan::widening(&live, current_tier, team.as_ref(), &existing.limits, limits)
    {
        return Err(forbidden(&why));
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
        tier,
        models: request.models.map(validate::models).transpose()?,
        scopes: request.scopes.as_deref().map(validate::scopes).transpose()?,
        allowed_cidrs: request.allowed_cidrs.as_deref().map(validate::cidrs).transpose()?,
        limits: request.limits.map(|limits| validate::limits(Some(limits))).transpose()?,
        metadata: request.metadata.map(|metadata| validate::metadata(Some(metadata))).transpose()?,
        expires_at,
        capture_content: request.capture_content,
    };
    let record = state.stores().keys.update_key(id, patch).await.map_err(store_error("key"))?;
    state.keys().invalidate_key(id);
    caller.record_action("key.update", id, record.team.as_deref()).await;
    Ok(Json(key_view(record, team_tier, &live.limits.default_tier, now)))
}

pub async fn revoke(
    State(state): State<AdminState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let result = revoke_key(&state, &caller, &id).await;
    audited(&caller, "key.revoke", Some(&id), result)
}

async fn revoke_key(state: &AdminState, caller: &AdminCaller, id: &str) -> Result<Json<KeyView>, ApiError> {
    caller.require_writer()?;
    visible_key(state, caller, id).await?;
    let now = OffsetDateTime::now_utc();
    let record = state.stores().keys.revoke_key(id, now).await.map_err(store_error("key"))?;
    state.keys().invalidate_key(id);
    caller.record_action("key.revoke", id, record.team.as_deref()).await;
    Ok(Json(shown(state, record, now).await?))
}

/// Issues a new secret; the old one keeps working until the grace period ends.
pub async fn rotate(
    State(state): State<AdminState>,
    caller: AdminCaller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<CreatedKey>, ApiError> {
    let result = rotate_key(&state, &caller, &id, &body).await;
    audited(&caller, "key.rotate", Some(&id), result)
}

async fn rotate_key(
    state: &AdminState,
    caller: &AdminCaller,
    id: &str,
    body: &[u8],
) -> Result<Json<CreatedKey>, ApiError> {
    // The body is optional: `POST .../rotate` with none uses the default grace period.
    let request: RotateKeyRequest =
        if body.is_empty() { RotateKeyRequest::default() } else { super::extract::json_body(body)? };
    caller.require_writer()?;
    let existing = visible_key(state, caller, id).await?;
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
    let record = state.stores().keys.rotate_key(id, rotation).await.map_err(store_error("key"))?;
    state.keys().invalidate_key(id);
    caller.record_action("key.rotate", id, record.team.as_deref()).await;
    Ok(Json(created(shown(state, record, now).await?, secret)))
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
async fn visible_key(state: &AdminState, caller: &AdminCaller, id: &str) -> Result<KeyRecord, ApiError> {
    let record = state.stores().keys.get_key(id).await.map_err(store_error("key"))?;
    if caller.can_see_team(record.team.as_deref()) { Ok(record) } else { Err(ApiError::NotFound { what: "key" }) }
}

/// The key's team as stored (its tier and limits are part of a team admin's plan), or `None`
/// when it does not exist.
async fn team_of(state: &AdminState, team: &str) -> Result<Option<TeamRecord>, ApiError> {
    match state.stores().teams.get_team(team).await {
        Ok(record) => Ok(Some(record)),
        Err(StoreError::NotFound) => Ok(None),
        Err(error) => Err(store_error("team")(error)),
    }
}

/// Makes sure a key's team exists (creating it on first use) and returns it.
async fn ensure_team(
    state: &AdminState,
    caller: &AdminCaller,
    team: &str,
    now: OffsetDateTime,
) -> Result<TeamRecord, ApiError> {
    if let Some(record) = team_of(state, team).await? {
        return Ok(record);
    }
    let new_team = NewTeam {
        name: team.to_string(),
        tier: None,
        limits: Default::default(),
        metadata: validate::metadata(None)?,
        capture_content: false,
        created_at: now,
    };
    match state.stores().teams.create_team(new_team).await {
        Ok(record) => {
            caller.record_action("team.create", team, Some(team)).await;
            Ok(record)
        }
        // Created by a concurrent call (which recorded it): read what it made.
        Err(StoreError::Conflict(_)) => team_of(state, team).await?.ok_or(ApiError::NotFound { what: "team" }),
        Err(error) => Err(store_error("team")(error)),
    }
}

/// The key as the API shows it, on the tier it is on now (its team's as stored, when it has
/// none of its own).
async fn shown(state: &AdminState, record: KeyRecord, now: OffsetDateTime) -> Result<KeyView, ApiError> {
    let team = match record.team.as_deref() {
        Some(team) => team_of(state, team).await?,
        None => None,
    };
    let team_tier = team.and_then(|team| team.tier);
    Ok(key_view(record, team_tier.as_deref(), &state.runtime().live.limits.default_tier, now))
}

fn created(view: KeyView, secret: SecretToken) -> CreatedKey {
    CreatedKey { key: secret.expose().to_string(), view }
}
