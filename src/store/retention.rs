//! The retention sweep: finished jobs past their age, cached results and statistics that no
//! dataset's content uses any more, the feature cache over its byte budget, and blobs no image
//! row names. One sweeper at a time across every process (a session advisory lock).
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sqlx::PgPool;

use super::blobs::Blobs;
use super::cache::CacheScope;

/// What to delete; `0` (or `None`) turns a rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub finished_job_days: u32,
    pub unreferenced_cache_days: u32,
    pub feature_cache_bytes: u64,
    /// Blobs without an image row are deleted once older than this.
    pub orphan_blob_grace: Option<Duration>,
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub jobs: u64,
    pub results: u64,
    pub statistics: u64,
    pub feature_rows: u64,
    pub feature_bytes: u64,
    pub blobs: u64,
}

/// The sweep's advisory lock: a fixed 64-bit number that no other lock of the schema uses.
pub const SWEEP_LOCK: i64 = 0x6761_706d_7377_6570; // "gapmswep"

/// Runs one sweep. `None` when another process is sweeping (it will do the same work).
pub async fn sweep(
    pool: &PgPool,
    blobs: &Blobs,
    policy: &RetentionPolicy,
) -> anyhow::Result<Option<SweepReport>> {
    // A session lock on a connection held for the whole sweep: released by the unlock below, or
    // by the server when this process dies and its connection closes.
    let mut holder = pool.acquire().await?;
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK)
        .fetch_one(&mut *holder)
        .await?;
    if !got {
        return Ok(None);
    }
    let report = sweep_locked(pool, blobs, policy).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut *holder)
        .await;
    if unlocked.is_err() {
        // Never hand a connection that may still hold the lock back to the pool.
        holder.detach();
    }
    report.map(Some)
}

async fn sweep_locked(
    pool: &PgPool,
    blobs: &Blobs,
    policy: &RetentionPolicy,
) -> anyhow::Result<SweepReport> {
    let mut report = SweepReport::default();
    if policy.finished_job_days > 0 {
        // Events go with their job (ON DELETE CASCADE).
        report.jobs = sqlx::query(
            "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled', 'dead')
               AND finished_at < now() - make_interval(days => $1)",
        )
        .bind(policy.finished_job_days as i32)
        .execute(pool)
        .await?
        .rows_affected();
    }
    if policy.unreferenced_cache_days > 0 {
        let days = policy.unreferenced_cache_days as i32;
        // A result is live while every dataset it scored exists and still holds the content it
        // scored (rows from before content_hashes was recorded: while the datasets exist).
        report.results = sqlx::query(
            "DELETE FROM result_cache r
             WHERE r.created_at < now() - make_interval(days => $1)
               AND EXISTS (
                   SELECT 1 FROM unnest(r.datasets) WITH ORDINALITY AS u(id, i)
                   LEFT JOIN datasets d ON d.id = u.id
                   WHERE d.id IS NULL
                      OR (r.content_hashes IS NOT NULL
                          AND d.content_hash IS DISTINCT FROM r.content_hashes[u.i]))",
        )
        .bind(days)
        .execute(pool)
        .await?
        .rows_affected();
        // Statistics are keyed by content: live while a dataset the scope can see holds it.
        report.statistics = sqlx::query(
            "DELETE FROM stats_cache s
             WHERE s.created_at < now() - make_interval(days => $1)
               AND NOT EXISTS (
                   SELECT 1 FROM datasets d
                   WHERE d.content_hash = s.content_hash AND (s.scope = $2 OR d.team_id = s.scope))",
        )
        .bind(days)
        .bind(CacheScope::shared().0)
        .execute(pool)
        .await?
        .rows_affected();
    }
    if policy.feature_cache_bytes > 0 {
        // Keep the most recently used rows whose sizes add up to the budget; the rest go.
        let (rows, bytes): (i64, i64) = sqlx::query_as(
            "WITH ranked AS (
                 SELECT scope, extractor, tap, image_hash,
                        sum(octet_length(data)) OVER (
                            ORDER BY used_at DESC, scope, extractor, tap, image_hash) AS running
                 FROM feature_cache),
             gone AS (
                 DELETE FROM feature_cache f USING ranked r
                 WHERE r.running > $1 AND f.scope = r.scope AND f.extractor = r.extractor
                   AND f.tap = r.tap AND f.image_hash = r.image_hash
                 RETURNING octet_length(f.data) AS size)
             SELECT count(*), coalesce(sum(size), 0)::bigint FROM gone",
        )
        .bind(policy.feature_cache_bytes.min(i64::MAX as u64) as i64)
        .fetch_one(pool)
        .await?;
        report.feature_rows = rows.max(0) as u64;
        report.feature_bytes = bytes.max(0) as u64;
    }
    if let Some(grace) = policy.orphan_blob_grace {
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        report.blobs = super::datasets::collect_blob_garbage(pool, blobs, cutoff).await?;
    }
    Ok(report)
}
