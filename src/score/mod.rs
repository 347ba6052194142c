//! Scoring: resolve inputs (folders, `.npy` features, `.npz` statistics) to features or statistics,
//! compute the chosen metrics with optional bootstrap intervals, N → ∞ extrapolation and
//! per-image gaps, and build the report with its provenance (DESIGN §1). `gapmeter score` and
//! `gapmeter matrix` call this; the worker will too.

mod compute;
mod extract;
mod input;
mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::features::{resolve_extractor, DeviceSpec, Extractor, Manifest, Naming, Registry};
use crate::metrics::{self, BootstrapParams};

pub use compute::{compute, MetricName, MetricParams, MetricValue, Values};
pub use extract::load_one;
pub use extract::{
    extract_folder, ExtractOptions, ExtractedSet, Skipped, LOGITS_OUTPUT, STYLE_OUTPUT,
};
pub use input::{read_features, read_statistics, InputKind, LoadedSet, SetData, SetProvenance};
pub use report::{ExtractorInfo, ImageScore, MatrixReport, PerImage, Report, Software};

/// Everything that decides a score.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// A manifest path or registered id; `None` picks the default FID Inception.
    pub extractor: Option<String>,
    /// `None`: the defaults (FID, KID), dropping those the inputs cannot support.
    pub metrics: Option<Vec<MetricName>>,
    pub params: MetricParams,
    pub batch_size: usize,
    pub device: DeviceSpec,
    pub strict: bool,
    pub registry: Registry,
    pub progress: bool,
    /// Percentile bootstrap intervals for every metric.
    pub bootstrap: Option<BootstrapParams>,
    /// FID∞ / KID∞ with this many sample sizes (`None`: off).
    pub infinity_points: Option<usize>,
    /// List the K most out-of-domain source images.
    pub top: Option<usize>,
    /// Raised to stop between metrics and between resamples (the service's cancel); `None` in
    /// the CLI.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl ScoreOptions {
    fn check_interrupt(&self) -> anyhow::Result<()> {
        if self
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// Below this many samples FID is strongly biased (Chong & Forsyth 2020; the 2048 of the FID paper).
const FID_RELIABLE_N: usize = 2048;

/// Scores `source` against `target`.
#[tracing::instrument(skip(opts))]
pub fn score(source: &str, target: &str, opts: &ScoreOptions) -> anyhow::Result<Report> {
    let mut warnings = Vec::new();
    let chosen = choose_metrics(
        opts.metrics.as_deref(),
        input::is_statistics(source) || input::is_statistics(target),
        input::is_image_folder(source) && input::is_image_folder(target),
        &mut warnings,
    )?;
    let (extractor, mut sets) = load_sets(&[source, target], &chosen, opts, &mut warnings)?;
    let t = sets.pop().context("target")?;
    let s = sets.pop().context("source")?;
    let info = extractor.as_ref().map(|x| ExtractorInfo::new(x, opts));
    score_sets(&s, &t, info, &chosen, opts, warnings)
}

/// Scores two loaded sets with the `chosen` metrics (see [`image_metrics`]); `warnings` so far
/// are carried into the report. The service's worker calls this with sets built from cached
/// features, so its results have the shape and values of `gapmeter score`.
pub fn score_sets(
    s: &LoadedSet,
    t: &LoadedSet,
    extractor: Option<ExtractorInfo>,
    chosen: &[MetricName],
    opts: &ScoreOptions,
    mut warnings: Vec<String>,
) -> anyhow::Result<Report> {
    let p = &opts.params;
    let mut values: BTreeMap<String, MetricValue> = BTreeMap::new();
    for &m in chosen {
        opts.check_interrupt()?;
        for (name, v) in compute(m, &s.data, &t.data, p, &mut warnings)? {
            values.insert(name, v);
        }
    }
    small_sample_warnings(chosen, s, t, opts, &mut warnings);

    if let Some(bp) = &opts.bootstrap {
        add_bootstrap(chosen, s, t, opts, bp, &mut values)?;
    }
    if let Some(points) = opts.infinity_points {
        add_infinity(chosen, s, t, opts, points, &mut values, &mut warnings)?;
    }
    let per_image = match opts.top {
        Some(k) => Some(per_image(s, t, p, k)?),
        None => None,
    };

    let mut report = Report::new(s, t, extractor);
    report.metrics = values;
    report.parameters = used_parameters(chosen, p);
    report.bootstrap = opts.bootstrap.clone();
    report.per_image = per_image;
    warnings.dedup();
    report.warnings = warnings;
    Ok(report)
}

/// The pairwise gap table between several sets, each extracted once.
#[tracing::instrument(skip(opts))]
pub fn matrix(inputs: &[String], opts: &ScoreOptions) -> anyhow::Result<MatrixReport> {
    if inputs.len() < 2 {
        bail!("a gap matrix needs at least two sets");
    }
    let mut warnings = Vec::new();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let chosen = choose_metrics(
        opts.metrics.as_deref(),
        refs.iter().any(|a| input::is_statistics(a)),
        refs.iter().all(|a| input::is_image_folder(a)),
        &mut warnings,
    )?;
    check_symmetric(&chosen)?;
    let (extractor, sets) = load_sets(&refs, &chosen, opts, &mut warnings)?;
    let info = extractor.as_ref().map(|x| ExtractorInfo::new(x, opts));
    matrix_sets(&sets, info, &chosen, opts, warnings)
}

/// Fails unless every metric is symmetric (fit for a gap matrix).
pub fn check_symmetric(chosen: &[MetricName]) -> anyhow::Result<()> {
    if let Some(m) = chosen.iter().find(|m| !m.is_symmetric()) {
        bail!(
            "{} is not symmetric and has no place in a gap matrix; use `gapmeter score` for it",
            m.as_str()
        );
    }
    Ok(())
}

/// The gap table between loaded sets (see [`score_sets`]).
pub fn matrix_sets(
    sets: &[LoadedSet],
    extractor: Option<ExtractorInfo>,
    chosen: &[MetricName],
    opts: &ScoreOptions,
    mut warnings: Vec<String>,
) -> anyhow::Result<MatrixReport> {
    let n = sets.len();
    if n < 2 {
        bail!("a gap matrix needs at least two sets");
    }
    let mut tables: BTreeMap<String, Vec<Vec<f64>>> = BTreeMap::new();
    for i in 0..n {
        for j in (i + 1)..n {
            for &m in chosen {
                opts.check_interrupt()?;
                for (name, v) in
                    compute(m, &sets[i].data, &sets[j].data, &opts.params, &mut warnings)?
                {
                    let table = tables.entry(name).or_insert_with(|| vec![vec![0.0; n]; n]);
                    table[i][j] = v.primary();
                    table[j][i] = v.primary();
                }
            }
        }
    }
    warnings.sort();
    warnings.dedup();
    Ok(MatrixReport {
        sets: sets.iter().map(|s| s.provenance.clone()).collect(),
        extractor,
        metrics: tables,
        parameters: used_parameters(chosen, &opts.params),
        warnings,
        software: Software::current(),
    })
}

/// The metrics to compute when every input is a set of images: `requested`, or the defaults.
pub fn image_metrics(requested: Option<&[MetricName]>) -> anyhow::Result<Vec<MetricName>> {
    choose_metrics(requested, false, true, &mut Vec::new())
}

/// Warnings a result carries because of its extractor (untrained weights, CMMD without CLIP).
pub fn extractor_warnings(manifest: &Manifest, chosen: &[MetricName], warnings: &mut Vec<String>) {
    if !manifest.trained {
        warnings.push(format!(
            "extractor {:?} has untrained weights: its scores are for testing, not comparable with published numbers",
            manifest.id
        ));
    }
    if chosen.contains(&MetricName::Cmmd) && !manifest.id.contains("clip") {
        warnings.push(format!(
            "CMMD is defined on CLIP embeddings; extractor {:?} does not look like CLIP",
            manifest.id
        ));
    }
}

fn choose_metrics(
    requested: Option<&[MetricName]>,
    stats_only: bool,
    all_folders: bool,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<MetricName>> {
    let mut out: Vec<MetricName> = Vec::new();
    match requested {
        Some(list) => {
            for &m in list {
                if m.needs_features() && stats_only {
                    bail!(
                        "{} needs per-image features, but an input is an .npz of statistics (FID only)",
                        m.as_str().to_uppercase()
                    );
                }
                if m.needs_images() && !all_folders {
                    bail!(
                        "{} needs the extractor's extra outputs, so every input must be an image folder",
                        m.as_str().to_uppercase()
                    );
                }
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        None => {
            for &m in MetricName::DEFAULT {
                if m.needs_features() && stats_only {
                    warnings.push(format!(
                        "{} skipped: an input holds only statistics",
                        m.as_str().to_uppercase()
                    ));
                } else {
                    out.push(m);
                }
            }
        }
    }
    if out.is_empty() {
        bail!("no metric to compute");
    }
    Ok(out)
}

fn load_sets(
    inputs: &[&str],
    chosen: &[MetricName],
    opts: &ScoreOptions,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(Option<Extractor>, Vec<LoadedSet>)> {
    for a in inputs {
        InputKind::detect(a)?;
    }
    let extractor = if inputs.iter().any(|a| input::is_image_folder(a)) {
        Some(load_extractor(opts)?)
    } else {
        None
    };
    if let Some(x) = &extractor {
        extractor_warnings(x.manifest(), chosen, warnings);
    }
    let extract = ExtractOptions {
        batch_size: opts.batch_size,
        strict: opts.strict,
        progress: opts.progress,
        logits: chosen.contains(&MetricName::Is),
        style: chosen.contains(&MetricName::Style),
    };
    let mut sets = Vec::with_capacity(inputs.len());
    for (i, a) in inputs.iter().enumerate() {
        let role = match (inputs.len(), i) {
            (2, 0) => "source".to_string(),
            (2, _) => "target".to_string(),
            (_, i) => format!("set {}", i + 1),
        };
        let set = LoadedSet::load(&role, a, extractor.as_ref(), &extract)?;
        warnings.extend(set.warnings.iter().cloned());
        sets.push(set);
    }
    let dim = sets[0].dim();
    if let Some(other) = sets.iter().find(|s| s.dim() != dim) {
        bail!(
            "{} has {}-d features but {} has {dim}-d: all sets must come from the same extractor",
            other.provenance.path,
            other.dim(),
            sets[0].provenance.path
        );
    }
    Ok((extractor, sets))
}

fn load_extractor(opts: &ScoreOptions) -> anyhow::Result<Extractor> {
    let manifest = resolve_extractor(opts.extractor.as_deref(), &opts.registry, Naming::IdOrPath)?;
    Extractor::load(manifest, opts.device)
}

fn small_sample_warnings(
    chosen: &[MetricName],
    s: &LoadedSet,
    t: &LoadedSet,
    opts: &ScoreOptions,
    warnings: &mut Vec<String>,
) {
    let n = match (s.data.count(), t.data.count()) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return,
    };
    if chosen.contains(&MetricName::Fid) && n < FID_RELIABLE_N {
        let hint = if opts.bootstrap.is_none() || opts.infinity_points.is_none() {
            "; --bootstrap gives an interval, --infinity extrapolates to N → ∞, and KID is unbiased"
        } else {
            ""
        };
        warnings.push(format!(
            "FID is strongly biased upwards below ~{FID_RELIABLE_N} samples per set (smallest set: {n}); \
             compare FID values only at equal sample sizes{hint}"
        ));
    }
}

fn add_bootstrap(
    chosen: &[MetricName],
    s: &LoadedSet,
    t: &LoadedSet,
    opts: &ScoreOptions,
    bp: &BootstrapParams,
    values: &mut BTreeMap<String, MetricValue>,
) -> anyhow::Result<()> {
    let p = &opts.params;
    let (Some(ns), Some(nt)) = (s.data.count(), t.data.count()) else {
        bail!("--bootstrap needs per-sample features on both sides (.npz statistics cannot be resampled)");
    };
    let mut names: Vec<String> = Vec::new();
    let intervals = metrics::bootstrap(ns, nt, bp, |si, ti| -> anyhow::Result<Vec<f64>> {
        opts.check_interrupt()?;
        let (a, b) = (s.data.select(si)?, t.data.select(ti)?);
        let mut ignored = Vec::new();
        let mut out = Vec::new();
        names.clear();
        for &m in chosen {
            for (name, v) in compute(m, &a, &b, p, &mut ignored)? {
                names.push(name);
                out.push(v.primary());
            }
        }
        Ok(out)
    })
    .context("bootstrap resample")?;
    for (name, ci) in names.into_iter().zip(intervals) {
        if let Some(v) = values.get_mut(&name) {
            v.ci = Some(ci);
        }
    }
    Ok(())
}

fn add_infinity(
    chosen: &[MetricName],
    s: &LoadedSet,
    t: &LoadedSet,
    opts: &ScoreOptions,
    points: usize,
    values: &mut BTreeMap<String, MetricValue>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    let p = &opts.params;
    let Some(ns) = s.data.count() else {
        bail!("--infinity needs per-sample source features (an .npz cannot be subsampled)");
    };
    let sizes = metrics::extrapolation_sizes(ns, points, 2);
    if sizes.len() < 2 {
        bail!("--infinity needs at least 3 source samples");
    }
    for &m in chosen
        .iter()
        .filter(|m| matches!(m, MetricName::Fid | MetricName::Kid))
    {
        let fit = metrics::extrapolate(ns, &sizes, p.kid.seed, |idx| -> anyhow::Result<f64> {
            opts.check_interrupt()?;
            let sub = s.data.select(idx)?;
            let mut ignored = Vec::new();
            Ok(compute(m, &sub, &t.data, p, &mut ignored)?[0].1.primary())
        })
        .context("N → ∞ extrapolation")?;
        if fit.r2 < 0.9 {
            warnings.push(format!(
                "{}∞ fit against 1/N is poor (R² = {:.2}): the extrapolated value is unreliable at these sample sizes",
                m.as_str().to_uppercase(),
                fit.r2
            ));
        }
        let mut v = MetricValue::scalar(fit.value);
        v.fit = Some(fit);
        values.insert(format!("{}_infinity", m.as_str()), v);
    }
    Ok(())
}

fn per_image(
    s: &LoadedSet,
    t: &LoadedSet,
    p: &MetricParams,
    top: usize,
) -> anyhow::Result<PerImage> {
    let (Some(a), Some(b)) = (&s.data.features, &t.data.features) else {
        bail!("--top needs per-image features on both sides");
    };
    let sigma = compute::witness_bandwidth(&s.data, &t.data, p)?;
    let k = p.prdc.k_pr;
    let gaps = metrics::per_image_gap(a.view(), b.view(), sigma, k).context("per-image gap")?;
    let style = match (&s.data.style, &t.data.style) {
        (Some(x), Some(y)) => Some(metrics::per_image_style_distance(x, y)?),
        _ => None,
    };
    let mut images: Vec<ImageScore> = gaps
        .iter()
        .map(|g| ImageScore {
            path: s
                .labels
                .get(g.index)
                .cloned()
                .unwrap_or_else(|| format!("row {}", g.index)),
            index: g.index,
            witness: g.witness,
            knn_distance: g.knn_distance,
            style_distance: style.as_ref().map(|v| v[g.index]),
        })
        .collect();
    images.sort_by(|x, y| x.witness.total_cmp(&y.witness));
    images.truncate(top);
    Ok(PerImage {
        ranked_by: "witness (ascending: most out of domain first)".into(),
        sigma,
        k,
        images,
    })
}

fn used_parameters(chosen: &[MetricName], p: &MetricParams) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: serde_json::Result<serde_json::Value>| {
        if let Ok(v) = v {
            out.insert(k.to_string(), v);
        }
    };
    for m in chosen {
        match m {
            MetricName::Kid => put("kid", serde_json::to_value(&p.kid)),
            MetricName::Is => put("is", serde_json::to_value(&p.is)),
            MetricName::Mmd => put("mmd", serde_json::to_value(&p.mmd)),
            MetricName::Prdc => put("prdc", serde_json::to_value(&p.prdc)),
            MetricName::Cmmd => put(
                "cmmd",
                Ok(serde_json::json!({"sigma": 10.0, "scale": 1000.0, "estimator": "biased"})),
            ),
            MetricName::Fid | MetricName::Style => {}
        }
    }
    out
}
