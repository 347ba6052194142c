//! Metric benchmarks: prints wall-clock figures (median of a few runs). Not a test: run with
//! `make bench`.
use std::time::{Duration, Instant};

use gapmeter::metrics::{
    fid_from_features, fid_from_gaussians, kid, prdc, rng::LegacyRandomState, FeatureStats,
    KidParams, PrdcParams,
};
use ndarray::Array2;

fn features(seed: u32, n: usize, d: usize, shift: f64) -> Array2<f64> {
    let mut rng = LegacyRandomState::new(seed);
    let u = Array2::from_shape_simple_fn((n, d), || rng.random_sample());
    // Correlate neighbouring dimensions so covariances are not diagonal.
    Array2::from_shape_fn((n, d), |(i, j)| {
        u[[i, j]] + 0.5 * u[[i, (j + 1) % d]] + shift
    })
}

fn time<T>(label: &str, runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    let median = times[runs / 2];
    println!(
        "{label:<58} median {:>9.3} s  (min {:.3} s, {runs} runs)",
        median.as_secs_f64(),
        times[0].as_secs_f64()
    );
    median
}

fn main() {
    println!(
        "gapmeter metric benchmarks, libtorch threads: {}",
        tch::get_num_threads()
    );
    let d = 2048;
    let s = features(1, 5000, d, 0.0);
    let t = features(2, 5000, d, 0.05);
    let gs = FeatureStats::from_features(s.view()).unwrap().gaussian();
    let gt = FeatureStats::from_features(t.view()).unwrap().gaussian();

    time("FID from statistics, d = 2048", 5, || {
        fid_from_gaussians(&gs, &gt).unwrap()
    });
    time("statistics of 5000 x 2048 features", 3, || {
        FeatureStats::from_features(s.view()).unwrap()
    });
    time("FID from features, 5000 vs 5000, d = 2048", 3, || {
        fid_from_features(s.view(), t.view()).unwrap()
    });
    let small_s = features(3, 500, d, 0.0);
    let small_t = features(4, 500, d, 0.05);
    time(
        "FID from features, 500 vs 500, d = 2048 (low-rank route)",
        5,
        || fid_from_features(small_s.view(), small_t.view()).unwrap(),
    );
    time("KID, 100 subsets x 1000, d = 2048", 3, || {
        kid(s.view(), t.view(), &KidParams::default()).unwrap()
    });
    time(
        "precision/recall/density/coverage, 5000 vs 5000, d = 2048",
        3,
        || prdc(s.view(), t.view(), &PrdcParams::default()).unwrap(),
    );
}
