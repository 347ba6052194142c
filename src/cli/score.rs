use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::features::{default_models_dir, DeviceSpec, Registry};
use crate::metrics::KidParams;
use crate::score::{score, MetricName, ScoreOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Source set: an image folder (searched recursively), an .npy of N×d features, or an .npz
    /// with `mu` and `sigma` (pytorch-fid / clean-fid statistics; FID only).
    pub source: String,
    /// Target set, same forms as SOURCE.
    pub target: String,
    /// Extractor: a manifest path or a registered id (default: inception-v3-fid, else its
    /// untrained test twin).
    #[arg(long, short = 'x')]
    pub extractor: Option<String>,
    /// Metrics to compute, comma-separated [default: fid,kid].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub metrics: Option<Vec<MetricName>>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Device for the extractor: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Seed for random subsets (numpy RandomState stream; torch-fidelity's default is 2020).
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

pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let opts = ScoreOptions {
        extractor: args.extractor,
        metrics: args.metrics,
        batch_size: args.batch_size as usize,
        device: args.device,
        kid: KidParams {
            subsets: args.kid_subsets,
            subset_size: args.kid_subset_size,
            degree: args.kid_degree,
            gamma: args.kid_gamma,
            coef0: args.kid_coef0,
            seed: args.seed,
        },
        strict: args.strict,
        registry: Registry::new(args.models_dir.unwrap_or_else(default_models_dir)),
        progress: !args.no_progress,
    };
    let report = score(&args.source, &args.target, &opts)?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            print!("{}", report.to_table());
        }
    }
    if args.format == Format::Json {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}
