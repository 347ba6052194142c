//! Building and running the service; shared by `gapmeter serve` and the tests.
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState, Metrics};
use crate::config::Config;
use crate::features::Registry;
use crate::store::{self, Blobs};
use crate::worker::{Worker, WorkerMetrics, WorkerOptions};

/// A bound, not yet running server.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    port: u16,
    state: AppState,
    /// The in-process workers' instruments, in the API's registry (registered once).
    worker_metrics: std::sync::OnceLock<Arc<WorkerMetrics>>,
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
        let blobs = Blobs::open_with(&config.storage.url, &config.storage.options)?;
        let listener = TcpListener::bind(&config.server.bind)
            .await
            .with_context(|| format!("binding {}", config.server.bind))?;
        let port = listener.local_addr()?.port();
        let (job_events, _) = tokio::sync::broadcast::channel(1024);
        tokio::spawn(api::listen_job_events(pool.clone(), job_events.clone()));
        let rate_limit = api::RateLimit::new(
            config.rate_limit.requests_per_second,
            config.rate_limit.burst,
        )
        .map(Arc::new);
        let state = AppState {
            pool,
            blobs,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()?),
            models_dir,
            job_events,
            rate_limit,
        };
        Ok(Self {
            listener,
            router: api::router(state.clone()),
            port,
            state,
            worker_metrics: std::sync::OnceLock::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A worker on this service's database, blob store and models, configured by `[worker]`
    /// and `[queue]` (what `gapmeter serve` runs in-process).
    pub fn worker(&self) -> anyhow::Result<Worker> {
        let options = WorkerOptions::from_config(&self.state.config)?;
        let worker = Worker::new(
            self.state.pool.clone(),
            self.state.blobs.clone(),
            Registry::new(self.state.models_dir.clone()),
            options,
        )?;
        let metrics = match self.worker_metrics.get() {
            Some(m) => m.clone(),
            None => {
                let m = Arc::new(WorkerMetrics::register(self.state.metrics.registry())?);
                let read = m.clone();
                self.state.metrics.on_scrape(move || read.read_gpu_memory());
                self.worker_metrics.get_or_init(|| m).clone()
            }
        };
        Ok(worker.with_metrics(metrics))
    }

    /// Sweeps by `[retention]` every `sweep_interval_secs` until `shutdown` (never when 0).
    /// Every replica may run it: they take turns under a database lock.
    pub fn sweeper(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let state = self.state.clone();
        async move {
            let every = state.config.retention.sweep_interval_secs;
            if every == 0 {
                return;
            }
            let policy = retention_policy(&state.config);
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(every)) => {}
                    _ = &mut shutdown => return,
                }
                match store::sweep(&state.pool, &state.blobs, &policy).await {
                    Ok(report) => {
                        if let Some(r) = &report {
                            tracing::info!(?r, "retention sweep done");
                        }
                        state.metrics.record_sweep(report.as_ref());
                    }
                    Err(e) => {
                        state.metrics.sweeps.with_label_values(&["failed"]).inc();
                        tracing::warn!(error = format!("{e:#}"), "retention sweep failed");
                    }
                }
                if let Some(limit) = &state.rate_limit {
                    limit.forget_idle();
                }
            }
        }
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

/// The sweeper's rules as `[retention]` writes them.
pub fn retention_policy(config: &Config) -> store::RetentionPolicy {
    let r = &config.retention;
    store::RetentionPolicy {
        finished_job_days: r.finished_job_days,
        unreferenced_cache_days: r.unreferenced_cache_days,
        feature_cache_bytes: r.feature_cache_bytes,
        orphan_blob_grace: Some(std::time::Duration::from_secs(r.orphan_blob_grace_secs)),
    }
}
