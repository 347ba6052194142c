//! `serve`, `migrate`, `openapi` and `admin`: the service side of the binary.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::app::Application;
use crate::config::Config;
use crate::features::default_models_dir;
use crate::store::{self, Scope, TeamId};

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
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&config.database.url)
        .await
        .with_context(|| format!("connecting to {}", crate::app::redact(&config.database.url)))?;
    store::migrate(&pool).await?;
    Ok(pool)
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.config.as_deref())?;
    let models = args.models_dir.unwrap_or_else(default_models_dir);
    runtime()?.block_on(async {
        let app = Application::build(config, models).await?;
        eprintln!("gapmeter listening on port {}", app.port());
        app.run_until_stopped().await
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
