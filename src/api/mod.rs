//! The HTTP API (axum): routes, auth, problem+json errors, OpenAPI. Thin: no SQL (that is
//! `store`), no tensors.

mod auth;
mod dashboard;
mod datasets;
mod error;
mod extract;
mod health;
mod jobs;
mod teams;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

pub use auth::{Principal, RateLimit};
pub use error::{ApiError, Problem};
pub use telemetry::{serve_metrics, Metrics};

use crate::config::Config;
use crate::store::Blobs;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: sqlx::PgPool,
    pub blobs: Blobs,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub models_dir: std::path::PathBuf,
    /// Ids of jobs that have a new event (from LISTEN, see [`listen_job_events`]).
    pub job_events: tokio::sync::broadcast::Sender<crate::store::JobId>,
    /// Requests per second per key (`[rate_limit]`); `None` = unlimited.
    pub rate_limit: Option<Arc<RateLimit>>,
}

impl AppState {
    /// The instance's default per-team limits (`[quotas]`).
    pub fn quotas(&self) -> crate::store::Quotas {
        let q = &self.config.quotas;
        crate::store::Quotas {
            datasets: q.datasets,
            images: q.images,
            bytes: q.bytes,
            active_jobs: q.active_jobs,
        }
    }

    /// The extractors of the models directory, as jobs name them.
    pub fn registry(&self) -> crate::features::Registry {
        crate::features::Registry::new(self.models_dir.clone())
    }
}

/// Runs CPU-bound or blocking work (decoding, `.npz` encoding, directory scans) off the async
/// runtime's threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.into()))
}

/// Forwards the database's job-event notifications (written by any worker anywhere) to the
/// event streams of this process. Reconnects after errors; streams also poll, so a gap only
/// delays them.
pub async fn listen_job_events(
    pool: sqlx::PgPool,
    tx: tokio::sync::broadcast::Sender<crate::store::JobId>,
) {
    loop {
        let listener = async {
            let mut l = crate::store::listen(&pool, crate::store::EVENTS_CHANNEL).await?;
            loop {
                let n = l.recv().await?;
                if let Ok(id) = n.payload().parse() {
                    // No receivers is fine: nobody is streaming.
                    let _ = tx.send(id);
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        if let Err(e) = listener.await {
            tracing::warn!(error = %e, "job event listener failed; reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// JSON bodies are small; uploads get the configured request limit on their own route.
const JSON_BODY_LIMIT: usize = 1 << 20;

/// The OpenAPI description of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "gapmeter", description = "Domain-gap measurement service: datasets, images, scoring jobs."),
    paths(
        health::healthz, health::readyz, telemetry::metrics,
        teams::create_team, teams::create_key, teams::revoke_key, teams::set_quotas, teams::my_quotas,
        datasets::create, datasets::list, datasets::get, datasets::images, datasets::upload, datasets::delete, datasets::statistics, datasets::register_statistics, datasets::thumbnail,
        jobs::create, jobs::create_matrix, jobs::create_analysis, jobs::list, jobs::get, jobs::cancel, jobs::events, jobs::extractors,
    ),
    components(schemas(
        Problem, health::Health, health::Readiness,
        teams::CreateTeam, teams::CreateKey, teams::QuotaStatus, crate::store::Quotas, crate::store::QuotaOverrides, crate::store::Usage, crate::store::Team, crate::store::ApiKey, crate::store::NewKey, crate::store::Scope,
        datasets::CreateDataset, datasets::UploadResult, datasets::DatasetPage, datasets::ImagePage, datasets::UploadForm,
        crate::store::Dataset, crate::store::DatasetStatus, crate::store::DatasetKind, crate::store::DatasetImage, crate::store::FormatCount,
        crate::ingest::IngestSummary, crate::ingest::FileOutcome, crate::ingest::Outcome,
        jobs::JobPage, jobs::JobResource, jobs::ExtractorSummary, crate::store::Job, crate::store::JobKind, crate::store::JobStatus, crate::store::Progress, crate::store::Timings, crate::store::JobEvent,
        crate::jobs::ScoreRequest, crate::jobs::MatrixRequest, crate::jobs::Parameters, crate::jobs::KidOptions, crate::jobs::IsOptions,
        crate::jobs::MmdOptions, crate::jobs::PrdcOptions, crate::jobs::Bootstrap, crate::jobs::SymmetricMetric, crate::score::MetricName,
        crate::jobs::AnalysisRequest, crate::reduce::Analysis, crate::reduce::SelectiveStyleParams, crate::reduce::PadOptions, crate::reduce::SelectParams,
        crate::reduce::SelectObjective, crate::reduce::TransformSearchParams, crate::reduce::Objective, crate::reduce::SufficiencyParams,
        crate::reduce::SufficiencyMetric, crate::reduce::ExplainParams, crate::imaging::Photometric, crate::imaging::Knob,
    )),
    modifiers(&BearerAuth),
    tags((name = "datasets"), (name = "jobs"), (name = "admin"), (name = "operations")),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The spec as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    let upload_limit = usize::try_from(state.config.limits.request_bytes).unwrap_or(usize::MAX);
    let request_id = HeaderName::from_static("x-request-id");
    let timeout = Duration::from_secs(state.config.server.request_timeout_secs);
    let cors = cors(&state.config.server.cors_origins);
    let v1 = Router::new()
        .route("/teams", post(teams::create_team))
        .route("/teams/{id}/keys", post(teams::create_key))
        .route("/teams/{id}/quotas", put(teams::set_quotas))
        .route("/quotas", get(teams::my_quotas))
        .route("/keys/{id}", delete(teams::revoke_key))
        .route("/datasets", post(datasets::create).get(datasets::list))
        .route(
            "/datasets/{id}",
            get(datasets::get).delete(datasets::delete),
        )
        .route(
            "/datasets/{id}/images",
            get(datasets::images)
                .post(datasets::upload)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/datasets/{id}/thumbnail", get(datasets::thumbnail))
        .route(
            "/datasets/{id}/statistics",
            get(datasets::statistics)
                .put(datasets::register_statistics)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/jobs", post(jobs::create).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/matrix", post(jobs::create_matrix))
        .route("/analyses", post(jobs::create_analysis))
        .route("/extractors", get(jobs::extractors));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(telemetry::metrics))
        .route("/openapi.json", get(openapi))
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::app_js))
        .route("/dashboard/style.css", get(dashboard::style_css))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), telemetry::record))
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
        ]);
    if origins.iter().any(|o| o == "*") {
        base.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        base.allow_origin(AllowOrigin::list(list))
    }
}
