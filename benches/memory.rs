//! Memory at scale: writes two synthetic float32 feature files (50,000 × 2048 each by default),
//! runs the real `gapmeter score A.npy B.npy --metrics <m>` for FID, KID and PRDC as a child
//! process, and prints each run's wall time and the child's peak resident memory next to the size
//! of the two float32 matrices. Then times KID (100 subsets of 1,000) in this process at
//! 5,000 vs 5,000, once with every subset's kernels computed on their own and once reusing whole
//! kernel matrices. Not a test: run with `make bench-memory`.
//!
//! Settings (environment): GAPMETER_MEMORY_N samples per side (default 50000),
//! GAPMETER_MEMORY_D dimensions (2048), GAPMETER_MEMORY_METRICS (fid,kid,prdc),
//! GAPMETER_MEMORY_KID_N samples per side of the KID timing (5000; 0 skips it).
//! `GAPMETER_MEMORY_N=5000 make bench-memory` is a quick look.
//!
//! The child is the debug build of the binary (`cargo build`, which `make bench-memory` runs
//! first), found next to this benchmark's own executable.
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use gapmeter::metrics::{kid, kid_with, Features, KidKernels, KidParams};
use rand::{Rng, SeedableRng};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Uniform values in [shift, shift + 1) with a per-column slope, so the two sets differ in both
/// mean and spread and no two rows coincide.
fn row(rng: &mut impl Rng, d: usize, shift: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend((0..d).map(|j| shift * (1.0 + (j % 7) as f32 / 7.0) + rng.gen::<f32>()));
}

/// An n × d little-endian float32 `.npy`, written row by row (this process never holds it).
fn write_npy(path: &Path, n: usize, d: usize, shift: f32, seed: u64) -> std::io::Result<()> {
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    // Magic (6) + version (2) + length (2) + dict + '\n' is padded to a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(dict.len() as u16).to_le_bytes())?;
    w.write_all(dict.as_bytes())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(d);
    for _ in 0..n {
        row(&mut rng, d, shift, &mut values);
        for v in &values {
            w.write_all(&v.to_le_bytes())?;
        }
    }
    w.flush()
}

/// target/<profile>/gapmeter, next to target/<profile>/deps/ where this benchmark runs from.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("benchmark under target/<profile>/deps");
    let bin = profile_dir.join("gapmeter");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build` first (make bench-memory does)",
        bin.display()
    );
    bin
}

/// Runs the child to completion and returns (wall seconds, peak RSS in bytes, exit status, the
/// tail of its output).
// The child is reaped by wait4, which std's Child cannot do and which also yields its rusage.
#[allow(clippy::zombie_processes)]
fn run_measured(bin: &Path, args: &[&str]) -> (f64, u64, i32, String) {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let start = Instant::now();
    let child = std::process::Command::new(bin)
        .args(args)
        .stdout(out.reopen().expect("reopen"))
        .stderr(out.reopen().expect("reopen"))
        .spawn()
        .expect("start gapmeter");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // wait4 reports this child's own rusage, whatever else this process has run.
    // SAFETY: pid is our child, not yet waited for; status and usage are valid for writes.
    let rc = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(rc, child.id() as libc::pid_t, "wait4 failed");
    let wall = start.elapsed().as_secs_f64();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let text = std::fs::read_to_string(out.path()).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    // ru_maxrss is in kilobytes on Linux.
    (wall, usage.ru_maxrss as u64 * 1024, code, tail)
}

fn gib(bytes: f64) -> f64 {
    bytes / (1u64 << 30) as f64
}

fn main() {
    let n = setting("GAPMETER_MEMORY_N", 50_000);
    let d = setting("GAPMETER_MEMORY_D", 2048);
    let kid_n = setting("GAPMETER_MEMORY_KID_N", 5_000);
    let metrics =
        std::env::var("GAPMETER_MEMORY_METRICS").unwrap_or_else(|_| "fid,kid,prdc".into());
    let bin = binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    let t = Instant::now();
    write_npy(&a, n, d, 0.0, 1).expect("write a.npy");
    write_npy(&b, n, d, 0.1, 2).expect("write b.npy");
    let matrices = (2 * n * d * 4) as f64;
    println!(
        "features: 2 × {n} × {d} float32 = {:.3} GiB (written in {:.1} s)",
        gib(matrices),
        t.elapsed().as_secs_f64()
    );
    println!("binary: {}", bin.display());
    println!(
        "{:<6} {:>10} {:>14} {:>18}",
        "metric", "wall (s)", "peak RSS (GiB)", "RSS / float32 data"
    );
    for metric in metrics.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let args = [
            "score",
            a.to_str().expect("utf-8 path"),
            b.to_str().expect("utf-8 path"),
            "--metrics",
            metric,
        ];
        let (wall, rss, code, tail) = run_measured(&bin, &args);
        println!(
            "{metric:<6} {wall:>10.1} {:>14.3} {:>18.2}",
            gib(rss as f64),
            rss as f64 / matrices
        );
        if code != 0 {
            println!("  gapmeter exited with {code}:\n{tail}");
        } else {
            let value = tail.lines().find(|l| l.to_lowercase().contains(metric));
            if let Some(line) = value {
                println!("  {}", line.trim());
            }
        }
    }
    if kid_n == 0 {
        return;
    }
    // KID's kernel reuse, in this process: the same subsets, kernels per subset vs whole.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut make = |shift: f32| {
        let mut data = Vec::with_capacity(kid_n * d);
        let mut values = Vec::with_capacity(d);
        for _ in 0..kid_n {
            row(&mut rng, d, shift, &mut values);
            data.extend_from_slice(&values);
        }
        Features::from_shape_vec((kid_n, d), data).expect("shape")
    };
    let (s, t) = (make(0.0), make(0.1));
    let params = KidParams::default();
    let time = |kernels: Option<KidKernels>| {
        let start = Instant::now();
        let k = match kernels {
            Some(k) => kid_with(s.view(), t.view(), &params, k),
            None => kid(s.view(), t.view(), &params),
        }
        .expect("KID");
        (start.elapsed().as_secs_f64(), k)
    };
    let (before, own) = time(Some(KidKernels::PerSubset));
    let (after, reused) = time(None);
    println!(
        "KID {}×{} at {kid_n} vs {kid_n}, d = {d}: per-subset kernels {before:.1} s, reused kernels {after:.1} s ({:.1}×); mean {:.6e} vs {:.6e} (relative difference {:.1e})",
        params.subsets,
        params.subset_size,
        before / after,
        own.mean,
        reused.mean,
        ((own.mean - reused.mean) / own.mean).abs()
    );
}
