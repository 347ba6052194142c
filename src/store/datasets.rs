//! Datasets and their images. Images are deduplicated by content (blake3) across all datasets;
//! a blob is deleted when the last dataset referencing it goes.
use bytes::Bytes;
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::{Blobs, DatasetId, TeamId};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Dataset {
    pub id: DatasetId,
    pub name: String,
    pub uri: Option<String>,
    /// `ingesting`, `ready` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub image_count: i64,
    pub total_bytes: i64,
    /// `blake3:` over the sorted image hashes; absent while the dataset is empty.
    pub content_hash: Option<String>,
    /// Images per format.
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

/// An image of a dataset.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DatasetImage {
    /// blake3 of the bytes, hex.
    pub hash: String,
    /// The file name it was uploaded under (first upload wins).
    pub name: String,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    /// The dataset already had these bytes.
    Duplicate,
}

type DatasetRow = (
    DatasetId,
    String,
    Option<String>,
    String,
    Option<String>,
    i32,
    i64,
    Option<String>,
    OffsetDateTime,
    OffsetDateTime,
);

const DATASET_COLUMNS: &str =
    "id, name, uri, status, error, image_count, total_bytes, content_hash, created_at, updated_at";

fn dataset(row: DatasetRow, formats: Vec<FormatCount>) -> Dataset {
    let (
        id,
        name,
        uri,
        status,
        error,
        image_count,
        total_bytes,
        content_hash,
        created_at,
        updated_at,
    ) = row;
    Dataset {
        id,
        name,
        uri,
        status,
        error,
        image_count: image_count as i64,
        total_bytes,
        content_hash,
        formats,
        created_at,
        updated_at,
    }
}

pub async fn create_dataset(
    pool: &PgPool,
    team: TeamId,
    name: &str,
    uri: Option<&str>,
    status: &str,
) -> sqlx::Result<Dataset> {
    let row: DatasetRow = sqlx::query_as(&format!(
        "INSERT INTO datasets (id, team_id, name, uri, status) VALUES ($1, $2, $3, $4, $5) RETURNING {DATASET_COLUMNS}"
    ))
    .bind(DatasetId::new())
    .bind(team)
    .bind(name)
    .bind(uri)
    .bind(status)
    .fetch_one(pool)
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

/// Images of a dataset of `team`, by hash; `None` when the dataset is not the team's.
pub async fn list_dataset_images(
    pool: &PgPool,
    team: TeamId,
    id: DatasetId,
    cursor: Option<Vec<u8>>,
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
        "SELECT i.hash, d.original_name, i.bytes, i.width, i.height, i.format, d.added_at \
         FROM dataset_images d JOIN images i ON i.hash = d.image_hash \
         WHERE d.dataset_id = $1 AND ($2::bytea IS NULL OR d.image_hash > $2) ORDER BY d.image_hash LIMIT $3",
    )
    .bind(id)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let items = rows
        .into_iter()
        .map(|r| DatasetImage {
            hash: hex::encode(r.hash),
            name: r.original_name,
            bytes: r.bytes,
            width: r.width,
            height: r.height,
            format: r.format,
            added_at: r.added_at,
        })
        .collect();
    Ok(Some(page(items, limit, |i| i.hash.clone())))
}

#[derive(sqlx::FromRow)]
struct ImageRow {
    hash: Vec<u8>,
    original_name: String,
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

/// Stores an image's bytes (once per content) and links it to the dataset.
pub async fn add_image(
    pool: &PgPool,
    blobs: &Blobs,
    dataset: DatasetId,
    meta: &ImageMeta,
    name: &str,
    bytes: Bytes,
) -> anyhow::Result<AddOutcome> {
    let mut tx = pool.begin().await?;
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
    let linked = sqlx::query("INSERT INTO dataset_images (dataset_id, image_hash, original_name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(dataset)
        .bind(&meta.hash[..])
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(if linked.rows_affected() == 1 {
        AddOutcome::Added
    } else {
        AddOutcome::Duplicate
    })
}

/// Recomputes count, bytes and content hash after images were added.
pub async fn refresh_dataset(pool: &PgPool, id: DatasetId) -> sqlx::Result<()> {
    let hashes: Vec<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT i.hash, i.bytes FROM dataset_images d JOIN images i ON i.hash = d.image_hash WHERE d.dataset_id = $1 ORDER BY i.hash",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let total: i64 = hashes.iter().map(|h| h.1).sum();
    let content_hash = (!hashes.is_empty()).then(|| {
        // Same definition as `gapmeter score` on a folder: blake3 over the sorted 32-byte hashes
        // (bytea orders bytewise, as Rust sorts byte arrays).
        let mut h = blake3::Hasher::new();
        for (hash, _) in &hashes {
            h.update(hash);
        }
        format!("blake3:{}", h.finalize().to_hex())
    });
    sqlx::query("UPDATE datasets SET image_count = $2, total_bytes = $3, content_hash = $4, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(hashes.len() as i32)
        .bind(total)
        .bind(content_hash)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_dataset_status(
    pool: &PgPool,
    id: DatasetId,
    status: &str,
    error: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE datasets SET status = $2, error = $3, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(status)
        .bind(error)
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
            sqlx::query_as("SELECT image_hash FROM dataset_images WHERE dataset_id = $1")
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
            "SELECT i.hash FROM images i WHERE NOT EXISTS (SELECT 1 FROM dataset_images d WHERE d.image_hash = i.hash)",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        orphans
    };
    for (hash,) in hashes {
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
    Ok(true)
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
    async fn images_are_deduplicated_and_blobs_collected_with_the_last_reference(pool: PgPool) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&format!("file://{}", dir.path().display())).unwrap();
        let team = create_team(&pool, "t").await.unwrap().id;
        let a = create_dataset(&pool, team, "a", None, "ready")
            .await
            .unwrap()
            .id;
        let b = create_dataset(&pool, team, "b", None, "ready")
            .await
            .unwrap()
            .id;
        let (m1, b1) = meta(1);
        let (m2, b2) = meta(2);
        assert_eq!(
            add_image(&pool, &blobs, a, &m1, "x.png", b1.clone())
                .await
                .unwrap(),
            AddOutcome::Added
        );
        assert_eq!(
            add_image(&pool, &blobs, a, &m1, "y.png", b1.clone())
                .await
                .unwrap(),
            AddOutcome::Duplicate
        );
        assert_eq!(
            add_image(&pool, &blobs, b, &m1, "x.png", b1.clone())
                .await
                .unwrap(),
            AddOutcome::Added
        );
        assert_eq!(
            add_image(&pool, &blobs, b, &m2, "z.png", b2).await.unwrap(),
            AddOutcome::Added
        );
        refresh_dataset(&pool, a).await.unwrap();
        refresh_dataset(&pool, b).await.unwrap();
        let da = get_dataset(&pool, team, a).await.unwrap().unwrap();
        assert_eq!((da.image_count, da.total_bytes), (1, 16));
        assert_eq!(da.formats.len(), 1);
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
    async fn other_teams_see_nothing_and_pages_chain(pool: PgPool) {
        let t1 = create_team(&pool, "one").await.unwrap().id;
        let t2 = create_team(&pool, "two").await.unwrap().id;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                create_dataset(&pool, t1, &format!("d{i}"), None, "ready")
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

/// A dataset's images at one moment: what a job scores, whatever is uploaded meanwhile.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: DatasetId,
    pub name: String,
    pub status: String,
    /// (blake3, original name), ordered by name then hash — the order `gapmeter score` reads a
    /// flat folder in, so row-order-dependent draws (KID subsets) agree.
    pub images: Vec<([u8; 32], String)>,
    /// blake3 over the sorted image hashes (as [`Dataset::content_hash`]); `None` when empty.
    pub content_hash: Option<String>,
}

/// The images of a dataset of `team`, read in one statement; `None` when it is not the team's.
pub async fn dataset_snapshot(
    pool: &PgPool,
    team: TeamId,
    id: DatasetId,
) -> sqlx::Result<Option<Snapshot>> {
    let mut tx = pool.begin().await?;
    // One snapshot for both reads, so the hash matches the image list.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let head: Option<(String, String)> =
        sqlx::query_as("SELECT name, status FROM datasets WHERE id = $1 AND team_id = $2")
            .bind(id)
            .bind(team)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((name, status)) = head else {
        return Ok(None);
    };
    let rows: Vec<(Vec<u8>, String)> = sqlx::query_as(
        "SELECT image_hash, original_name FROM dataset_images WHERE dataset_id = $1 ORDER BY original_name, image_hash",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let images: Vec<([u8; 32], String)> = rows
        .into_iter()
        .filter_map(|(h, n)| Some((<[u8; 32]>::try_from(h).ok()?, n)))
        .collect();
    let content_hash = (!images.is_empty()).then(|| {
        let mut sorted: Vec<&[u8; 32]> = images.iter().map(|(h, _)| h).collect();
        sorted.sort();
        let mut h = blake3::Hasher::new();
        for x in sorted {
            h.update(x);
        }
        format!("blake3:{}", h.finalize().to_hex())
    });
    Ok(Some(Snapshot {
        id,
        name,
        status,
        images,
        content_hash,
    }))
}
