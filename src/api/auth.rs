//! Bearer-key authentication. Every `/v1` request names a key; the principal says which team it
//! acts for and with which scopes.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::store::{self, KeyId, Scope, TeamId};

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `None` for the configured admin key.
    pub key: Option<KeyId>,
    /// `None` for the configured admin key, which belongs to no team.
    pub team: Option<TeamId>,
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Fails with 403 unless the key has `scope` (admin implies read and write).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        let ok = self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin);
        if ok {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this key lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }

    /// The team the key acts for, requiring `scope`.
    pub fn team(&self, scope: Scope) -> Result<TeamId, ApiError> {
        self.require(scope)?;
        self.team.ok_or_else(|| {
            ApiError::Forbidden("the instance admin key belongs to no team; use a team key".into())
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::Unauthorized("missing `Authorization: Bearer <key>` header".into())
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("expected `Authorization: Bearer <key>`".into())
            })?;
        let admin = state.config.auth.admin_key.as_bytes();
        if !admin.is_empty() && constant_time_eq(token.as_bytes(), admin) {
            return Ok(Principal {
                key: None,
                team: None,
                scopes: vec![Scope::Read, Scope::Write, Scope::Admin],
            });
        }
        let invalid = || ApiError::Unauthorized("invalid or revoked API key".into());
        let record = store::find_key(&state.pool, token)
            .await?
            .ok_or_else(invalid)?;
        if record.revoked || !record.matches(token) {
            return Err(invalid());
        }
        Ok(Principal {
            key: Some(record.id),
            team: Some(record.team_id),
            scopes: record.scopes,
        })
    }
}
