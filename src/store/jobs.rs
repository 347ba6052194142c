//! The job queue (DESIGN §5): jobs are claimed with `FOR UPDATE SKIP LOCKED`, held under a lease
//! (`locked_until`) that heartbeats renew, and every write a worker makes names the fencing token
//! it claimed with, so a worker that lost its lease cannot overwrite the new holder's work.
//! Failed attempts go back to the queue with exponential backoff until `max_attempts`, then the
//! job is `dead`. LISTEN/NOTIFY on [`CHANNEL`] only wakes idle workers early; they also poll.
use std::time::Duration;

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
    /// `queued`, `resolving`, `extracting`, `statistics`, `metrics`, `done`.
    pub phase: String,
    pub done: i64,
    pub total: i64,
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
    /// `score` or `matrix`.
    pub kind: String,
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
    /// Problem details of a failed, dead or cancelled job.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
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

const JOB_COLUMNS: &str = "id, kind, status, spec, datasets, progress_phase, progress_done, progress_total, attempts, max_attempts, cancel_requested, work, result, error, created_at, started_at, finished_at, run_at";

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
            kind: r.kind,
            // The CHECK constraint admits only known values.
            status: JobStatus::parse(&r.status).unwrap_or(JobStatus::Failed),
            request: r.spec,
            datasets: r.datasets,
            progress: Progress {
                phase: r.progress_phase,
                done: r.progress_done,
                total: r.progress_total,
            },
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            cancel_requested: r.cancel_requested,
            work: r.work,
            result: r.result,
            error: r.error,
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
    pub team: TeamId,
    pub kind: String,
    pub spec: Value,
    pub datasets: Vec<DatasetId>,
    pub idempotency_key: Option<String>,
    /// Identifies the request body, for idempotency-key replays.
    pub request_hash: String,
    pub max_attempts: i32,
    /// Already answered (from the result cache): the job is created `succeeded`.
    pub finished: Option<Finished>,
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
}

/// Inserts a job inside the caller's transaction (so it exists exactly when the caller's other
/// writes do) and wakes the workers when the transaction commits.
#[tracing::instrument(skip_all, fields(team = %job.team, kind = %job.kind))]
pub async fn enqueue(conn: &mut PgConnection, job: &NewJob) -> sqlx::Result<Enqueued> {
    let id = JobId::new();
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
    .bind(&job.kind)
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

async fn add_event(
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
            .bind(cancelled_problem("cancelled before it started"))
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

fn cancelled_problem(detail: &str) -> Value {
    serde_json::json!({
        "type": "/problems/cancelled",
        "title": "Job cancelled",
        "status": 409,
        "detail": detail,
    })
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
pub async fn job_counts(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status")
        .fetch_all(pool)
        .await
}

// ---------------------------------------------------------------------------------------------
// The worker's side.

/// A claimed job: what to run and the lease to write under.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub lease: Lease,
    pub team: TeamId,
    pub kind: String,
    pub spec: Value,
    /// 1 on the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
}

/// A worker's hold on a job: every write names the fencing token it claimed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub job: JobId,
    pub fence: i64,
}

/// A worker's write refused because it no longer holds the job.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease on job {0} lost (fence {1} is stale: the lease expired and the job was reclaimed or finished)")]
    Lost(JobId, i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Claims the next job: among teams with a claimable job, the team with the fewest running jobs,
/// then the one served longest ago; within the team, the oldest job. Locked rows are skipped, so
/// any number of workers can claim at once.
#[tracing::instrument(skip(pool))]
pub async fn claim(pool: &PgPool, worker: &str, lease: Duration) -> sqlx::Result<Option<Claimed>> {
    let mut tx = pool.begin().await?;
    let teams: Vec<(TeamId,)> = sqlx::query_as(
        "SELECT q.team_id FROM (SELECT DISTINCT team_id FROM jobs WHERE status = 'queued' AND run_at <= now()) q
         LEFT JOIN (SELECT team_id, count(*) AS n FROM jobs WHERE status = 'running' GROUP BY team_id) r USING (team_id)
         LEFT JOIN job_team_turns t USING (team_id)
         ORDER BY coalesce(r.n, 0), t.last_claimed_at NULLS FIRST, q.team_id
         LIMIT 50",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (team,) in teams {
        let picked: Option<(JobId,)> = sqlx::query_as(
            "SELECT id FROM jobs WHERE team_id = $1 AND status = 'queued' AND run_at <= now()
             ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(team)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id,)) = picked else { continue };
        let row: (i64, String, Value, i32, i32) = sqlx::query_as(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, fence = fence + 1,
                    locked_by = $2, locked_until = now() + $3 * interval '1 millisecond',
                    claimed_at = now(), started_at = coalesce(started_at, now()), updated_at = now(),
                    progress_phase = 'resolving', progress_done = 0, progress_total = 0
             WHERE id = $1
             RETURNING fence, kind, spec, attempts, max_attempts",
        )
        .bind(id)
        .bind(worker)
        .bind(millis(lease))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO job_team_turns (team_id, last_claimed_at) VALUES ($1, clock_timestamp())
             ON CONFLICT (team_id) DO UPDATE SET last_claimed_at = excluded.last_claimed_at",
        )
        .bind(team)
        .execute(&mut *tx)
        .await?;
        add_event(
            &mut tx,
            id,
            "claimed",
            &serde_json::json!({"worker": worker, "attempt": row.3, "fence": row.0}),
        )
        .await?;
        tx.commit().await?;
        return Ok(Some(Claimed {
            lease: Lease {
                job: id,
                fence: row.0,
            },
            team,
            kind: row.1,
            spec: row.2,
            attempt: row.3,
            max_attempts: row.4,
        }));
    }
    tx.commit().await?;
    Ok(None)
}

/// Extends the lease. `Ok(true)` when a cancel was asked for.
pub async fn heartbeat(pool: &PgPool, lease: Lease, extend: Duration) -> Result<bool, LeaseError> {
    let row: Option<(bool,)> = sqlx::query_as(
        "UPDATE jobs SET locked_until = now() + $3 * interval '1 millisecond', updated_at = now()
         WHERE id = $1 AND fence = $2 AND status = 'running'
         RETURNING cancel_requested",
    )
    .bind(lease.job)
    .bind(lease.fence)
    .bind(millis(extend))
    .fetch_optional(pool)
    .await?;
    row.map(|r| r.0)
        .ok_or(LeaseError::Lost(lease.job, lease.fence))
}

/// Records progress (and an event) under the lease.
pub async fn report_progress(
    pool: &PgPool,
    lease: Lease,
    progress: &Progress,
) -> Result<(), LeaseError> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE jobs SET progress_phase = $3, progress_done = $4, progress_total = $5, updated_at = now()
         WHERE id = $1 AND fence = $2 AND status = 'running'",
    )
    .bind(lease.job)
    .bind(lease.fence)
    .bind(&progress.phase)
    .bind(progress.done)
    .bind(progress.total)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(LeaseError::Lost(lease.job, lease.fence));
    }
    add_event(
        &mut tx,
        lease.job,
        "progress",
        &serde_json::to_value(progress).unwrap_or_default(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        result: Value,
    },
    /// Bad input: no retry.
    Failed {
        problem: Value,
    },
    /// Stopped on request.
    Cancelled,
    /// A transient error: retried after `backoff` unless attempts are exhausted, then `dead`.
    Retry {
        message: String,
        backoff: Duration,
    },
    /// The worker is shutting down: back to the queue at once, the attempt not counted.
    Release,
}

/// Ends an attempt under the lease; returns the job's new status. A stale lease writes nothing.
#[tracing::instrument(skip(pool, outcome, work))]
pub async fn finish(
    pool: &PgPool,
    lease: Lease,
    outcome: &Outcome,
    work: &Value,
) -> Result<JobStatus, LeaseError> {
    let mut tx = pool.begin().await?;
    let held: Option<(i32, i32)> = sqlx::query_as(
        "SELECT attempts, max_attempts FROM jobs WHERE id = $1 AND fence = $2 AND status = 'running' FOR UPDATE",
    )
    .bind(lease.job)
    .bind(lease.fence)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts, max_attempts)) = held else {
        return Err(LeaseError::Lost(lease.job, lease.fence));
    };
    let (status, result, error, last_error, run_after) = match outcome {
        Outcome::Succeeded { result } => {
            (JobStatus::Succeeded, Some(result.clone()), None, None, None)
        }
        Outcome::Failed { problem } => (
            JobStatus::Failed,
            None,
            Some(problem.clone()),
            problem
                .get("detail")
                .and_then(Value::as_str)
                .map(str::to_string),
            None,
        ),
        Outcome::Cancelled => (
            JobStatus::Cancelled,
            None,
            Some(cancelled_problem("cancelled while running")),
            None,
            None,
        ),
        Outcome::Retry { message, backoff } if attempts < max_attempts => (
            JobStatus::Queued,
            None,
            None,
            Some(message.clone()),
            Some(*backoff),
        ),
        Outcome::Release => (JobStatus::Queued, None, None, None, Some(Duration::ZERO)),
        Outcome::Retry { message, .. } => (
            JobStatus::Dead,
            None,
            Some(serde_json::json!({
                "type": "/problems/job-dead",
                "title": "Job failed after every attempt",
                "status": 500,
                "detail": format!("attempt {attempts} of {max_attempts} failed: {message}"),
            })),
            Some(message.clone()),
            None,
        ),
    };
    let terminal = status.is_terminal();
    sqlx::query(
        "UPDATE jobs SET status = $3, result = $4, error = $5, last_error = coalesce($6, last_error), work = $7,
                locked_by = NULL, locked_until = NULL, updated_at = now(),
                finished_at = CASE WHEN $8 THEN now() END,
                run_at = CASE WHEN $9::float8 IS NULL THEN run_at ELSE now() + $9 * interval '1 millisecond' END,
                progress_phase = CASE WHEN $3 = 'succeeded' THEN 'done' WHEN $3 = 'queued' THEN 'queued' ELSE progress_phase END,
                attempts = attempts - CASE WHEN $10 THEN 1 ELSE 0 END
         WHERE id = $1 AND fence = $2",
    )
    .bind(lease.job)
    .bind(lease.fence)
    .bind(status.as_str())
    .bind(result)
    .bind(&error)
    .bind(&last_error)
    .bind(work)
    .bind(terminal)
    .bind(run_after.map(millis))
    .bind(matches!(outcome, Outcome::Release))
    .execute(&mut *tx)
    .await?;
    let data = match (&error, &last_error, run_after) {
        (_, None, Some(_)) => {
            serde_json::json!({"status": "queued", "reason": "worker shutting down"})
        }
        (_, Some(m), Some(b)) => {
            serde_json::json!({"status": "queued", "error": m, "retry_in_ms": b.as_millis() as u64, "attempt": attempts})
        }
        (Some(e), _, _) => serde_json::json!({"status": status.as_str(), "error": e, "work": work}),
        _ => serde_json::json!({"status": status.as_str(), "work": work}),
    };
    let kind = if status == JobStatus::Queued {
        "retry"
    } else {
        status.as_str()
    };
    add_event(&mut tx, lease.job, kind, &data).await?;
    if status == JobStatus::Queued {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(status)
}

/// Returns jobs whose lease expired (their worker died or hung) to the queue — or to `dead` when
/// that was the last attempt, or to `cancelled` when a cancel was pending. Returns how many.
#[tracing::instrument(skip(pool))]
pub async fn reap_expired(pool: &PgPool) -> sqlx::Result<u64> {
    let reaped: Vec<(JobId, String, ())> = sqlx::query_as(
        "WITH expired AS (
             SELECT id FROM jobs WHERE status = 'running' AND locked_until < now() FOR UPDATE SKIP LOCKED
         ), reaped AS (
             UPDATE jobs j SET
                 status = CASE WHEN j.cancel_requested THEN 'cancelled' WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'queued' END,
                 last_error = 'lease expired: worker ' || coalesce(j.locked_by, '?') || ' stopped renewing it',
                 error = CASE
                     WHEN j.cancel_requested THEN jsonb_build_object('type', '/problems/cancelled', 'title', 'Job cancelled', 'status', 409, 'detail', 'cancelled; its worker stopped')
                     WHEN j.attempts >= j.max_attempts THEN jsonb_build_object('type', '/problems/job-dead', 'title', 'Job failed after every attempt', 'status', 500,
                         'detail', 'attempt ' || j.attempts || ' of ' || j.max_attempts || ': lease expired: worker ' || coalesce(j.locked_by, '?') || ' stopped renewing it')
                 END,
                 finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts THEN now() END,
                 locked_by = NULL, locked_until = NULL, run_at = now(), updated_at = now(),
                 progress_phase = 'queued'
             FROM expired e WHERE j.id = e.id
             RETURNING j.id, j.status
         ), logged AS (
             INSERT INTO job_events (job_id, kind, data)
             SELECT id, 'lease_expired', jsonb_build_object('status', status) FROM reaped
         )
         SELECT id, status, pg_notify($1, id::text) FROM reaped",
    )
    .bind(EVENTS_CHANNEL)
    .fetch_all(pool)
    .await?;
    if reaped.iter().any(|(_, s, _)| s == "queued") {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(pool)
            .await?;
    }
    for (id, status, _) in &reaped {
        tracing::warn!(job = %id, status, "lease expired");
    }
    Ok(reaped.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::create_team;

    async fn new_job(pool: &PgPool, team: TeamId, max_attempts: i32) -> JobId {
        let mut conn = pool.acquire().await.unwrap();
        let job = NewJob {
            team,
            kind: "score".into(),
            spec: serde_json::json!({}),
            datasets: vec![],
            idempotency_key: None,
            request_hash: "h".into(),
            max_attempts,
            finished: None,
        };
        match enqueue(&mut conn, &job).await.unwrap() {
            Enqueued::Created(j) => j.id,
            other => panic!("{other:?}"),
        }
    }

    #[sqlx::test]
    async fn a_stale_lease_cannot_write_after_the_job_was_reclaimed(pool: PgPool) {
        crate::store::migrate(&pool).await.unwrap();
        let team = create_team(&pool, "a").await.unwrap().id;
        let id = new_job(&pool, team, 3).await;
        let first = claim(&pool, "w1", Duration::from_millis(200))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.lease.job, id);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(reap_expired(&pool).await.unwrap(), 1);
        let second = claim(&pool, "w2", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.lease.job, id);
        assert!(second.lease.fence > first.lease.fence);
        assert_eq!(second.attempt, 2);

        // The first worker wakes up and tries every kind of write: all refused.
        let p = Progress {
            phase: "extracting".into(),
            done: 1,
            total: 2,
        };
        assert!(matches!(
            heartbeat(&pool, first.lease, Duration::from_secs(30)).await,
            Err(LeaseError::Lost(..))
        ));
        assert!(matches!(
            report_progress(&pool, first.lease, &p).await,
            Err(LeaseError::Lost(..))
        ));
        let stale = Outcome::Succeeded {
            result: serde_json::json!({"stale": true}),
        };
        assert!(matches!(
            finish(&pool, first.lease, &stale, &Value::Null).await,
            Err(LeaseError::Lost(..))
        ));

        // The holder's writes go through, and its result is the one kept.
        assert!(!heartbeat(&pool, second.lease, Duration::from_secs(30))
            .await
            .unwrap());
        let fresh = Outcome::Succeeded {
            result: serde_json::json!({"stale": false}),
        };
        assert_eq!(
            finish(&pool, second.lease, &fresh, &Value::Null)
                .await
                .unwrap(),
            JobStatus::Succeeded
        );
        let job = get_job(&pool, team, id).await.unwrap().unwrap();
        assert_eq!(job.result, Some(serde_json::json!({"stale": false})));
        // And after the end, the holder itself cannot write again.
        assert!(matches!(
            finish(&pool, second.lease, &fresh, &Value::Null).await,
            Err(LeaseError::Lost(..))
        ));
    }

    #[sqlx::test]
    async fn retryable_failures_back_off_then_the_job_is_dead(pool: PgPool) {
        crate::store::migrate(&pool).await.unwrap();
        let team = create_team(&pool, "a").await.unwrap().id;
        let id = new_job(&pool, team, 3).await;
        let retry = |ms| Outcome::Retry {
            message: format!("blob store unreachable ({ms})"),
            backoff: Duration::from_millis(ms),
        };
        for attempt in 1..=3 {
            let c = claim(&pool, "w", Duration::from_secs(30))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(c.attempt, attempt);
            let status = finish(&pool, c.lease, &retry(300), &Value::Null)
                .await
                .unwrap();
            if attempt < 3 {
                assert_eq!(status, JobStatus::Queued);
                // Backing off: not claimable yet.
                assert!(claim(&pool, "w", Duration::from_secs(30))
                    .await
                    .unwrap()
                    .is_none());
                tokio::time::sleep(Duration::from_millis(350)).await;
            } else {
                assert_eq!(status, JobStatus::Dead);
            }
        }
        let job = get_job(&pool, team, id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Dead);
        assert_eq!(job.attempts, 3);
        let detail = job.error.unwrap()["detail"].as_str().unwrap().to_string();
        assert!(
            detail.contains("attempt 3 of 3") && detail.contains("blob store unreachable"),
            "{detail}"
        );
        assert!(claim(&pool, "w", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none());
    }

    #[sqlx::test]
    async fn one_teams_backlog_does_not_starve_another_team(pool: PgPool) {
        crate::store::migrate(&pool).await.unwrap();
        let busy = create_team(&pool, "busy").await.unwrap().id;
        let quiet = create_team(&pool, "quiet").await.unwrap().id;
        for _ in 0..20 {
            new_job(&pool, busy, 1).await;
        }
        // The busy team has been served already; then the quiet team submits one job.
        let c = claim(&pool, "w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.team, busy);
        finish(
            &pool,
            c.lease,
            &Outcome::Succeeded {
                result: Value::Null,
            },
            &Value::Null,
        )
        .await
        .unwrap();
        let lone = new_job(&pool, quiet, 1).await;
        let next = claim(&pool, "w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            next.lease.job, lone,
            "the quiet team's job goes next, not after 19 others"
        );
        // With one busy-team job running, a second worker also prefers a team with nothing running.
        let a = claim(&pool, "w1", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.team, busy);
        let other = new_job(&pool, quiet, 1).await;
        let b = claim(&pool, "w2", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.lease.job, other);
    }

    #[sqlx::test]
    async fn expired_leases_of_cancelled_or_exhausted_jobs_end_them(pool: PgPool) {
        crate::store::migrate(&pool).await.unwrap();
        let team = create_team(&pool, "a").await.unwrap().id;
        let last_try = new_job(&pool, team, 1).await;
        let c = claim(&pool, "w", Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.lease.job, last_try);
        let to_cancel = new_job(&pool, team, 3).await;
        let d = claim(&pool, "w", Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.lease.job, to_cancel);
        assert!(matches!(
            cancel(&pool, team, to_cancel).await.unwrap(),
            Some(CancelOutcome::Accepted(_))
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(reap_expired(&pool).await.unwrap(), 2);
        let a = get_job(&pool, team, last_try).await.unwrap().unwrap();
        assert_eq!(a.status, JobStatus::Dead);
        assert!(a.error.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("lease expired"));
        assert_eq!(
            get_job(&pool, team, to_cancel)
                .await
                .unwrap()
                .unwrap()
                .status,
            JobStatus::Cancelled
        );
    }
}
