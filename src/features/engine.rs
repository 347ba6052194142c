//! The extraction engine: one bounded pipeline from "input i" to model outputs, shared by
//! `gapmeter score` (files) and the service's worker (blobs).
//!
//! ```text
//! prepare(i) on the rayon pool ──▶ batch queue (bounded) ──▶ replica threads, one per device
//!   (read/fetch, hash, decode,        at most `ahead` batches    (pull a batch, forward pass,
//!    resize; rejections per input)    waiting for a model        OOM: halve and retry)
//!                                                   ──▶ reorder ──▶ consume(chunk), input order
//! ```
//!
//! A chunk's place in the input is fixed before it is prepared, so outputs reach the consumer in
//! input order whichever replica ran them. Batches prepared but not yet consumed are bounded by
//! `ahead` plus the number of replicas, so memory stays bounded when storage or a replica is
//! slow. The consumer runs on the caller's thread, never between two forward passes.
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard};

use anyhow::{anyhow, bail, Context};
use ndarray::Array2;
use rayon::prelude::*;

use super::extractor::concat_batches;
use super::{DeviceSpec, ExtractedBatch, Extractor, Manifest, Precision};
use crate::imaging::Prepared;

/// Batch size `auto` picks for CPU replicas: the fastest of 4, 8, 16 and 32 with the seeded FID
/// Inception through the engine (decoding alongside) on a 2-core machine (docs/performance.md,
/// `make bench-extraction`).
pub const AUTO_BATCH_CPU: usize = 4;
/// Batch size `auto` picks when any replica is a CUDA device. Not measured (no GPU was at hand);
/// large enough to keep a GPU busy on 299×299 inputs, small enough for most cards' memory, and the
/// OOM split handles the rest.
pub const AUTO_BATCH_CUDA: usize = 64;

/// Images per forward pass, as users write it: `auto` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSize {
    /// [`AUTO_BATCH_CPU`] on CPUs, [`AUTO_BATCH_CUDA`] where a replica is a GPU.
    #[default]
    Auto,
    Fixed(usize),
}

impl BatchSize {
    /// The number of images per forward pass on `devices`.
    pub fn resolve(self, devices: &[DeviceSpec]) -> usize {
        match self {
            BatchSize::Fixed(n) => n.max(1),
            BatchSize::Auto if devices.iter().any(|d| matches!(d, DeviceSpec::Cuda(_))) => {
                AUTO_BATCH_CUDA
            }
            BatchSize::Auto => AUTO_BATCH_CPU,
        }
    }
}

impl FromStr for BatchSize {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(BatchSize::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(BatchSize::Fixed(n)),
            _ => bail!("batch size {s:?}: expected auto or a positive number"),
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Auto => write!(f, "auto"),
            BatchSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Why an input gave no prepared image.
#[derive(Debug)]
pub enum PrepareError {
    /// This input is left out (unreadable, not an image); the reason is shown to the user.
    Rejected(String),
    /// The run cannot go on (the blob store is unreachable, the job was cancelled).
    Fatal(anyhow::Error),
}

/// How one [`Engine::run`] goes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Inputs per chunk; a chunk's accepted inputs make one forward pass (or fewer when split).
    pub batch_size: usize,
    /// Chunks prepared ahead of the model, beyond the one each replica is running.
    pub ahead: usize,
    /// libtorch intra-op threads on each replica's thread (`None`: libtorch's default).
    pub intra_op_threads: Option<usize>,
    #[doc(hidden)]
    pub inject: Injection,
}

impl RunOptions {
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size: batch_size.max(1),
            ahead: 2,
            intra_op_threads: None,
            inject: Injection::default(),
        }
    }
}

/// Failures injected to test recovery paths (not for production use).
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Injection {
    /// Forward passes over more than this many images fail as if out of memory.
    pub oom_above: Option<usize>,
    /// The replica with this index fails its first batch with a non-OOM error.
    pub fail_replica: Option<usize>,
}

/// One chunk of the input, handed to the consumer in input order.
pub struct Chunk {
    /// The input indices this chunk covers.
    pub range: Range<usize>,
    /// Inputs left out, in input order, with the reason.
    pub rejected: Vec<(usize, String)>,
    /// Inputs that were run, in input order: row `k` of every output is input `kept[k]`.
    pub kept: Vec<usize>,
    /// The model's outputs (on the CPU); `None` when every input of the chunk was rejected.
    pub outputs: Option<ExtractedBatch>,
    /// The device whose replica ran it (`None` with no outputs).
    pub device: Option<DeviceSpec>,
}

/// What a run did, for tests and logs.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Batches each replica completed, by replica index.
    pub batches_per_replica: Vec<usize>,
    /// Times a batch was halved after an out-of-memory error.
    pub oom_splits: usize,
    /// Replicas taken out of service during the run, with their error.
    pub failed_replicas: Vec<(DeviceSpec, String)>,
    /// With a reduced [`Precision`]: the first batch run also in float32, to measure what the
    /// precision changed (`None` at float32, or when no batch ran).
    pub precision_sample: Option<PrecisionSample>,
}

/// One batch's content features at the engine's reduced precision and in float32.
#[derive(Debug, Clone)]
pub struct PrecisionSample {
    pub precision: Precision,
    /// Rows of the float32 reference model.
    pub reference: Array2<f32>,
    /// The same images' rows at `precision`.
    pub reduced: Array2<f32>,
}

struct Replica {
    device: DeviceSpec,
    /// Held for one forward pass, so concurrent runs share a replica batch by batch.
    model: Mutex<Extractor>,
}

/// One model replica per device, all fed by one prepare pool.
///
/// ```no_run
/// use gapmeter::features::{DeviceSpec, Engine, PrepareError, Registry, RunOptions};
/// use gapmeter::imaging::{decode_rgb, prepare};
///
/// # fn main() -> anyhow::Result<()> {
/// let manifest = Registry::new("models").get("tiny-cnn")?;
/// let engine = Engine::load(manifest, &[DeviceSpec::Cpu, DeviceSpec::Cpu])?;
/// let files = vec!["a.png", "b.png"];
/// let (h, w) = engine.manifest().input_size.height_width();
/// let resize = engine.manifest().resize;
/// let mut rows = 0;
/// engine.run(
///     files.len(),
///     &RunOptions::new(8),
///     |i| {
///         let bytes = std::fs::read(files[i]).map_err(|e| PrepareError::Rejected(e.to_string()))?;
///         let img = decode_rgb(&bytes).map_err(|e| PrepareError::Rejected(e.to_string()))?;
///         prepare(&img, h, w, resize).map_err(|e| PrepareError::Rejected(e.to_string()))
///     },
///     |chunk| {
///         rows += chunk.kept.len();
///         Ok(())
///     },
/// )?;
/// # Ok(())
/// # }
/// ```
pub struct Engine {
    manifest: Manifest,
    replicas: Vec<Replica>,
    feature_dim: usize,
    precision: Precision,
    /// A float32 model on the first device, when the replicas run at a reduced precision: it
    /// runs each run's first batch again, so the deviation is measured, not assumed.
    reference: Option<Mutex<Extractor>>,
}

impl Engine {
    /// Loads one replica of `manifest` on each of `devices` (checked first: an unavailable
    /// device fails here, before anything runs).
    pub fn load(manifest: Manifest, devices: &[DeviceSpec]) -> anyhow::Result<Self> {
        Self::load_in(manifest, devices, Precision::Fp32)
    }

    /// [`Self::load`] with the replicas at `precision` (and, below float32, a float32 reference
    /// model on the first device for [`RunReport::precision_sample`]).
    pub fn load_in(
        manifest: Manifest,
        devices: &[DeviceSpec],
        precision: Precision,
    ) -> anyhow::Result<Self> {
        if devices.is_empty() {
            bail!("no device to load extractor {} on", manifest.id);
        }
        for d in devices {
            d.to_device()?;
        }
        let mut replicas = Vec::with_capacity(devices.len());
        for &device in devices {
            let model = Extractor::load_in(manifest.clone(), device, precision)
                .with_context(|| format!("loading extractor {} on {device}", manifest.id))?;
            replicas.push(Replica {
                device,
                model: Mutex::new(model),
            });
        }
        let feature_dim = lock(&replicas[0].model)?.feature_dim();
        let reference = match precision {
            Precision::Fp32 => None,
            _ => Some(Mutex::new(
                Extractor::load(manifest.clone(), devices[0])
                    .with_context(|| format!("loading the float32 reference of {}", manifest.id))?,
            )),
        };
        Ok(Self {
            manifest,
            replicas,
            feature_dim,
            precision,
            reference,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Dimension of the content feature vector.
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The replicas' devices, by replica index.
    pub fn devices(&self) -> Vec<DeviceSpec> {
        self.replicas.iter().map(|r| r.device).collect()
    }

    /// Prepares inputs `0..n` with `prepare` on the rayon pool, runs them on the replicas and
    /// hands every chunk to `consume` in input order. Stops at the first error of `consume` or a
    /// [`PrepareError::Fatal`], or when every replica has failed.
    pub fn run<P, C>(
        &self,
        n: usize,
        opts: &RunOptions,
        prepare: P,
        mut consume: C,
    ) -> anyhow::Result<RunReport>
    where
        P: Fn(usize) -> Result<Prepared, PrepareError> + Sync,
        C: FnMut(Chunk) -> anyhow::Result<()>,
    {
        let batch = opts.batch_size.max(1);
        let chunks = n.div_ceil(batch);
        let shared = Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                in_flight: 0,
                running: 0,
                produced_all: false,
                stop: false,
                alive: self.replicas.len(),
                precision_claimed: false,
                report: RunReport {
                    batches_per_replica: vec![0; self.replicas.len()],
                    ..RunReport::default()
                },
            }),
            changed: Condvar::new(),
            limit: opts.ahead.max(1) + self.replicas.len(),
        };
        let (tx, rx) = mpsc::channel::<Event>();
        let outcome = std::thread::scope(|s| -> anyhow::Result<()> {
            let (shared, prepare) = (&shared, &prepare);
            let assembler_tx = tx.clone();
            s.spawn(move || assemble(shared, n, batch, prepare, assembler_tx));
            for (index, replica) in self.replicas.iter().enumerate() {
                let tx = tx.clone();
                s.spawn(move || self.serve(shared, index, replica, opts, tx));
            }
            drop(tx);
            let result = deliver(shared, chunks, &rx, &mut consume);
            shared.stop();
            result
        });
        let report = shared.lock()?.report.clone();
        outcome.map(|()| report)
    }

    /// A replica's thread: pull batches until there are none left, the run stops, or this
    /// replica fails (its batch then goes back to the queue for the others).
    fn serve(
        &self,
        shared: &Shared,
        index: usize,
        replica: &Replica,
        opts: &RunOptions,
        tx: mpsc::Sender<Event>,
    ) {
        if let Some(t) = opts.intra_op_threads {
            // OpenMP's thread count is per calling thread: set it where the forward runs.
            tch::set_num_threads(t.max(1) as i32);
        }
        let mut first = true;
        while let Some(job) = shared.take() {
            let mut splits = 0;
            let result = if first && opts.inject.fail_replica == Some(index) {
                Err(anyhow!("injected failure of replica {index}"))
            } else {
                // A panic inside libtorch's bindings must not strand the batch (the run would
                // wait for it forever): it counts as this replica failing.
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run_split(replica, &job.prepared, &opts.inject, &mut splits)
                }))
                .unwrap_or_else(|_| Err(anyhow!("the forward pass panicked")))
            };
            first = false;
            let Ok(mut st) = shared.lock() else { return };
            st.report.oom_splits += splits;
            let sample = result.is_ok() && self.reference.is_some() && !st.precision_claimed;
            st.precision_claimed |= sample;
            if let (true, Ok(outputs)) = (sample, &result) {
                drop(st);
                let measured = self.precision_sample(&job.prepared, outputs);
                let Ok(relocked) = shared.lock() else { return };
                st = relocked;
                match measured {
                    Ok(s) => st.report.precision_sample = Some(s),
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "could not measure the reduced precision's deviation"
                    ),
                }
            }
            match result {
                Ok(outputs) => {
                    st.running -= 1;
                    st.report.batches_per_replica[index] += 1;
                    drop(st);
                    shared.changed.notify_all();
                    let chunk = Chunk {
                        range: job.range,
                        rejected: job.rejected,
                        kept: job.kept,
                        outputs: Some(outputs),
                        device: Some(replica.device),
                    };
                    let _ = tx.send(Event::Done(job.seq, chunk));
                }
                Err(e) => {
                    tracing::warn!(device = %replica.device, error = format!("{e:#}"), "replica taken out of service");
                    st.running -= 1;
                    st.alive -= 1;
                    st.report
                        .failed_replicas
                        .push((replica.device, format!("{e:#}")));
                    st.queue.push_front(job);
                    if st.alive == 0 {
                        st.stop = true;
                        let _ = tx.send(Event::Failed(
                            e.context(format!("every replica failed (last: {})", replica.device)),
                        ));
                    }
                    drop(st);
                    shared.changed.notify_all();
                    return;
                }
            }
        }
    }
}

impl Engine {
    /// Runs `batch` on the float32 reference and pairs its content features with `reduced`'s.
    fn precision_sample(
        &self,
        batch: &[Prepared],
        reduced: &ExtractedBatch,
    ) -> anyhow::Result<PrecisionSample> {
        let reference = self
            .reference
            .as_ref()
            .context("no float32 reference model")?;
        let output = self.manifest.feature_output();
        let reference = lock(reference)?.run(batch)?.rows_f32(output)?;
        Ok(PrecisionSample {
            precision: self.precision,
            reference,
            reduced: reduced.rows_f32(output)?,
        })
    }
}

/// Runs `batch` on `replica`; on an out-of-memory error, halves it and retries each half
/// (down to single images), so a batch too large for the device still goes through.
fn run_split(
    replica: &Replica,
    batch: &[Prepared],
    inject: &Injection,
    splits: &mut usize,
) -> anyhow::Result<ExtractedBatch> {
    let result = match inject.oom_above {
        Some(max) if batch.len() > max => Err(anyhow!(
            "out of memory (injected: batches over {max} images fail)"
        )),
        _ => lock(&replica.model)?.run(batch),
    };
    match result {
        Err(e) if batch.len() > 1 && is_out_of_memory(&e) => {
            *splits += 1;
            tracing::debug!(device = %replica.device, images = batch.len(), "out of memory: halving the batch");
            let (a, b) = batch.split_at(batch.len() / 2);
            let a = run_split(replica, a, inject, splits)?;
            let b = run_split(replica, b, inject, splits)?;
            concat_batches(vec![a, b])
        }
        other => other,
    }
}

/// libtorch's allocators say "out of memory" (CUDA) or "can't allocate memory" (CPU).
fn is_out_of_memory(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("out of memory") || text.contains("can't allocate memory")
}

/// A prepared chunk waiting for a replica.
struct Job {
    seq: usize,
    range: Range<usize>,
    rejected: Vec<(usize, String)>,
    kept: Vec<usize>,
    prepared: Vec<Prepared>,
}

enum Event {
    Done(usize, Chunk),
    Failed(anyhow::Error),
}

struct State {
    queue: VecDeque<Job>,
    /// Chunks prepared (or being prepared) and not yet consumed.
    in_flight: usize,
    /// Jobs a replica has taken and not finished.
    running: usize,
    produced_all: bool,
    stop: bool,
    /// Replicas still in service.
    alive: usize,
    /// A replica has taken on measuring the reduced precision (once a run).
    precision_claimed: bool,
    report: RunReport,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Most chunks in flight at once.
    limit: usize,
}

impl Shared {
    fn lock(&self) -> anyhow::Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| anyhow!("extraction state lock poisoned"))
    }

    fn stop(&self) {
        if let Ok(mut st) = self.lock() {
            st.stop = true;
        }
        self.changed.notify_all();
    }

    /// Waits for a job; `None` when the run stops or every chunk has been run.
    fn take(&self) -> Option<Job> {
        let mut st = self.lock().ok()?;
        loop {
            if st.stop {
                return None;
            }
            if let Some(job) = st.queue.pop_front() {
                st.running += 1;
                return Some(job);
            }
            // A job still running may come back (its replica failing), so only leave once
            // none is.
            if st.produced_all && st.running == 0 {
                return None;
            }
            st = self.changed.wait(st).ok()?;
        }
    }

    /// Waits until another chunk may be prepared; false when the run stops.
    fn reserve(&self) -> bool {
        let Ok(mut st) = self.lock() else {
            return false;
        };
        loop {
            if st.stop {
                return false;
            }
            if st.in_flight < self.limit {
                st.in_flight += 1;
                return true;
            }
            st = match self.changed.wait(st) {
                Ok(st) => st,
                Err(_) => return false,
            };
        }
    }
}

/// The assembler's thread: prepares chunk after chunk (each on the rayon pool) while the
/// replicas run earlier ones.
fn assemble<P>(shared: &Shared, n: usize, batch: usize, prepare: &P, tx: mpsc::Sender<Event>)
where
    P: Fn(usize) -> Result<Prepared, PrepareError> + Sync,
{
    for (seq, start) in (0..n).step_by(batch).enumerate() {
        if !shared.reserve() {
            break;
        }
        let range = start..(start + batch).min(n);
        let results: Vec<Result<Prepared, PrepareError>> =
            range.clone().into_par_iter().map(prepare).collect();
        let mut job = Job {
            seq,
            range: range.clone(),
            rejected: Vec::new(),
            kept: Vec::new(),
            prepared: Vec::new(),
        };
        for (i, r) in range.zip(results) {
            match r {
                Ok(p) => {
                    job.kept.push(i);
                    job.prepared.push(p);
                }
                Err(PrepareError::Rejected(reason)) => job.rejected.push((i, reason)),
                Err(PrepareError::Fatal(e)) => {
                    shared.stop();
                    let _ = tx.send(Event::Failed(e));
                    return;
                }
            }
        }
        if job.prepared.is_empty() {
            let chunk = Chunk {
                range: job.range,
                rejected: job.rejected,
                kept: Vec::new(),
                outputs: None,
                device: None,
            };
            let _ = tx.send(Event::Done(seq, chunk));
        } else if let Ok(mut st) = shared.lock() {
            st.queue.push_back(job);
            drop(st);
            shared.changed.notify_all();
        }
    }
    if let Ok(mut st) = shared.lock() {
        st.produced_all = true;
    }
    shared.changed.notify_all();
}

/// The caller's side: reorders finished chunks and consumes them in input order.
fn deliver<C>(
    shared: &Shared,
    chunks: usize,
    rx: &mpsc::Receiver<Event>,
    consume: &mut C,
) -> anyhow::Result<()>
where
    C: FnMut(Chunk) -> anyhow::Result<()>,
{
    let mut pending: BTreeMap<usize, Chunk> = BTreeMap::new();
    let mut next = 0;
    while next < chunks {
        match rx.recv() {
            Ok(Event::Done(seq, chunk)) => {
                pending.insert(seq, chunk);
            }
            Ok(Event::Failed(e)) => return Err(e),
            Err(_) => bail!("the extraction threads stopped before every image was run"),
        }
        while let Some(chunk) = pending.remove(&next) {
            consume(chunk)?;
            next += 1;
            shared.lock()?.in_flight -= 1;
            shared.changed.notify_all();
        }
    }
    Ok(())
}

fn lock(model: &Mutex<Extractor>) -> anyhow::Result<MutexGuard<'_, Extractor>> {
    model
        .lock()
        .map_err(|_| anyhow!("model lock poisoned (a forward pass panicked)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_parse_and_resolve() {
        assert_eq!("auto".parse::<BatchSize>().unwrap(), BatchSize::Auto);
        assert_eq!("16".parse::<BatchSize>().unwrap(), BatchSize::Fixed(16));
        assert!("0".parse::<BatchSize>().is_err());
        assert!("big".parse::<BatchSize>().is_err());
        assert_eq!(BatchSize::Auto.resolve(&[DeviceSpec::Cpu]), AUTO_BATCH_CPU);
        assert_eq!(
            BatchSize::Auto.resolve(&[DeviceSpec::Cpu, DeviceSpec::Cuda(1)]),
            AUTO_BATCH_CUDA
        );
        assert_eq!(BatchSize::Fixed(3).resolve(&[DeviceSpec::Cuda(0)]), 3);
        assert_eq!(BatchSize::Auto.to_string(), "auto");
    }

    #[test]
    fn out_of_memory_errors_are_recognised() {
        assert!(is_out_of_memory(&anyhow!(
            "CUDA out of memory. Tried to allocate 2.00 GiB"
        )));
        assert!(is_out_of_memory(&anyhow!(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        )));
        assert!(!is_out_of_memory(&anyhow!("shape mismatch")));
    }
}
