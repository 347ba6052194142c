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
    // Bounded: a probe that hangs (a database restarting) must not hang the probe's caller.
    let within = std::time::Duration::from_secs(3);
    let database = match tokio::time::timeout(within, crate::store::ping(&state.pool)).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => format!("error: no answer within {} s", within.as_secs()),
    };
    let blob_store = match tokio::time::timeout(within, state.blobs.probe()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e:#}"),
        Err(_) => format!("error: no answer within {} s", within.as_secs()),
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
