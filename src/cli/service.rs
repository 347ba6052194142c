//! `serve`, `migrate`, `openapi` and `admin`: the service side of the binary.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::app::Application;
use crate::config::Config;
use crate::features::{default_models_dir, BatchSize, Devices, Registry};
use crate::store::{self, Blobs, Scope, TeamId};
use crate::worker::{Models, Worker, WorkerOptions};

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (default: built-in defaults, see config/gapmeter.toml), then
    /// GAPMETER_<SECTION>__<KEY> and DATABASE_URL from the environment.
    #[arg(long, env = "GAPMETER_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Directory of extractor manifests.
    #[arg(long, env = "GAPMETER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Run no in-process worker (jobs wait for `gapmeter worker` processes).
    #[arg(long)]
    pub no_worker: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Directory of extractor manifests.
    #[arg(long, env = "GAPMETER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Devices, one model replica each: cpu, cuda:N, a list (cuda:0,cuda:1) or all
    /// [default: worker.devices]. --device is the same flag.
    #[arg(long, alias = "device")]
    pub devices: Option<Devices>,
    /// Jobs run at once [default: worker.concurrency].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub concurrency: Option<u64>,
    /// Images per forward pass: auto or a number [default: worker.batch_size].
    #[arg(long)]
    pub batch_size: Option<BatchSize>,
    /// Serve Prometheus /metrics and /healthz on this address, e.g. 0.0.0.0:9091
    /// [default: worker.metrics_addr].
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a team; prints its id.
    CreateTeam {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create an API key for a team; prints the token (shown once).
    CreateKey {
        /// Team id.
        #[arg(long)]
        team: TeamId,
        #[arg(long, default_value = "")]
        name: String,
        /// Comma-separated scopes: read, write, admin.
        #[arg(long, value_delimiter = ',', default_value = "read,write")]
        scopes: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn pool(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let pool = store::connect(&config.database.url, 2).await?;
    store::migrate(&pool).await?;
    Ok(pool)
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.config.as_deref())?;
    let models = args.models_dir.unwrap_or_else(default_models_dir);
    let in_process = config.worker.in_process && !args.no_worker;
    runtime()?.block_on(async {
        let app = Application::build(config, models).await?;
        eprintln!("gapmeter listening on port {}", app.port());
        tokio::spawn(app.sweeper(crate::app::shutdown_signal()));
        let worker = if in_process {
            let w = app.worker()?;
            eprintln!("in-process worker {} started", w.id());
            Some(tokio::spawn(w.run(crate::app::shutdown_signal())))
        } else {
            None
        };
        app.run_until_stopped().await?;
        if let Some(w) = worker {
            w.await??;
        }
        Ok(())
    })
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.config.as_deref())?;
    let mut options = WorkerOptions::from_config(&config)?;
    if let Some(d) = args.devices {
        options.devices = d;
    }
    if let Some(c) = args.concurrency {
        options.concurrency = c as usize;
    }
    if let Some(b) = args.batch_size {
        options.batch_size = b;
    }
    if let Some(a) = args.metrics_addr {
        options.metrics_addr = Some(a);
    }
    let registry = Registry::new(args.models_dir.unwrap_or_else(default_models_dir));
    // Before the queue is touched: a worker that cannot run jobs must not claim any.
    let models = Models::open(&options.devices)?;
    let loaded = models.preload(&registry)?;
    eprintln!("models {loaded:?} loaded on {}", options.devices);
    runtime()?.block_on(async {
        let pool = store::connect(
            &config.database.url,
            config
                .database
                .max_connections
                .max(options.concurrency as u32 + 3),
        )
        .await?;
        store::migrate(&pool).await?;
        let blobs = Blobs::open_with(&config.storage.url, &config.storage.options)?;
        let metrics_addr = options.metrics_addr;
        let worker = Worker::with_models(pool, blobs, registry, options, Arc::new(models))?;
        if let Some(addr) = metrics_addr {
            let metrics = worker.metrics();
            let render = Arc::new(move || metrics.render());
            let server = crate::api::serve_metrics(addr, render, crate::app::shutdown_signal());
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = format!("{e:#}"), "worker metrics server stopped");
                }
            });
            eprintln!("worker metrics on http://{addr}/metrics");
        }
        eprintln!("worker {} started", worker.id());
        worker.run(crate::app::shutdown_signal()).await
    })
}

pub fn sweep(args: ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let policy = crate::app::retention_policy(&config);
    runtime()?.block_on(async {
        let pool = pool(&config).await?;
        let blobs = Blobs::open_with(&config.storage.url, &config.storage.options)?;
        match store::sweep(&pool, &blobs, &policy).await? {
            Some(report) => println!("{}", serde_json::to_string_pretty(&report)?),
            None => eprintln!("another process is sweeping; nothing done"),
        }
        Ok(())
    })
}

pub fn migrate(args: ConfigArg) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    runtime()?.block_on(async {
        pool(&config).await?;
        eprintln!("migrations applied");
        Ok(())
    })
}

pub fn openapi() -> anyhow::Result<()> {
    println!("{}", crate::api::openapi_json());
    Ok(())
}

pub fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match cmd {
            AdminCommand::CreateTeam { name, config } => {
                let config = Config::load(config.config.as_deref())?;
                let team = store::create_team(&pool(&config).await?, &name).await?;
                println!("{}", team.id);
            }
            AdminCommand::CreateKey {
                team,
                name,
                scopes,
                config,
            } => {
                let config = Config::load(config.config.as_deref())?;
                let scopes = scopes
                    .iter()
                    .map(|s| match s.as_str() {
                        "read" => Ok(Scope::Read),
                        "write" => Ok(Scope::Write),
                        "admin" => Ok(Scope::Admin),
                        other => anyhow::bail!("unknown scope {other:?}: read, write or admin"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let key = store::create_key(&pool(&config).await?, team, &name, &scopes)
                    .await?
                    .with_context(|| format!("no team {team}"))?;
                println!("{}", key.token);
            }
        }
        Ok(())
    })
}
