//! Building and running the service; shared by `gapmeter serve` and the tests.
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState, Metrics};
use crate::config::Config;
use crate::features::Registry;
use crate::store::{self, Blobs};
use crate::worker::{Worker, WorkerOptions};

/// A bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    port: u16,
    state: AppState,
}

impl Application {
    /// Connects to the database (running migrations), opens the blob store and binds the address
    /// in `config.server.bind` (port 0 picks a free one).
    pub async fn build(config: Config, models_dir: std::path::PathBuf) -> anyhow::Result<Self> {
        let pool = store::connect(&config.database.url, config.database.max_connections).await?;
        Self::with_pool(config, pool, models_dir).await
    }

    /// Like [`Application::build`] with an existing pool (tests get one per database).
    pub async fn with_pool(
        config: Config,
        pool: sqlx::PgPool,
        models_dir: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        store::migrate(&pool).await.context("applying migrations")?;
        let blobs = Blobs::open(&config.storage.url)?;
        let listener = TcpListener::bind(&config.server.bind)
            .await
            .with_context(|| format!("binding {}", config.server.bind))?;
        let port = listener.local_addr()?.port();
        let (job_events, _) = tokio::sync::broadcast::channel(1024);
        tokio::spawn(api::listen_job_events(pool.clone(), job_events.clone()));
        let state = AppState {
            pool,
            blobs,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()?),
            models_dir,
            job_events,
        };
        Ok(Self {
            listener,
            router: api::router(state.clone()),
            port,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A worker on this service's database, blob store and models, configured by `[worker]`
    /// and `[queue]` (what `gapmeter serve` runs in-process).
    pub fn worker(&self) -> anyhow::Result<Worker> {
        let options = WorkerOptions::from_config(&self.state.config)?;
        Worker::new(
            self.state.pool.clone(),
            self.state.blobs.clone(),
            Registry::new(self.state.models_dir.clone()),
            options,
        )
    }

    /// Serves until SIGINT/SIGTERM, then finishes the requests in flight.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(port = self.port, "gapmeter listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
