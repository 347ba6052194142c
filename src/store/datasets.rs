//! Datasets and their members. A dataset is a multiset of files, as a folder is: each accepted
//! file is a member under its path, and the same bytes may be members under several paths. Blobs
//! are stored once per content (blake3) across all datasets; a blob is deleted when the last
//! member referencing it goes.
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::{Blobs, DatasetId, JobId, TeamId};
use crate::content;

/// Where a dataset is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetStatus {
    /// A URI ingest job is filling it; it cannot be scored or uploaded to yet.
    Ingesting,
    Ready,
    /// Its ingest job failed; `error` says why.
    Failed,
}

impl DatasetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetStatus::Ingesting => "ingesting",
            DatasetStatus::Ready => "ready",
            DatasetStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ingesting" => DatasetStatus::Ingesting,
            "ready" => DatasetStatus::Ready,
            "failed" => DatasetStatus::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DatasetStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// Image files (uploaded or ingested): every metric.
    Images,
    /// Only registered FID statistics (`PUT /v1/datasets/{id}/statistics`): FID against it.
    Statistics,
}

impl DatasetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Images => "images",
            DatasetKind::Statistics => "statistics",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "images" => DatasetKind::Images,
            "statistics" => DatasetKind::Statistics,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Dataset {
    pub id: DatasetId,
    pub name: String,
    pub uri: Option<String>,
    pub status: DatasetStatus,
    pub kind: DatasetKind,
    /// Extractor ids with registered statistics (a `statistics` dataset only).
    pub statistics: Vec<String>,
    /// Why ingesting the URI failed (status `failed`).
    pub error: Option<String>,
    /// The job ingesting `uri` (`GET /v1/jobs/{id}`).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub ingest_job: Option<JobId>,
    /// Files, duplicates included: what `gapmeter score` counts in a folder.
    pub image_count: i64,
    /// Distinct contents among the files.
    pub unique_images: i64,
    /// Bytes of every file, duplicates included.
    pub total_bytes: i64,
    /// `blake3:` over the sorted hashes of every file; absent while the dataset is empty. For a
    /// statistics dataset, `statistics:` over its registered files.
    pub content_hash: Option<String>,
    /// Files per format.
    pub formats: Vec<FormatCount>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FormatCount {
    pub format: String,
    pub count: i64,
}

/// One file of a dataset.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DatasetImage {
    /// Its path in the upload (`archive.tar.gz/inner/path.png` for archive members): the
    /// member's key.
    pub path: String,
    /// blake3 of the bytes, hex.
    pub hash: String,
    pub bytes: i64,
    pub width: i32,
    pub height: i32,
    pub format: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub added_at: OffsetDateTime,
}

/// A page of a list, with the cursor for the next one.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What ingest learned about an image before storing it.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    pub hash: [u8; 32],
    pub bytes: i64,
    pub width: i32,
    pub height: i32,
    pub format: String,
}

/// What adding a file under a path did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new member.
    Added,
    /// A new member whose bytes the dataset already holds under another path.
    Duplicate,
    /// The path already holds these bytes: nothing changed (a retried upload).
    Unchanged,
    /// The path holds other bytes: nothing changed.
    Conflict { existing: [u8; 32] },
    /// The dataset holds registered statistics, never images: nothing changed.
    StatisticsOnly,
}

type DatasetRow = (
    DatasetId,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<JobId>,
    i32,
    i32,
    i64,
    Option<String>,
    OffsetDateTime,
    OffsetDateTime,
    String,
    Vec<String>,
);

const DATASET_COLUMNS: &str = "id, name, uri, status, error, ingest_job, image_count, unique_images, total_bytes, content_hash, created_at, updated_at, kind, \
     ARRAY(SELECT s.extractor FROM dataset_statistics s WHERE s.dataset_id = datasets.id ORDER BY s.extractor)";

fn dataset(row: DatasetRow, formats: Vec<FormatCount>) -> Dataset {
    let (
        id,
        name,
        uri,
        status,
        error,
        ingest_job,
        image_count,
        unique_images,
        total_bytes,
        content_hash,
        created_at,
        updated_at,
        kind,
        statistics,
    ) = row;
    Dataset {
        id,
        name,
        uri,
        // The CHECK constraints admit only known values.
        status: DatasetStatus::parse(&status).unwrap_or(DatasetStatus::Failed),
        kind: DatasetKind::parse(&kind).unwrap_or(DatasetKind::Images),
        statistics,
        error,
        ingest_job,
        image_count: image_count as i64,
        unique_images: unique_images as i64,
        total_bytes,
        content_hash,
        formats,
        created_at,
        updated_at,
    }
}

/// Creates a dataset; with `ingest_job`, it is `ingesting` until that job ends (the caller
/// enqueues the job in the same transaction).
pub async fn create_dataset(
    conn: &mut PgConnection,
    team: TeamId,
    name: &str,
    uri: Option<&str>,
    ingest_job: Option<JobId>,
) -> sqlx::Result<Dataset> {
    let status = if ingest_job.is_some() {
        DatasetStatus::Ingesting
    } else {
        DatasetStatus::Ready
    };
    let row: DatasetRow = sqlx::query_as(&format!(
        "INSERT INTO datasets (id, team_id, name, uri, status, ingest_job) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {DATASET_COLUMNS}"
    ))
    .bind(DatasetId::new())
    .bind(team)
    .bind(name)
    .bind(uri)
    .bind(status.as_str())
    .bind(ingest_job)
    .fetch_one(conn)
    .await?;
    Ok(dataset(row, Vec::new()))
}

/// The dataset, if it exists and belongs to `team` (another team's dataset is "not found").
pub async fn get_dataset(
    pool: &PgPool,
    team: TeamId,
    id: DatasetId,
) -> sqlx::Result<Option<Dataset>> {
    let row: Option<DatasetRow> = sqlx::query_as(&format!(
        "SELECT {DATASET_COLUMNS} FROM datasets WHERE id = $1 AND team_id = $2"
    ))
    .bind(id)
    .bind(team)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let formats: Vec<(String, i64)> = sqlx::query_as(
        "SELECT i.format, count(*) FROM dataset_images d JOIN images i ON i.hash = d.image_hash \
         WHERE d.dataset_id = $1 GROUP BY i.format ORDER BY i.format",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let formats = formats
        .into_iter()
        .map(|(format, count)| FormatCount { format, count })
        .collect();
    Ok(Some(dataset(row, formats)))
}

/// Newest first; the cursor is the last id of the previous page (ids are time-ordered).
pub async fn list_datasets(
    pool: &PgPool,
    team: TeamId,
    cursor: Option<DatasetId>,
    limit: i64,
) -> sqlx::Result<Page<Dataset>> {
    let rows: Vec<DatasetRow> = sqlx::query_as(&format!(
        "SELECT {DATASET_COLUMNS} FROM datasets WHERE team_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(team)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(
        rows.into_iter().map(|r| dataset(r, Vec::new())).collect(),
        limit,
        |d| d.id.to_string(),
    ))
}

pub(super) fn page<T>(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() as i64 > limit;
    items.truncate(limit.max(0) as usize);
    let next_cursor = if more {
        items.last().map(cursor_of)
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Files of a dataset of `team`, by path (bytewise); `None` when the dataset is not the team's.
pub async fn list_dataset_images(
    pool: &PgPool,
    team: TeamId,
    id: DatasetId,
    cursor: Option<String>,
    limit: i64,
) -> sqlx::Result<Option<Page<DatasetImage>>> {
    let owned: Option<(DatasetId,)> =
        sqlx::query_as("SELECT id FROM datasets WHERE id = $1 AND team_id = $2")
            .bind(id)
            .bind(team)
            .fetch_optional(pool)
            .await?;
    if owned.is_none() {
        return Ok(None);
    }
    let rows: Vec<ImageRow> = sqlx::query_as(
        "SELECT i.hash, d.path, i.bytes, i.width, i.height, i.format, d.added_at \
         FROM dataset_images d JOIN images i ON i.hash = d.image_hash \
         WHERE d.dataset_id = $1 AND ($2::text IS NULL OR d.path COLLATE \"C\" > $2 COLLATE \"C\") \
         ORDER BY d.path COLLATE \"C\" LIMIT $3",
    )
    .bind(id)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let items = rows
        .into_iter()
        .map(|r| DatasetImage {
            path: r.path,
            hash: hex::encode(r.hash),
            bytes: r.bytes,
            width: r.width,
            height: r.height,
            format: r.format,
            added_at: r.added_at,
        })
        .collect();
    Ok(Some(page(items, limit, |i| i.path.clone())))
}

#[derive(sqlx::FromRow)]
struct ImageRow {
    hash: Vec<u8>,
    path: String,
    bytes: i64,
    width: i32,
    height: i32,
    format: String,
    added_at: OffsetDateTime,
}

/// Serialises everything that creates or deletes the blob of one hash (uploads and garbage
/// collection), so a blob is never deleted under a dataset that has just started to use it.
async fn lock_hash(tx: &mut sqlx::PgConnection, hash: &[u8; 32]) -> sqlx::Result<()> {
    let key = i64::from_le_bytes([
        hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
    ]);
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Makes the file `bytes` the dataset's member at `path`, storing the bytes once per content.
/// A path that already holds the same bytes is left alone (so a retried upload changes
/// nothing); one that holds other bytes is a conflict.
pub async fn add_member(
    pool: &PgPool,
    blobs: &Blobs,
    dataset: DatasetId,
    path: &str,
    meta: &ImageMeta,
    bytes: Bytes,
) -> anyhow::Result<AddOutcome> {
    let mut tx = pool.begin().await?;
    // Shared with other uploads; registering statistics takes the row exclusively and checks
    // there are no members, so a dataset never ends up with both.
    let kind: Option<(String,)> =
        sqlx::query_as("SELECT kind FROM datasets WHERE id = $1 FOR SHARE")
            .bind(dataset)
            .fetch_optional(&mut *tx)
            .await?;
    if kind.is_some_and(|(k,)| DatasetKind::parse(&k) == Some(DatasetKind::Statistics)) {
        return Ok(AddOutcome::StatisticsOnly);
    }
    let existing: Option<(Vec<u8>,)> =
        sqlx::query_as("SELECT image_hash FROM dataset_images WHERE dataset_id = $1 AND path = $2")
            .bind(dataset)
            .bind(path)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((held,)) = existing {
        return Ok(already_at_path(&held, &meta.hash));
    }
    lock_hash(&mut tx, &meta.hash).await?;
    let known: Option<(i64,)> = sqlx::query_as("SELECT bytes FROM images WHERE hash = $1")
        .bind(&meta.hash[..])
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        blobs.put(&meta.hash, bytes).await?;
        sqlx::query(
            "INSERT INTO images (hash, bytes, width, height, format) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&meta.hash[..])
        .bind(meta.bytes)
        .bind(meta.width)
        .bind(meta.height)
        .bind(&meta.format)
        .execute(&mut *tx)
        .await?;
    }
    let (held,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM dataset_images WHERE dataset_id = $1 AND image_hash = $2)",
    )
    .bind(dataset)
    .bind(&meta.hash[..])
    .fetch_one(&mut *tx)
    .await?;
    let linked = sqlx::query(
        "INSERT INTO dataset_images (dataset_id, image_hash, path) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(dataset)
    .bind(&meta.hash[..])
    .bind(path)
    .execute(&mut *tx)
    .await?;
    if linked.rows_affected() == 0 {
        // A concurrent upload of the same path won since the check above: undo what this one
        // stored (still under the hash's lock) and report what the path holds now.
        if known.is_none() {
            blobs.delete(&meta.hash).await?;
        }
        tx.rollback().await?;
        let (now,): (Vec<u8>,) = sqlx::query_as(
            "SELECT image_hash FROM dataset_images WHERE dataset_id = $1 AND path = $2",
        )
        .bind(dataset)
        .bind(path)
        .fetch_one(pool)
        .await?;
        return Ok(already_at_path(&now, &meta.hash));
    }
    tx.commit().await?;
    Ok(if held {
        AddOutcome::Duplicate
    } else {
        AddOutcome::Added
    })
}

/// What adding `new` at a path that already holds `held` does: nothing, or a conflict.
fn already_at_path(held: &[u8], new: &[u8; 32]) -> AddOutcome {
    match <[u8; 32]>::try_from(held) {
        Ok(h) if h == *new => AddOutcome::Unchanged,
        Ok(existing) => AddOutcome::Conflict { existing },
        Err(_) => AddOutcome::Conflict { existing: [0; 32] },
    }
}

/// The content hash of the file at `path` in a dataset of `team`; `None` when the dataset is not
/// the team's or holds nothing at that path.
pub async fn member_hash(
    pool: &PgPool,
    team: TeamId,
    id: DatasetId,
    path: &str,
) -> sqlx::Result<Option<[u8; 32]>> {
    let row: Option<(Vec<u8>,)> = sqlx::query_as(
        "SELECT d.image_hash FROM dataset_images d JOIN datasets s ON s.id = d.dataset_id \
         WHERE d.dataset_id = $1 AND s.team_id = $2 AND d.path = $3",
    )
    .bind(id)
    .bind(team)
    .bind(path)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(h,)| <[u8; 32]>::try_from(h).ok()))
}

/// Recomputes counts, bytes and content hash after files were added.
pub async fn refresh_dataset(pool: &PgPool, id: DatasetId) -> sqlx::Result<()> {
    let members: Vec<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT i.hash, i.bytes FROM dataset_images d JOIN images i ON i.hash = d.image_hash WHERE d.dataset_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let total: i64 = members.iter().map(|h| h.1).sum();
    let hashes: Vec<[u8; 32]> = members
        .iter()
        .filter_map(|(h, _)| <[u8; 32]>::try_from(h.as_slice()).ok())
        .collect();
    let unique = hashes
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let content_hash = (!hashes.is_empty()).then(|| content::dataset_hash(hashes.iter().copied()));
    // A statistics dataset's content hash is over its registered files, and it has no members.
    sqlx::query("UPDATE datasets SET image_count = $2, unique_images = $3, total_bytes = $4, content_hash = $5, updated_at = now() WHERE id = $1 AND kind = 'images'")
        .bind(id)
        .bind(hashes.len() as i32)
        .bind(unique as i32)
        .bind(total)
        .bind(content_hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes a dataset of `team` and every blob no other dataset references. False when the
/// dataset is not the team's.
pub async fn delete_dataset(
    pool: &PgPool,
    blobs: &Blobs,
    team: TeamId,
    id: DatasetId,
) -> anyhow::Result<bool> {
    let hashes: Vec<(Vec<u8>,)> = {
        let mut tx = pool.begin().await?;
        let images: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT DISTINCT image_hash FROM dataset_images WHERE dataset_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        let deleted = sqlx::query("DELETE FROM datasets WHERE id = $1 AND team_id = $2")
            .bind(id)
            .bind(team)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        let images: Vec<Vec<u8>> = images.into_iter().map(|r| r.0).collect();
        super::cache::forget_dataset(&mut tx, team, id, &images).await?;
        // The dataset's links went with it (ON DELETE CASCADE); find images now unreferenced.
        let orphans = sqlx::query_as(
            "SELECT i.hash FROM images i WHERE i.hash = ANY($1) AND NOT EXISTS (SELECT 1 FROM dataset_images d WHERE d.image_hash = i.hash)",
        )
        .bind(&images)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        orphans
    };
    let hashes: Vec<Vec<u8>> = hashes.into_iter().map(|(h,)| h).collect();
    drop_orphans(pool, blobs, &hashes).await?;
    Ok(true)
}

/// Deletes the image rows and blobs among `hashes` that no dataset references any more.
async fn drop_orphans(pool: &PgPool, blobs: &Blobs, hashes: &[Vec<u8>]) -> anyhow::Result<()> {
    for hash in hashes {
        let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
            continue;
        };
        let mut tx = pool.begin().await?;
        lock_hash(&mut tx, &hash).await?;
        // Re-check under the lock: an upload may have linked the image meanwhile.
        let removed = sqlx::query(
            "DELETE FROM images i WHERE i.hash = $1 AND NOT EXISTS (SELECT 1 FROM dataset_images d WHERE d.image_hash = i.hash)",
        )
        .bind(&hash[..])
        .execute(&mut *tx)
        .await?;
        if removed.rows_affected() == 1 {
            blobs.delete(&hash).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Takes back the members at `paths` (what a refused upload had added), with the blobs no other
/// dataset holds, and recounts the dataset. Returns how many members went.
pub async fn remove_members(
    pool: &PgPool,
    blobs: &Blobs,
    dataset: DatasetId,
    paths: &[String],
) -> anyhow::Result<u64> {
    if paths.is_empty() {
        return Ok(0);
    }
    let removed: Vec<(Vec<u8>,)> = sqlx::query_as(
        "DELETE FROM dataset_images WHERE dataset_id = $1 AND path = ANY($2) RETURNING image_hash",
    )
    .bind(dataset)
    .bind(paths)
    .fetch_all(pool)
    .await?;
    let mut hashes: Vec<Vec<u8>> = removed.into_iter().map(|(h,)| h).collect();
    hashes.sort();
    hashes.dedup();
    drop_orphans(pool, blobs, &hashes).await?;
    refresh_dataset(pool, dataset).await?;
    Ok(hashes.len() as u64)
}

/// Deletes blobs that have no image row and were written before `older_than`: bytes an upload
/// stored and then never committed (the process died between the two). Returns the count.
pub async fn collect_blob_garbage(
    pool: &PgPool,
    blobs: &Blobs,
    older_than: std::time::SystemTime,
) -> anyhow::Result<u64> {
    let stored = blobs.list().await?;
    let candidates: Vec<Vec<u8>> = stored
        .iter()
        .filter(|(_, written)| *written < older_than)
        .map(|(h, _)| h.to_vec())
        .collect();
    let mut removed = 0;
    for chunk in candidates.chunks(1000) {
        let known: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT hash FROM images WHERE hash = ANY($1)")
            .bind(chunk)
            .fetch_all(pool)
            .await?;
        let known: std::collections::HashSet<Vec<u8>> = known.into_iter().map(|(h,)| h).collect();
        for hash in chunk.iter().filter(|h| !known.contains(*h)) {
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                continue;
            };
            let mut tx = pool.begin().await?;
            // The upload path holds this lock from writing the blob to committing its row.
            lock_hash(&mut tx, &hash).await?;
            let (row,): (bool,) =
                sqlx::query_as("SELECT EXISTS (SELECT 1 FROM images WHERE hash = $1)")
                    .bind(&hash[..])
                    .fetch_one(&mut *tx)
                    .await?;
            if !row {
                blobs.delete(&hash).await?;
                removed += 1;
            }
            tx.commit().await?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{create_team, Blobs};

    fn meta(seed: u8) -> (ImageMeta, Bytes) {
        let bytes = Bytes::from(vec![seed; 16]);
        let hash = *blake3::hash(&bytes).as_bytes();
        (
            ImageMeta {
                hash,
                bytes: 16,
                width: 4,
                height: 4,
                format: "png".into(),
            },
            bytes,
        )
    }

    #[sqlx::test]
    async fn members_are_keyed_by_path_blobs_by_content(pool: PgPool) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&format!("file://{}", dir.path().display())).unwrap();
        let team = create_team(&pool, "t").await.unwrap().id;
        let mut conn = pool.acquire().await.unwrap();
        let a = create_dataset(&mut conn, team, "a", None, None)
            .await
            .unwrap()
            .id;
        let b = create_dataset(&mut conn, team, "b", None, None)
            .await
            .unwrap()
            .id;
        let (m1, b1) = meta(1);
        let (m2, b2) = meta(2);
        let add = |ds, m: &ImageMeta, path: &'static str, bytes: &Bytes| {
            let (pool, blobs, m, bytes) = (&pool, &blobs, m.clone(), bytes.clone());
            async move { add_member(pool, blobs, ds, path, &m, bytes).await.unwrap() }
        };
        assert_eq!(add(a, &m1, "x.png", &b1).await, AddOutcome::Added);
        // The same bytes under another path are another member; under the same path, nothing.
        assert_eq!(add(a, &m1, "y.png", &b1).await, AddOutcome::Duplicate);
        assert_eq!(add(a, &m1, "y.png", &b1).await, AddOutcome::Unchanged);
        assert_eq!(
            add(a, &m2, "x.png", &b2).await,
            AddOutcome::Conflict { existing: m1.hash }
        );
        assert_eq!(add(b, &m1, "x.png", &b1).await, AddOutcome::Added);
        assert_eq!(add(b, &m2, "z.png", &b2).await, AddOutcome::Added);
        refresh_dataset(&pool, a).await.unwrap();
        refresh_dataset(&pool, b).await.unwrap();
        let da = get_dataset(&pool, team, a).await.unwrap().unwrap();
        assert_eq!(
            (da.image_count, da.unique_images, da.total_bytes),
            (2, 1, 32)
        );
        assert_eq!(
            da.content_hash.as_deref(),
            Some(crate::content::dataset_hash([m1.hash, m1.hash]).as_str())
        );
        assert_eq!(da.formats[0].count, 2);
        let snap = dataset_snapshot(&pool, team, a).await.unwrap().unwrap();
        let paths: Vec<&str> = snap.images.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["x.png", "y.png"]);
        assert_eq!(snap.content_hash, da.content_hash);
        assert!(blobs.exists(&m1.hash).await.unwrap());

        // Deleting b removes only the image nobody else uses.
        assert!(delete_dataset(&pool, &blobs, team, b).await.unwrap());
        assert!(blobs.exists(&m1.hash).await.unwrap());
        assert!(!blobs.exists(&m2.hash).await.unwrap());
        assert!(delete_dataset(&pool, &blobs, team, a).await.unwrap());
        assert!(!blobs.exists(&m1.hash).await.unwrap());
        assert!(!delete_dataset(&pool, &blobs, team, a).await.unwrap());
    }

    #[sqlx::test]
    async fn concurrent_uploads_of_one_path_leave_one_member_and_no_orphan(pool: PgPool) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&format!("file://{}", dir.path().display())).unwrap();
        let team = create_team(&pool, "t").await.unwrap().id;
        for round in 0..5u8 {
            let ds = create_dataset(
                &mut pool.acquire().await.unwrap(),
                team,
                &format!("d{round}"),
                None,
                None,
            )
            .await
            .unwrap()
            .id;
            let (m1, b1) = meta(10 + 2 * round);
            let (m2, b2) = meta(11 + 2 * round);
            let (x, y) = tokio::join!(
                add_member(&pool, &blobs, ds, "p.png", &m1, b1),
                add_member(&pool, &blobs, ds, "p.png", &m2, b2)
            );
            let mut outcomes = [x.unwrap(), y.unwrap()];
            outcomes.sort_by_key(|o| matches!(o, AddOutcome::Added));
            assert!(
                matches!(outcomes, [AddOutcome::Conflict { .. }, AddOutcome::Added]),
                "{outcomes:?}"
            );
            // The loser's bytes are not left behind.
            let stored = [
                blobs.exists(&m1.hash).await.unwrap(),
                blobs.exists(&m2.hash).await.unwrap(),
            ];
            assert_eq!(stored.iter().filter(|s| **s).count(), 1, "{stored:?}");
        }
    }

    #[sqlx::test]
    async fn other_teams_see_nothing_and_pages_chain(pool: PgPool) {
        let t1 = create_team(&pool, "one").await.unwrap().id;
        let t2 = create_team(&pool, "two").await.unwrap().id;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                create_dataset(
                    &mut pool.acquire().await.unwrap(),
                    t1,
                    &format!("d{i}"),
                    None,
                    None,
                )
                .await
                .unwrap()
                .id,
            );
        }
        assert!(get_dataset(&pool, t2, ids[0]).await.unwrap().is_none());
        assert!(list_dataset_images(&pool, t2, ids[0], None, 10)
            .await
            .unwrap()
            .is_none());
        let p1 = list_datasets(&pool, t1, None, 2).await.unwrap();
        assert_eq!(p1.items.len(), 2);
        let cursor: DatasetId = p1.next_cursor.unwrap().parse().unwrap();
        let p2 = list_datasets(&pool, t1, Some(cursor), 2).await.unwrap();
        let p3 = list_datasets(&pool, t1, p2.next_cursor.map(|c| c.parse().unwrap()), 2)
            .await
            .unwrap();
        assert_eq!(p3.items.len(), 1);
        assert!(p3.next_cursor.is_none());
        let mut seen: Vec<DatasetId> = [p1.items, p2.items, p3.items]
            .concat()
            .iter()
            .map(|d| d.id)
            .collect();
        seen.reverse();
        assert_eq!(seen, ids);
        assert!(list_datasets(&pool, t2, None, 10)
            .await
            .unwrap()
            .items
            .is_empty());
    }
}

/// A file of a dataset snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub hash: [u8; 32],
    pub path: String,
}

/// A dataset's files at one moment: what a job scores, whatever is uploaded meanwhile.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: DatasetId,
    pub name: String,
    pub status: DatasetStatus,
    /// A statistics dataset has no images; its FID statistics are read with
    /// [`registered_statistics`].
    pub kind: DatasetKind,
    /// Every file in the order `gapmeter score` reads a folder holding them (by path, folder by
    /// folder; see [`content::folder_order`]), so row-order-dependent draws (KID subsets) agree.
    pub images: Vec<Member>,
    /// As [`Dataset::content_hash`]; `None` when empty.
    pub content_hash: Option<String>,
}

impl Snapshot {
    /// The content hashes of every file, sorted (duplicates kept).
    pub fn sorted_hashes(&self) -> Vec<[u8; 32]> {
        let mut h: Vec<[u8; 32]> = self.images.iter().map(|m| m.hash).collect();
        h.sort_unstable();
        h
    }
}

/// The files of a dataset of `team`, read in one statement; `None` when it is not the team's.
pub async fn dataset_snapshot(
    pool: &PgPool,
    team: TeamId,
    id: DatasetId,
) -> sqlx::Result<Option<Snapshot>> {
    let mut tx = pool.begin().await?;
    // One snapshot for both reads, so the status matches the file list.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let head: Option<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT name, status, kind, content_hash FROM datasets WHERE id = $1 AND team_id = $2",
    )
    .bind(id)
    .bind(team)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((name, status, kind, stored_hash)) = head else {
        return Ok(None);
    };
    let kind = DatasetKind::parse(&kind).unwrap_or(DatasetKind::Images);
    let rows: Vec<(Vec<u8>, String)> =
        sqlx::query_as("SELECT image_hash, path FROM dataset_images WHERE dataset_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let mut images: Vec<Member> = rows
        .into_iter()
        .filter_map(|(h, path)| {
            Some(Member {
                hash: <[u8; 32]>::try_from(h).ok()?,
                path,
            })
        })
        .collect();
    images.sort_by(|a, b| content::folder_order(&a.path, &b.path));
    let content_hash = match kind {
        DatasetKind::Statistics => stored_hash,
        DatasetKind::Images => {
            (!images.is_empty()).then(|| content::dataset_hash(images.iter().map(|m| m.hash)))
        }
    };
    Ok(Some(Snapshot {
        id,
        name,
        status: DatasetStatus::parse(&status).unwrap_or(DatasetStatus::Failed),
        kind,
        images,
        content_hash,
    }))
}

/// Why statistics could not be registered.
#[derive(Debug)]
pub enum RegisterError {
    /// Not the team's dataset.
    NotFound,
    /// The dataset holds images, or is not ready.
    Conflict(String),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for RegisterError {
    fn from(e: sqlx::Error) -> Self {
        RegisterError::Db(e)
    }
}

/// Registers FID statistics (`mean`, row-major `cov`) computed with `extractor` for a dataset of
/// `team` that has no images, making it a statistics dataset; replaces earlier statistics of the
/// same extractor. The content hash becomes `statistics:` over every registered file's sha256,
/// so cached results of the earlier statistics no longer match.
pub async fn register_statistics(
    pool: &PgPool,
    team: TeamId,
    id: DatasetId,
    extractor: &str,
    gaussian: &crate::metrics::Gaussian,
    sha256: &str,
) -> Result<Dataset, RegisterError> {
    let mut tx = pool.begin().await?;
    let head: Option<(String, String)> = sqlx::query_as(
        "SELECT name, status FROM datasets WHERE id = $1 AND team_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(team)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((name, status)) = head else {
        return Err(RegisterError::NotFound);
    };
    if status != DatasetStatus::Ready.as_str() {
        return Err(RegisterError::Conflict(format!(
            "dataset {name:?} is {status}: statistics can be registered on a ready, empty dataset only"
        )));
    }
    // Members, not the counter: the counter is refreshed after an upload's transactions.
    let (members,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM dataset_images WHERE dataset_id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if members {
        return Err(RegisterError::Conflict(format!(
            "dataset {name:?} holds images: its statistics are computed by jobs \
             (GET /v1/datasets/{{id}}/statistics); register statistics on a new, empty dataset"
        )));
    }
    let d = gaussian.mean.len();
    sqlx::query(
        "INSERT INTO dataset_statistics (dataset_id, extractor, dim, mean, covariance, sha256) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (dataset_id, extractor) DO UPDATE SET dim = $3, mean = $4, covariance = $5, \
         sha256 = $6, created_at = now()",
    )
    .bind(id)
    .bind(extractor)
    .bind(d as i32)
    .bind(super::cache::encode(&gaussian.mean, super::Dtype::F64))
    .bind(super::cache::encode(&gaussian.cov, super::Dtype::F64))
    .bind(sha256)
    .execute(&mut *tx)
    .await?;
    let files: Vec<(String, String)> = sqlx::query_as(
        "SELECT extractor, sha256 FROM dataset_statistics WHERE dataset_id = $1 ORDER BY extractor",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let mut h = blake3::Hasher::new();
    for (x, sha) in &files {
        h.update(x.as_bytes());
        h.update(b"\0");
        h.update(sha.as_bytes());
        h.update(b"\n");
    }
    let content_hash = format!("statistics:{}", h.finalize().to_hex());
    sqlx::query(
        "UPDATE datasets SET kind = 'statistics', content_hash = $2, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(content_hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get_dataset(pool, team, id)
        .await?
        .ok_or(RegisterError::NotFound)
}

/// The statistics registered for a dataset with `extractor` (no sample count: an `.npz` does not
/// carry one).
pub async fn registered_statistics(
    pool: &PgPool,
    id: DatasetId,
    extractor: &str,
) -> anyhow::Result<Option<crate::metrics::Gaussian>> {
    let row: Option<(i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT dim, mean, covariance FROM dataset_statistics WHERE dataset_id = $1 AND extractor = $2",
    )
    .bind(id)
    .bind(extractor)
    .fetch_optional(pool)
    .await?;
    let Some((dim, mean, cov)) = row else {
        return Ok(None);
    };
    let g = crate::metrics::Gaussian {
        mean: super::cache::decode(&mean, super::Dtype::F64),
        cov: super::cache::decode(&cov, super::Dtype::F64),
        n: None,
    };
    if g.validate()? != dim as usize {
        anyhow::bail!("registered statistics of dataset {id} are corrupt (dimension {dim})");
    }
    Ok(Some(g))
}
