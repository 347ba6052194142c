//! Everything SQL (PostgreSQL through sqlx) and the blob store. Handlers call these functions;
//! no SQL lives anywhere else.

mod blobs;
mod datasets;
mod ids;
mod keys;

pub use blobs::Blobs;
pub use datasets::{
    add_image, create_dataset, delete_dataset, get_dataset, list_dataset_images, list_datasets,
    refresh_dataset, set_dataset_status, AddOutcome, Dataset, DatasetImage, FormatCount, ImageMeta,
    Page,
};
pub use ids::{DatasetId, KeyId, TeamId};
pub use keys::{
    create_key, create_team, find_key, list_teams, revoke_key, ApiKey, KeyRecord, NewKey, Scope,
    Team,
};

/// Applies the migrations in `migrations/` (embedded at build time).
pub async fn migrate(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}
