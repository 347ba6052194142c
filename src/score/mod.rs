//! Scoring: resolve inputs (folders, `.npy` features, `.npz` statistics) to features or statistics,
//! compute the chosen metrics with optional intervals, N → ∞ extrapolation and per-image gaps, and
//! build the report with its provenance (every input, extractor and parameter that decided the
//! numbers). `gapmeter score`, `gapmeter matrix` and the service's worker call this.

mod compute;
mod extract;
mod input;
mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::features::{
    resolve_extractor, BatchSize, DeviceSpec, Devices, Engine, Manifest, Naming, Precision,
    Registry,
};
use crate::metrics::{self, BootstrapParams, Interval, Target};

pub use compute::{compute, MetricName, MetricParams, MetricValue, Values};
pub use extract::load_one;
pub use extract::{
    extract_folder, precision_warning, ExtractOptions, ExtractedSet, Skipped, LOGITS_OUTPUT,
    STYLE_OUTPUT,
};
pub use input::{
    read_features, read_statistics, read_statistics_from, statistics_npz, write_statistics,
    InputKind, LoadedSet, SetData, SetProvenance,
};
pub use report::{ExtractorInfo, ImageScore, MatrixReport, Overlap, PerImage, Report, Software};

/// Everything that decides a score.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// A manifest path or registered id; `None` picks the default FID Inception.
    pub extractor: Option<String>,
    /// `None`: the defaults (FID, KID), dropping those the inputs cannot support.
    pub metrics: Option<Vec<MetricName>>,
    pub params: MetricParams,
    /// Images per forward pass: `auto` resolves per device kind.
    pub batch_size: BatchSize,
    /// One model replica per device.
    pub devices: Devices,
    /// The models' floating-point type: float32 (the default, as the references) or, opt-in,
    /// float16 / bfloat16 with their measured deviation in the warnings.
    pub precision: Precision,
    /// Where the metrics compute (float64 either way); `None`: the first GPU among `devices`,
    /// else the CPU.
    pub metrics_device: Option<DeviceSpec>,
    pub strict: bool,
    pub registry: Registry,
    pub progress: bool,
    /// Intervals (level, seed, resamples): KID and unbiased MMD from a bootstrap that never
    /// pairs a sample with its own copy; FID∞ (with `infinity_points`) from a jackknife of its
    /// fit. Other metrics get none (docs/metrics.md, "Intervals").
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
    /// Runs `f` with the metrics on [`Self::metrics_device`], or the first GPU among the replica
    /// devices, else the CPU (checked to exist first).
    fn on_metrics_device<R>(&self, f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<R> {
        let spec = match (self.metrics_device, &self.devices) {
            (Some(d), _) => d,
            (None, Devices::List(list)) => list
                .iter()
                .copied()
                .find(|d| matches!(d, DeviceSpec::Cuda(_)))
                .unwrap_or(DeviceSpec::Cpu),
            (None, Devices::All) => Devices::All
                .resolve()?
                .first()
                .copied()
                .unwrap_or(DeviceSpec::Cpu),
        };
        let device = spec.to_device().context("the metrics device")?;
        metrics::on_device(device, f)
    }

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
    warnings: Vec<String>,
) -> anyhow::Result<Report> {
    opts.on_metrics_device(|| score_sets_here(s, t, extractor, chosen, opts, warnings))
}

/// [`score_sets`] on the current metrics device.
fn score_sets_here(
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
        add_bootstrap(chosen, s, t, opts, bp, &mut values, &mut warnings)?;
    }
    if let Some(points) = opts.infinity_points {
        add_infinity(chosen, s, t, opts, points, &mut values, &mut warnings)?;
    }
    if let Some(bp) = &opts.bootstrap {
        interval_warnings(&values, bp.level, &mut warnings);
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
    warnings: Vec<String>,
) -> anyhow::Result<MatrixReport> {
    opts.on_metrics_device(|| matrix_sets_here(sets, extractor, chosen, opts, warnings))
}

/// [`matrix_sets`] on the current metrics device.
fn matrix_sets_here(
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
    let mut intervals: BTreeMap<String, Vec<Vec<Option<Interval>>>> = BTreeMap::new();
    for i in 0..n {
        for j in (i + 1)..n {
            let mut values = BTreeMap::new();
            for &m in chosen {
                opts.check_interrupt()?;
                for (name, v) in
                    compute(m, &sets[i].data, &sets[j].data, &opts.params, &mut warnings)?
                {
                    let table = tables
                        .entry(name.clone())
                        .or_insert_with(|| vec![vec![0.0; n]; n]);
                    table[i][j] = v.primary();
                    table[j][i] = v.primary();
                    values.insert(name, v);
                }
            }
            if let Some(bp) = &opts.bootstrap {
                let mut ignored = Vec::new();
                add_bootstrap(
                    chosen,
                    &sets[i],
                    &sets[j],
                    opts,
                    bp,
                    &mut values,
                    &mut ignored,
                )?;
                for (name, v) in values {
                    if let Some(ci) = v.ci {
                        let table = intervals
                            .entry(name)
                            .or_insert_with(|| vec![vec![None; n]; n]);
                        table[i][j] = Some(ci.clone());
                        table[j][i] = Some(ci);
                    }
                }
            }
        }
    }
    if opts.bootstrap.is_some() {
        let without: Vec<&str> = chosen
            .iter()
            .filter(|m| !matches!(m, MetricName::Kid | MetricName::Mmd))
            .map(|m| m.as_str())
            .collect();
        if !without.is_empty() {
            warnings.push(format!(
                "no interval in a gap matrix for {}: only KID and unbiased MMD have one here (docs/metrics.md, \"Intervals\")",
                without.join(", ")
            ));
        }
    }
    let overlapping = overlaps(&intervals);
    for (metric, count) in overlapping.iter().fold(BTreeMap::new(), |mut acc, o| {
        *acc.entry(o.metric.as_str()).or_insert(0usize) += 1;
        acc
    }) {
        warnings.push(format!(
            "{}: {count} comparison(s) of two sets' gaps to a common set have overlapping intervals, so which gap is larger is not resolved at this sample size (see `overlapping`)",
            metric.to_uppercase()
        ));
    }
    warnings.sort();
    warnings.dedup();
    Ok(MatrixReport {
        sets: sets.iter().map(|s| s.provenance.clone()).collect(),
        extractor,
        metrics: tables,
        intervals,
        overlapping,
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
) -> anyhow::Result<(Option<Engine>, Vec<LoadedSet>)> {
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
    let devices = extractor.as_ref().map(Engine::devices).unwrap_or_default();
    let extract = ExtractOptions {
        batch_size: opts.batch_size.resolve(&devices),
        run: None,
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

/// The Gaussian (mean, covariance) of one input as `gapmeter score` computes it for FID: a
/// folder through the extractor (same resolution, engine, order and skipped files), an `.npy`
/// of features, or an `.npz` read back. Returns the set too, for its provenance and warnings.
pub fn statistics(
    input: &str,
    opts: &ScoreOptions,
) -> anyhow::Result<(metrics::Gaussian, LoadedSet)> {
    let mut warnings = Vec::new();
    let (_, mut sets) = load_sets(&[input], &[MetricName::Fid], opts, &mut warnings)?;
    let set = sets.pop().context("no set loaded")?;
    let gaussian = set.data.gaussian()?;
    Ok((gaussian, set))
}

/// Extracts the content features of the images under `dir` exactly as `gapmeter score` does
/// (same extractor resolution, engine, folder order and skipped files), for `gapmeter extract`.
pub fn extract(dir: &std::path::Path, opts: &ScoreOptions) -> anyhow::Result<ExtractedSet> {
    let engine = load_extractor(opts)?;
    let extract = ExtractOptions {
        batch_size: opts.batch_size.resolve(&engine.devices()),
        run: None,
        strict: opts.strict,
        progress: opts.progress,
        logits: false,
        style: false,
    };
    extract_folder(dir, &engine, &extract)
}

/// Loads inputs as `gapmeter score` does (one extractor for every folder, content features
/// only), for the analyses that work on features (`crate::reduce`).
pub fn load_inputs(
    inputs: &[&str],
    opts: &ScoreOptions,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(Option<Engine>, Vec<LoadedSet>)> {
    load_sets(inputs, &[], opts, warnings)
}

/// The extraction engine `gapmeter score` would use with `opts`.
pub fn load_extractor(opts: &ScoreOptions) -> anyhow::Result<Engine> {
    let devices = opts.devices.resolve()?;
    let manifest = resolve_extractor(opts.extractor.as_deref(), &opts.registry, Naming::IdOrPath)?;
    Engine::load_in(manifest, &devices, opts.precision)
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
            "; --infinity extrapolates to N → ∞ (with --bootstrap, with an interval), and KID is unbiased"
        } else {
            ""
        };
        warnings.push(format!(
            "FID is strongly biased upwards below ~{FID_RELIABLE_N} samples per set (smallest set: {n}); \
             compare FID values only at equal sample sizes{hint}"
        ));
    }
}

/// The comparisons a matrix cannot resolve: for each set i and two others j, k, the gaps (i, j)
/// and (i, k) whose intervals overlap.
fn overlaps(intervals: &BTreeMap<String, Vec<Vec<Option<Interval>>>>) -> Vec<Overlap> {
    let mut out = Vec::new();
    for (metric, table) in intervals {
        for (i, row) in table.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                for (k, b) in row.iter().enumerate().skip(j + 1) {
                    if i == j || i == k {
                        continue;
                    }
                    if let (Some(a), Some(b)) = (a, b) {
                        if a.overlaps(b) {
                            out.push(Overlap {
                                metric: metric.clone(),
                                pairs: [[i, j], [i, k]],
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Intervals for KID and unbiased MMD from a bootstrap whose within-set sums never pair a sample
/// with its own copy (so the resamples are centred on the point estimate), as normal intervals
/// with the resamples' standard deviation as standard error. The other metrics get none, and a
/// warning says why.
fn add_bootstrap(
    chosen: &[MetricName],
    s: &LoadedSet,
    t: &LoadedSet,
    opts: &ScoreOptions,
    bp: &BootstrapParams,
    values: &mut BTreeMap<String, MetricValue>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    bp.validate()?;
    let p = &opts.params;
    let (Some(a), Some(b)) = (&s.data.features, &t.data.features) else {
        bail!("--bootstrap needs per-sample features on both sides (.npz statistics cannot be resampled)");
    };
    let kid = chosen.contains(&MetricName::Kid);
    let mmd_sigma = match (chosen.contains(&MetricName::Mmd), p.mmd.estimator) {
        (true, metrics::Estimator::Unbiased) => values
            .get("mmd")
            .and_then(|v| v.details.get("sigma"))
            .and_then(|v| v.as_f64()),
        _ => None,
    };
    let (ns, nt) = (a.nrows(), b.nrows());
    let mut rng = metrics::rng::LegacyRandomState::new(bp.seed);
    let (mut kids, mut mmds) = (Vec::new(), Vec::new());
    if kid || mmd_sigma.is_some() {
        for _ in 0..bp.resamples {
            opts.check_interrupt()?;
            let rs = metrics::resample_with_replacement(&mut rng, ns);
            let rt = metrics::resample_with_replacement(&mut rng, nt);
            if kid {
                kids.push(
                    metrics::kid_resampled(a.view(), b.view(), &p.kid, &rs, &rt)
                        .context("KID bootstrap resample")?,
                );
            }
            if let Some(sigma) = mmd_sigma {
                mmds.push(
                    metrics::mmd_resampled(a.view(), b.view(), sigma, &rs, &rt)
                        .context("MMD bootstrap resample")?,
                );
            }
        }
    }
    // The larger of the two standard errors: the interval is then at least as wide as each
    // one's, so it covers at least as often as either does in the coverage simulation (where
    // the bootstrap's, from a few dozen resamples, dips below the jackknife's in a few cells).
    const METHOD: &str = "normal, standard error the larger of a bootstrap's (resamples never pair a sample with its own copy) and the jackknife's";
    for (name, draws) in [("kid", &kids), ("mmd", &mmds)] {
        if draws.is_empty() {
            continue;
        }
        if let Some(v) = values.get_mut(name) {
            let jackknife = v
                .details
                .get("standard_error")
                .and_then(|x| x.as_f64())
                .unwrap_or(0.0);
            let se = sample_std(draws).max(jackknife);
            v.ci = Some(Interval::normal(
                v.primary(),
                se,
                bp.level,
                METHOD,
                Target::Population,
                Some(bp.resamples),
            ));
        }
    }
    let mut without = Vec::new();
    for &m in chosen {
        match m {
            MetricName::Kid => {}
            MetricName::Mmd if mmd_sigma.is_some() => {}
            MetricName::Fid => warnings.push(
                "FID has no interval: it is biased upwards at finite N, so an interval around it would miss the population value; --infinity gives FID∞ with one".into(),
            ),
            other => without.push(other.as_str()),
        }
    }
    if !without.is_empty() {
        warnings.push(format!(
            "no interval for {}: none of their resampling intervals is known to cover (docs/metrics.md, \"Intervals\")",
            without.join(", ")
        ));
    }
    Ok(())
}

/// Standard deviation with n − 1 in the denominator.
fn sample_std(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    if v.len() < 2 {
        return 0.0;
    }
    let m = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt()
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
    let Some(ns) = s.data.features.as_ref().map(|f| f.nrows()) else {
        bail!("--infinity needs per-sample source features (an .npz cannot be subsampled)");
    };
    // The target is subsampled at the same fraction when it can be, so that its own
    // small-sample bias is extrapolated away too.
    let nt = t.data.features.as_ref().map(|f| f.nrows());
    if nt.is_none() {
        warnings.push(
            "N → ∞ fits subsample the source only: the target is statistics, so its own small-sample bias stays in FID∞".into(),
        );
    }
    let n_min = ns.min(nt.unwrap_or(ns));
    if extrapolation_sizes(ns, points).len() < 2 {
        bail!("--infinity needs at least 3 source samples");
    }
    for &m in chosen
        .iter()
        .filter(|m| matches!(m, MetricName::Fid | MetricName::Kid))
    {
        let name = m.as_str().to_uppercase();
        let start = match m {
            MetricName::Fid => metrics::fid_infinity_start(n_min, s.dim()),
            _ => None,
        };
        let sizes = match start {
            Some(f) => metrics::sizes_between((f * ns as f64).ceil() as usize, ns, points),
            None => extrapolation_sizes(ns, points),
        };
        let want_interval = match (m, &opts.bootstrap) {
            (MetricName::Fid, Some(bp)) if start.is_some() && sizes.len() >= 2 => Some(bp.level),
            (MetricName::Fid, Some(_)) => {
                warnings.push(format!(
                    "FID∞ has no interval: the smaller set has {n_min} samples for {}-d features, and FID's bias is linear in 1/N only well above the dimension (an interval needs N ≥ 1.25·(d+1))",
                    s.dim()
                ));
                None
            }
            _ => None,
        };
        let fit = metrics::SubsampleFit {
            sizes,
            repetitions: metrics::FIT_REPETITIONS,
            seed: p.kid.seed,
        };
        let (line, ci) = metrics::subsample_fit(ns, nt, &fit, want_interval, |si, ti| {
            opts.check_interrupt()?;
            let sub_s = s.data.select(si)?;
            let sub_t = if ti.is_empty() {
                None
            } else {
                Some(t.data.select(ti)?)
            };
            let mut ignored = Vec::new();
            let target = sub_t.as_ref().unwrap_or(&t.data);
            Ok::<f64, anyhow::Error>(compute(m, &sub_s, target, p, &mut ignored)?[0].1.primary())
        })
        .context("N → ∞ extrapolation")?;
        if line.r2 < 0.9 {
            warnings.push(format!(
                "{name}∞ fit against 1/N is poor (R² = {:.2}): the extrapolated value is unreliable at these sample sizes",
                line.r2
            ));
        }
        let mut v = MetricValue::scalar(line.value);
        v.fit = Some(line);
        v.ci = ci;
        values.insert(format!("{}_infinity", m.as_str()), v);
    }
    Ok(())
}

fn extrapolation_sizes(n: usize, points: usize) -> Vec<usize> {
    metrics::extrapolation_sizes(n, points, 2)
}

/// Warnings for intervals too wide to tell a result from no gap, or from a result of about the
/// same size.
fn interval_warnings(
    values: &BTreeMap<String, MetricValue>,
    level: f64,
    warnings: &mut Vec<String>,
) {
    for (name, v) in values {
        let Some(ci) = &v.ci else { continue };
        let shown = report::display_name(name);
        let pct = level * 100.0;
        if ci.low <= 0.0 {
            warnings.push(format!(
                "{shown}: the {pct:.0}% interval [{:.6}, {:.6}] reaches 0, so no gap is detectable at this sample size",
                ci.low, ci.high
            ));
        } else if ci.high - ci.low > v.primary().abs() {
            warnings.push(format!(
                "{shown}: the {pct:.0}% interval is wider than the value itself; results within ±{:.6} of {:.6} cannot be told apart at this sample size",
                (ci.high - ci.low) / 2.0,
                v.primary()
            ));
        }
    }
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
