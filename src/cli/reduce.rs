//! `gapmeter measure`, `gapmeter reduce` and `gapmeter explain`: the analyses of
//! [`crate::reduce`] on folders (and `.npy` features where an analysis needs only features).
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::score::{print, ExtractionArgs, Format};
use crate::imaging::Knob;
use crate::reduce::{
    self, Analysis, ExplainParams, Objective, PadOptions, SelectObjective, SelectParams,
    SelectiveStyleParams, SufficiencyMetric, SufficiencyParams, TransformSearchParams,
};

/// Options every analysis takes.
#[derive(Debug, Args)]
pub struct AnalysisArgs {
    /// Source set: an image folder (or, for the feature-based analyses, an .npy of features).
    pub source: String,
    /// Target set, same forms as SOURCE.
    pub target: String,
    #[command(flatten)]
    pub extraction: ExtractionArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Seed of every random draw (samples, folds, resamples), numpy's RandomState stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Also write the JSON report to this file.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// Learned measures of the gap.
#[derive(Debug, Subcommand)]
pub enum MeasureCommand {
    /// The style gap on the early-layer covariance entries that move with photometric
    /// transforms (RobustNet's instance-selective whitening), a content gap on the others.
    SelectiveStyle(SelectiveStyleArgs),
    /// The Proxy-A distance: 2(1 − 2·err) of a cross-validated linear classifier.
    Pad(PadArgs),
}

/// Use the measured gap to reduce it.
#[derive(Debug, Subcommand)]
pub enum ReduceCommand {
    /// Choose the K images of POOL whose set is closest to TARGET.
    Select(SelectArgs),
    /// Search photometric transforms of SOURCE that most reduce its gap to TARGET.
    Transforms(TransformsArgs),
    /// How the metric's interval narrows with the target's sample size.
    Sufficiency(SufficiencyArgs),
}

#[derive(Debug, Args)]
pub struct SelectiveStyleArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    /// Images per set whose transformed copies decide the mask.
    #[arg(long, default_value_t = 32)]
    pub mask_images: usize,
    /// Clusters of the entries' variances (the highest is style).
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// Images decoded per set (a seeded sample beyond).
    #[arg(long, default_value_t = 256)]
    pub max_images: usize,
    /// Random half-splits of the source for the source-vs-itself baseline.
    #[arg(long, default_value_t = 20)]
    pub baseline_splits: usize,
}

#[derive(Debug, Args)]
pub struct PadArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Inverse L2 strength (scikit-learn's C).
    #[arg(long, default_value_t = 1.0)]
    pub c: f64,
    /// Do not standardise features on each training fold.
    #[arg(long)]
    pub no_standardize: bool,
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    /// Images to choose.
    #[arg(short = 'k', long)]
    pub k: usize,
    /// mmd (kernel herding) or fid.
    #[arg(long, default_value = "mmd", value_parser = parse_select_objective)]
    pub objective: SelectObjective,
    /// Random K-subsets to compare with.
    #[arg(long, default_value_t = 20)]
    pub random_draws: usize,
    /// FID objective: candidates per step evaluated exactly.
    #[arg(long, default_value_t = 16)]
    pub shortlist: usize,
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Write the chosen images' names, one per line, to this file.
    #[arg(long)]
    pub list: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TransformsArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    /// fid, kid or style.
    #[arg(long, default_value = "fid", value_parser = parse_objective)]
    pub objective: Objective,
    /// Knobs to search, comma-separated [default: all]: brightness, contrast, saturation, hue,
    /// gamma, blur_sigma, noise_std, jpeg_quality.
    #[arg(long, value_delimiter = ',', value_parser = parse_knob)]
    pub knobs: Vec<Knob>,
    /// Points of the first, full-range grid per knob.
    #[arg(long, default_value_t = 9)]
    pub grid: usize,
    /// Refinement rounds after the grid.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Source images transformed per evaluation (a seeded sample beyond).
    #[arg(long, default_value_t = 64)]
    pub source_images: usize,
    /// Target images measured.
    #[arg(long, default_value_t = 256)]
    pub target_images: usize,
    /// Write the best parameters as JSON (torchvision's meaning: docs/reduce.md) to this file.
    #[arg(long)]
    pub export: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SufficiencyArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    /// kid or fid.
    #[arg(long, default_value = "kid", value_parser = parse_sufficiency_metric)]
    pub metric: SufficiencyMetric,
    /// Target sizes, comma-separated [default: 8 sizes, geometric, up to the target's size].
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Resamples per size.
    #[arg(long, default_value_t = 30)]
    pub draws: usize,
    /// The precision asked about: the interval's half-width relative to the metric (0.1 =
    /// ±10 %).
    #[arg(long, default_value_t = 0.1)]
    pub within: f64,
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub common: AnalysisArgs,
    /// A direction of your own, "FROM|TO" (repeatable): e.g. "a photo of a city|a photo of a forest".
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Only your own directions, not the built-in ones.
    #[arg(long)]
    pub no_builtin: bool,
    #[arg(long, default_value_t = 200)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 999)]
    pub permutations: usize,
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
}

fn parse_objective(s: &str) -> Result<Objective, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?}: expected fid, kid or style"))
}

fn parse_select_objective(s: &str) -> Result<SelectObjective, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?}: expected mmd or fid"))
}

fn parse_sufficiency_metric(s: &str) -> Result<SufficiencyMetric, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?}: expected kid or fid"))
}

fn parse_knob(s: &str) -> Result<Knob, String> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_string())).map_err(|_| {
        format!(
            "{s:?}: expected one of {}",
            Knob::ALL.map(|k| k.name()).join(", ")
        )
    })
}

fn run_analysis(
    common: &AnalysisArgs,
    analysis: &Analysis,
) -> anyhow::Result<reduce::AnalysisReport> {
    let opts = common.extraction.options();
    let report = reduce::run(analysis, &common.source, &common.target, &opts)?;
    if let Some(path) = &common.output {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print(
        common.format,
        &report,
        || report.to_table(),
        &report.warnings,
    )?;
    Ok(report)
}

pub fn run_measure(cmd: MeasureCommand) -> anyhow::Result<()> {
    match cmd {
        MeasureCommand::SelectiveStyle(a) => {
            let analysis = Analysis::SelectiveStyle(SelectiveStyleParams {
                source_images: a.max_images,
                target_images: a.max_images,
                mask_images: a.mask_images,
                clusters: a.clusters,
                baseline_splits: a.baseline_splits,
                seed: a.common.seed,
                ..SelectiveStyleParams::default()
            });
            run_analysis(&a.common, &analysis)?;
        }
        MeasureCommand::Pad(a) => {
            let analysis = Analysis::Pad(PadOptions {
                folds: a.folds,
                c: a.c,
                standardize: !a.no_standardize,
                level: a.confidence,
                seed: a.common.seed,
            });
            run_analysis(&a.common, &analysis)?;
        }
    }
    Ok(())
}

pub fn run_reduce(cmd: ReduceCommand) -> anyhow::Result<()> {
    match cmd {
        ReduceCommand::Select(a) => {
            let analysis = Analysis::Select(SelectParams {
                k: a.k,
                objective: a.objective,
                random_draws: a.random_draws,
                shortlist: a.shortlist,
                level: a.confidence,
                seed: a.common.seed,
            });
            let report = run_analysis(&a.common, &analysis)?;
            if let Some(path) = &a.list {
                let names: Vec<String> = report.result["chosen"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(|c| c["name"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                std::fs::write(path, names.join("\n") + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        ReduceCommand::Transforms(a) => {
            let analysis = Analysis::Transforms(TransformSearchParams {
                source_images: a.source_images,
                target_images: a.target_images,
                objective: a.objective,
                knobs: a.knobs,
                grid: a.grid,
                rounds: a.rounds,
                seed: a.common.seed,
                ..TransformSearchParams::default()
            });
            let report = run_analysis(&a.common, &analysis)?;
            if let Some(path) = &a.export {
                let export = serde_json::json!({
                    "photometric": report.result["best"],
                    "order": ["brightness", "contrast", "saturation", "hue", "gamma", "blur_sigma", "noise_std", "jpeg_quality"],
                    "torchvision": report.result["torchvision"],
                    "meaning": "torchvision.transforms.v2.functional terms, applied in `order` to images in [0, 1]; docs/reduce.md, \"Photometric transforms\"",
                });
                std::fs::write(path, serde_json::to_vec_pretty(&export)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        ReduceCommand::Sufficiency(a) => {
            let analysis = Analysis::Sufficiency(SufficiencyParams {
                metric: a.metric,
                sizes: a.sizes,
                draws: a.draws,
                precision: a.within,
                level: a.confidence,
                seed: a.common.seed,
                ..SufficiencyParams::default()
            });
            run_analysis(&a.common, &analysis)?;
        }
    }
    Ok(())
}

pub fn run_explain(a: ExplainArgs) -> anyhow::Result<()> {
    let mut prompts = Vec::new();
    for p in &a.prompts {
        let (from, to) = p
            .split_once('|')
            .with_context(|| format!("--prompt {p:?}: expected \"FROM|TO\""))?;
        prompts.push([from.trim().to_string(), to.trim().to_string()]);
    }
    let analysis = Analysis::Explain(ExplainParams {
        prompts,
        builtin: !a.no_builtin,
        bootstrap: a.bootstrap,
        permutations: a.permutations,
        level: a.confidence,
        seed: a.common.seed,
        ..ExplainParams::default()
    });
    run_analysis(&a.common, &analysis)?;
    Ok(())
}
