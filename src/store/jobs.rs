//! Jobs as clients see them: enqueue (with idempotency keys), read, list, cancel, and their event
//! history. How workers claim and hold jobs is in `queue.rs`.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::datasets::page;
use super::{DatasetId, JobId, Page, TeamId};

/// The NOTIFY channel that announces claimable jobs.
pub const CHANNEL: &str = "gapmeter_jobs";

/// The NOTIFY channel that announces a new event of a job (payload: the job id), so event
/// streams wake at once instead of polling.
pub const EVENTS_CHANNEL: &str = "gapmeter_job_events";

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    /// A fatal error (bad input): retrying would not help.
    Failed,
    Cancelled,
    /// Every attempt failed with a retryable error; `error` holds the last one.
    Dead,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Metrics between a source and a target dataset.
    Score,
    /// The pairwise gap table of several datasets.
    Matrix,
    /// Fill a dataset from its URI.
    Ingest,
    /// The learned selective style gap (an analysis, `crate::reduce`).
    SelectiveStyle,
    /// The Proxy-A distance (an analysis).
    Pad,
    /// Subset selection (an analysis).
    Select,
    /// Transform search (an analysis).
    Transforms,
    /// Few-shot sufficiency (an analysis).
    Sufficiency,
    /// The gap in words (an analysis).
    Explain,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Score => "score",
            JobKind::Matrix => "matrix",
            JobKind::Ingest => "ingest",
            JobKind::SelectiveStyle => "selective_style",
            JobKind::Pad => "pad",
            JobKind::Select => "select",
            JobKind::Transforms => "transforms",
            JobKind::Sufficiency => "sufficiency",
            JobKind::Explain => "explain",
        }
    }

    pub const ALL: [JobKind; 9] = [
        JobKind::Score,
        JobKind::Matrix,
        JobKind::Ingest,
        JobKind::SelectiveStyle,
        JobKind::Pad,
        JobKind::Select,
        JobKind::Transforms,
        JobKind::Sufficiency,
        JobKind::Explain,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job ended without a result: what happened, not how HTTP shows it (the API renders it
/// as problem details).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The request cannot succeed (bad input); it was not retried.
    Failed,
    Cancelled,
    /// Every attempt failed with a transient error.
    Dead,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    pub(super) fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// No further change will happen.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// What a job is doing now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    /// `queued`, `resolving`, `extracting`, `statistics`, `metrics`, `ingesting`, `done`.
    pub phase: String,
    pub done: i64,
    pub total: i64,
    /// Tallies of the phase besides `done` (an ingest: files seen, accepted, duplicates,
    /// unchanged, rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<std::collections::BTreeMap<String, i64>>,
}

/// How long a job waited and ran.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Timings {
    /// From creation to the first claim.
    pub queued_ms: Option<i64>,
    /// From the first claim to the end.
    pub run_ms: Option<i64>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub status: JobStatus,
    /// The request with every default filled in.
    #[schema(value_type = Object)]
    pub request: Value,
    pub datasets: Vec<DatasetId>,
    pub progress: Progress,
    pub attempts: i32,
    pub max_attempts: i32,
    /// A cancel was asked for and the running worker has not stopped yet.
    pub cancel_requested: bool,
    /// Cache hits and images extracted by the attempt that finished.
    #[schema(value_type = Option<Object>)]
    pub work: Option<Value>,
    /// Same shape as `gapmeter score --format json` (or `gapmeter matrix`).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why a failed, dead or cancelled job ended (the API shows it as problem details).
    #[serde(skip)]
    pub error: Option<Failure>,
    pub timings: Timings,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
    /// When a queued job becomes claimable (later than now while it backs off after a failure).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub run_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: JobId,
    kind: String,
    status: String,
    spec: Value,
    datasets: Vec<DatasetId>,
    progress_phase: String,
    progress_done: i64,
    progress_total: i64,
    progress_counts: Option<Value>,
    attempts: i32,
    max_attempts: i32,
    cancel_requested: bool,
    work: Option<Value>,
    result: Option<Value>,
    error: Option<Value>,
    created_at: OffsetDateTime,
    started_at: Option<OffsetDateTime>,
    finished_at: Option<OffsetDateTime>,
    run_at: OffsetDateTime,
}

const JOB_COLUMNS: &str = "id, kind, status, spec, datasets, progress_phase, progress_done, progress_total, progress_counts, attempts, max_attempts, cancel_requested, work, result, error, created_at, started_at, finished_at, run_at";

fn ms(d: time::Duration) -> i64 {
    d.whole_milliseconds().clamp(0, i64::MAX as i128) as i64
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Self {
        let timings = Timings {
            queued_ms: r.started_at.map(|s| ms(s - r.created_at)),
            run_ms: match (r.started_at, r.finished_at) {
                (Some(s), Some(f)) => Some(ms(f - s)),
                _ => None,
            },
        };
        Job {
            id: r.id,
            // The CHECK constraint admits only known values.
            kind: JobKind::parse(&r.kind).unwrap_or(JobKind::Score),
            // The CHECK constraint admits only known values.
            status: JobStatus::parse(&r.status).unwrap_or(JobStatus::Failed),
            request: r.spec,
            datasets: r.datasets,
            progress: Progress {
                phase: r.progress_phase,
                done: r.progress_done,
                total: r.progress_total,
                counts: r
                    .progress_counts
                    .and_then(|c| serde_json::from_value(c).ok()),
            },
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            cancel_requested: r.cancel_requested,
            work: r.work,
            result: r.result,
            error: r.error.and_then(|e| serde_json::from_value(e).ok()),
            timings,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            run_at: r.run_at,
        }
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Chosen by the caller when another row must name the job in the same transaction.
    pub id: Option<JobId>,
    pub team: TeamId,
    pub kind: JobKind,
    pub spec: Value,
    pub datasets: Vec<DatasetId>,
    pub idempotency_key: Option<String>,
    /// Identifies the request body, for idempotency-key replays.
    pub request_hash: String,
    pub max_attempts: i32,
    /// Already answered (from the result cache): the job is created `succeeded`.
    pub finished: Option<Finished>,
    /// The instance's default limits, when the team's active jobs are to be checked (the team's
    /// own limits override them). A job answered from the cache never counts.
    pub quotas: Option<super::Quotas>,
}

/// The outcome of a job that needs no worker.
#[derive(Debug, Clone)]
pub struct Finished {
    pub result: Value,
    pub work: Value,
}

/// What [`enqueue`] did.
#[derive(Debug, Clone)]
pub enum Enqueued {
    Created(Job),
    /// The idempotency key was used before with the same request: that job.
    Replayed(Job),
    /// The idempotency key was used before with another request.
    KeyConflict(JobId),
    /// A new job would take the team over its active-jobs limit; nothing was written.
    OverQuota(super::OverQuota),
}

/// Inserts a job inside the caller's transaction (so it exists exactly when the caller's other
/// writes do) and wakes the workers when the transaction commits.
#[tracing::instrument(skip_all, fields(team = %job.team, kind = %job.kind))]
pub async fn enqueue(conn: &mut PgConnection, job: &NewJob) -> sqlx::Result<Enqueued> {
    let id = job.id.unwrap_or_default();
    if let (None, Some(quotas)) = (&job.finished, job.quotas) {
        // A replayed key finds its job below and is not a new job.
        let replay = match &job.idempotency_key {
            Some(key) => sqlx::query_as::<_, (bool,)>(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE team_id = $1 AND idempotency_key = $2)",
            )
            .bind(job.team)
            .bind(key)
            .fetch_one(&mut *conn)
            .await?
            .0,
            None => false,
        };
        if !replay {
            let adding = super::Usage {
                active_jobs: 1,
                ..Default::default()
            };
            if let Err(over) = super::check_quota(conn, job.team, quotas, adding).await? {
                return Ok(Enqueued::OverQuota(over));
            }
        }
    }
    let (status, phase, result, work) = match &job.finished {
        Some(f) => (
            "succeeded",
            "done",
            Some(f.result.clone()),
            Some(f.work.clone()),
        ),
        None => ("queued", "queued", None, None),
    };
    let inserted: Option<JobRow> = sqlx::query_as(&format!(
        "INSERT INTO jobs (id, team_id, kind, spec, datasets, idempotency_key, request_hash, max_attempts, status, progress_phase, result, work,
                           claimed_at, started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 CASE WHEN $9 = 'succeeded' THEN now() END, CASE WHEN $9 = 'succeeded' THEN now() END, CASE WHEN $9 = 'succeeded' THEN now() END)
         ON CONFLICT (team_id, idempotency_key) DO NOTHING
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(id)
    .bind(job.team)
    .bind(job.kind.as_str())
    .bind(&job.spec)
    .bind(&job.datasets)
    .bind(&job.idempotency_key)
    .bind(&job.request_hash)
    .bind(job.max_attempts)
    .bind(status)
    .bind(phase)
    .bind(result)
    .bind(work)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        let (kind, data) = match &job.finished {
            Some(_) => (
                "succeeded",
                serde_json::json!({"status": "succeeded", "from_cache": true}),
            ),
            None => ("queued", serde_json::json!({"status": "queued"})),
        };
        add_event(conn, id, kind, &data).await?;
        if job.finished.is_none() {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *conn)
                .await?;
        }
        return Ok(Enqueued::Created(row.into()));
    }
    // The key exists (possibly inserted by a concurrent request that has committed since).
    let (existing, hash): (JobRow, String) = {
        let row: (JobId, String) = sqlx::query_as(
            "SELECT id, request_hash FROM jobs WHERE team_id = $1 AND idempotency_key = $2",
        )
        .bind(job.team)
        .bind(&job.idempotency_key)
        .fetch_one(&mut *conn)
        .await?;
        let full: JobRow = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(row.0)
            .fetch_one(&mut *conn)
            .await?;
        (full, row.1)
    };
    Ok(if hash == job.request_hash {
        Enqueued::Replayed(existing.into())
    } else {
        Enqueued::KeyConflict(existing.id)
    })
}

pub(super) async fn add_event(
    conn: &mut PgConnection,
    job: JobId,
    kind: &str,
    data: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH e AS (INSERT INTO job_events (job_id, kind, data) VALUES ($1, $2, $3))
         SELECT pg_notify($4, $1::text)",
    )
    .bind(job)
    .bind(kind)
    .bind(data)
    .bind(EVENTS_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}

/// A job of `team`; `None` when it is not the team's.
pub async fn get_job(pool: &PgPool, team: TeamId, id: JobId) -> sqlx::Result<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND team_id = $2"
    ))
    .bind(id)
    .bind(team)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}

/// Filters of [`list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Jobs that read this dataset.
    pub dataset: Option<DatasetId>,
}

/// Newest first; the cursor is the last id of the previous page.
pub async fn list_jobs(
    pool: &PgPool,
    team: TeamId,
    filter: &JobFilter,
    cursor: Option<JobId>,
    limit: i64,
) -> sqlx::Result<Page<Job>> {
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs
         WHERE team_id = $1 AND ($2::uuid IS NULL OR id < $2)
           AND ($3::text IS NULL OR status = $3) AND ($4::uuid IS NULL OR datasets @> ARRAY[$4::uuid])
         ORDER BY id DESC LIMIT $5"
    ))
    .bind(team)
    .bind(cursor)
    .bind(filter.status.map(JobStatus::as_str))
    .bind(filter.dataset)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(
        rows.into_iter().map(Job::from).collect(),
        limit,
        |j| j.id.to_string(),
    ))
}

/// What [`cancel`] found.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// Queued: cancelled at once. Running: its worker stops at the next batch. Cancelled: no-op.
    Accepted(Job),
    /// Already succeeded, failed or dead.
    Finished(Job),
}

/// Cancels a job of `team`; `None` when it is not the team's.
pub async fn cancel(pool: &PgPool, team: TeamId, id: JobId) -> sqlx::Result<Option<CancelOutcome>> {
    let mut tx = pool.begin().await?;
    let status: Option<(String,)> =
        sqlx::query_as("SELECT status FROM jobs WHERE id = $1 AND team_id = $2 FOR UPDATE")
            .bind(id)
            .bind(team)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((status,)) = status else {
        return Ok(None);
    };
    let finished = match JobStatus::parse(&status) {
        Some(JobStatus::Queued) => {
            sqlx::query(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true, finished_at = now(), updated_at = now(),
                        error = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(Failure::new(FailureKind::Cancelled, "cancelled before it started").to_json())
            .execute(&mut *tx)
            .await?;
            add_event(
                &mut tx,
                id,
                "cancelled",
                &serde_json::json!({"status": "cancelled"}),
            )
            .await?;
            false
        }
        Some(JobStatus::Running) => {
            sqlx::query(
                "UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            add_event(&mut tx, id, "cancel_requested", &serde_json::json!({})).await?;
            false
        }
        Some(JobStatus::Cancelled) => false,
        _ => true,
    };
    let row: JobRow = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(if finished {
        CancelOutcome::Finished(row.into())
    } else {
        CancelOutcome::Accepted(row.into())
    }))
}

/// One entry of a job's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobEvent {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// `queued`, `claimed`, `phase`, `progress`, `retry`, `lease_expired`, `cancel_requested`,
    /// `succeeded`, `failed`, `cancelled`, `dead`.
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: Value,
}

/// Events of a job after `after` (a `seq`), oldest first.
pub async fn job_events(pool: &PgPool, job: JobId, after: i64) -> sqlx::Result<Vec<JobEvent>> {
    let rows: Vec<(i64, OffsetDateTime, String, Value)> = sqlx::query_as(
        "SELECT seq, at, kind, data FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT 1000",
    )
    .bind(job)
    .bind(after)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, at, kind, data)| JobEvent {
            seq,
            at,
            kind,
            data,
        })
        .collect())
}

/// Number of jobs by status, for `/metrics`.
pub async fn job_counts(pool: &PgPool) -> sqlx::Result<Vec<(JobStatus, i64)>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, n)| Some((JobStatus::parse(&s)?, n)))
        .collect())
}

/// Seconds the oldest queued job has waited since it was created; `None` when none waits.
pub async fn oldest_queued_age(pool: &PgPool) -> sqlx::Result<Option<f64>> {
    let (age,): (Option<f64>,) = sqlx::query_as(
        "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM jobs WHERE status = 'queued'",
    )
    .fetch_one(pool)
    .await?;
    Ok(age)
}
