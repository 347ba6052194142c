//! Extractors whose rejections are problem+json like every other error (axum's own answer in
//! plain text).
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON object body: missing content type → 415, malformed JSON → 400, anything but an object
/// of the expected shape → 422 (serde would otherwise read a struct from a JSON array too).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) if v.is_object() => serde_json::from_value(v)
                .map(ApiJson)
                .map_err(|e| ApiError::Unprocessable(format!("invalid request body: {e}"))),
            Ok(_) => Err(ApiError::Unprocessable(
                "the request body must be a JSON object".into(),
            )),
            Err(JsonRejection::MissingJsonContentType(e)) => {
                Err(ApiError::UnsupportedMediaType(e.body_text()))
            }
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge(e.body_text()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Path parameters: an id that does not parse names no resource → 404.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e @ PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::NotFound(
                format!("no such resource: {}", e.body_text()),
            )),
            Err(e) => Err(ApiError::Internal(anyhow::anyhow!(e.body_text()))),
        }
    }
}

/// Query parameters: anything that does not parse → 422.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(query_error(e)),
        }
    }
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::Unprocessable(e.body_text())
}

/// A multipart body; a missing or malformed multipart content type → 400.
pub fn multipart_rejection(e: MultipartRejection) -> ApiError {
    ApiError::BadRequest(e.body_text())
}

/// Resource names: 1 to 200 characters, no control characters (they cannot be shown, and
/// PostgreSQL text cannot hold NUL).
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if n == 0 || n > 200 {
        return Err(ApiError::Unprocessable(
            "name must be 1 to 200 characters".into(),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(
            "name must not contain control characters".into(),
        ));
    }
    Ok(())
}
