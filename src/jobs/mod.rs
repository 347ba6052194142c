//! The job domain, shared by the API (which validates and enqueues) and the workers (which run):
//! request bodies, the normalised [`JobSpec`] with its hashes, the [`Work`] record of what an
//! attempt reused and computed, and the result-cache lookup both sides make. No HTTP and no
//! worker mechanics live here.

mod spec;
mod work;

pub use spec::{
    extractor, has_output, AnalysisRequest, Bootstrap, IngestSpec, Invalid, IsOptions, JobSpec,
    KidOptions, MatrixRequest, MmdOptions, Parameters, PrdcOptions, ScoreRequest, SymmetricMetric,
};
pub use work::{IngestWork, Work};

pub use crate::store::JobKind;

use serde_json::Value;
use sqlx::PgPool;

use crate::features::{Manifest, Precision};
use crate::metrics::FeatureStats;
use crate::store::{self, CacheScope};

/// The result of `spec` on exactly these contents (each dataset's content hash, in the spec's
/// order) with exactly this extractor, if some job computed it before: its result-cache key, and
/// the result. The API answers such a request without a worker; a worker checks again before it
/// computes anything.
pub async fn cached_result(
    pool: &PgPool,
    scope: CacheScope,
    spec: &JobSpec,
    contents: &[&str],
    manifest: &Manifest,
) -> anyhow::Result<(String, Option<Value>)> {
    let key = spec.result_key(contents, &manifest.cache_key());
    let hit = store::cached_result(pool, scope, &key).await?;
    Ok((key, hit))
}

/// The statistics of the content features (float32 models) that an earlier job computed for
/// exactly this content with this extractor: what FID-only jobs reuse, and what
/// `GET /v1/datasets/{id}/statistics` serves. `None` until a job with FID has read the whole
/// dataset.
pub async fn cached_statistics(
    pool: &PgPool,
    scope: CacheScope,
    manifest: &Manifest,
    content_hash: &str,
) -> anyhow::Result<Option<FeatureStats>> {
    store::cached_stats(
        pool,
        scope,
        &manifest.features_key(Precision::Fp32),
        manifest.feature_output(),
        content_hash,
    )
    .await
}
