//! Everything SQL (PostgreSQL through sqlx) and the blob store. Handlers call these functions;
//! no SQL lives anywhere else.

mod blobs;
mod cache;
mod datasets;
mod ids;
mod jobs;
mod keys;

pub use blobs::Blobs;
pub use cache::{
    cached_result, cached_rows, cached_stats, stats_checkpoint, store_checkpoint, store_result,
    store_rows, store_stats, CacheScope, Checkpoint, Dtype,
};
pub use datasets::{
    add_image, create_dataset, dataset_snapshot, delete_dataset, get_dataset, list_dataset_images,
    list_datasets, refresh_dataset, set_dataset_status, AddOutcome, Dataset, DatasetImage,
    FormatCount, ImageMeta, Page, Snapshot,
};
pub use ids::{DatasetId, JobId, KeyId, TeamId};
pub use jobs::{
    cancel, claim, enqueue, finish, get_job, heartbeat, job_counts, job_events, list_jobs,
    reap_expired, report_progress, CancelOutcome, Claimed, Enqueued, Finished, Job, JobEvent,
    JobFilter, JobStatus, Lease, LeaseError, NewJob, Outcome, Progress, Timings, CHANNEL,
    EVENTS_CHANNEL,
};
pub use keys::{
    create_key, create_team, find_key, list_teams, revoke_key, ApiKey, KeyRecord, NewKey, Scope,
    Team,
};

/// Applies the migrations in `migrations/` (embedded at build time).
pub async fn migrate(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}
