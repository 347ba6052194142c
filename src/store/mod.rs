//! Everything SQL (PostgreSQL through sqlx) and the blob store. Handlers call these functions;
//! no SQL lives anywhere else. This module also owns the database connection: the pool, its
//! readiness ping and LISTEN connections.

mod blobs;
mod cache;
mod datasets;
mod ids;
mod jobs;
mod keys;
mod queue;
mod quotas;
mod retention;

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

pub use blobs::{open_object_store, Blobs};
pub use cache::{
    cached_result, cached_rows, cached_stats, stats_checkpoint, store_checkpoint, store_result,
    store_rows, store_stats, CacheScope, Checkpoint, Dtype,
};
pub use datasets::{
    add_member, create_dataset, dataset_snapshot, delete_dataset, get_dataset, list_dataset_images,
    list_datasets, member_hash, refresh_dataset, register_statistics, registered_statistics,
    remove_members, AddOutcome, Dataset, DatasetImage, DatasetKind, DatasetStatus, FormatCount,
    ImageMeta, Member, Page, RegisterError, Snapshot,
};
pub use ids::{DatasetId, JobId, KeyId, TeamId};
pub use jobs::{
    cancel, enqueue, get_job, job_counts, job_events, list_jobs, oldest_queued_age, CancelOutcome,
    Enqueued, Failure, FailureKind, Finished, Job, JobEvent, JobFilter, JobKind, JobStatus, NewJob,
    Progress, Timings,
};
pub use keys::{
    create_key, create_team, find_key, list_teams, revoke_key, ApiKey, KeyRecord, NewKey, Scope,
    Team,
};
pub use queue::{
    claim, finish, heartbeat, reap_expired, report_progress, Claimed, Lease, LeaseError, Outcome,
    CHANNEL, EVENTS_CHANNEL,
};
pub use quotas::{
    check_quota, recheck_quota, set_team_quotas, team_quotas, team_usage, Limit, OverQuota,
    QuotaOverrides, Quotas, Remaining, Usage,
};
pub use retention::{sweep, RetentionPolicy, SweepReport, SWEEP_LOCK};

/// Migrations whose text changed after release in comments only: (version, sha384 of the text
/// as first applied). A database that applied the old text gets the new checksum recorded, so
/// the comment edit does not read as a modified migration.
const COMMENT_ONLY_EDITS: &[(i64, &str)] = &[
    (
        20261126000001,
        "25422f34f59ac98e8b95a5f79cb3c5bebf425ce18754e3ae2c9e44823b974f8cf9a23ea1ea177b53047adec021cd8d3b",
    ),
    (
        20261126000002,
        "29958305d9b4fea252539dc91652c5ec380e859ff335399d341fa17b4bada6cc9de8d95aec5d34e0576ad51dd5a82844",
    ),
];

/// Applies the migrations in `migrations/` (embedded at build time).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let migrator = sqlx::migrate!("./migrations");
    let (applied,): (Option<String>,) =
        sqlx::query_as("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(pool)
            .await
            .context("reading the migration history")?;
    if applied.is_some() {
        for (version, old) in COMMENT_ONLY_EDITS {
            let Some(m) = migrator.iter().find(|m| m.version == *version) else {
                continue;
            };
            let old = hex::decode(old).context("checksum constant")?;
            sqlx::query(
                "UPDATE _sqlx_migrations SET checksum = $3 WHERE version = $1 AND checksum = $2",
            )
            .bind(version)
            .bind(old)
            .bind(m.checksum.as_ref())
            .execute(pool)
            .await
            .context("recording the checksum of a comment-only migration edit")?;
        }
    }
    migrator.run(pool).await?;
    Ok(())
}

/// The pool every part of gapmeter uses (service, workers, admin commands).
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // While the database is away a request waits this long for a connection, then answers
        // 503 (api::error): long enough to ride out a failover, short enough not to hang clients.
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connecting to the database at {}", redact(url)))
}

/// Whether the database answers (readiness).
pub async fn ping(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// A dedicated connection listening on `channel` (NOTIFY payloads arrive on it).
pub async fn listen(pool: &PgPool, channel: &str) -> sqlx::Result<PgListener> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(channel).await?;
    Ok(l)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test]
    async fn a_database_that_applied_the_old_comments_still_migrates(pool: PgPool) {
        migrate(&pool).await.unwrap();
        for (version, old) in COMMENT_ONLY_EDITS {
            sqlx::query("UPDATE _sqlx_migrations SET checksum = $2 WHERE version = $1")
                .bind(version)
                .bind(hex::decode(old).unwrap())
                .execute(&pool)
                .await
                .unwrap();
        }
        migrate(&pool).await.unwrap();
        let migrator = sqlx::migrate!("./migrations");
        for (version, _) in COMMENT_ONLY_EDITS {
            let (sum,): (Vec<u8>,) =
                sqlx::query_as("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let m = migrator.iter().find(|m| m.version == *version).unwrap();
            assert_eq!(sum, m.checksum.as_ref());
        }
    }
}
