//! Teams and keys, for admins.
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::extract::{check_name, ApiJson, ApiPath};
use super::{ApiError, AppState, Principal};
use crate::store::{self, KeyId, NewKey, Scope, Team, TeamId};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(default)]
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub name: String,
    /// Default: read and write.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub scopes: Option<Vec<Scope>>,
}

/// `POST /v1/teams` (admin)
#[utoipa::path(post, path = "/v1/teams", tag = "admin", request_body = CreateTeam,
    responses((status = 201, body = Team), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 415, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 409, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create_team(
    State(state): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<CreateTeam>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    who.require(Scope::Admin)?;
    check_name(&body.name)?;
    let team = store::create_team(&state.pool, &body.name).await?;
    Ok((StatusCode::CREATED, Json(team)))
}

/// `POST /v1/teams/{id}/keys` (admin): the token is in the response, once.
#[utoipa::path(post, path = "/v1/teams/{id}/keys", tag = "admin", request_body = CreateKey,
    params(("id" = String, Path, format = Uuid, description = "team id")),
    responses((status = 201, body = NewKey), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 415, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<TeamId>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    who.require(Scope::Admin)?;
    if !body.name.is_empty() {
        check_name(&body.name)?;
    }
    let scopes = body
        .scopes
        .unwrap_or_else(|| vec![Scope::Read, Scope::Write]);
    if scopes.is_empty() {
        return Err(ApiError::Unprocessable(
            "a key needs at least one scope".into(),
        ));
    }
    let key = store::create_key(&state.pool, id, &body.name, &scopes)
        .await?
        .ok_or_else(|| ApiError::not_found("team"))?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// `DELETE /v1/keys/{id}` (admin): revokes the key at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "admin",
    params(("id" = String, Path, format = Uuid, description = "key id")),
    responses((status = 204, description = "revoked"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<KeyId>,
) -> Result<StatusCode, ApiError> {
    who.require(Scope::Admin)?;
    if store::revoke_key(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("key"))
    }
}

/// A team's limits: those in force (its own, else the instance's), its own, and its usage.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct QuotaStatus {
    /// The limits that apply (0 = unlimited).
    pub limits: store::Quotas,
    /// The team's own limits; `null` fields use the instance default.
    pub team: store::QuotaOverrides,
    pub usage: store::Usage,
}

async fn quota_status(state: &AppState, team: TeamId) -> Result<QuotaStatus, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let own = store::team_quotas(&mut conn, team).await?;
    let usage = store::team_usage(&mut conn, team).await?;
    Ok(QuotaStatus {
        limits: own.over(state.quotas()),
        team: own,
        usage,
    })
}

/// `GET /v1/quotas`: the calling team's limits and usage.
#[utoipa::path(get, path = "/v1/quotas", tag = "datasets",
    responses((status = 200, body = QuotaStatus), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn my_quotas(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<QuotaStatus>, ApiError> {
    let team = who.team(Scope::Read)?;
    Ok(Json(quota_status(&state, team).await?))
}

/// `PUT /v1/teams/{id}/quotas` (admin): replaces the team's own limits (a missing or `null`
/// field falls back to the instance default; 0 = unlimited). Lowering a limit below the usage
/// deletes nothing: it refuses what would add more.
#[utoipa::path(put, path = "/v1/teams/{id}/quotas", tag = "admin", request_body = store::QuotaOverrides,
    params(("id" = String, Path, format = Uuid, description = "team id")),
    responses((status = 200, body = QuotaStatus), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 415, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn set_quotas(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<TeamId>,
    ApiJson(body): ApiJson<store::QuotaOverrides>,
) -> Result<Json<QuotaStatus>, ApiError> {
    who.require(Scope::Admin)?;
    if !store::set_team_quotas(&state.pool, id, body).await? {
        return Err(ApiError::not_found("team"));
    }
    Ok(Json(quota_status(&state, id).await?))
}
