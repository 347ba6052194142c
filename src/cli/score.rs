use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::features::{default_models_dir, BatchSize, DeviceSpec, Devices, Precision, Registry};
use crate::metrics::{
    Bandwidth, BootstrapParams, Estimator, Features, IsParams, KidParams, MmdParams, PrdcParams,
};
use crate::score::{matrix, score, MetricName, MetricParams, ScoreOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Options shared by `score` and `matrix`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub extraction: ExtractionArgs,
    /// Metrics, comma-separated [default: fid,kid].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub metrics: Option<Vec<MetricName>>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Device the metrics compute on, in float64 either way: cpu or cuda:N [default: the first
    /// GPU among --devices, else the CPU].
    #[arg(long)]
    pub metrics_device: Option<DeviceSpec>,
    /// Seed of every random draw (KID subsets, IS shuffle, bootstrap, N → ∞ subsets, median
    /// heuristic), in numpy's RandomState stream; torch-fidelity's default is 2020.
    #[arg(long, default_value_t = 2020)]
    pub seed: u32,
    /// KID: number of subsets.
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    /// KID: samples per subset (reduced, with a warning, when a set is smaller).
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    /// KID: polynomial kernel degree.
    #[arg(long, default_value_t = 3)]
    pub kid_degree: i32,
    /// KID: kernel gamma [default: 1/d].
    #[arg(long)]
    pub kid_gamma: Option<f64>,
    /// KID: kernel coef0.
    #[arg(long, default_value_t = 1.0)]
    pub kid_coef0: f64,
    /// IS: number of splits.
    #[arg(long, default_value_t = 10)]
    pub is_splits: usize,
    /// IS: keep the input order instead of shuffling (torch-fidelity shuffles by default).
    #[arg(long)]
    pub is_no_shuffle: bool,
    /// MMD and per-image witness: RBF bandwidth σ [default: median heuristic].
    #[arg(long)]
    pub mmd_bandwidth: Option<f64>,
    /// MMD: estimator.
    #[arg(long, value_enum, default_value = "unbiased")]
    pub mmd_estimator: Estimator,
    /// Precision/recall: k nearest neighbours.
    #[arg(long, default_value_t = 3)]
    pub pr_k: usize,
    /// Density/coverage: k nearest neighbours.
    #[arg(long, default_value_t = 5)]
    pub dc_k: usize,
}

/// Which model runs where, and how unreadable images are treated: shared by `score`, `matrix`
/// and `extract`.
#[derive(Debug, Args)]
pub struct ExtractionArgs {
    /// Extractor: a manifest path or a registered id (default: inception-v3-fid, else its
    /// untrained test twin).
    #[arg(long, short = 'x')]
    pub extractor: Option<String>,
    /// Images per forward pass: auto (measured best on CPU, 64 on GPUs) or a number.
    #[arg(long, default_value = "auto")]
    pub batch_size: BatchSize,
    /// Devices, one model replica each: cpu, cuda, cuda:N, a comma-separated list (cpu,cpu or
    /// cuda:0,cuda:1) or all (every GPU, else the CPU). --device is the same flag.
    #[arg(long, alias = "device", default_value = "cpu")]
    pub devices: Devices,
    /// The models' floating-point type: fp32 (as the reference tools), or opt-in fp16 / bf16
    /// (GPUs); a reduced precision's deviation, measured on the first batch, is in the warnings.
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// Fail on the first unreadable image instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Directory of extractor manifests.
    #[arg(long, env = "GAPMETER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// No progress bar on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

impl ExtractionArgs {
    /// Score options with these extraction settings and default metric parameters.
    pub(super) fn options(&self) -> ScoreOptions {
        let models_dir = self.models_dir.clone().unwrap_or_else(default_models_dir);
        ScoreOptions {
            extractor: self.extractor.clone(),
            metrics: None,
            params: MetricParams::default(),
            batch_size: self.batch_size,
            devices: self.devices.clone(),
            metrics_device: None,
            precision: self.precision,
            strict: self.strict,
            registry: Registry::new(models_dir),
            progress: !self.no_progress,
            bootstrap: None,
            infinity_points: None,
            top: None,
            interrupt: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Source set: an image folder (searched recursively), an .npy of N×d features, or an .npz
    /// with `mu` and `sigma` (pytorch-fid / clean-fid statistics; FID only).
    pub source: String,
    /// Target set, same forms as SOURCE.
    pub target: String,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Intervals: KID and unbiased MMD from this many resamples that never pair a sample with its
    /// own copy (KID's cost times N); FID∞ (with --infinity) from a jackknife of its fit. Other
    /// metrics get none (docs/metrics.md, "Intervals").
    #[arg(long)]
    pub bootstrap: Option<usize>,
    /// Level of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Also report FID∞ / KID∞: the metric on subsets of both sets at several sizes, fitted
    /// linearly in 1/N and extrapolated to N → ∞ (Chong & Forsyth 2020).
    #[arg(long)]
    pub infinity: bool,
    /// Number of sample sizes for --infinity.
    #[arg(long, default_value_t = 8)]
    pub infinity_points: usize,
    /// List the K most out-of-domain source images (MMD witness, k-NN distance, style distance).
    #[arg(long)]
    pub top: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Image folder (searched recursively, in the order `score` reads it).
    pub dir: PathBuf,
    /// Where the N×d features go: an .npy of the model's dtype (float32), rows in folder order.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Also write the path of each row, one per line, to this file.
    #[arg(long)]
    pub paths: Option<PathBuf>,
    #[command(flatten)]
    pub extraction: ExtractionArgs,
}

/// `gapmeter stats ...`: FID statistics as files.
#[derive(Debug, Subcommand)]
pub enum StatsCommand {
    /// Write the FID statistics of SOURCE to an .npz with `mu` and `sigma` (float64), exactly as
    /// pytorch-fid and clean-fid store them, so their `calculate_frechet_distance` and
    /// `gapmeter score` read it.
    Export(StatsExportArgs),
}

#[derive(Debug, Args)]
pub struct StatsExportArgs {
    /// An image folder (through the extractor, as `score` reads it), an .npy of N×d features, or
    /// an .npz of statistics (rewritten as float64).
    pub source: String,
    /// The .npz to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    #[command(flatten)]
    pub extraction: ExtractionArgs,
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Two or more sets (folders, .npy, .npz): every pair is scored, each set extracted once.
    #[arg(required = true, num_args = 2..)]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Intervals for every pair (KID and unbiased MMD, as `score --bootstrap`), and the list of
    /// comparisons they cannot order (`overlapping`).
    #[arg(long)]
    pub bootstrap: Option<usize>,
    /// Level of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
}

impl CommonArgs {
    fn options(&self) -> ScoreOptions {
        ScoreOptions {
            metrics: self.metrics.clone(),
            params: MetricParams {
                kid: KidParams {
                    subsets: self.kid_subsets,
                    subset_size: self.kid_subset_size,
                    degree: self.kid_degree,
                    gamma: self.kid_gamma,
                    coef0: self.kid_coef0,
                    seed: self.seed,
                },
                is: IsParams {
                    splits: self.is_splits,
                    shuffle_seed: (!self.is_no_shuffle).then_some(self.seed),
                },
                mmd: MmdParams {
                    bandwidth: self
                        .mmd_bandwidth
                        .map(Bandwidth::Fixed)
                        .unwrap_or(Bandwidth::Median),
                    estimator: self.mmd_estimator,
                    seed: self.seed,
                },
                prdc: PrdcParams {
                    k_pr: self.pr_k,
                    k_dc: self.dc_k,
                },
            },
            metrics_device: self.metrics_device,
            ..self.extraction.options()
        }
    }
}

pub(super) fn print(
    format: Format,
    json: impl serde::Serialize,
    table: impl FnOnce() -> String,
    warnings: &[String],
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&json)?);
            for w in warnings {
                eprintln!("warning: {w}");
            }
        }
        Format::Table => print!("{}", table()),
    }
    Ok(())
}

pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let mut opts = args.common.options();
    opts.bootstrap = args.bootstrap.map(|resamples| BootstrapParams {
        resamples,
        level: args.confidence,
        seed: args.common.seed,
    });
    opts.infinity_points = args.infinity.then_some(args.infinity_points);
    opts.top = args.top;
    let report = score(&args.source, &args.target, &opts)?;
    print(
        args.common.format,
        &report,
        || report.to_table(),
        &report.warnings,
    )
}

pub fn run_matrix(args: MatrixArgs) -> anyhow::Result<()> {
    let mut opts = args.common.options();
    opts.bootstrap = args.bootstrap.map(|resamples| BootstrapParams {
        resamples,
        level: args.confidence,
        seed: args.common.seed,
    });
    let report = matrix(&args.sets, &opts)?;
    print(
        args.common.format,
        &report,
        || report.to_table(),
        &report.warnings,
    )
}

/// `gapmeter extract`: a folder's features to an `.npy` (the file `gapmeter score` accepts).
pub fn run_extract(args: ExtractArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use ndarray_npy::WriteNpyExt;

    let opts = args.extraction.options();
    let set = crate::score::extract(&args.dir, &opts)?;
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let out = std::io::BufWriter::new(file);
    match &set.features {
        Features::F32(a) => a.write_npy(out),
        Features::F64(a) => a.write_npy(out),
    }
    .with_context(|| format!("writing {}", args.output.display()))?;
    if let Some(p) = &args.paths {
        let mut text = set.paths.join("\n");
        text.push('\n');
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    for s in &set.skipped {
        eprintln!("warning: skipped {}: {}", s.path, s.reason);
    }
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{} images -> {} ({} x {}), {} skipped",
        set.paths.len(),
        args.output.display(),
        set.features.nrows(),
        set.features.ncols(),
        set.skipped.len()
    );
    Ok(())
}

pub fn run_stats(cmd: StatsCommand) -> anyhow::Result<()> {
    use anyhow::Context;

    let StatsCommand::Export(args) = cmd;
    let opts = args.extraction.options();
    let (gaussian, set) = crate::score::statistics(&args.source, &opts)?;
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    // Written beside the destination and renamed, so a failed export leaves no partial file.
    let dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    crate::score::write_statistics(&gaussian, tmp.as_file_mut())
        .with_context(|| format!("writing {}", args.output.display()))?;
    tmp.persist(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let n = set
        .provenance
        .count
        .map_or_else(|| "statistics".to_string(), |n| format!("{n} samples"));
    eprintln!(
        "{} ({n}, d = {}) -> {}",
        args.source,
        gaussian.mean.len(),
        args.output.display()
    );
    Ok(())
}
