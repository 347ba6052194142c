//! What a worker tells Prometheus: images extracted, cache hits, job duration by phase, batch
//! size and device, GPU memory in use. `gapmeter worker --metrics-addr` serves them (through
//! `api::serve_metrics`); `gapmeter serve` adds its in-process worker's to the API's `/metrics`.
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::features::DeviceSpec;
use crate::jobs::Work;

/// The worker's instruments, registered in one Prometheus registry.
pub struct WorkerMetrics {
    registry: Registry,
    images_extracted: IntCounter,
    cache_hits: IntCounterVec,
    jobs: IntCounterVec,
    running: IntGauge,
    phase_seconds: HistogramVec,
    batch_size: IntGaugeVec,
    device: IntGaugeVec,
    gpu_memory: IntGaugeVec,
    gpu_memory_total: IntGaugeVec,
    /// CUDA ordinals whose memory is read at each scrape.
    gpus: Mutex<Vec<u32>>,
}

impl WorkerMetrics {
    /// Instruments registered in `registry` (the API's, for an in-process worker).
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let images_extracted = IntCounter::new(
            "worker_images_extracted_total",
            "Images run through a model (rate = images per second)",
        )?;
        let cache_hits = IntCounterVec::new(
            Opts::new(
                "worker_cache_hits_total",
                "Work answered from a cache: `features` (images), `statistics` (datasets), \
                 `result` (jobs)",
            ),
            &["cache"],
        )?;
        let jobs = IntCounterVec::new(
            Opts::new(
                "worker_jobs_total",
                "Job attempts by kind and how they ended",
            ),
            &["kind", "outcome"],
        )?;
        let running = IntGauge::new("worker_jobs_running", "Jobs this worker is running")?;
        let phase_seconds = HistogramVec::new(
            HistogramOpts::new(
                "worker_job_phase_seconds",
                "Time a job attempt spent in each phase (resolving, extracting, metrics, \
                 ingesting)",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            &["phase"],
        )?;
        let batch_size = IntGaugeVec::new(
            Opts::new(
                "worker_batch_size",
                "Images per forward pass of the latest batch, by device",
            ),
            &["device"],
        )?;
        let device = IntGaugeVec::new(
            Opts::new(
                "worker_device_info",
                "The devices this worker runs model replicas on (value 1)",
            ),
            &["device"],
        )?;
        let gpu_memory = IntGaugeVec::new(
            Opts::new(
                "worker_gpu_memory_used_bytes",
                "GPU memory in use on each of this worker's GPUs (NVML, read at scrape)",
            ),
            &["device"],
        )?;
        let gpu_memory_total = IntGaugeVec::new(
            Opts::new("worker_gpu_memory_total_bytes", "GPU memory of each GPU"),
            &["device"],
        )?;
        registry.register(Box::new(images_extracted.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(phase_seconds.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(device.clone()))?;
        registry.register(Box::new(gpu_memory.clone()))?;
        registry.register(Box::new(gpu_memory_total.clone()))?;
        Ok(Self {
            registry: registry.clone(),
            images_extracted,
            cache_hits,
            jobs,
            running,
            phase_seconds,
            batch_size,
            device,
            gpu_memory,
            gpu_memory_total,
            gpus: Mutex::new(Vec::new()),
        })
    }

    /// Instruments in a registry of their own (`gapmeter_` prefixed), for `gapmeter worker`.
    pub fn standalone() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("gapmeter".into()), None)?;
        Self::register(&registry)
    }

    /// Records the devices the worker's replicas run on.
    pub(crate) fn set_devices(&self, devices: &[DeviceSpec]) {
        let mut gpus = Vec::new();
        for d in devices {
            self.device.with_label_values(&[&d.to_string()]).set(1);
            if let DeviceSpec::Cuda(i) = d {
                gpus.push(*i as u32);
            }
        }
        gpus.sort_unstable();
        gpus.dedup();
        if let Ok(mut g) = self.gpus.lock() {
            *g = gpus;
        }
    }

    pub(crate) fn extracted(&self, device: &str, images: usize) {
        self.images_extracted.inc_by(images as u64);
        self.batch_size
            .with_label_values(&[device])
            .set(images as i64);
    }

    /// Counts an attempt's end and its cache hits.
    pub(crate) fn finished(&self, kind: &str, outcome: &str, work: Option<&Work>) {
        self.jobs.with_label_values(&[kind, outcome]).inc();
        if let Some(w) = work {
            self.cache_hits
                .with_label_values(&["features"])
                .inc_by(w.feature_cache_hits);
            self.cache_hits
                .with_label_values(&["statistics"])
                .inc_by(w.statistics_cache_hits);
            self.cache_hits
                .with_label_values(&["result"])
                .inc_by(u64::from(w.result_cache_hit));
        }
    }

    /// Marks a job running until the guard drops.
    pub(crate) fn running(self: &Arc<Self>) -> RunningGuard {
        self.running.inc();
        RunningGuard(self.clone())
    }

    /// A clock for one attempt's phases.
    pub(crate) fn phases(self: &Arc<Self>) -> PhaseClock {
        PhaseClock {
            metrics: self.clone(),
            current: Mutex::new(None),
        }
    }

    /// The text exposition, GPU memory read now.
    pub fn render(&self) -> Vec<u8> {
        self.read_gpu_memory();
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Reads NVML (libnvidia-ml, loaded at run time) for the worker's GPUs; without the library
    /// or a GPU there is no gauge, rather than a made-up zero.
    pub fn read_gpu_memory(&self) {
        let gpus = self.gpus.lock().map(|g| g.clone()).unwrap_or_default();
        if gpus.is_empty() {
            return;
        }
        static NVML: OnceLock<Option<nvml_wrapper::Nvml>> = OnceLock::new();
        let Some(nvml) = NVML.get_or_init(|| nvml_wrapper::Nvml::init().ok()) else {
            return;
        };
        for i in gpus {
            let Ok(info) = nvml.device_by_index(i).and_then(|d| d.memory_info()) else {
                continue;
            };
            let label = format!("cuda:{i}");
            self.gpu_memory
                .with_label_values(&[&label])
                .set(info.used as i64);
            self.gpu_memory_total
                .with_label_values(&[&label])
                .set(info.total as i64);
        }
    }
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

/// Decrements the running-jobs gauge when the job ends, however it ends.
pub(crate) struct RunningGuard(Arc<WorkerMetrics>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.dec();
    }
}

/// Times an attempt's phases: entering a phase ends the one before; dropping ends the last.
pub(crate) struct PhaseClock {
    metrics: Arc<WorkerMetrics>,
    current: Mutex<Option<(String, Instant)>>,
}

impl PhaseClock {
    pub(crate) fn enter(&self, phase: &str) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if current.as_ref().is_some_and(|(p, _)| p == phase) {
            return;
        }
        if let Some((p, since)) = current.take() {
            self.metrics
                .phase_seconds
                .with_label_values(&[&p])
                .observe(since.elapsed().as_secs_f64());
        }
        *current = Some((phase.to_string(), Instant::now()));
    }
}

impl Drop for PhaseClock {
    fn drop(&mut self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some((p, since)) = current.take() {
                self.metrics
                    .phase_seconds
                    .with_label_values(&[&p])
                    .observe(since.elapsed().as_secs_f64());
            }
        }
    }
}
