//! Prometheus metrics: requests by route and status, latencies, uploaded files and bytes.
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::AppState;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub upload_files: IntCounterVec,
    pub upload_bytes: IntCounterVec,
    /// Jobs by status, read from the queue at each scrape (workers may run anywhere).
    pub jobs: IntGaugeVec,
    /// Age of the oldest queued job, read at each scrape (0 when none waits).
    pub oldest_queued: prometheus::Gauge,
    /// Retention sweeps run by this process, and what they deleted.
    pub sweeps: IntCounterVec,
    pub swept: IntCounterVec,
    /// Run before each scrape (an in-process worker reads its GPUs).
    scrape_hooks: std::sync::Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("gapmeter".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
            ]),
            &["method", "route"],
        )?;
        let upload_files = IntCounterVec::new(
            Opts::new("upload_files_total", "Uploaded files by outcome"),
            &["outcome"],
        )?;
        let upload_bytes = IntCounterVec::new(
            Opts::new("upload_bytes_total", "Bytes received in uploads"),
            &["kind"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(upload_files.clone()))?;
        registry.register(Box::new(upload_bytes.clone()))?;
        let jobs = IntGaugeVec::new(
            Opts::new("jobs", "Jobs in the queue by status"),
            &["status"],
        )?;
        registry.register(Box::new(jobs.clone()))?;
        let oldest_queued = prometheus::Gauge::new(
            "queue_oldest_queued_seconds",
            "Age of the oldest job waiting in the queue (0 when none waits)",
        )?;
        let sweeps = IntCounterVec::new(
            Opts::new(
                "retention_sweeps_total",
                "Retention sweeps: `done`, `skipped` (another process held the lock), `failed`",
            ),
            &["outcome"],
        )?;
        let swept = IntCounterVec::new(
            Opts::new(
                "retention_deleted_total",
                "What retention sweeps deleted: jobs, results, statistics, feature_rows, \
                 feature_bytes, blobs",
            ),
            &["what"],
        )?;
        registry.register(Box::new(oldest_queued.clone()))?;
        registry.register(Box::new(sweeps.clone()))?;
        registry.register(Box::new(swept.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            upload_files,
            upload_bytes,
            jobs,
            oldest_queued,
            sweeps,
            swept,
            scrape_hooks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The registry, for instruments of the same process (an in-process worker's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs `hook` before every scrape.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.scrape_hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

    /// Counts a sweep and what it deleted.
    pub fn record_sweep(&self, report: Option<&crate::store::SweepReport>) {
        let Some(r) = report else {
            self.sweeps.with_label_values(&["skipped"]).inc();
            return;
        };
        self.sweeps.with_label_values(&["done"]).inc();
        for (what, n) in [
            ("jobs", r.jobs),
            ("results", r.results),
            ("statistics", r.statistics),
            ("feature_rows", r.feature_rows),
            ("feature_bytes", r.feature_bytes),
            ("blobs", r.blobs),
        ] {
            self.swept.with_label_values(&[what]).inc_by(n);
        }
    }

    fn render(&self) -> Vec<u8> {
        if let Ok(hooks) = self.scrape_hooks.lock() {
            for hook in hooks.iter() {
                hook();
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Records every request under its route template (`/v1/datasets/{id}`), never the raw path,
/// so ids do not explode the label set.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .latency
        .with_label_values(&[&method, &route])
        .observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    resp
}

/// `GET /metrics`
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match crate::store::job_counts(&state.pool).await {
        Ok(counts) => {
            for status in crate::store::JobStatus::ALL {
                let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |c| c.1);
                state
                    .metrics
                    .jobs
                    .with_label_values(&[status.as_str()])
                    .set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count jobs for /metrics"),
    }
    match crate::store::oldest_queued_age(&state.pool).await {
        Ok(age) => state.metrics.oldest_queued.set(age.unwrap_or(0.0)),
        Err(e) => tracing::warn!(error = %e, "could not read the queue's age for /metrics"),
    }
    let metrics = state.metrics.clone();
    // Scrape hooks may read the GPUs (NVML): off the runtime's threads.
    let body = tokio::task::spawn_blocking(move || metrics.render())
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Serves a process's own `/metrics` (what `render` prints) and `/healthz` on `addr` until
/// `shutdown`: a `gapmeter worker`'s endpoint, which has no API beside it.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    render: std::sync::Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    // Rendering may read the GPUs (NVML): off the runtime's threads.
                    let body = tokio::task::spawn_blocking(move || render())
                        .await
                        .unwrap_or_default();
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    tracing::info!(%addr, "metrics listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
