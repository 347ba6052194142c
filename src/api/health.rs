//! Liveness and readiness.
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` when every check passed.
    pub status: String,
    pub database: String,
    pub blob_store: String,
    pub models: String,
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// `GET /readyz`: the database answers, the blob store round-trips, the models directory lists.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = match crate::store::ping(&state.pool).await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let blob_store = match state.blobs.probe().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e:#}"),
    };
    let (found, errors) = crate::features::Registry::new(&state.models_dir).list();
    let models = if errors.is_empty() {
        format!("ok: {} extractor(s)", found.len())
    } else {
        format!(
            "degraded: {} extractor(s), {} unreadable manifest(s)",
            found.len(),
            errors.len()
        )
    };
    let ready = database == "ok" && blob_store == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "not ready" }.into(),
            database,
            blob_store,
            models,
        }),
    )
}
