//! `gapmeter score`: resolve both inputs to features or statistics, compute the chosen metrics and
//! build the report with its provenance (DESIGN §1). The same path will serve the worker.

mod extract;
mod input;
mod report;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::features::{resolve_extractor, DeviceSpec, Extractor, Registry};
use crate::metrics::{self, KidParams};

pub use extract::{extract_folder, ExtractedSet, Skipped};
pub use input::{read_features, read_statistics, InputKind, LoadedSet, SetProvenance};
pub use report::{ExtractorInfo, MetricParameters, Report, Software};

/// The metrics `gapmeter score` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MetricName {
    Fid,
    Kid,
}

impl MetricName {
    pub const DEFAULT: &'static [MetricName] = &[MetricName::Fid, MetricName::Kid];

    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::Fid => "fid",
            MetricName::Kid => "kid",
        }
    }

    fn needs_features(self) -> bool {
        matches!(self, MetricName::Kid)
    }
}

/// Everything that decides a score.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// A manifest path or registered id; `None` picks the default FID Inception.
    pub extractor: Option<String>,
    /// `None`: the defaults (FID, KID), dropping those the inputs cannot support.
    pub metrics: Option<Vec<MetricName>>,
    pub batch_size: usize,
    pub device: DeviceSpec,
    pub kid: KidParams,
    pub strict: bool,
    pub registry: Registry,
    pub progress: bool,
}

/// Trained FID Inception if exported, else its untrained test twin (with a warning in the result).
const DEFAULT_EXTRACTORS: &[&str] = &["inception-v3-fid", "inception-v3-fid-untrained"];

/// Scores `source` against `target` (folders, `.npy` features or `.npz` statistics).
#[tracing::instrument(skip(opts))]
pub fn score(source: &str, target: &str, opts: &ScoreOptions) -> anyhow::Result<Report> {
    let source_kind = InputKind::detect(source)?;
    let target_kind = InputKind::detect(target)?;
    let mut warnings = Vec::new();

    let metrics = choose_metrics(
        opts.metrics.as_deref(),
        &[&source_kind, &target_kind],
        &mut warnings,
    )?;

    let needs_model =
        matches!(source_kind, InputKind::Folder(_)) || matches!(target_kind, InputKind::Folder(_));
    let extractor = if needs_model {
        Some(load_extractor(opts)?)
    } else {
        None
    };
    if let Some(x) = &extractor {
        if !x.manifest().trained {
            warnings.push(format!(
                "extractor {:?} has untrained weights: its scores are for testing, not comparable with published numbers",
                x.manifest().id
            ));
        }
    }

    let s = LoadedSet::load("source", source, &source_kind, extractor.as_ref(), opts)?;
    let t = LoadedSet::load("target", target, &target_kind, extractor.as_ref(), opts)?;
    if s.dim() != t.dim() {
        bail!(
            "source has {}-d features but target has {}-d: both must come from the same extractor",
            s.dim(),
            t.dim()
        );
    }
    warnings.extend(s.warnings().iter().cloned());
    warnings.extend(t.warnings().iter().cloned());

    let mut report = Report::new(&s, &t, extractor.as_ref(), opts);
    for metric in metrics {
        match metric {
            MetricName::Fid => {
                let fid = match (s.features(), t.features()) {
                    (Some(a), Some(b)) => metrics::fid_from_features(a.view(), b.view()),
                    _ => metrics::fid_from_gaussians(&s.gaussian()?, &t.gaussian()?),
                }
                .context("computing FID")?;
                let n = s.count().min(t.count());
                if n.is_some_and(|n| n < 2048) {
                    warnings.push(format!(
                        "FID is strongly biased upwards below ~2048 samples per set (smallest set: {}); \
                         compare FID values only at equal sample sizes",
                        n.unwrap_or_default()
                    ));
                }
                report.metrics.fid = Some(fid);
            }
            MetricName::Kid => {
                let (Some(a), Some(b)) = (s.features(), t.features()) else {
                    bail!("KID needs per-image features; .npz statistics hold only mean and covariance");
                };
                let kid = metrics::kid(a.view(), b.view(), &opts.kid).context("computing KID")?;
                warnings.extend(kid.warnings.iter().cloned());
                report.parameters.kid = Some(opts.kid.clone());
                report.metrics.kid = Some(kid);
            }
        }
    }
    report.warnings = warnings;
    Ok(report)
}

fn choose_metrics(
    requested: Option<&[MetricName]>,
    inputs: &[&InputKind],
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<MetricName>> {
    let stats_only = inputs.iter().any(|k| matches!(k, InputKind::Statistics(_)));
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

fn load_extractor(opts: &ScoreOptions) -> anyhow::Result<Extractor> {
    let manifest = match &opts.extractor {
        Some(arg) => resolve_extractor(arg, &opts.registry)?,
        None => {
            let found = DEFAULT_EXTRACTORS
                .iter()
                .find_map(|id| opts.registry.get(id).ok());
            match found {
                Some(m) => m,
                None => bail!(
                    "no default extractor in {}: run `make models` (test models) or scripts/export_models.py, \
                     or pass --extractor PATH/TO/MANIFEST.toml",
                    opts.registry.dir().display()
                ),
            }
        }
    };
    Extractor::load(manifest, opts.device)
}
