//! `/admin/v1/teams`.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use portcullis_store::{NewTeam, TeamPatch};
use portcullis_types::admin::{CreateTeamRequest, ListResponse, TeamView, UpdateTeamRequest};
use time::OffsetDateTime;

use super::AdminState;
use super::auth::AdminCaller;
use super::extract::{ApiJson, ApiQuery, NoParams};
use super::refusal::audited;
use super::validate;
use super::views::{store_error, team_view};
use crate::error::ApiError;

/// Every team an admin or auditor may see; a team admin's own. There is no filter: a parameter
/// such as `?team=` is a 400, not ignored.
pub async fn list(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiQuery(NoParams {}): ApiQuery<NoParams>,
) -> Result<Json<ListResponse<TeamView>>, ApiError> {
    let teams = state.stores().teams.list_teams().await.map_err(store_error("team"))?;
    let data = teams.into_iter().filter(|team| caller.can_see_team(Some(&team.name))).map(team_view).collect();
    Ok(Json(ListResponse { data }))
}

pub async fn create(
    State(state): State<AdminState>,
    caller: AdminCaller,
    ApiJson(request): ApiJson<CreateTeamRequest>,
) -> Result<(StatusCode, Json<TeamView>), ApiError> {
    let name = request.name.clone();
    let result = create_team(&state, &caller, request).await;
    audited(&caller, "team.create", Some(&name), result)
}

async fn create_team(
    state: &AdminState,
    caller: &AdminCaller,
    request: CreateTeamRequest,
) -> Result<(StatusCode, Json<TeamView>), ApiError> {
    caller.require_admin()?;
    let live = state.runtime().live.clone();
    let team = NewTeam {
        name: validate::team_name(&request.name, "name")?,
        tier: request.tier.as_deref().map(|tier| validate::tier(&live, tier)).transpose()?,
        limits: validate::limits(request.limits)?,
        metadata: validate::metadata(request.metadata)?,
        capture_content: request.capture_content,
        created_at: OffsetDateTime::now_utc(),
    };
    let record = state.stores().teams.create_team(team).await.map_err(store_error("team"))?;
    caller.record_action("team.create", &record.name, Some(&record.name)).await;
    Ok((StatusCode::CREATED, Json(team_view(record))))
}

pub async fn get(
    State(state): State<AdminState>,
    caller: AdminCaller,
    Path(name): Path<String>,
) -> Result<Json<TeamView>, ApiError> {
    if !caller.can_see_team(Some(&name)) {
        return Err(ApiError::NotFound { what: "team" });
    }
    let record = state.stores().teams.get_team(&name).await.map_err(store_error("team"))?;
    Ok(Json(team_view(record)))
}

/// Changing a team's tier or limits changes what its members may spend, and turning content
/// capture on records what they send: admins only. A team admin may not change its own team at
/// all, not even to lower its limits or edit its metadata (its plan is the admin's to set).
pub async fn update(
    State(state): State<AdminState>,
    caller: AdminCaller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<UpdateTeamRequest>,
) -> Result<Json<TeamView>, ApiError> {
    let result = update_team(&state, &caller, &name, request).await;
    audited(&caller, "team.update", Some(&name), result)
}

async fn update_team(
    state: &AdminState,
    caller: &AdminCaller,
    name: &str,
    request: UpdateTeamRequest,
) -> Result<Json<TeamView>, ApiError> {
    caller.require_admin()?;
    let live = state.runtime().live.clone();
    let patch = TeamPatch {
        tier: request.tier.as_deref().map(|tier| validate::tier(&live, tier)).transpose()?,
        limits: request.limits.map(|limits| validate::limits(Some(limits))).transpose()?,
        metadata: request.metadata.map(|metadata| validate::metadata(Some(metadata))).transpose()?,
        capture_content: request.capture_content,
    };
    let record = state.stores().teams.update_team(name, patch).await.map_err(store_error("team"))?;
    state.teams().invalidate(name).await;
    caller.record_action("team.update", name, Some(name)).await;
    Ok(Json(team_view(record)))
}
