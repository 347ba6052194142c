//! Coverage simulation (`make coverage`): draws feature sets from distributions whose FID and KID
//! are known exactly, builds each interval gapmeter reports, and prints how often the nominal
//! interval covers the true value and how wide it is on average. The table in docs/metrics.md
//! ("Intervals") is this program's output.
//!
//! Every covariance is diagonal. That loses nothing: FID and KID's polynomial kernel k(x, y) =
//! (xᵀy/d + 1)³ are invariant under rotations of feature space, so any covariance is a diagonal
//! one in its eigenbasis. KID's kernel is a cubic polynomial, so its population value depends on
//! moments up to order three only; a multivariate t with the Gaussian's mean and covariance (and,
//! being symmetric, the same third moments) has the same true KID and the same true FID.
//!
//! Options: `--trials N` (trials per cell at d = 64, default 200), `--trials-large N` (at
//! d = 2048, default 100: each costs a kernel pass over 2N × 2N entries of dimension 2048),
//! `--boot-trials N` (trials of the bootstrap interval at d = 64, default 100) and
//! `--boot-trials-large N` (at d = 2048, default 20): each needs `--resamples` kernel passes,
//! `--resamples B` (default 40), `--fid-trials N` (trials of the FID∞ interval, default 60: each
//! is 11 × 2 × 8 FID evaluations), `--only-d D` (one dimension),
//! `--quick` (20 trials, 10 at d = 2048, 5 bootstrap and FID∞ trials, 20 resamples), `--seed S`. The environment variable
//! GAPMETER_COVERAGE_ARGS is read as extra arguments (the Makefile's way in).
use std::time::Instant;

use gapmeter::metrics::{
    fid_from_features, fid_infinity_start, kid, kid_resampled, resample_with_replacement,
    rng::LegacyRandomState, sizes_between, subsample_fit, Interval, KidParams, MetricError,
    SubsampleFit, Target, FIT_REPETITIONS,
};
use ndarray::Array2;
use rand::{Rng, SeedableRng};

const LEVEL: f64 = 0.95;
/// `--infinity-points` default of `gapmeter score`.
const FIT_POINTS: usize = 8;
/// Target mean shift and standard deviation on each active coordinate (source: 0 and 1).
const SHIFT: f64 = 0.15;
const TARGET_SD: f64 = 1.15;
/// Degrees of freedom of the heavy-tailed case: heavy tails, yet finite sixth moments, without
/// which the cubic kernel's U-statistic has no variance for an interval to estimate.
const T_DOF: usize = 8;

#[derive(Clone, Copy)]
enum Shape {
    Gaussian,
    StudentT,
    /// Only d/8 coordinates vary; the others are 0 in both sets.
    LowRank,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Gaussian => "Gaussian",
            Shape::StudentT => "t (ν = 8)",
            Shape::LowRank => "low rank (d/8)",
        }
    }

    fn active(self, d: usize) -> usize {
        match self {
            Shape::LowRank => d / 8,
            _ => d,
        }
    }
}

/// Per-coordinate means and variances of source and target.
struct Truth {
    mean_s: Vec<f64>,
    var_s: Vec<f64>,
    mean_t: Vec<f64>,
    var_t: Vec<f64>,
}

impl Truth {
    fn new(shape: Shape, d: usize) -> Self {
        let r = shape.active(d);
        let on = |v: f64| {
            (0..d)
                .map(|j| if j < r { v } else { 0.0 })
                .collect::<Vec<_>>()
        };
        Self {
            mean_s: on(0.0),
            var_s: on(1.0),
            mean_t: on(SHIFT),
            var_t: on(TARGET_SD * TARGET_SD),
        }
    }

    /// FID of the two Gaussians with these moments, per coordinate for diagonal covariances.
    fn fid(&self) -> f64 {
        (0..self.mean_s.len())
            .map(|j| {
                (self.mean_s[j] - self.mean_t[j]).powi(2)
                    + (self.var_s[j].sqrt() - self.var_t[j].sqrt()).powi(2)
            })
            .sum()
    }

    /// Population MMD² under (γ xᵀy + 1)³, γ = 1/d, from the moments of s = xᵀy for independent
    /// x ~ (μ1, Σ1), y ~ (μ2, Σ2) with zero third central moments:
    /// E s = a, E s² = a² + q + tr, E s³ = a³ + 3a(q + tr) + 6w, where a = μ1ᵀμ2,
    /// q = μ1ᵀΣ2μ1 + μ2ᵀΣ1μ2, tr = tr Σ1Σ2, w = μ1ᵀΣ2Σ1μ2.
    fn kid(&self) -> f64 {
        let d = self.mean_s.len();
        let g = 1.0 / d as f64;
        let ek = |m1: &[f64], v1: &[f64], m2: &[f64], v2: &[f64]| {
            let (mut a, mut q, mut tr, mut w) = (0.0, 0.0, 0.0, 0.0);
            for j in 0..d {
                a += m1[j] * m2[j];
                q += m1[j] * m1[j] * v2[j] + m2[j] * m2[j] * v1[j];
                tr += v1[j] * v2[j];
                w += m1[j] * v2[j] * v1[j] * m2[j];
            }
            let s1 = a;
            let s2 = a * a + q + tr;
            let s3 = a * a * a + 3.0 * a * (q + tr) + 6.0 * w;
            g * g * g * s3 + 3.0 * g * g * s2 + 3.0 * g * s1 + 1.0
        };
        let (ms, vs, mt, vt) = (&self.mean_s, &self.var_s, &self.mean_t, &self.var_t);
        ek(ms, vs, ms, vs) + ek(mt, vt, mt, vt) - 2.0 * ek(ms, vs, mt, vt)
    }
}

fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn sample(shape: Shape, mean: &[f64], var: &[f64], n: usize, rng: &mut impl Rng) -> Array2<f64> {
    let d = mean.len();
    let mut x = Array2::zeros((n, d));
    for i in 0..n {
        // A t vector is a Gaussian one over √(χ²_ν/(ν−2)): one scale per row keeps it
        // elliptical, and the ν−2 keeps its covariance the Gaussian's.
        let scale = match shape {
            Shape::StudentT => {
                let chi2: f64 = (0..T_DOF).map(|_| normal(rng).powi(2)).sum();
                ((T_DOF - 2) as f64 / chi2).sqrt()
            }
            _ => 1.0,
        };
        for j in 0..d {
            if var[j] > 0.0 {
                x[[i, j]] = mean[j] + var[j].sqrt() * scale * normal(rng);
            }
        }
    }
    x
}

/// Coverage and width of one kind of interval in one cell.
#[derive(Default)]
struct Tally {
    trials: usize,
    covered: usize,
    width: f64,
    contains_point: usize,
    points: f64,
}

impl Tally {
    fn add(&mut self, ci: &Interval, truth: f64, point: f64) {
        self.trials += 1;
        self.covered += usize::from(ci.contains(truth));
        self.contains_point += usize::from(ci.contains(point));
        self.width += ci.high - ci.low;
        self.points += point;
    }

    fn row(&self, cell: &str, what: &str, truth: f64) -> String {
        if self.trials == 0 {
            return format!("| {cell} | {what} | {truth:.4e} | — | — | — | — |");
        }
        let t = self.trials as f64;
        format!(
            "| {cell} | {what} | {truth:.4e} | {:.4e} | {} | {:.1} % | {:.3e} |{}",
            self.points / t,
            self.trials,
            100.0 * self.covered as f64 / t,
            self.width / t,
            if self.contains_point == self.trials {
                ""
            } else {
                " (does not always contain its point)"
            }
        )
    }
}

struct Options {
    trials: usize,
    trials_large: usize,
    fid_trials: usize,
    only_d: Option<usize>,
    boot_trials: usize,
    boot_trials_large: usize,
    resamples: usize,
    seed: u64,
}

fn options() -> Options {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Ok(extra) = std::env::var("GAPMETER_COVERAGE_ARGS") {
        args.extend(extra.split_whitespace().map(String::from));
    }
    let mut o = Options {
        trials: 200,
        trials_large: 100,
        fid_trials: 60,
        only_d: None,
        boot_trials: 100,
        boot_trials_large: 20,
        resamples: 40,
        seed: 1,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--trials" => o.trials = num("--trials"),
            "--trials-large" => o.trials_large = num("--trials-large"),
            "--fid-trials" => o.fid_trials = num("--fid-trials"),
            "--only-d" => o.only_d = Some(num("--only-d")),
            "--boot-trials" => o.boot_trials = num("--boot-trials"),
            "--boot-trials-large" => o.boot_trials_large = num("--boot-trials-large"),
            "--resamples" => o.resamples = num("--resamples"),
            "--seed" => o.seed = num("--seed") as u64,
            "--quick" => {
                o.trials = 20;
                o.trials_large = 10;
                o.fid_trials = 5;
                o.boot_trials = 5;
                o.boot_trials_large = 3;
                o.resamples = 20;
            }
            // `cargo bench` passes --bench; anything else is a mistake worth hearing about.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn main() -> Result<(), MetricError> {
    let o = options();
    let started = Instant::now();
    println!(
        "coverage of nominal {:.0} % intervals; trials per cell: KID {} at d = 64, {} at d = 2048; KID bootstrap ({} resamples) {} and {}; FID∞ {}",
        LEVEL * 100.0,
        o.trials,
        o.trials_large,
        o.resamples,
        o.boot_trials.min(o.trials),
        o.boot_trials_large.min(o.trials_large),
        o.fid_trials.min(o.trials),
    );
    println!();
    println!(
        "| case, d, N | interval | true value | mean estimate | trials | coverage | mean width |"
    );
    println!("|---|---|---|---|---|---|---|");
    for d in [64usize, 2048] {
        if o.only_d.is_some_and(|only| only != d) {
            continue;
        }
        for shape in [Shape::Gaussian, Shape::StudentT, Shape::LowRank] {
            let truth = Truth::new(shape, d);
            let (true_fid, true_kid) = (truth.fid(), truth.kid());
            for n in [50usize, 100, 200, 500] {
                let cell_start = Instant::now();
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    o.seed ^ (d as u64) << 32 ^ (n as u64) << 16 ^ shape as u64,
                );
                let (mut jack, mut boot, mut fid_inf) =
                    (Tally::default(), Tally::default(), Tally::default());
                let (trials, boot_trials) = if d > 256 {
                    (o.trials_large, o.boot_trials_large.min(o.trials_large))
                } else {
                    (o.trials, o.boot_trials.min(o.trials))
                };
                let kid_params = KidParams {
                    subsets: 1,
                    subset_size: n,
                    ..KidParams::default()
                };
                let fid_start = fid_infinity_start(n, d);
                for trial in 0..trials {
                    let s = sample(shape, &truth.mean_s, &truth.var_s, n, &mut rng);
                    let t = sample(shape, &truth.mean_t, &truth.var_t, n, &mut rng);
                    let k = kid(s.view(), t.view(), &kid_params)?;
                    let ci = Interval::normal(
                        k.mean,
                        k.standard_error,
                        LEVEL,
                        "jackknife",
                        Target::Population,
                        None,
                    );
                    jack.add(&ci, true_kid, k.mean);
                    if trial < boot_trials {
                        let mut r = LegacyRandomState::new(trial as u32);
                        let draws: Vec<f64> = (0..o.resamples)
                            .map(|_| {
                                let rs = resample_with_replacement(&mut r, n);
                                let rt = resample_with_replacement(&mut r, n);
                                kid_resampled(s.view(), t.view(), &kid_params, &rs, &rt)
                            })
                            .collect::<Result<_, _>>()?;
                        let m = draws.iter().sum::<f64>() / draws.len() as f64;
                        let sd = (draws.iter().map(|v| (v - m).powi(2)).sum::<f64>()
                            / (draws.len() - 1) as f64)
                            .sqrt();
                        let ci = Interval::normal(
                            k.mean,
                            sd,
                            LEVEL,
                            "bootstrap",
                            Target::Population,
                            Some(o.resamples),
                        );
                        boot.add(&ci, true_kid, k.mean);
                    }
                    if let (Some(f), true) = (fid_start, trial < o.fid_trials) {
                        let fit = SubsampleFit {
                            sizes: sizes_between((f * n as f64).ceil() as usize, n, FIT_POINTS),
                            repetitions: FIT_REPETITIONS,
                            seed: 2020 + trial as u32,
                        };
                        let (line, ci) = subsample_fit(n, Some(n), &fit, Some(LEVEL), |si, ti| {
                            let a = s.select(ndarray::Axis(0), si);
                            let b = t.select(ndarray::Axis(0), ti);
                            Ok::<_, MetricError>(fid_from_features(a.view(), b.view())?.value)
                        })?;
                        if let Some(ci) = ci {
                            fid_inf.add(&ci, true_fid, line.value);
                        }
                    }
                }
                let cell = format!("{}, {d}, {n}", shape.name());
                println!(
                    "{}",
                    jack.row(&cell, "KID, jackknife (`standard_error`)", true_kid)
                );
                println!("{}", boot.row(&cell, "KID, bootstrap SE alone", true_kid));
                if fid_start.is_some() {
                    println!(
                        "{}",
                        fid_inf.row(&cell, "FID∞, jackknife of the fit", true_fid)
                    );
                } else {
                    println!(
                        "| {cell} | FID∞ | {true_fid:.4e} | — | — | none: N < 1.25·(d+1) | — |"
                    );
                }
                eprintln!("  {cell}: {:.1} s", cell_start.elapsed().as_secs_f64());
            }
        }
    }
    println!();
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
