//! The proposal's second half: measures that are learned (the selective style gap, the Proxy-A
//! distance), and using the measured gap to reduce it (subset selection, transform search),
//! to judge a few-shot sample (sufficiency) and to say what the gap is in words (explain).
//! Every analysis takes a source and a target, returns an [`AnalysisReport`] with the same
//! provenance as a score, and runs identically from the CLI and as a service job: the
//! feature-based ones on [`LoadedSet`]s (the service builds them from cached features), the
//! pixel-based ones on decoded [`ImageSet`]s. docs/reduce.md.

mod explain;
mod images;
mod select;
mod selective;
mod sufficiency;
mod transforms;

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

pub use explain::{builtin_directions, explain, Direction, ExplainParams, Explanation};
pub use images::{embed, sample_indices, Embedded, ImageSet};
pub use select::{select, SelectObjective, SelectParams, Selection};
pub use selective::{
    default_family, entry_gaps, entry_variances, learn_mask, selective_style, EntryGaps,
    SelectiveStyle, SelectiveStyleParams, StyleMask,
};
pub use sufficiency::{sufficiency, SizeRow, Sufficiency, SufficiencyMetric, SufficiencyParams};
pub use transforms::{search, Objective, SingleTransform, TransformSearch, TransformSearchParams};

use crate::features::{Engine, TextEncoder};
use crate::metrics::{self, Features};
use crate::score::{ExtractorInfo, LoadedSet, SetProvenance, Software};

/// Raised to stop an analysis between its steps (the service's cancel, a lost lease, a
/// shutdown); `None`: it runs to the end (the CLI).
pub type Interrupt<'a> = Option<&'a AtomicBool>;

/// Fails with "interrupted" once `interrupt` is raised.
fn check(interrupt: Interrupt) -> anyhow::Result<()> {
    if interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// The Proxy-A distance's options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PadOptions {
    /// Cross-validation folds.
    pub folds: usize,
    /// Inverse L2 strength, scikit-learn's `C`.
    pub c: f64,
    /// Standardise features on each training fold (scikit-learn's StandardScaler).
    pub standardize: bool,
    pub level: f64,
    pub seed: u32,
}

impl Default for PadOptions {
    fn default() -> Self {
        let p = metrics::PadParams::default();
        Self {
            folds: p.folds,
            c: p.c,
            standardize: p.standardize,
            level: 0.95,
            seed: 0,
        }
    }
}

impl PadOptions {
    fn params(&self) -> metrics::PadParams {
        metrics::PadParams {
            folds: self.folds,
            c: self.c,
            standardize: self.standardize,
            seed: self.seed as u64,
            ..metrics::PadParams::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(2..=50).contains(&self.folds) {
            return Err("folds must be 2 to 50".into());
        }
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err("c must be a positive number".into());
        }
        check_level(self.level)
    }
}

fn check_level(level: f64) -> Result<(), String> {
    if level > 0.0 && level < 1.0 {
        Ok(())
    } else {
        Err("level must be between 0 and 1".into())
    }
}

/// One analysis and its options: what a request asks for, stored in the job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Analysis {
    /// The style gap on the covariance entries that carry style (learned), and a content gap
    /// on the others.
    SelectiveStyle(SelectiveStyleParams),
    /// The Proxy-A distance: how well a linear classifier tells the sets apart.
    Pad(PadOptions),
    /// The K source images whose set is closest to the target.
    Select(SelectParams),
    /// The photometric transform of the source that most reduces the gap.
    Transforms(TransformSearchParams),
    /// How the metric's uncertainty falls with the target's sample size.
    Sufficiency(SufficiencyParams),
    /// The gap projected onto text directions (an extractor with a text encoder).
    Explain(ExplainParams),
}

/// How many images of each set a pixel-based analysis decodes (a seeded sample beyond that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub source: usize,
    pub target: usize,
}

impl Analysis {
    /// The analysis' name: its job kind and its CLI subcommand.
    pub fn name(&self) -> &'static str {
        match self {
            Analysis::SelectiveStyle(_) => "selective_style",
            Analysis::Pad(_) => "pad",
            Analysis::Select(_) => "select",
            Analysis::Transforms(_) => "transforms",
            Analysis::Sufficiency(_) => "sufficiency",
            Analysis::Explain(_) => "explain",
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Analysis::SelectiveStyle(p) => p.validate(),
            Analysis::Pad(p) => p.validate(),
            Analysis::Select(p) => p.validate(),
            Analysis::Transforms(p) => p.validate(),
            Analysis::Sufficiency(p) => p.validate(),
            Analysis::Explain(p) => p.validate(),
        }
    }

    /// The analyses that change pixels before the model: they need the images, not features.
    pub fn image_limits(&self) -> Option<ImageLimits> {
        match self {
            Analysis::SelectiveStyle(p) => Some(ImageLimits {
                source: p.source_images,
                target: p.target_images,
            }),
            Analysis::Transforms(p) => Some(ImageLimits {
                source: p.source_images,
                target: p.target_images,
            }),
            _ => None,
        }
    }

    /// Whether the extractor must have an early map (`early` output).
    pub fn needs_style_output(&self) -> bool {
        match self {
            Analysis::SelectiveStyle(_) => true,
            Analysis::Transforms(p) => p.objective == Objective::Style,
            _ => false,
        }
    }

    /// Whether the extractor must have a text encoder.
    pub fn needs_text_encoder(&self) -> bool {
        matches!(self, Analysis::Explain(_))
    }

    /// The analysis' seed; it also picks the image samples (the source's with it, the
    /// target's with it + 1), in the CLI and in the service alike.
    pub fn seed(&self) -> u32 {
        match self {
            Analysis::SelectiveStyle(p) => p.seed,
            Analysis::Transforms(p) => p.seed,
            Analysis::Pad(p) => p.seed,
            Analysis::Select(p) => p.seed,
            Analysis::Sufficiency(p) => p.seed,
            Analysis::Explain(p) => p.seed,
        }
    }
}

/// An analysis' result with what decided it (as a score's report).
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisReport {
    pub analysis: &'static str,
    pub source: SetProvenance,
    pub target: SetProvenance,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extractor: Option<ExtractorInfo>,
    pub parameters: serde_json::Value,
    /// The finding in one sentence.
    pub summary: String,
    pub result: serde_json::Value,
    pub warnings: Vec<String>,
    pub software: Software,
}

impl AnalysisReport {
    fn new(
        analysis: &Analysis,
        [source, target]: [&SetProvenance; 2],
        extractor: Option<ExtractorInfo>,
        (summary, result): (String, serde_json::Value),
        warnings: Vec<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            analysis: analysis.name(),
            source: source.clone(),
            target: target.clone(),
            extractor,
            parameters: parameters(analysis)?,
            summary,
            result,
            warnings,
            software: Software::current(),
        })
    }

    /// A human-readable rendering: the summary, then the result as indented JSON, then warnings.
    pub fn to_table(&self) -> String {
        let mut out = format!("{}: {}\n", self.analysis, self.summary);
        out.push_str(&format!(
            "source: {} ({} images)\ntarget: {} ({} images)\n",
            self.source.path,
            self.source.count.unwrap_or(0),
            self.target.path,
            self.target.count.unwrap_or(0)
        ));
        if let Some(x) = &self.extractor {
            out.push_str(&format!("extractor: {} ({})\n", x.id, x.device));
        }
        out.push_str(&serde_json::to_string_pretty(&self.result).unwrap_or_default());
        out.push('\n');
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

/// Content gaps between two feature sets (and the style gap where the early maps were kept).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gaps {
    pub fid: f64,
    pub kid: f64,
    /// Log-Euclidean distance of the mean early-layer covariances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<f64>,
}

/// FID and KID (subsets of the smaller set's size, so no warning about reduced subsets).
pub fn content_gaps(a: &Features, b: &Features, seed: u32) -> anyhow::Result<Gaps> {
    let fid = metrics::fid_from_features(a.view(), b.view())?.value;
    let params = metrics::KidParams {
        subset_size: a.nrows().min(b.nrows()),
        seed,
        ..metrics::KidParams::default()
    };
    let kid = metrics::kid(a.view(), b.view(), &params)?.mean;
    Ok(Gaps {
        fid,
        kid,
        style: None,
    })
}

/// The mean and a percentile interval of repeated draws.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub level: f64,
    pub draws: usize,
}

impl Spread {
    /// `values` must not be empty; the interval is the central `level` share of them (linear
    /// interpolation between order statistics, numpy's default).
    pub fn of(values: &[f64], level: f64) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let mean = if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        let q = |p: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let pos = p * (v.len() - 1) as f64;
            let (i, frac) = (pos.floor() as usize, pos - pos.floor());
            let j = (i + 1).min(v.len() - 1);
            v[i] + (v[j] - v[i]) * frac
        };
        Self {
            mean,
            low: q((1.0 - level) / 2.0),
            high: q((1.0 + level) / 2.0),
            level,
            draws: values.len(),
        }
    }
}

fn features_of<'a>(set: &'a LoadedSet, role: &str) -> anyhow::Result<&'a Features> {
    set.data.features.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{role} {} holds only statistics: this analysis needs per-image features (an image folder or an .npy)",
            set.provenance.path
        )
    })
}

/// Runs a feature-based analysis (PAD, select, sufficiency, explain) on two loaded sets.
/// `text` is the extractor's text encoder, needed by explain only.
pub fn run_on_features(
    analysis: &Analysis,
    source: &LoadedSet,
    target: &LoadedSet,
    text: Option<&TextEncoder>,
    extractor: Option<ExtractorInfo>,
    mut warnings: Vec<String>,
    interrupt: Interrupt,
) -> anyhow::Result<AnalysisReport> {
    analysis.validate().map_err(anyhow::Error::msg)?;
    let (s, t) = (
        features_of(source, "source")?,
        features_of(target, "target")?,
    );
    if s.ncols() != t.ncols() {
        anyhow::bail!(
            "the sets have {}-d and {}-d features: both must come from the same extractor",
            s.ncols(),
            t.ncols()
        );
    }
    let (summary, result) = match analysis {
        Analysis::Pad(p) => {
            let r = metrics::proxy_a_distance(s.view(), t.view(), &p.params(), p.level)?;
            let summary = format!(
                "PAD {:.3} ({:.0} % interval across {} folds {:.3} to {:.3}); cross-validated error {:.3}: {}",
                r.pad,
                p.level * 100.0,
                r.folds.len(),
                r.interval.low,
                r.interval.high,
                r.error,
                if r.pad < 0.2 {
                    "a linear classifier can hardly tell the sets apart"
                } else if r.pad > 1.8 {
                    "the sets are (almost) linearly separable"
                } else {
                    "the sets are partly separable"
                }
            );
            (summary, serde_json::to_value(r)?)
        }
        Analysis::Select(p) => {
            let r = select(s, t, &source.labels, p, interrupt)?;
            (r.summary(), serde_json::to_value(r)?)
        }
        Analysis::Sufficiency(p) => {
            let r = sufficiency(s, t, p, &mut warnings, interrupt)?;
            (r.summary.clone(), serde_json::to_value(r)?)
        }
        Analysis::Explain(p) => {
            let text = text.ok_or_else(|| {
                anyhow::anyhow!("explain needs an extractor with a text encoder ([text_encoder] in its manifest)")
            })?;
            let r = explain(s, t, text, p, interrupt)?;
            (r.summary.clone(), serde_json::to_value(r)?)
        }
        Analysis::SelectiveStyle(_) | Analysis::Transforms(_) => {
            anyhow::bail!("{} works on images, not features", analysis.name())
        }
    };
    AnalysisReport::new(
        analysis,
        [&source.provenance, &target.provenance],
        extractor,
        (summary, result),
        warnings,
    )
}

/// Runs a pixel-based analysis (selective style gap, transform search) on two decoded sets.
pub fn run_on_images(
    analysis: &Analysis,
    engine: &Engine,
    [source, target]: [&ImageSet; 2],
    batch_size: usize,
    extractor: Option<ExtractorInfo>,
    mut warnings: Vec<String>,
    interrupt: Interrupt,
) -> anyhow::Result<AnalysisReport> {
    analysis.validate().map_err(anyhow::Error::msg)?;
    warnings.extend(source.warnings.iter().cloned());
    warnings.extend(target.warnings.iter().cloned());
    let (summary, result) = match analysis {
        Analysis::SelectiveStyle(p) => {
            let r = selective_style(engine, source, target, p, batch_size, interrupt)?;
            let summary = format!(
                "selective style gap {:.3e} ({:.1}× source vs itself), content gap on stable entries {:.3e} ({:.1}×), all entries {:.3e} ({:.1}×); {} of {} entries are style-sensitive",
                r.gaps.selective_style,
                r.relative.selective_style,
                r.gaps.content_stable,
                r.relative.content_stable,
                r.gaps.all_entries,
                r.relative.all_entries,
                r.mask.sensitive.len(),
                r.mask.entries
            );
            (summary, serde_json::to_value(r)?)
        }
        Analysis::Transforms(p) => {
            let r = search(engine, source, target, p, batch_size, interrupt)?;
            let summary = format!(
                "best transform: {} — {} {:.4} → {:.4} (FID {:.3} → {:.3}); remaining gap {} sampling noise",
                if r.torchvision.is_empty() {
                    "none (the source as it is)".to_string()
                } else {
                    r.torchvision.join(", ")
                },
                r.objective.as_str(),
                objective_of(&r.before, r.objective),
                objective_of(&r.after, r.objective),
                r.before.fid,
                r.after.fid,
                if r.within_noise {
                    "within"
                } else {
                    "beyond"
                }
            );
            (summary, serde_json::to_value(r)?)
        }
        _ => anyhow::bail!("{} works on features, not images", analysis.name()),
    };
    AnalysisReport::new(
        analysis,
        [&source.provenance, &target.provenance],
        extractor,
        (summary, result),
        warnings,
    )
}

fn objective_of(g: &Gaps, o: Objective) -> f64 {
    match o {
        Objective::Fid => g.fid,
        Objective::Kid => g.kid,
        Objective::Style => g.style.unwrap_or(f64::NAN),
    }
}

/// The analysis' options as they ran (defaults filled in).
fn parameters(analysis: &Analysis) -> anyhow::Result<serde_json::Value> {
    let v = serde_json::to_value(analysis)?;
    Ok(v.get(analysis.name()).cloned().unwrap_or(v))
}

/// Runs `analysis` on two inputs as the CLI names them (image folders; `.npy` features for the
/// feature-based analyses), with the extractor and devices of `opts`.
pub fn run(
    analysis: &Analysis,
    source: &str,
    target: &str,
    opts: &crate::score::ScoreOptions,
) -> anyhow::Result<AnalysisReport> {
    analysis.validate().map_err(anyhow::Error::msg)?;
    let mut warnings = Vec::new();
    if let Some(limits) = analysis.image_limits() {
        let engine = crate::score::load_extractor(opts)?;
        crate::score::extractor_warnings(engine.manifest(), &[], &mut warnings);
        let seed = analysis.seed();
        let s = ImageSet::from_folder("source", std::path::Path::new(source), limits.source, seed)?;
        let t = ImageSet::from_folder(
            "target",
            std::path::Path::new(target),
            limits.target,
            seed.wrapping_add(1),
        )?;
        let batch = opts.batch_size.resolve(&engine.devices());
        let info = Some(ExtractorInfo::for_engine(&engine, opts));
        return run_on_images(analysis, &engine, [&s, &t], batch, info, warnings, None);
    }
    let (engine, mut sets) = crate::score::load_inputs(&[source, target], opts, &mut warnings)?;
    let t = sets.pop().ok_or_else(|| anyhow::anyhow!("target"))?;
    let s = sets.pop().ok_or_else(|| anyhow::anyhow!("source"))?;
    let text = if analysis.needs_text_encoder() {
        let manifest = match &engine {
            Some(e) => e.manifest().clone(),
            None => crate::features::resolve_extractor(
                opts.extractor.as_deref(),
                &opts.registry,
                crate::features::Naming::IdOrPath,
            )?,
        };
        Some(TextEncoder::load(&manifest, tch::Device::Cpu)?)
    } else {
        None
    };
    let info = engine.as_ref().map(|e| ExtractorInfo::for_engine(e, opts));
    run_on_features(analysis, &s, &t, text.as_ref(), info, warnings, None)
}
