//! The job queue's mechanics: jobs are claimed with `FOR UPDATE SKIP LOCKED`, held under a lease
//! (`locked_until`) that heartbeats renew, and every write a worker makes names the fencing token
//! it claimed with, so a worker that lost its lease cannot overwrite the new holder's work.
//! Failed attempts go back to the queue with exponential backoff until `max_attempts`, then the
//! job is `dead`. LISTEN/NOTIFY on [`CHANNEL`] only wakes idle workers early; they also poll.
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use super::jobs::{add_event, Failure, FailureKind, JobKind, JobStatus, Progress};
use super::{JobId, TeamId};

/// The NOTIFY channel that announces claimable jobs.
pub const CHANNEL: &str = "gapmeter_jobs";

/// The NOTIFY channel that announces a new event of a job (payload: the job id), so event
/// streams wake at once instead of polling.
pub const EVENTS_CHANNEL: &str = "gapmeter_job_events";

/// A claimed job: what to run and the lease to write under.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub lease: Lease,
    pub team: TeamId,
    pub kind: JobKind,
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
            // The CHECK constraint admits only known values.
            kind: JobKind::parse(&row.1).unwrap_or(JobKind::Score),
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
        "UPDATE jobs SET progress_phase = $3, progress_done = $4, progress_total = $5, progress_counts = $6, updated_at = now()
         WHERE id = $1 AND fence = $2 AND status = 'running'",
    )
    .bind(lease.job)
    .bind(lease.fence)
    .bind(&progress.phase)
    .bind(progress.done)
    .bind(progress.total)
    .bind(progress.counts.as_ref().map(|c| serde_json::to_value(c).unwrap_or_default()))
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
    /// Bad input: no retry; `detail` says what is wrong.
    Failed {
        detail: String,
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
        Outcome::Failed { detail } => (
            JobStatus::Failed,
            None,
            Some(Failure::new(FailureKind::Failed, detail.clone())),
            Some(detail.clone()),
            None,
        ),
        Outcome::Cancelled => (
            JobStatus::Cancelled,
            None,
            Some(Failure::new(
                FailureKind::Cancelled,
                "cancelled while running",
            )),
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
            Some(Failure::new(
                FailureKind::Dead,
                format!("attempt {attempts} of {max_attempts} failed: {message}"),
            )),
            Some(message.clone()),
            None,
        ),
    };
    let terminal = status.is_terminal();
    let error = error.as_ref().map(Failure::to_json);
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
                     WHEN j.cancel_requested THEN jsonb_build_object('kind', 'cancelled', 'detail', 'cancelled; its worker stopped')
                     WHEN j.attempts >= j.max_attempts THEN jsonb_build_object('kind', 'dead',
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
    use crate::store::jobs::{cancel, enqueue, get_job, CancelOutcome, Enqueued, NewJob};

    async fn new_job(pool: &PgPool, team: TeamId, max_attempts: i32) -> JobId {
        let mut conn = pool.acquire().await.unwrap();
        let job = NewJob {
            id: None,
            team,
            kind: JobKind::Score,
            spec: serde_json::json!({}),
            datasets: vec![],
            idempotency_key: None,
            request_hash: "h".into(),
            max_attempts,
            finished: None,
            quotas: None,
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
            counts: None,
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
        let detail = job.error.unwrap().detail;
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
        assert!(a.error.unwrap().detail.contains("lease expired"));
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
