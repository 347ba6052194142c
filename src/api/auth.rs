//! Bearer-key authentication. Every `/v1` request names a key; the principal says which team it
//! acts for and with which scopes.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

/// Whether `token` is the configured admin key. Both are hashed first so that `subtle` compares two
/// 32-byte values in constant time: neither the admin key's length nor how much of it a guess gets
/// right shows in the response time.
fn is_admin_key(token: &str, admin: &str) -> bool {
    let t = Sha256::digest(token.as_bytes());
    let a = Sha256::digest(admin.as_bytes());
    bool::from(t.as_slice().ct_eq(a.as_slice()))
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
        let admin = state.config.auth.admin_key.as_str();
        if !admin.is_empty() && is_admin_key(token, admin) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_key_comparison_accepts_only_the_exact_key() {
        let admin = "admin-0123456789abcdef";
        assert!(is_admin_key(admin, admin));
        for other in [
            "",
            "admin",
            "admin-0123456789abcde",
            "admin-0123456789abcdeF",
            "admin-0123456789abcdef0",
            "Admin-0123456789abcdef",
        ] {
            assert!(!is_admin_key(other, admin), "{other:?}");
        }
    }
}
