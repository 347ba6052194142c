//! Workers: claim jobs from the PostgreSQL queue, run them (score and matrix: datasets → cached
//! or extracted features → metrics; ingest: a dataset URI → the dataset's files) and write the
//! result under the lease's fencing token. Any number of worker processes on any hosts share one
//! database and blob store (`gapmeter worker`); `gapmeter serve` also runs one in-process.

mod ingest;
mod metrics;
mod models;
mod plan;
mod run;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::Semaphore;

pub use metrics::WorkerMetrics;
pub use models::Models;

use crate::config::{Config, IngestConfig, Limits};
use crate::features::{BatchSize, Devices, Registry};
use crate::jobs::{JobKind, Work};
use crate::store::{self, Blobs, Claimed, Lease, LeaseError, Outcome};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// One model replica per device.
    pub devices: Devices,
    pub concurrency: usize,
    pub batch_size: BatchSize,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub poll: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub share_cache: bool,
    /// Per-file limits of ingest jobs (as for uploads).
    pub limits: Limits,
    pub ingest: IngestConfig,
    /// The instance's default per-team limits; ingest jobs stop at the first file over them.
    pub quotas: crate::store::Quotas,
    /// Where this worker serves `/metrics` and `/healthz` (`gapmeter worker`); `None` = nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl WorkerOptions {
    /// From the service configuration.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let q = &config.queue;
        Ok(Self {
            devices: config.worker.devices().parse().context("worker.devices")?,
            concurrency: config.worker.concurrency.max(1),
            batch_size: config
                .worker
                .batch_size
                .to_string()
                .parse()
                .context("worker.batch_size")?,
            lease: Duration::from_millis(q.lease_ms.max(100)),
            heartbeat: Duration::from_millis(q.heartbeat_ms.max(10)),
            poll: Duration::from_millis(q.poll_ms.max(10)),
            backoff_base: Duration::from_millis(q.backoff_base_ms),
            backoff_max: Duration::from_millis(q.backoff_max_ms),
            share_cache: config.cache.share_across_teams,
            limits: config.limits.clone(),
            ingest: config.ingest.clone(),
            quotas: crate::store::Quotas {
                datasets: config.quotas.datasets,
                images: config.quotas.images,
                bytes: config.quotas.bytes,
                active_jobs: config.quotas.active_jobs,
            },
            metrics_addr: match config.worker.metrics_addr.trim() {
                "" => None,
                addr => Some(addr.parse().context("worker.metrics_addr")?),
            },
        })
    }

    /// Delay before attempt `attempt + 1`: base × 2^(attempt−1), capped.
    fn backoff(&self, attempt: i32) -> Duration {
        let factor = 2u32.saturating_pow((attempt - 1).clamp(0, 30) as u32);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// One worker process's job loop.
pub struct Worker {
    pool: PgPool,
    blobs: Blobs,
    registry: Registry,
    options: WorkerOptions,
    id: String,
    models: Arc<Models>,
    metrics: Arc<WorkerMetrics>,
}

/// Why an attempt stopped without a result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// The request cannot succeed (missing dataset, wrong metric for the extractor...).
    #[error("{0:#}")]
    Fatal(anyhow::Error),
    /// A transient failure (database, blob store): retried with backoff.
    #[error("{0:#}")]
    Retry(anyhow::Error),
    #[error("cancelled")]
    Cancelled,
    #[error("lease lost")]
    LeaseLost,
    /// The worker is shutting down: the job goes back to the queue.
    #[error("worker shutting down")]
    Shutdown,
}

impl From<LeaseError> for JobError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Lost(..) => JobError::LeaseLost,
            LeaseError::Db(e) => JobError::Retry(e.into()),
        }
    }
}

/// Flags the heartbeat and the shutdown path set, and the running job reads between batches
/// (and the metrics between resamples, through `any`).
#[derive(Debug, Default)]
pub(crate) struct Control {
    cancel: AtomicBool,
    lost: AtomicBool,
    shutdown: AtomicBool,
    /// Raised with any of the above.
    any: Arc<AtomicBool>,
}

impl Control {
    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Relaxed);
        self.any.store(true, Ordering::Relaxed);
    }

    /// The flag [`crate::score::ScoreOptions::interrupt`] watches.
    pub(crate) fn interrupt(&self) -> Arc<AtomicBool> {
        self.any.clone()
    }

    /// The reason to stop now, if any.
    pub(crate) fn check(&self) -> Result<(), JobError> {
        if self.lost.load(Ordering::Relaxed) {
            Err(JobError::LeaseLost)
        } else if self.cancel.load(Ordering::Relaxed) {
            Err(JobError::Cancelled)
        } else if self.shutdown.load(Ordering::Relaxed) {
            Err(JobError::Shutdown)
        } else {
            Ok(())
        }
    }
}

impl Worker {
    /// A worker named after its host and process, so job events say who ran what. Checks its
    /// devices and loads the default extractors first: a worker that cannot run jobs fails here,
    /// before it claims any.
    pub fn new(
        pool: PgPool,
        blobs: Blobs,
        registry: Registry,
        options: WorkerOptions,
    ) -> anyhow::Result<Self> {
        let models = Models::open(&options.devices)?;
        models.preload(&registry)?;
        Self::with_models(pool, blobs, registry, options, Arc::new(models))
    }

    /// A worker on models already opened (and preloaded) by the caller.
    pub fn with_models(
        pool: PgPool,
        blobs: Blobs,
        registry: Registry,
        options: WorkerOptions,
        models: Arc<Models>,
    ) -> anyhow::Result<Self> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let id = format!(
            "{host}:{}:{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        // A registry of its own until the caller hands over a shared one (`with_metrics`).
        let metrics = Arc::new(WorkerMetrics::standalone()?);
        metrics.set_devices(models.devices());
        Ok(Self {
            pool,
            blobs,
            registry,
            options,
            id,
            models,
            metrics,
        })
    }

    /// Records into `metrics` (the API's registry, for an in-process worker).
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> Self {
        metrics.set_devices(self.models.devices());
        self.metrics = metrics;
        self
    }

    /// The worker's instruments, for `/metrics`.
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.metrics.clone()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Claims and runs jobs until `shutdown` resolves; then stops claiming, asks running jobs to
    /// stop at their next batch and puts them back in the queue.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let this = Arc::new(self);
        tracing::info!(worker = %this.id, devices = ?this.models.devices(), concurrency = this.options.concurrency, "worker started");
        let slots = Arc::new(Semaphore::new(this.options.concurrency));
        let mut running: Vec<Arc<Control>> = Vec::new();
        let mut listener = match store::listen(&this.pool, store::CHANNEL).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; polling only");
                None
            }
        };
        tokio::pin!(shutdown);
        // Expired leases go back to the queue on a clock of their own: a worker whose slots are
        // all busy still frees a dead worker's job for whoever is idle (or starting).
        let reaper = tokio::spawn(reap_every(this.pool.clone(), this.options.heartbeat));
        loop {
            running.retain(|c| Arc::strong_count(c) > 1);
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p?,
                _ = &mut shutdown => break,
            };
            match store::claim(&this.pool, &this.id, this.options.lease).await {
                Ok(Some(job)) => {
                    let control = Arc::new(Control::default());
                    running.push(control.clone());
                    let worker = this.clone();
                    tokio::spawn(async move {
                        worker.run_job(job, control).await;
                        drop(permit);
                    });
                    continue;
                }
                Ok(None) => drop(permit),
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "claiming a job failed");
                }
            }
            // Nothing to do: sleep until a NOTIFY, the poll interval or shutdown.
            let wait = async {
                match listener.as_mut() {
                    Some(l) => {
                        if let Err(e) = l.recv().await {
                            tracing::debug!(error = %e, "listener interrupted");
                            tokio::time::sleep(this.options.poll).await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = tokio::time::sleep(this.options.poll) => {}
                _ = &mut shutdown => break,
            }
        }
        reaper.abort();
        for c in &running {
            c.raise(&c.shutdown);
        }
        // Wait for every slot: running jobs notice the flag at their next batch.
        let _all = slots.acquire_many(this.options.concurrency as u32).await?;
        tracing::info!(worker = %this.id, "worker stopped");
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(job = %job.lease.job, attempt = job.attempt))]
    async fn run_job(self: Arc<Self>, job: Claimed, control: Arc<Control>) {
        let lease = job.lease;
        let _running = self.metrics.running();
        let phases = Arc::new(self.metrics.phases());
        let heartbeat = tokio::spawn(keep_alive(
            self.pool.clone(),
            lease,
            self.options.lease,
            self.options.heartbeat,
            control.clone(),
        ));
        let (result, work) = match job.kind {
            JobKind::Ingest => {
                phases.enter("ingesting");
                let (result, work) =
                    ingest::run(&self.pool, &self.blobs, &self.options, &job, &control).await;
                (result, serde_json::to_value(work).unwrap_or_default())
            }
            _ => {
                let ctx = run::JobContext {
                    pool: self.pool.clone(),
                    blobs: self.blobs.clone(),
                    registry: self.registry.clone(),
                    models: self.models.clone(),
                    options: self.options.clone(),
                    runtime: tokio::runtime::Handle::current(),
                    control: control.clone(),
                    lease,
                    team: job.team,
                    metrics: self.metrics.clone(),
                    phases: phases.clone(),
                };
                let spec = job.spec.clone();
                // Extraction and metrics are CPU-bound: off the async runtime's threads.
                let outcome = tokio::task::spawn_blocking(move || {
                    let mut work = Work::default();
                    let result = run::run(&ctx, spec, &mut work);
                    (result, work)
                })
                .await;
                let (result, work) = match outcome {
                    Ok(r) => r,
                    Err(e) => (
                        Err(JobError::Retry(anyhow::anyhow!("the job panicked: {e}"))),
                        Work::default(),
                    ),
                };
                (result, serde_json::to_value(work).unwrap_or_default())
            }
        };
        heartbeat.abort();
        drop(phases);
        let ended = match &result {
            Ok(_) => "succeeded",
            Err(JobError::Fatal(_)) => "failed",
            Err(JobError::Retry(_)) => "retry",
            Err(JobError::Cancelled) => "cancelled",
            Err(JobError::Shutdown) => "released",
            Err(JobError::LeaseLost) => "lease_lost",
        };
        let counted: Option<Work> = serde_json::from_value(work.clone()).ok();
        self.metrics
            .finished(job.kind.as_str(), ended, counted.as_ref());
        let outcome = match result {
            Ok(value) => Outcome::Succeeded { result: value },
            Err(JobError::Fatal(e)) => Outcome::Failed {
                detail: format!("{e:#}"),
            },
            Err(JobError::Retry(e)) => {
                tracing::warn!(error = format!("{e:#}"), "attempt failed");
                Outcome::Retry {
                    message: format!("{e:#}"),
                    backoff: self.options.backoff(job.attempt),
                }
            }
            Err(JobError::Cancelled) => Outcome::Cancelled,
            Err(JobError::Shutdown) => Outcome::Release,
            Err(JobError::LeaseLost) => {
                tracing::warn!("lease lost; another worker owns the job now");
                return;
            }
        };
        match store::finish(&self.pool, lease, &outcome, &work).await {
            Ok(status) => tracing::info!(status = status.as_str(), "job finished"),
            Err(LeaseError::Lost(..)) => tracing::warn!("result refused: the lease was lost"),
            Err(LeaseError::Db(e)) => {
                tracing::error!(error = %e, "could not record the outcome; the lease will expire and the job rerun")
            }
        }
    }
}

/// Puts jobs whose lease expired back in the queue (or ends them), every `every`, until aborted.
async fn reap_every(pool: PgPool, every: Duration) {
    loop {
        if let Err(e) = store::reap_expired(&pool).await {
            tracing::warn!(error = %e, "reaping expired leases failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// Renews the lease until aborted; raises the cancel and lost flags it learns about.
async fn keep_alive(
    pool: PgPool,
    lease: Lease,
    extend: Duration,
    every: Duration,
    control: Arc<Control>,
) {
    loop {
        tokio::time::sleep(every).await;
        match store::heartbeat(&pool, lease, extend).await {
            Ok(cancel) => {
                if cancel {
                    control.raise(&control.cancel);
                }
            }
            Err(LeaseError::Lost(..)) => {
                control.raise(&control.lost);
                return;
            }
            // Transient: the next beat may get through before the lease runs out.
            Err(LeaseError::Db(e)) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_up_to_the_cap() {
        let config = Config::from_overrides([
            ("GAPMETER_QUEUE__BACKOFF_BASE_MS", "1000"),
            ("GAPMETER_QUEUE__BACKOFF_MAX_MS", "5000"),
        ])
        .unwrap();
        let o = WorkerOptions::from_config(&config).unwrap();
        let secs: Vec<u64> = (1..=5).map(|a| o.backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 5, 5]);
    }
}
