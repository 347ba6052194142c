//! Content-addressed caches (docs/design.md, "Statistics"): per-image extractor outputs, per-dataset sufficient
//! statistics and finished results. Every entry has a scope: the team that computed it, or
//! [`CacheScope::shared`] when the instance shares caches across teams.
use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{DatasetId, TeamId};
use crate::metrics::FeatureStats;

/// Whose cache entries a job may read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheScope(pub(super) Uuid);

impl CacheScope {
    /// Entries visible to `team` only.
    pub fn team(team: TeamId) -> Self {
        Self(team.0)
    }

    /// Entries visible to every team.
    pub fn shared() -> Self {
        Self(Uuid::nil())
    }

    /// The team's scope, or the shared one when `share` is set.
    pub fn for_team(team: TeamId, share: bool) -> Self {
        if share {
            Self::shared()
        } else {
            Self::team(team)
        }
    }
}

/// Numeric type of a cached row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// Model outputs: the model computes in float32, so nothing is lost.
    F32,
    /// Values computed in float64 from the model outputs (per-image style covariances).
    F64,
}

impl Dtype {
    fn width(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// A cached row's element type in memory: the worker keeps model outputs as float32 and values
/// computed from them as float64; the cache converts only where the stored dtype differs.
pub trait RowElement: Copy {
    fn from_f32(v: f32) -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
}

impl RowElement for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl RowElement for f64 {
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Encodes a row as little-endian bytes of `dtype`.
pub(super) fn encode<T: RowElement>(row: &[T], dtype: Dtype) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.len() * dtype.width());
    for &v in row {
        match dtype {
            Dtype::F32 => out.extend_from_slice(&v.to_f32().to_le_bytes()),
            Dtype::F64 => out.extend_from_slice(&v.to_f64().to_le_bytes()),
        }
    }
    out
}

pub(super) fn decode<T: RowElement>(bytes: &[u8], dtype: Dtype) -> Vec<T> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| T::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                T::from_f64(f64::from_le_bytes([
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                ]))
            })
            .collect(),
    }
}

/// Cached rows of `tap` for those of `hashes` that have one.
pub async fn cached_rows<T: RowElement>(
    pool: &PgPool,
    scope: CacheScope,
    extractor: &str,
    tap: &str,
    dtype: Dtype,
    hashes: &[[u8; 32]],
) -> sqlx::Result<HashMap<[u8; 32], Vec<T>>> {
    let keys: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT image_hash, data FROM feature_cache
         WHERE scope = $1 AND extractor = $2 AND tap = $3 AND image_hash = ANY($4)",
    )
    .bind(scope.0)
    .bind(extractor)
    .bind(tap)
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    if !rows.is_empty() {
        // Recency for the byte budget's eviction. At most hourly per row, so a cache that is
        // read all day is not also written all day.
        let hit: Vec<&[u8]> = rows.iter().map(|(h, _)| h.as_slice()).collect();
        sqlx::query(
            "UPDATE feature_cache SET used_at = now()
             WHERE scope = $1 AND extractor = $2 AND tap = $3 AND image_hash = ANY($4)
               AND used_at < now() - interval '1 hour'",
        )
        .bind(scope.0)
        .bind(extractor)
        .bind(tap)
        .bind(&hit)
        .execute(pool)
        .await?;
    }
    Ok(rows
        .into_iter()
        .filter_map(|(h, data)| {
            let hash: [u8; 32] = h.try_into().ok()?;
            Some((hash, decode(&data, dtype)))
        })
        .collect())
}

/// Stores rows of `tap` (a concurrent writer of the same row wins; both computed the same).
pub async fn store_rows<T: RowElement>(
    pool: &PgPool,
    scope: CacheScope,
    extractor: &str,
    tap: &str,
    dtype: Dtype,
    rows: &[([u8; 32], &[T])],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let hashes: Vec<Vec<u8>> = rows.iter().map(|(h, _)| h.to_vec()).collect();
    let dims: Vec<i32> = rows.iter().map(|(_, r)| r.len() as i32).collect();
    let data: Vec<Vec<u8>> = rows.iter().map(|(_, r)| encode(r, dtype)).collect();
    sqlx::query(
        "INSERT INTO feature_cache (scope, extractor, tap, image_hash, dim, data)
         SELECT $1, $2, $3, h, d, b FROM UNNEST($4::bytea[], $5::int4[], $6::bytea[]) AS u(h, d, b)
         ON CONFLICT DO NOTHING",
    )
    .bind(scope.0)
    .bind(extractor)
    .bind(tap)
    .bind(&hashes)
    .bind(&dims)
    .bind(&data)
    .execute(pool)
    .await?;
    Ok(())
}

/// Statistics as the `n, dim, mean, scatter` columns of `stats_cache` and `stats_checkpoints`.
fn stats_from_row(
    n: i64,
    dim: i32,
    mean: &[u8],
    scatter: &[u8],
) -> Result<FeatureStats, crate::metrics::MetricError> {
    FeatureStats::from_parts(
        n as u64,
        dim as usize,
        decode(mean, Dtype::F64),
        decode(scatter, Dtype::F64),
    )
}

/// Binds statistics as the next four parameters (`n, dim, mean, scatter`).
trait BindStats {
    fn bind_stats(self, stats: &FeatureStats) -> Self;
}

impl BindStats for sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_stats(self, stats: &FeatureStats) -> Self {
        self.bind(stats.n() as i64)
            .bind(stats.dim() as i32)
            .bind(encode(stats.mean(), Dtype::F64))
            .bind(encode(stats.scatter(), Dtype::F64))
    }
}

/// Cached statistics of a dataset's content.
pub async fn cached_stats(
    pool: &PgPool,
    scope: CacheScope,
    extractor: &str,
    tap: &str,
    content_hash: &str,
) -> anyhow::Result<Option<FeatureStats>> {
    let row: Option<(i64, i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT n, dim, mean, scatter FROM stats_cache
         WHERE scope = $1 AND extractor = $2 AND tap = $3 AND content_hash = $4",
    )
    .bind(scope.0)
    .bind(extractor)
    .bind(tap)
    .bind(content_hash)
    .fetch_optional(pool)
    .await?;
    let Some((n, dim, mean, scatter)) = row else {
        return Ok(None);
    };
    Ok(Some(stats_from_row(n, dim, &mean, &scatter)?))
}

pub async fn store_stats(
    pool: &PgPool,
    scope: CacheScope,
    extractor: &str,
    tap: &str,
    content_hash: &str,
    stats: &FeatureStats,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO stats_cache (scope, extractor, tap, content_hash, n, dim, mean, scatter)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(scope.0)
    .bind(extractor)
    .bind(tap)
    .bind(content_hash)
    .bind_stats(stats)
    .execute(pool)
    .await?;
    Ok(())
}

/// images, n, dim, mean, scatter.
type CheckpointRow = (Vec<u8>, i64, i32, Vec<u8>, Vec<u8>);

/// A dataset's statistics and the (sorted) images they cover.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub images: Vec<[u8; 32]>,
    pub stats: FeatureStats,
}

impl Checkpoint {
    /// The images of `current` (sorted) this checkpoint lacks, or `None` when it covers an image
    /// `current` no longer has (it cannot be extended, only recomputed).
    pub fn missing_from(&self, current: &[[u8; 32]]) -> Option<Vec<[u8; 32]>> {
        let mut missing = Vec::new();
        let mut mine = self.images.iter().peekable();
        for h in current {
            match mine.peek() {
                Some(m) if *m == h => {
                    mine.next();
                }
                Some(m) if *m < h => return None,
                _ => missing.push(*h),
            }
        }
        mine.next().is_none().then_some(missing)
    }
}

pub async fn stats_checkpoint(
    pool: &PgPool,
    scope: CacheScope,
    dataset: DatasetId,
    extractor: &str,
    tap: &str,
) -> anyhow::Result<Option<Checkpoint>> {
    let row: Option<CheckpointRow> = sqlx::query_as(
        "SELECT images, n, dim, mean, scatter FROM stats_checkpoints
         WHERE scope = $1 AND dataset_id = $2 AND extractor = $3 AND tap = $4",
    )
    .bind(scope.0)
    .bind(dataset)
    .bind(extractor)
    .bind(tap)
    .fetch_optional(pool)
    .await?;
    let Some((images, n, dim, mean, scatter)) = row else {
        return Ok(None);
    };
    let images = images
        .chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .collect();
    let stats = stats_from_row(n, dim, &mean, &scatter)?;
    Ok(Some(Checkpoint { images, stats }))
}

/// Records `stats` as covering exactly `images` (sorted) of the dataset.
pub async fn store_checkpoint(
    pool: &PgPool,
    scope: CacheScope,
    dataset: DatasetId,
    extractor: &str,
    tap: &str,
    images: &[[u8; 32]],
    stats: &FeatureStats,
) -> sqlx::Result<()> {
    let packed: Vec<u8> = images.iter().flatten().copied().collect();
    sqlx::query(
        "INSERT INTO stats_checkpoints (scope, dataset_id, extractor, tap, images, n, dim, mean, scatter)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (scope, dataset_id, extractor, tap) DO UPDATE SET
             images = excluded.images, n = excluded.n, dim = excluded.dim, mean = excluded.mean,
             scatter = excluded.scatter, updated_at = now()
         WHERE stats_checkpoints.n <= excluded.n",
    )
    .bind(scope.0)
    .bind(dataset)
    .bind(extractor)
    .bind(tap)
    .bind(packed)
    .bind_stats(stats)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn cached_result(
    pool: &PgPool,
    scope: CacheScope,
    key: &str,
) -> sqlx::Result<Option<Value>> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT result FROM result_cache WHERE scope = $1 AND key = $2")
            .bind(scope.0)
            .bind(key)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
}

/// Caches a finished result of a job over `datasets`, which held `contents` (their content
/// hashes, in the same order; retention drops the result once any of them changed).
pub async fn store_result(
    pool: &PgPool,
    scope: CacheScope,
    key: &str,
    datasets: &[DatasetId],
    contents: &[&str],
    result: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO result_cache (scope, key, datasets, content_hashes, result) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(scope.0)
    .bind(key)
    .bind(datasets)
    .bind(contents)
    .bind(result)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets what was derived from a deleted dataset of `team`: its results, and the features of
/// its images that no remaining dataset of the team (for shared entries: of anyone) holds.
/// `images` are the deleted dataset's image hashes; runs in the deletion's transaction.
pub(super) async fn forget_dataset(
    conn: &mut sqlx::PgConnection,
    team: TeamId,
    dataset: DatasetId,
    images: &[Vec<u8>],
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM result_cache WHERE datasets @> ARRAY[$1::uuid]")
        .bind(dataset)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM feature_cache f WHERE f.image_hash = ANY($2) AND (
             (f.scope = $1 AND NOT EXISTS (
                 SELECT 1 FROM dataset_images di JOIN datasets d ON d.id = di.dataset_id
                 WHERE di.image_hash = f.image_hash AND d.team_id = $1))
             OR (f.scope = $3 AND NOT EXISTS (
                 SELECT 1 FROM dataset_images di WHERE di.image_hash = f.image_hash)))",
    )
    .bind(team.0)
    .bind(images)
    .bind(CacheScope::shared().0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_extends_only_to_supersets() {
        let h = |b: u8| [b; 32];
        let cp = Checkpoint {
            images: vec![h(2), h(5)],
            stats: FeatureStats::empty(1),
        };
        assert_eq!(
            cp.missing_from(&[h(1), h(2), h(5), h(9)]),
            Some(vec![h(1), h(9)])
        );
        assert_eq!(cp.missing_from(&[h(2), h(5)]), Some(vec![]));
        assert_eq!(cp.missing_from(&[h(2), h(9)]), None, "5 was removed");
        assert_eq!(cp.missing_from(&[h(1), h(2)]), None, "5 was removed (last)");
    }

    #[test]
    fn rows_round_trip_exactly_in_their_dtype() {
        let row = [1.5f32 as f64, -0.1f32 as f64, 3.0e-8f32 as f64];
        assert_eq!(decode::<f64>(&encode(&row, Dtype::F32), Dtype::F32), row);
        // Model outputs kept as float32 in memory store and load without any widening.
        let narrow = [1.5f32, -0.1, 3.0e-8];
        assert_eq!(
            decode::<f32>(&encode(&narrow, Dtype::F32), Dtype::F32),
            narrow
        );
        let precise = [0.1, std::f64::consts::PI, -1e-300];
        assert_eq!(
            decode::<f64>(&encode(&precise, Dtype::F64), Dtype::F64),
            precise
        );
    }
}
