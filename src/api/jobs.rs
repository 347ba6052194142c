//! Jobs: submit a score or a gap matrix, follow it (poll or SSE), list, cancel.
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{ApiError, AppState, Principal, Problem};
use crate::jobs::{self, AnalysisRequest, JobSpec, MatrixRequest, ScoreRequest, Work};
use crate::score::MetricName;
use crate::store::{
    self, CacheScope, CancelOutcome, DatasetId, DatasetKind, DatasetStatus, Enqueued, Failure,
    FailureKind, Finished, Job, JobFilter, JobId, JobStatus, NewJob, Scope, TeamId,
};

/// Header naming a client-chosen key that makes a submission safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A job as the API shows it: the stored job, with its failure as problem details.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobResource {
    #[serde(flatten)]
    pub job: Job,
    /// Problem details of a failed, dead or cancelled job.
    pub error: Option<Problem>,
}

impl From<Job> for JobResource {
    fn from(job: Job) -> Self {
        let error = job.error.as_ref().map(problem);
        Self { job, error }
    }
}

/// How a job's failure reads as problem details (the only place job failures meet HTTP).
pub fn problem(f: &Failure) -> Problem {
    let (kind, title, status) = match f.kind {
        FailureKind::Failed => ("job-failed", "Job failed", 422),
        FailureKind::Cancelled => ("cancelled", "Job cancelled", 409),
        FailureKind::Dead => ("job-dead", "Job failed after every attempt", 500),
    };
    Problem {
        kind: format!("/problems/{kind}"),
        title: title.into(),
        status,
        detail: f.detail.clone(),
        limit: None,
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub items: Vec<JobResource>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobPageQuery {
    /// From the previous page's `next_cursor`.
    #[param(format = Uuid)]
    pub cursor: Option<JobId>,
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Only jobs in this state.
    #[param(value_type = Option<String>, pattern = "^(queued|running|succeeded|failed|cancelled|dead)$")]
    pub status: Option<String>,
    /// Only jobs that read this dataset.
    #[param(format = Uuid)]
    pub dataset: Option<DatasetId>,
}

/// An extractor jobs can name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExtractorSummary {
    pub id: String,
    pub trained: bool,
    pub input_size: [usize; 2],
    pub resize: String,
    pub outputs: Vec<String>,
    /// The output content metrics use.
    pub features: String,
    pub description: Option<String>,
}

/// The `Idempotency-Key` request header (for the OpenAPI description).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyHeader {
    /// Retry-safe submission: the same key with the same body returns the same job (header
    /// `Idempotent-Replayed: true`); with another body, 422. Keys are per team.
    #[param(
        rename = "Idempotency-Key",
        pattern = "^[!-~]([ -~]{0,253}[!-~])?$",
        max_length = 255
    )]
    idempotency_key: Option<String>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?;
    Ok(Some(key.to_string()))
}

/// `POST /v1/jobs`: score `source` against `target`. Answered 202 with the job; a request whose
/// result is cached is created already `succeeded`.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = ScoreRequest,
    params(IdempotencyHeader),
    responses((status = 202, body = JobResource, headers(("Location" = String, description = "the job"))), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 415, body = super::Problem, content_type = "application/problem+json"), (status = 409, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json"), (status = 429, body = super::Problem, content_type = "application/problem+json", description = "over the team's active-jobs quota (Retry-After) or the key's rate limit")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ScoreRequest>,
) -> Result<(StatusCode, HeaderMap, Json<JobResource>), ApiError> {
    let team = who.team(Scope::Write)?;
    let key = idempotency_key(&headers)?;
    let defaulted = body.metrics.is_none();
    let (spec, manifest) = JobSpec::score(body, &state.registry())?;
    submit(&state, team, spec, &manifest, key, defaulted).await
}

/// `POST /v1/matrix`: the pairwise gap table of several datasets, as a job.
#[utoipa::path(post, path = "/v1/matrix", tag = "jobs", request_body = MatrixRequest,
    params(IdempotencyHeader),
    responses((status = 202, body = JobResource, headers(("Location" = String, description = "the job"))), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 415, body = super::Problem, content_type = "application/problem+json"), (status = 409, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json"), (status = 429, body = super::Problem, content_type = "application/problem+json", description = "over the team's active-jobs quota (Retry-After) or the key's rate limit")),
    security(("bearer" = [])))]
pub async fn create_matrix(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MatrixRequest>,
) -> Result<(StatusCode, HeaderMap, Json<JobResource>), ApiError> {
    let team = who.team(Scope::Write)?;
    let key = idempotency_key(&headers)?;
    let defaulted = body.metrics.is_none();
    let (spec, manifest) = JobSpec::matrix(body, &state.registry())?;
    submit(&state, team, spec, &manifest, key, defaulted).await
}

/// `POST /v1/analyses`: an analysis (`gapmeter measure`, `reduce`, `explain`) as a job; its
/// result has the shape of the CLI's JSON report.
#[utoipa::path(post, path = "/v1/analyses", tag = "jobs", request_body = AnalysisRequest,
    params(IdempotencyHeader),
    responses((status = 202, body = JobResource, headers(("Location" = String, description = "the job"))), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 403, body = super::Problem, content_type = "application/problem+json"), (status = 415, body = super::Problem, content_type = "application/problem+json"), (status = 409, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json"), (status = 429, body = super::Problem, content_type = "application/problem+json", description = "over the team's active-jobs quota (Retry-After) or the key's rate limit")),
    security(("bearer" = [])))]
pub async fn create_analysis(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AnalysisRequest>,
) -> Result<(StatusCode, HeaderMap, Json<JobResource>), ApiError> {
    let team = who.team(Scope::Write)?;
    let key = idempotency_key(&headers)?;
    let (spec, manifest) = JobSpec::analysis(body, &state.registry())?;
    submit(&state, team, spec, &manifest, key, false).await
}

#[tracing::instrument(skip(state, spec, manifest))]
/// `metrics_defaulted`: the request named no metrics, so a statistics dataset among its sets
/// narrows them to what it can answer, FID (as `gapmeter score` does for an `.npz` argument);
/// metrics a request names and a statistics dataset cannot answer are refused.
async fn submit(
    state: &AppState,
    team: TeamId,
    mut spec: JobSpec,
    manifest: &crate::features::Manifest,
    idempotency_key: Option<String>,
    metrics_defaulted: bool,
) -> Result<(StatusCode, HeaderMap, Json<JobResource>), ApiError> {
    let mut datasets = Vec::with_capacity(spec.datasets.len());
    for id in &spec.datasets {
        let ds = store::get_dataset(&state.pool, team, *id)
            .await?
            .ok_or_else(|| ApiError::Unprocessable(format!("no dataset {id}")))?;
        datasets.push(ds);
    }
    if metrics_defaulted && datasets.iter().any(|d| d.kind == DatasetKind::Statistics) {
        spec.metrics = vec![MetricName::Fid];
    }
    let mut contents = Vec::with_capacity(datasets.len());
    for ds in datasets {
        let id = ds.id;
        if ds.status != DatasetStatus::Ready {
            return Err(ApiError::Conflict(format!(
                "dataset {:?} ({id}) is {}: only a ready dataset can be scored{}",
                ds.name,
                ds.status,
                match ds.status {
                    DatasetStatus::Ingesting => " (wait for its ingest job)",
                    _ => "",
                }
            )));
        }
        if ds.kind == DatasetKind::Statistics {
            statistics_only(&spec, &ds)?;
        } else if ds.image_count == 0 {
            return Err(ApiError::Unprocessable(format!(
                "dataset {:?} ({id}) has no images",
                ds.name
            )));
        }
        contents.push(ds.content_hash.unwrap_or_default());
    }
    // A request already answered for exactly this content needs no worker.
    let refs: Vec<&str> = contents.iter().map(String::as_str).collect();
    let scope = CacheScope::for_team(team, state.config.cache.share_across_teams);
    let (_, hit) = jobs::cached_result(&state.pool, scope, &spec, &refs, manifest).await?;
    let finished = hit.map(|result| Finished {
        result,
        work: serde_json::to_value(Work {
            result_cache_hit: true,
            ..Work::default()
        })
        .unwrap_or_default(),
    });
    let job = NewJob {
        id: None,
        team,
        kind: spec.kind,
        spec: serde_json::to_value(&spec).map_err(anyhow::Error::from)?,
        datasets: spec.datasets.clone(),
        idempotency_key,
        request_hash: spec.request_hash(),
        max_attempts: state.config.queue.max_attempts.max(1),
        finished,
        quotas: Some(state.quotas()),
    };
    let mut tx = state.pool.begin().await?;
    let enqueued = store::enqueue(&mut tx, &job).await?;
    tx.commit().await?;
    let (job, replayed) = match enqueued {
        Enqueued::Created(j) => (j, false),
        Enqueued::Replayed(j) => (j, true),
        Enqueued::KeyConflict(id) => {
            return Err(ApiError::Unprocessable(format!(
                "this Idempotency-Key was used for job {id} with a different request"
            )))
        }
        Enqueued::OverQuota(over) => return Err(ApiError::QuotaExceeded(over)),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok((StatusCode::ACCEPTED, headers, Json(job.into())))
}

/// A statistics dataset answers FID with an extractor it has statistics for, and nothing that
/// needs its samples.
fn statistics_only(spec: &JobSpec, ds: &store::Dataset) -> Result<(), ApiError> {
    if let Some(a) = &spec.analysis {
        return Err(ApiError::Unprocessable(format!(
            "dataset {:?} ({}) holds only statistics (mu, sigma): {} needs its images",
            ds.name,
            ds.id,
            a.name()
        )));
    }
    if let Some(m) = spec.metrics.iter().find(|m| **m != MetricName::Fid) {
        return Err(ApiError::Unprocessable(format!(
            "dataset {:?} ({}) holds only statistics (mu, sigma): FID is the only metric it can \
             answer, not {} (request \"metrics\": [\"fid\"])",
            ds.name,
            ds.id,
            m.as_str()
        )));
    }
    if spec.bootstrap.is_some() || spec.infinity_points.is_some() || spec.top_k.is_some() {
        return Err(ApiError::Unprocessable(format!(
            "dataset {:?} ({}) holds only statistics: bootstrap, infinity_points and top_k need \
             its samples",
            ds.name, ds.id
        )));
    }
    if !ds.statistics.contains(&spec.extractor) {
        return Err(ApiError::Unprocessable(format!(
            "dataset {:?} ({}) has statistics for {:?} only, not for extractor {:?}",
            ds.name, ds.id, ds.statistics, spec.extractor
        )));
    }
    Ok(())
}

/// `GET /v1/jobs/{id}`: status, progress, timings, and the result or the error.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "job id")),
    responses((status = 200, body = JobResource), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<JobResource>, ApiError> {
    let team = who.team(Scope::Read)?;
    let job = store::get_job(&state.pool, team, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(job.into()))
}

/// `GET /v1/jobs`: the team's jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobPageQuery),
    responses((status = 200, body = JobPage), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 422, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<JobPageQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let team = who.team(Scope::Read)?;
    let limit = match q.limit {
        None => 50,
        Some(l) if (1..=500).contains(&l) => l,
        Some(l) => {
            return Err(ApiError::Unprocessable(format!(
                "limit must be 1 to 500, got {l}"
            )))
        }
    };
    let status = q
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "unknown status {s:?}: queued, running, succeeded, failed, cancelled or dead"
                ))
            })
        })
        .transpose()?;
    let filter = JobFilter {
        status,
        dataset: q.dataset,
    };
    let page = store::list_jobs(&state.pool, team, &filter, q.cursor, limit).await?;
    Ok(Json(JobPage {
        items: page.items.into_iter().map(JobResource::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `DELETE /v1/jobs/{id}`: cancels. A queued job is cancelled at once; a running one stops at its
/// next batch (`cancel_requested` until then). A finished job answers 409.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "job id")),
    responses((status = 202, body = JobResource, description = "cancelled, or cancelling"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 409, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<JobId>,
) -> Result<(StatusCode, Json<JobResource>), ApiError> {
    let team = who.team(Scope::Write)?;
    match store::cancel(&state.pool, team, id).await? {
        None => Err(ApiError::not_found("job")),
        Some(CancelOutcome::Accepted(job)) => Ok((StatusCode::ACCEPTED, Json(job.into()))),
        Some(CancelOutcome::Finished(job)) => Err(ApiError::Conflict(format!(
            "job {id} already ended ({})",
            job.status.as_str()
        ))),
    }
}

/// `GET /v1/jobs/{id}/events`: Server-Sent Events — every recorded event (`queued`, `claimed`,
/// `progress`, `retry`, ...; `id` is its sequence number, so `Last-Event-ID` resumes), then one
/// `end` event whose data is the finished job, and the stream closes.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "job id"),
           ("Last-Event-ID" = Option<String>, Header, description = "resume after this event")),
    responses((status = 200, description = "text/event-stream of job events", content_type = "text/event-stream"), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let team = who.team(Scope::Read)?;
    store::get_job(&state.pool, team, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let pool = state.pool.clone();
    let wake = state.job_events.clone();
    let stream = stream::unfold(Some(after), move |cursor| {
        let pool = pool.clone();
        let wake = wake.subscribe();
        async move {
            let after = cursor?;
            Some(match next_events(&pool, wake, team, id, after).await {
                Ok((events, next)) => (events, next),
                Err(e) => {
                    tracing::warn!(error = %e, "job event stream failed");
                    (
                        vec![Event::default().event("error").data(e.to_string())],
                        None,
                    )
                }
            })
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Waits for events after `after`; returns them and the next cursor (`None` after `end`).
async fn next_events(
    pool: &sqlx::PgPool,
    mut wake: tokio::sync::broadcast::Receiver<JobId>,
    team: TeamId,
    id: JobId,
    after: i64,
) -> anyhow::Result<(Vec<Event>, Option<i64>)> {
    loop {
        let events = store::job_events(pool, id, after).await?;
        if let Some(last) = events.last().map(|e| e.seq) {
            return Ok((events.iter().map(to_sse).collect(), Some(last)));
        }
        let job = store::get_job(pool, team, id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("job {id} was deleted"))?;
        if job.status.is_terminal() {
            // The final event commits with the status: read once more, then end.
            let tail = store::job_events(pool, id, after).await?;
            let mut out: Vec<Event> = tail.iter().map(to_sse).collect();
            out.push(
                Event::default()
                    .event("end")
                    .json_data(JobResource::from(job))
                    .unwrap_or_else(|_| Event::default().event("end")),
            );
            return Ok((out, None));
        }
        // Woken by a notification for this job; polling once a second is the fallback.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match wake.recv().await {
                    Ok(j) if j == id => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        })
        .await;
    }
}

fn to_sse(e: &store::JobEvent) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.kind.clone())
        .json_data(e)
        .unwrap_or_else(|_| Event::default().event(e.kind.clone()))
}

/// `GET /v1/extractors`: the extractors jobs can name.
#[utoipa::path(get, path = "/v1/extractors", tag = "jobs",
    responses((status = 200, body = Vec<ExtractorSummary>), (status = 401, body = super::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn extractors(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<ExtractorSummary>>, ApiError> {
    who.require(Scope::Read)?;
    let reg = state.registry();
    let (found, _errors) = super::blocking(move || reg.list()).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|m| {
                let (h, w) = m.input_size.height_width();
                ExtractorSummary {
                    features: m.feature_output().to_string(),
                    id: m.id,
                    trained: m.trained,
                    input_size: [h, w],
                    resize: m.resize.as_str().to_string(),
                    outputs: m.outputs,
                    description: m.description,
                }
            })
            .collect(),
    ))
}
