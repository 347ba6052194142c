//! Extraction throughput (images/s) of the seeded FID Inception on the CPU: the model alone on
//! images prepared beforehand, then the whole engine (read, hash, decode, resize, forward) at
//! batch 4, 8, 16 and 32, with libtorch's default intra-op threads and with one thread, and with
//! two CPU replicas. The figures behind `--batch-size auto` (docs/performance.md).
//!
//! Not a test: run with `make bench-extraction`. GAPMETER_BENCH_EXTRACTOR picks the extractor
//! (default inception-v3-fid-untrained), GAPMETER_BENCH_IMAGES the number of images (default 64,
//! the bundled examples repeated).
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use gapmeter::features::{default_models_dir, DeviceSpec, Engine, Extractor, Registry, RunOptions};
use gapmeter::score::{extract_folder, load_one, ExtractOptions};

const BATCHES: [usize; 4] = [4, 8, 16, 32];

fn main() -> anyhow::Result<()> {
    let id = std::env::var("GAPMETER_BENCH_EXTRACTOR")
        .unwrap_or_else(|_| "inception-v3-fid-untrained".into());
    let n: usize = match std::env::var("GAPMETER_BENCH_IMAGES") {
        Ok(v) => v.parse().context("GAPMETER_BENCH_IMAGES")?,
        Err(_) => 64,
    };
    let manifest = Registry::new(default_models_dir()).get(&id)?;
    let dir = tempfile::tempdir()?;
    let files = fill(dir.path(), n)?;
    println!(
        "{id}, {n} images, {} CPU core(s), libtorch default intra-op threads {}",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        tch::get_num_threads()
    );

    // The model alone: every image decoded beforehand, batches run back to back.
    let x = Extractor::load(manifest.clone(), DeviceSpec::Cpu)?;
    let (h, w) = manifest.input_size.height_width();
    // Reading, decoding and resizing alone, on one thread: the CPU work each image costs besides
    // the model (what decoding takes from the cores inference would otherwise have).
    let t = Instant::now();
    let prepared = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f)?;
            load_one(&bytes, h, w, manifest.resize).map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "prepare alone (read, decode, resize), 1 thread: {:6.1} ms/img",
        1000.0 / rate(n, t)
    );
    x.run(&prepared[..4])?;
    for batch in BATCHES {
        let t = Instant::now();
        for chunk in prepared.chunks(batch) {
            x.run(chunk)?;
        }
        println!(
            "model alone      batch {batch:>2}: {:6.2} img/s",
            rate(n, t)
        );
    }
    drop(x);

    let one = Engine::load(manifest.clone(), &[DeviceSpec::Cpu])?;
    let two = Engine::load(manifest, &[DeviceSpec::Cpu, DeviceSpec::Cpu])?;
    let runs: [(&str, &Engine, Option<usize>); 3] = [
        ("engine, 1 replica, default threads", &one, None),
        ("engine, 1 replica, 1 thread", &one, Some(1)),
        ("engine, 2 replicas, 1 thread each", &two, Some(1)),
    ];
    for (label, engine, threads) in runs {
        for batch in BATCHES {
            let mut run = RunOptions::new(batch);
            run.intra_op_threads = threads;
            let opts = ExtractOptions {
                batch_size: batch,
                run: Some(run),
                ..ExtractOptions::default()
            };
            let t = Instant::now();
            let set = extract_folder(dir.path(), engine, &opts)?;
            anyhow::ensure!(set.features.nrows() == n, "images were skipped");
            println!("{label:<36} batch {batch:>2}: {:6.2} img/s", rate(n, t));
        }
    }
    Ok(())
}

fn rate(n: usize, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64()
}

/// `n` images in `dir`: the bundled examples (A, then B), repeated under new names.
fn fill(dir: &Path, n: usize) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    for set in ["examples/A", "examples/B"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(set))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        sources.extend(files);
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let src = &sources[i % sources.len()];
        let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("png");
        let dst = dir.join(format!("{i:04}.{ext}"));
        std::fs::copy(src, &dst)?;
        out.push(dst);
    }
    Ok(out)
}
