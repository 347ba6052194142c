//! Bearer-key authentication. Every `/v1` request names a key; the principal says which team it
//! acts for and with which scopes.
use std::num::NonZeroU32;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use governor::clock::Clock;
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

/// Requests per second per API key: a GCRA token bucket per key (governor), checked after the
/// key is authenticated so that nobody can spend another key's allowance by naming it.
pub struct RateLimit {
    limiter: governor::DefaultKeyedRateLimiter<Option<KeyId>>,
    per_second: u64,
}

impl RateLimit {
    /// `None` when `per_second` is 0 (unlimited).
    pub fn new(per_second: u64, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second.min(u32::MAX as u64) as u32)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
            per_second,
        })
    }

    /// Spends one request of `key` (`None`: the admin key); the wait when none is left.
    pub fn check(&self, key: Option<KeyId>) -> Result<(), ApiError> {
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            ApiError::RateLimited {
                per_second: self.per_second,
                // Whole seconds, rounded up: Retry-After has no fractions.
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// Forgets keys whose buckets are full again (run now and then, so revoked keys go).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
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
            if let Some(limit) = &state.rate_limit {
                limit.check(None)?;
            }
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
        if let Some(limit) = &state.rate_limit {
            limit.check(Some(record.id))?;
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
    fn a_key_gets_its_burst_then_waits_and_keys_do_not_share() {
        assert!(RateLimit::new(0, 10).is_none(), "0 = unlimited");
        let limit = RateLimit::new(2, 3).unwrap();
        let a = Some(KeyId::new());
        for _ in 0..3 {
            limit.check(a).unwrap();
        }
        match limit.check(a) {
            Err(ApiError::RateLimited {
                per_second: 2,
                retry_after_secs,
            }) => assert_eq!(retry_after_secs, 1),
            other => panic!("{other:?}"),
        }
        limit.check(Some(KeyId::new())).unwrap();
        limit.check(None).unwrap();
    }

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
