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
        Ok(Self {
            registry,
            requests,
            latency,
            upload_files,
            upload_bytes,
            jobs,
        })
    }

    fn render(&self) -> Vec<u8> {
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
