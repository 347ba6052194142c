//! One attempt at a job: snapshot the datasets, answer from the result cache if possible, else
//! gather per-image outputs (cached, or extracted by the extraction engine, whose replicas run
//! while this thread caches earlier batches) and compute the metrics with the same code `gapmeter score` runs.
use std::collections::HashMap;
use std::sync::Arc;

use anyhow::anyhow;
use serde_json::Value;
use sqlx::PgPool;

use super::plan::{self, StatsPlan};
use super::{Control, JobError, Models, WorkerOptions};
use crate::features::{
    Chunk, Devices, ExtractedBatch, Manifest, Precision, PrepareError, Registry, RunOptions,
    TextEncoder,
};
use crate::jobs::{self, has_output, JobKind, JobSpec, Work};
use crate::metrics::{FeatureStats, Features, StyleSet};
use crate::reduce::{self, Analysis, ImageSet};
use crate::score::{
    self, load_one, ExtractorInfo, LoadedSet, MetricName, SetData, SetProvenance, Skipped,
    LOGITS_OUTPUT, STYLE_OUTPUT,
};
use crate::store::{
    self, Blobs, CacheScope, DatasetKind, DatasetStatus, Dtype, Lease, Progress, Snapshot, TeamId,
};

/// Cache tap of the per-image style covariances (computed from the `early` output, float64).
const STYLE_TAP: &str = "early.cov";

pub(crate) struct JobContext {
    pub pool: PgPool,
    pub blobs: Blobs,
    pub registry: Registry,
    pub models: Arc<Models>,
    pub options: WorkerOptions,
    pub runtime: tokio::runtime::Handle,
    pub control: Arc<Control>,
    pub lease: Lease,
    pub team: TeamId,
    pub metrics: Arc<super::WorkerMetrics>,
    pub phases: Arc<super::metrics::PhaseClock>,
}

impl JobContext {
    fn progress(&self, phase: &str, done: usize, total: usize) -> Result<(), JobError> {
        self.control.check()?;
        self.phases.enter(phase);
        let p = Progress {
            phase: phase.to_string(),
            done: done as i64,
            total: total as i64,
            counts: None,
        };
        self.runtime
            .block_on(store::report_progress(&self.pool, self.lease, &p))?;
        Ok(())
    }

    fn scope(&self) -> CacheScope {
        CacheScope::for_team(self.team, self.options.share_cache)
    }
}

fn retry(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Retry(e.into())
}

fn fatal(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Fatal(e.into())
}

/// One image's outputs.
#[derive(Debug, Clone, Default)]
struct Rows {
    /// Float32, as the model computed it: the service holds what `gapmeter score` holds.
    feature: Vec<f32>,
    logits: Option<Vec<f64>>,
    style: Option<Vec<f64>>,
}

/// Runs one attempt; the result is the JSON of a [`score::Report`] or [`score::MatrixReport`].
pub(crate) fn run(ctx: &JobContext, spec: Value, work: &mut Work) -> Result<Value, JobError> {
    let spec: JobSpec =
        serde_json::from_value(spec).map_err(|e| fatal(anyhow!("unreadable job spec: {e}")))?;
    if spec.kind == JobKind::Ingest {
        return Err(fatal(anyhow!("an ingest job has no metrics to compute")));
    }
    let manifest = ctx
        .registry
        .get(&spec.extractor)
        // The API checked the id against its own registry: this worker's models directory lacks
        // it, and another worker may have it.
        .map_err(|e| retry(e.context("this worker cannot find the extractor")))?;
    for (metric, output) in [
        (MetricName::Is, LOGITS_OUTPUT),
        (MetricName::Style, STYLE_OUTPUT),
    ] {
        if spec.metrics.contains(&metric) && !has_output(&manifest, output) {
            return Err(fatal(anyhow!(
                "{} needs an output named {output:?}, but extractor {:?} has outputs {:?}",
                metric.as_str(),
                manifest.id,
                manifest.outputs
            )));
        }
    }
    let snaps = snapshots(ctx, &spec)?;
    let contents: Vec<String> = snaps
        .iter()
        .map(|s| s.content_hash.clone().unwrap_or_default())
        .collect();
    let contents: Vec<&str> = contents.iter().map(String::as_str).collect();
    let scope = ctx.scope();
    let (key, hit) = ctx
        .runtime
        .block_on(jobs::cached_result(
            &ctx.pool, scope, &spec, &contents, &manifest,
        ))
        .map_err(retry)?;
    if let Some(hit) = hit {
        work.result_cache_hit = true;
        return Ok(hit);
    }
    ctx.control.check()?;
    if let Some(analysis) = &spec.analysis {
        let value = run_analysis(ctx, &spec, analysis, &manifest, &snaps, work)?;
        cache_result(ctx, scope, &key, &spec, &contents, &value);
        return Ok(value);
    }

    let mut opts = spec.score_options(
        ctx.registry.clone(),
        Devices::List(ctx.models.devices().to_vec()),
        ctx.options.batch_size,
    );
    opts.interrupt = Some(ctx.control.interrupt());
    let mut warnings = Vec::new();
    score::extractor_warnings(&manifest, &spec.metrics, &mut warnings);
    let all_roles = roles(&spec);
    // Registered statistics stand in for their (imageless) datasets; the other sets are read
    // from their images as usual, and the two are put back in the spec's order at the end.
    let registered = registered_sets(ctx, &spec, &snaps, &all_roles)?;
    let (snaps, roles): (Vec<Snapshot>, Vec<String>) = snaps
        .into_iter()
        .zip(all_roles)
        .filter(|(s, _)| s.kind == DatasetKind::Images)
        .unzip();

    let from_stats = if spec.needs_features() || snaps.is_empty() {
        None
    } else {
        statistics_route(
            ctx,
            &manifest,
            spec.precision,
            &snaps,
            &roles,
            work,
            &mut warnings,
        )?
    };
    let image_sets = match from_stats {
        Some(sets) => sets,
        None => {
            let want_logits = spec.metrics.contains(&MetricName::Is);
            let want_style = spec.metrics.contains(&MetricName::Style);
            feature_sets(
                ctx,
                &manifest,
                spec.precision,
                &snaps,
                &roles,
                (
                    want_logits,
                    want_style,
                    spec.metrics.contains(&MetricName::Fid),
                ),
                work,
                &mut warnings,
            )?
        }
    };
    let mut image_sets = image_sets.into_iter();
    let sets: Vec<LoadedSet> = registered
        .into_iter()
        .map(|r| r.or_else(|| image_sets.next()))
        .collect::<Option<_>>()
        .ok_or_else(|| fatal(anyhow!("a set is missing")))?;
    // Each set's own warnings (skipped files, registered statistics), in the sets' order, as
    // `gapmeter score` lists them.
    for set in &sets {
        warnings.extend(set.warnings.iter().cloned());
    }

    ctx.progress("metrics", 0, 1)?;
    let dim = sets[0].dim();
    let info = Some(ExtractorInfo::from_manifest(&manifest, dim, &opts));
    let value = match spec.kind {
        JobKind::Score => {
            let report =
                score::score_sets(&sets[0], &sets[1], info, &spec.metrics, &opts, warnings)
                    .map_err(|e| stopped_or(ctx, e))?;
            serde_json::to_value(report)
        }
        JobKind::Matrix => {
            let report = score::matrix_sets(&sets, info, &spec.metrics, &opts, warnings)
                .map_err(|e| stopped_or(ctx, e))?;
            serde_json::to_value(report)
        }
        _ => {
            return Err(fatal(anyhow!(
                "a {} job has no metrics to compute",
                spec.kind
            )))
        }
    }
    .map_err(fatal)?;
    ctx.progress("metrics", 1, 1)?;
    cache_result(ctx, scope, &key, &spec, &contents, &value);
    Ok(value)
}

/// Keeps a result for the next identical request; a failure costs only a recomputation later.
fn cache_result(
    ctx: &JobContext,
    scope: CacheScope,
    key: &str,
    spec: &JobSpec,
    contents: &[&str],
    value: &Value,
) {
    if let Err(e) = ctx.runtime.block_on(store::store_result(
        &ctx.pool,
        scope,
        key,
        &spec.datasets,
        contents,
        value,
    )) {
        tracing::warn!(error = %e, "could not cache the result");
    }
}

/// Every image's outputs (cached, or extracted now) as one set per snapshot, in the snapshots'
/// order; `(logits, style, fid)`: which outputs to keep, and whether to checkpoint each set's
/// statistics for later FID-only jobs.
#[allow(clippy::too_many_arguments)]
fn feature_sets(
    ctx: &JobContext,
    manifest: &Manifest,
    precision: Precision,
    snaps: &[Snapshot],
    roles: &[String],
    (want_logits, want_style, fid): (bool, bool, bool),
    work: &mut Work,
    warnings: &mut Vec<String>,
) -> Result<Vec<LoadedSet>, JobError> {
    let extractor_key = manifest.features_key(precision);
    let feature_tap = manifest.feature_output().to_string();
    let mut rows = gather(
        ctx,
        manifest,
        precision,
        snaps,
        want_logits,
        want_style,
        work,
        warnings,
    )?;
    // Each image's rows move into the set at its last occurrence (copies elsewhere), so
    // the rows and the matrices are not both held in full.
    let last_use = plan::last_uses(snaps);
    let mut sets = Vec::with_capacity(snaps.len());
    for (i, (snap, role)) in snaps.iter().zip(roles).enumerate() {
        let set = loaded_set(
            snap,
            role,
            &mut rows,
            |h, j| last_use.get(h) == Some(&(i, j)),
            want_logits,
            want_style,
        )?;
        if fid {
            remember_statistics(ctx, snap, &extractor_key, &feature_tap, &set);
        }
        sets.push(set);
    }
    Ok(sets)
}

/// An analysis job (`crate::reduce`): the feature-based ones on the datasets' cached (or newly
/// extracted and cached) features, the pixel-based ones on the same seeded image samples
/// `gapmeter measure` / `reduce` decodes from a folder, read from the blob store.
fn run_analysis(
    ctx: &JobContext,
    spec: &JobSpec,
    analysis: &Analysis,
    manifest: &Manifest,
    snaps: &[Snapshot],
    work: &mut Work,
) -> Result<Value, JobError> {
    if let Some(s) = snaps.iter().find(|s| s.kind == DatasetKind::Statistics) {
        return Err(fatal(anyhow!(
            "dataset {:?} holds only statistics: {} needs its images",
            s.name,
            analysis.name()
        )));
    }
    if snaps.len() != 2 {
        return Err(fatal(anyhow!("an analysis compares two datasets")));
    }
    let opts = spec.score_options(
        ctx.registry.clone(),
        Devices::List(ctx.models.devices().to_vec()),
        ctx.options.batch_size,
    );
    let mut warnings = Vec::new();
    score::extractor_warnings(manifest, &[], &mut warnings);
    let batch = ctx.options.batch_size.resolve(ctx.models.devices());
    let interrupt = ctx.control.interrupt();
    let report = if let Some(limits) = analysis.image_limits() {
        let engine = ctx.models.get(manifest, spec.precision).map_err(retry)?;
        work.model_loaded = true;
        let seed = analysis.seed();
        let mut sets = Vec::with_capacity(2);
        for (i, (snap, (role, limit))) in snaps
            .iter()
            .zip([("source", limits.source), ("target", limits.target)])
            .enumerate()
        {
            let idx = reduce::sample_indices(snap.images.len(), limit, seed.wrapping_add(i as u32));
            let mut items = Vec::with_capacity(idx.len());
            for (done, &j) in idx.iter().enumerate() {
                ctx.progress("reading", done, idx.len())?;
                let m = &snap.images[j];
                let bytes = ctx
                    .runtime
                    .block_on(ctx.blobs.get(&m.hash))
                    .map_err(|e| retry(e.context("reading images from the blob store")))?;
                items.push((m.path.clone(), bytes.to_vec()));
            }
            let prov = provenance(snap, Some(snap.images.len()), Vec::new());
            sets.push(ImageSet::decode(role, prov, items).map_err(fatal)?);
        }
        ctx.progress("analysing", 0, 1)?;
        let info = ExtractorInfo::from_manifest(manifest, engine.feature_dim(), &opts);
        reduce::run_on_images(
            analysis,
            &engine,
            [&sets[0], &sets[1]],
            batch,
            Some(info),
            warnings,
            Some(&interrupt),
        )
        .map_err(|e| stopped_or(ctx, e))?
    } else {
        let roles = ["source".to_string(), "target".to_string()];
        let sets = feature_sets(
            ctx,
            manifest,
            spec.precision,
            snaps,
            &roles,
            (false, false, false),
            work,
            &mut warnings,
        )?;
        let text = if analysis.needs_text_encoder() {
            Some(TextEncoder::load(manifest, tch::Device::Cpu).map_err(fatal)?)
        } else {
            None
        };
        ctx.progress("analysing", 0, 1)?;
        let info = ExtractorInfo::from_manifest(manifest, sets[0].dim(), &opts);
        for set in &sets {
            warnings.extend(set.warnings.iter().cloned());
        }
        reduce::run_on_features(
            analysis,
            &sets[0],
            &sets[1],
            text.as_ref(),
            Some(info),
            warnings,
            Some(&interrupt),
        )
        .map_err(|e| stopped_or(ctx, e))?
    };
    ctx.progress("analysing", 1, 1)?;
    serde_json::to_value(report).map_err(fatal)
}

/// A metric error, unless the metrics stopped because the job was told to (cancel, lease lost,
/// shutdown): then that reason.
fn stopped_or(ctx: &JobContext, e: anyhow::Error) -> JobError {
    match ctx.control.check() {
        Err(stop) => stop,
        Ok(()) => fatal(e),
    }
}

fn roles(spec: &JobSpec) -> Vec<String> {
    match spec.kind {
        JobKind::Score => vec!["source".into(), "target".into()],
        _ => (1..=spec.datasets.len())
            .map(|i| format!("set {i}"))
            .collect(),
    }
}

/// Each dataset's images as of now (later uploads are not part of this job).
fn snapshots(ctx: &JobContext, spec: &JobSpec) -> Result<Vec<Snapshot>, JobError> {
    ctx.progress("resolving", 0, spec.datasets.len())?;
    let mut out = Vec::with_capacity(spec.datasets.len());
    for &id in &spec.datasets {
        let snap = ctx
            .runtime
            .block_on(store::dataset_snapshot(&ctx.pool, ctx.team, id))
            .map_err(retry)?
            .ok_or_else(|| fatal(anyhow!("dataset {id} does not exist (it was deleted?)")))?;
        // The API refuses datasets that are not ready; this catches a dataset whose state
        // changed since (it was deleted and recreated, say).
        if snap.status != DatasetStatus::Ready {
            return Err(fatal(anyhow!(
                "dataset {:?} ({id}) is {}, not ready",
                snap.name,
                snap.status
            )));
        }
        if snap.images.is_empty() && snap.kind == DatasetKind::Images {
            return Err(fatal(anyhow!(
                "dataset {:?} ({id}) has no images",
                snap.name
            )));
        }
        out.push(snap);
    }
    Ok(out)
}

/// For each dataset of the spec, its registered statistics when it is a statistics dataset. The
/// API admits such a dataset only in FID-only jobs of an extractor it has statistics for; this
/// checks again, since the registration may have changed since.
fn registered_sets(
    ctx: &JobContext,
    spec: &JobSpec,
    snaps: &[Snapshot],
    roles: &[String],
) -> Result<Vec<Option<LoadedSet>>, JobError> {
    let mut out = Vec::with_capacity(snaps.len());
    for (snap, role) in snaps.iter().zip(roles) {
        if snap.kind != DatasetKind::Statistics {
            out.push(None);
            continue;
        }
        if spec.metrics.iter().any(|m| *m != MetricName::Fid) {
            return Err(fatal(anyhow!(
                "dataset {:?} holds only statistics: FID is the only metric it can answer",
                snap.name
            )));
        }
        let gaussian = ctx
            .runtime
            .block_on(store::registered_statistics(
                &ctx.pool,
                snap.id,
                &spec.extractor,
            ))
            .map_err(retry)?
            .ok_or_else(|| {
                fatal(anyhow!(
                    "dataset {:?} has no statistics for extractor {:?}",
                    snap.name,
                    spec.extractor
                ))
            })?;
        out.push(Some(LoadedSet {
            provenance: SetProvenance {
                path: format!("/v1/datasets/{}", snap.id),
                kind: "statistics".into(),
                content_hash: snap.content_hash.clone().unwrap_or_default(),
                count: None,
                skipped: Vec::new(),
            },
            data: SetData {
                gaussian: Some(gaussian),
                ..SetData::default()
            },
            labels: Vec::new(),
            warnings: vec![format!(
                "{role}: registered statistics (no sample count; FID only)"
            )],
        }));
    }
    Ok(out)
}

fn provenance(snap: &Snapshot, count: Option<usize>, skipped: Vec<Skipped>) -> SetProvenance {
    SetProvenance {
        path: format!("/v1/datasets/{}", snap.id),
        // What was scored, as for an image folder; `path` names the dataset.
        kind: "images".into(),
        content_hash: snap.content_hash.clone().unwrap_or_default(),
        count,
        skipped,
    }
}

/// FID from dataset statistics: cached for this content, or the dataset's checkpoint extended by
/// only the images added since (Chan's merge). Used when each set has more samples than
/// dimensions, where `gapmeter score` takes the same (statistics) route. `None`: go through every
/// image's features instead.
fn statistics_route(
    ctx: &JobContext,
    manifest: &Manifest,
    precision: Precision,
    snaps: &[Snapshot],
    roles: &[String],
    work: &mut Work,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<LoadedSet>>, JobError> {
    let key = manifest.features_key(precision);
    let tap = manifest.feature_output();
    let scope = ctx.scope();
    let mut plans = Vec::with_capacity(snaps.len());
    for snap in snaps {
        let hash = snap.content_hash.as_deref().unwrap_or("");
        let (cached, checkpoint) = ctx
            .runtime
            .block_on(async {
                let cached = store::cached_stats(&ctx.pool, scope, &key, tap, hash).await?;
                let checkpoint =
                    store::stats_checkpoint(&ctx.pool, scope, snap.id, &key, tap).await?;
                anyhow::Ok((cached, checkpoint))
            })
            .map_err(retry)?;
        match plan::plan_statistics(snap, cached, checkpoint) {
            Some(p) => plans.push(p),
            None => return Ok(None),
        }
    }
    let partials: Vec<Snapshot> = plans
        .iter()
        .zip(snaps)
        .filter_map(|(p, snap)| match p {
            StatsPlan::Extend(_, members) if !members.is_empty() => Some(Snapshot {
                images: members.clone(),
                ..snap.clone()
            }),
            _ => None,
        })
        .collect();
    let gathered = if partials.is_empty() {
        (HashMap::new(), HashMap::new())
    } else {
        gather(
            ctx, manifest, precision, &partials, false, false, work, warnings,
        )?
    };
    let (rows, skipped_reasons) = &gathered;
    let mut sets = Vec::with_capacity(snaps.len());
    for ((snap, role), plan) in snaps.iter().zip(roles).zip(plans) {
        let (stats, skipped) = match plan {
            StatsPlan::Cached(stats) => {
                work.statistics_cache_hits += 1;
                (stats, Vec::new())
            }
            StatsPlan::Extend(base, members) => {
                let mut data = Vec::new();
                let mut skipped = Vec::new();
                for m in &members {
                    match rows.get(&m.hash) {
                        Some(r) => data.extend_from_slice(&r.feature),
                        None => skipped.push(Skipped {
                            path: m.path.clone(),
                            reason: skipped_reasons
                                .get(&m.hash)
                                .cloned()
                                .unwrap_or_else(|| "no features (not extracted)".into()),
                        }),
                    }
                }
                let added = members.len() - skipped.len();
                let new = Features::from_shape_vec((added, base.dim()), data).map_err(fatal)?;
                let stats = base
                    .merge(&FeatureStats::from_features(new.view()).map_err(fatal)?)
                    .map_err(fatal)?;
                work.statistics_merged += 1;
                if skipped.is_empty() {
                    remember(ctx, snap, &key, tap, &stats);
                }
                (stats, skipped)
            }
        };
        if stats.n() as usize <= stats.dim() {
            return Ok(None);
        }
        let n = stats.n() as usize;
        let warnings = skipped
            .iter()
            .map(|s| format!("{role}: skipped {}: {}", s.path, s.reason))
            .collect();
        sets.push(LoadedSet {
            provenance: provenance(snap, Some(n), skipped),
            data: SetData {
                gaussian: Some(stats.gaussian()),
                ..SetData::default()
            },
            labels: Vec::new(),
            warnings,
        });
    }
    Ok(Some(sets))
}

/// Stores a dataset's statistics by content and as its checkpoint (best effort: a failure only
/// costs a later job the work again).
fn remember(ctx: &JobContext, snap: &Snapshot, key: &str, tap: &str, stats: &FeatureStats) {
    let Some(hash) = &snap.content_hash else {
        return;
    };
    let scope = ctx.scope();
    let stored = ctx.runtime.block_on(async {
        store::store_stats(&ctx.pool, scope, key, tap, hash, stats).await?;
        store::store_checkpoint(
            &ctx.pool,
            scope,
            snap.id,
            key,
            tap,
            &snap.sorted_hashes(),
            stats,
        )
        .await
    });
    if let Err(e) = stored {
        tracing::warn!(error = %e, "could not cache dataset statistics");
    }
}

/// Stores the statistics of a fully read dataset for later FID-only jobs.
fn remember_statistics(
    ctx: &JobContext,
    snap: &Snapshot,
    extractor_key: &str,
    tap: &str,
    set: &LoadedSet,
) {
    let Some(features) = &set.data.features else {
        return;
    };
    // Only complete datasets: statistics of a set with skipped images would not be its content's.
    if !set.provenance.skipped.is_empty() {
        return;
    }
    match FeatureStats::from_features(features.view()) {
        Ok(stats) => remember(ctx, snap, extractor_key, tap, &stats),
        Err(e) => tracing::warn!(error = %e, "could not compute dataset statistics"),
    }
}

type Gathered = (HashMap<[u8; 32], Rows>, HashMap<[u8; 32], String>);

/// Every image's outputs: from the feature cache, the rest extracted (once, even when datasets
/// share images) and cached batch by batch, so a rerun after a crash extracts only what is left.
#[allow(clippy::too_many_arguments)]
fn gather(
    ctx: &JobContext,
    manifest: &Manifest,
    precision: Precision,
    snaps: &[Snapshot],
    want_logits: bool,
    want_style: bool,
    work: &mut Work,
    warnings: &mut Vec<String>,
) -> Result<Gathered, JobError> {
    let all = plan::distinct_images(snaps);
    let key = manifest.features_key(precision);
    let scope = ctx.scope();
    let mut features: HashMap<[u8; 32], Vec<f32>> = ctx
        .runtime
        .block_on(store::cached_rows(
            &ctx.pool,
            scope,
            &key,
            manifest.feature_output(),
            Dtype::F32,
            &all,
        ))
        .map_err(retry)?;
    let lookup = |tap: &str, dtype: Dtype| {
        ctx.runtime
            .block_on(store::cached_rows::<f64>(
                &ctx.pool, scope, &key, tap, dtype, &all,
            ))
            .map_err(retry)
    };
    let mut logits = if want_logits {
        lookup(LOGITS_OUTPUT, Dtype::F32)?
    } else {
        HashMap::new()
    };
    let mut styles = if want_style {
        lookup(STYLE_TAP, Dtype::F64)?
    } else {
        HashMap::new()
    };
    let missing = plan::to_extract(&all, |h| {
        features.contains_key(h)
            && (!want_logits || logits.contains_key(h))
            && (!want_style || styles.contains_key(h))
    });
    work.feature_cache_hits = (all.len() - missing.len()) as u64;
    let (mut extracted, skipped) = if missing.is_empty() {
        (HashMap::new(), HashMap::new())
    } else {
        extract(
            ctx,
            manifest,
            precision,
            &missing,
            want_logits,
            want_style,
            work,
            warnings,
        )?
    };
    let mut out = HashMap::with_capacity(all.len());
    for h in all {
        if let Some(rows) = extracted.remove(&h) {
            out.insert(h, rows);
            continue;
        }
        if let Some(feature) = features.remove(&h) {
            out.insert(
                h,
                Rows {
                    feature,
                    logits: logits.remove(&h),
                    style: styles.remove(&h),
                },
            );
        }
    }
    Ok((out, skipped))
}

/// Runs the model over `missing` through the extraction engine: blobs fetched, decoded and
/// resized on the rayon pool, batches spread over the worker's replicas, and each batch's rows
/// cached on this thread while the replicas run the next ones. Cancellation and lease loss are
/// checked before each fetch and between batches.
#[allow(clippy::too_many_arguments)]
fn extract(
    ctx: &JobContext,
    manifest: &Manifest,
    precision: Precision,
    missing: &[[u8; 32]],
    want_logits: bool,
    want_style: bool,
    work: &mut Work,
    warnings: &mut Vec<String>,
) -> Result<Gathered, JobError> {
    let total = missing.len();
    ctx.progress("extracting", 0, total)?;
    let engine = ctx.models.get(manifest, precision).map_err(retry)?;
    work.model_loaded = true;
    let (h, w) = manifest.input_size.height_width();
    let resize = manifest.resize;
    let run = RunOptions::new(ctx.options.batch_size.resolve(ctx.models.devices()));
    let key = manifest.features_key(precision);
    let feature_tap = manifest.feature_output().to_string();
    let mut rows: HashMap<[u8; 32], Rows> = HashMap::with_capacity(total);
    let mut skipped: HashMap<[u8; 32], String> = HashMap::new();
    // Why the consumer stopped the run, kept typed (cancel, lease lost...) for the job's outcome.
    let mut stopped: Option<JobError> = None;
    let mut done = 0;

    let prepare = |i: usize| {
        if ctx.control.check().is_err() {
            return Err(PrepareError::Fatal(anyhow!("the job was told to stop")));
        }
        let bytes = ctx
            .runtime
            .block_on(ctx.blobs.get(&missing[i]))
            .map_err(|e| PrepareError::Fatal(e.context("reading images from the blob store")))?;
        load_one(&bytes, h, w, resize).map_err(PrepareError::Rejected)
    };
    let consume = |chunk: Chunk| -> anyhow::Result<()> {
        let mut step = || -> Result<(), JobError> {
            ctx.control.check()?;
            done += chunk.range.len();
            for (i, reason) in &chunk.rejected {
                skipped.insert(missing[*i], reason.clone());
            }
            if let Some(out) = &chunk.outputs {
                let hashes: Vec<[u8; 32]> = chunk.kept.iter().map(|&i| missing[i]).collect();
                let batch_rows =
                    batch_rows(out, hashes.len(), &feature_tap, want_logits, want_style)?;
                store_batch(ctx, &key, &feature_tap, &hashes, &batch_rows)?;
                work.images_extracted += hashes.len() as u64;
                if let Some(device) = chunk.device {
                    ctx.metrics.extracted(&device.to_string(), hashes.len());
                }
                rows.extend(hashes.into_iter().zip(batch_rows));
            }
            ctx.progress("extracting", done, total)
        };
        step().map_err(|e| {
            let message = anyhow!("{e}");
            stopped = Some(e);
            message
        })
    };
    let result = engine.run(total, &run, prepare, consume);
    if let Some(e) = stopped {
        return Err(e);
    }
    ctx.control.check()?;
    let report = result.map_err(retry)?;
    if let Some(sample) = &report.precision_sample {
        warnings.push(score::precision_warning(sample));
    }
    work.images_skipped = skipped.len() as u64;
    Ok((rows, skipped))
}

/// One batch's outputs as per-image rows.
fn batch_rows(
    out: &ExtractedBatch,
    n: usize,
    feature_tap: &str,
    want_logits: bool,
    want_style: bool,
) -> Result<Vec<Rows>, JobError> {
    let features = out.rows_f32(feature_tap).map_err(retry)?;
    let logits = if want_logits {
        Some(out.rows(LOGITS_OUTPUT).map_err(retry)?)
    } else {
        None
    };
    let style = if want_style {
        let maps = out
            .get(STYLE_OUTPUT)
            .ok_or_else(|| fatal(anyhow!("the model returned no {STYLE_OUTPUT:?} output")))?;
        let mut set = StyleSet::new(0);
        set.push_maps(maps).map_err(fatal)?;
        Some(set)
    } else {
        None
    };
    Ok((0..n)
        .map(|i| Rows {
            feature: features.row(i).to_vec(),
            logits: logits.as_ref().map(|l| l.row(i).to_vec()),
            style: style.as_ref().map(|s| {
                let cc = s.channels * s.channels;
                s.covariances[i * cc..(i + 1) * cc].to_vec()
            }),
        })
        .collect())
}

fn store_batch(
    ctx: &JobContext,
    key: &str,
    feature_tap: &str,
    hashes: &[[u8; 32]],
    rows: &[Rows],
) -> Result<(), JobError> {
    let scope = ctx.scope();
    let put = |tap: &str, dtype: Dtype, values: Vec<Option<&[f64]>>| {
        let batch: Vec<([u8; 32], &[f64])> = hashes
            .iter()
            .zip(values)
            .filter_map(|(h, v)| v.map(|v| (*h, v)))
            .collect();
        ctx.runtime
            .block_on(store::store_rows(&ctx.pool, scope, key, tap, dtype, &batch))
            .map_err(retry)
    };
    let features: Vec<([u8; 32], &[f32])> = hashes
        .iter()
        .zip(rows)
        .map(|(h, r)| (*h, r.feature.as_slice()))
        .collect();
    ctx.runtime
        .block_on(store::store_rows(
            &ctx.pool,
            scope,
            key,
            feature_tap,
            Dtype::F32,
            &features,
        ))
        .map_err(retry)?;
    put(
        LOGITS_OUTPUT,
        Dtype::F32,
        rows.iter().map(|r| r.logits.as_deref()).collect(),
    )?;
    put(
        STYLE_TAP,
        Dtype::F64,
        rows.iter().map(|r| r.style.as_deref()).collect(),
    )?;
    Ok(())
}

/// A dataset's rows in snapshot order, as `gapmeter score` would have read its folder. Rows for
/// which `last(hash, position)` holds are taken out of `gathered` (nothing later needs them).
fn loaded_set(
    snap: &Snapshot,
    role: &str,
    (rows, skipped_reasons): &mut Gathered,
    last: impl Fn(&[u8; 32], usize) -> bool,
    want_logits: bool,
    want_style: bool,
) -> Result<LoadedSet, JobError> {
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    let mut warnings = Vec::new();
    let mut feature_data = Vec::new();
    let mut logit_data = Vec::new();
    let mut style = want_style.then(|| StyleSet::new(0));
    let (mut dim, mut logit_dim) = (0, 0);
    for (position, member) in snap.images.iter().enumerate() {
        let (hash, name) = (&member.hash, &member.path);
        let taken;
        let r = if last(hash, position) {
            taken = rows.remove(hash);
            taken.as_ref()
        } else {
            rows.get(hash)
        };
        let Some(r) = r else {
            let reason = skipped_reasons
                .get(hash)
                .cloned()
                .unwrap_or_else(|| "no features (not extracted)".into());
            warnings.push(format!("{role}: skipped {name}: {reason}"));
            skipped.push(Skipped {
                path: name.clone(),
                reason,
            });
            continue;
        };
        dim = r.feature.len();
        if feature_data.is_empty() {
            feature_data.reserve_exact(snap.images.len() * dim);
        }
        feature_data.extend_from_slice(&r.feature);
        if want_logits {
            let l = r
                .logits
                .as_ref()
                .ok_or_else(|| retry(anyhow!("logits missing for {name}")))?;
            logit_dim = l.len();
            logit_data.extend_from_slice(l);
        }
        if let Some(set) = style.as_mut() {
            let c = r
                .style
                .as_ref()
                .ok_or_else(|| retry(anyhow!("style covariance missing for {name}")))?;
            set.channels = (c.len() as f64).sqrt().round() as usize;
            set.covariances.extend_from_slice(c);
        }
        labels.push(name.clone());
    }
    if labels.is_empty() {
        return Err(fatal(anyhow!(
            "none of the {} images of dataset {:?} ({}) could be decoded",
            snap.images.len(),
            snap.name,
            snap.id
        )));
    }
    let n = labels.len();
    let features = Features::from_shape_vec((n, dim), feature_data).map_err(fatal)?;
    let logits = if want_logits {
        Some(Features::from_shape_vec((n, logit_dim), logit_data).map_err(fatal)?)
    } else {
        None
    };
    Ok(LoadedSet {
        provenance: provenance(snap, Some(n), skipped),
        data: SetData {
            features: Some(features),
            gaussian: None,
            logits,
            style,
        },
        labels,
        warnings,
    })
}
