//! The `gapmeter` command line: one binary, one subcommand per job.

mod client;
mod models;
mod reduce;
mod score;
mod service;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Measures the domain gap between image datasets (FID, KID, ...).
#[derive(Debug, Parser)]
#[command(name = "gapmeter", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score SOURCE against TARGET: image folders, .npy features or .npz statistics.
    Score(score::ScoreArgs),
    /// Extract a folder's features to an .npy (the engine `score` uses; rows in folder order).
    Extract(score::ExtractArgs),
    /// Pairwise gap table between two or more sets, each extracted once.
    Matrix(score::MatrixArgs),
    /// FID statistics as files: `stats export SOURCE -o stats.npz` (pytorch-fid / clean-fid format).
    #[command(subcommand)]
    Stats(score::StatsCommand),
    /// Run the HTTP service (with an in-process worker unless --no-worker).
    Serve(service::ServeArgs),
    /// Run jobs from the queue; any number of workers on any hosts can share one database.
    Worker(service::WorkerArgs),
    /// Apply database migrations.
    Migrate(service::ConfigArg),
    /// Run one retention sweep now (what `serve` does every retention.sweep_interval_secs) and
    /// print what it deleted as JSON.
    Sweep(service::ConfigArg),
    /// Print the OpenAPI description of the HTTP API.
    Openapi,
    /// Use a running service: upload folders, run jobs, print results.
    Client(client::ClientArgs),
    /// Create teams and keys from the command line.
    #[command(subcommand)]
    Admin(service::AdminCommand),
    /// List and inspect feature extractors.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Learned measures of the gap: the selective style gap, the Proxy-A distance.
    #[command(subcommand)]
    Measure(reduce::MeasureCommand),
    /// Reduce the gap: choose a subset, search transforms, judge a few-shot sample's size.
    #[command(subcommand)]
    Reduce(reduce::ReduceCommand),
    /// Say what the gap is in words: the gap projected onto text directions (an extractor with a
    /// text encoder, such as CLIP).
    Explain(reduce::ExplainArgs),
}

/// Parses the command line, runs the command and maps errors to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Score(args) => score::run(args),
        Command::Matrix(args) => score::run_matrix(args),
        Command::Extract(args) => score::run_extract(args),
        Command::Stats(cmd) => score::run_stats(cmd),
        Command::Serve(args) => service::serve(args),
        Command::Worker(args) => service::worker(args),
        Command::Migrate(args) => service::migrate(args),
        Command::Sweep(args) => service::sweep(args),
        Command::Openapi => service::openapi(),
        Command::Admin(cmd) => service::admin(cmd),
        Command::Client(args) => client::run(args),
        Command::Models(cmd) => models::run(cmd),
        Command::Measure(cmd) => reduce::run_measure(cmd),
        Command::Reduce(cmd) => reduce::run_reduce(cmd),
        Command::Explain(args) => reduce::run_explain(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GAPMETER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
