//! The one error type handlers return, mapped to `application/problem+json` (RFC 9457) in one
//! place. Each kind has a stable `type`.
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What a request over the active-jobs limit is told to wait: about one short job.
const ACTIVE_JOBS_RETRY_SECS: u64 = 10;

/// Problem details, as every error response carries them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable identifier of the error kind, e.g. `/problems/not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The limit a request went over (`datasets`, `images`, `bytes`, `active_jobs`,
    /// `requests_per_second`): on `/problems/quota-exceeded` and `/problems/rate-limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// The blob store is full: 507.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The blob store refuses writes (read-only, no permission): 503.
    #[error("{0}")]
    StorageUnavailable(String),
    /// Over a team quota: 403, or 429 with `Retry-After` for active jobs (they finish).
    #[error("{0}")]
    QuotaExceeded(crate::store::OverQuota),
    /// Over the key's request rate: 429 with `Retry-After`.
    #[error("this key is over its limit of {per_second} requests per second; retry after {retry_after_secs} s")]
    RateLimited {
        per_second: u64,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or invalid API key",
            ),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::InsufficientStorage(_) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                "Insufficient storage",
            ),
            ApiError::StorageUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "Storage unavailable",
            ),
            ApiError::QuotaExceeded(over) if over.limit == crate::store::Limit::ActiveJobs => (
                StatusCode::TOO_MANY_REQUESTS,
                "quota-exceeded",
                "Quota exceeded",
            ),
            ApiError::QuotaExceeded(_) => {
                (StatusCode::FORBIDDEN, "quota-exceeded", "Quota exceeded")
            }
            ApiError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("no such {what}"))
    }

    /// The limit named in the problem, and how long to wait before retrying (when waiting helps).
    fn limit(&self) -> (Option<String>, Option<u64>) {
        match self {
            ApiError::QuotaExceeded(over) => (
                Some(over.limit.as_str().to_string()),
                // Active jobs end on their own; stored data does not go away by waiting.
                (over.limit == crate::store::Limit::ActiveJobs).then_some(ACTIVE_JOBS_RETRY_SECS),
            ),
            ApiError::RateLimited {
                retry_after_secs, ..
            } => (
                Some("requests_per_second".to_string()),
                Some(*retry_after_secs),
            ),
            ApiError::Unavailable(_) | ApiError::StorageUnavailable(_) => {
                (None, Some(UNAVAILABLE_RETRY_SECS))
            }
            _ => (None, None),
        }
    }
}

impl From<crate::jobs::Invalid> for ApiError {
    fn from(e: crate::jobs::Invalid) -> Self {
        ApiError::Unprocessable(e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return ApiError::Conflict("a resource with this name already exists".into());
            }
        }
        if database_unreachable(&e) {
            return ApiError::Unavailable(DATABASE_DOWN.into());
        }
        ApiError::Internal(e.into())
    }
}

/// The condition behind an internal error that lies outside gapmeter: the database away, the
/// blob store's disk full or read-only.
fn outside_cause(e: &anyhow::Error) -> Option<ApiError> {
    for cause in e.chain() {
        if let Some(db) = cause.downcast_ref::<sqlx::Error>() {
            if database_unreachable(db) {
                return Some(ApiError::Unavailable(DATABASE_DOWN.into()));
            }
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    return Some(ApiError::InsufficientStorage(
                        "the blob store is full: nothing of this file was kept; retry when \
                         space is freed"
                            .into(),
                    ))
                }
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                    return Some(ApiError::StorageUnavailable(
                        "the blob store refuses writes right now: nothing of this file was \
                         kept; retry shortly"
                            .into(),
                    ))
                }
                _ => {}
            }
        }
    }
    None
}

const DATABASE_DOWN: &str = "the database is not reachable right now; retry shortly";

/// How long a client is told to wait when the database or the blob store is away.
const UNAVAILABLE_RETRY_SECS: u64 = 5;

/// Whether `e` says the database is away (down, restarting, out of connections) rather than
/// that the request or the code is wrong: a 503 the client can retry, not a 500.
fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exceptions; 57P01-57P03: the server is shutting down or starting.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// A dataset URI refused or failed: a disallowed one (scheme off, internal address, outside the
/// file roots) is 403, a malformed or unreadable one 422.
impl From<crate::ingest::UriError> for ApiError {
    fn from(e: crate::ingest::UriError) -> Self {
        use crate::ingest::UriError;
        match e {
            UriError::Invalid(m) | UriError::Unreachable(m) => ApiError::Unprocessable(m),
            UriError::Forbidden(m) => ApiError::Forbidden(m),
            UriError::Internal(e) => ApiError::Internal(e),
            UriError::Interrupted => ApiError::Unavailable("the ingest was interrupted".into()),
            UriError::OverQuota(over) => ApiError::QuotaExceeded(over),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // An internal error whose cause is the database being away, or the blob store full or
        // refusing writes, is the client-visible condition it is, not a 500 (and a warning in
        // the log, not an error: nothing in gapmeter is broken).
        if let ApiError::Internal(e) = &self {
            if let Some(outside) = outside_cause(e) {
                tracing::warn!(error = format!("{e:#}"), "{}", outside);
                return outside.into_response();
            }
        }
        let (status, kind, title) = self.parts();
        let detail = match &self {
            // Internal details go to the log, not to the client.
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "an internal error occurred; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let (limit, retry_after) = self.limit();
        let body = Problem {
            kind: format!("/problems/{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail,
            limit,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json,
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::UriError;

    #[test]
    fn a_database_that_is_away_is_a_503_with_retry_after_never_a_500() {
        let io = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        for e in [io(), sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            let resp = ApiError::from(e).into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        }
        // The same cause behind context, as store functions returning anyhow carry it.
        let wrapped = ApiError::Internal(anyhow::Error::from(io()).context("deleting a dataset"));
        assert_eq!(
            wrapped.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let full = ApiError::Internal(anyhow::Error::from(full).context("writing blob"));
        assert_eq!(
            full.into_response().status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
        let ro = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        let ro =
            ApiError::Internal(anyhow::Error::from(ro).context("writing blob")).into_response();
        assert_eq!(ro.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ro.headers()[header::RETRY_AFTER], "5");
        let bug = ApiError::Internal(anyhow::anyhow!("a bug"));
        assert_eq!(
            bug.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ApiError::from(sqlx::Error::RowNotFound).parts().0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn uri_errors_map_to_their_statuses() {
        let status = |e: UriError| ApiError::from(e).parts().0;
        assert_eq!(
            status(UriError::Forbidden("x".into())),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(UriError::Invalid("x".into())),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(UriError::Unreachable("x".into())),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(UriError::Internal(anyhow::anyhow!("x"))),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
