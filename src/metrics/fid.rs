//! Fréchet Inception Distance (Heusel et al. 2017); docs/metrics.md, "Content gap".
//!
//! FID = ‖μS−μT‖² + tr ΣS + tr ΣT − 2·tr (ΣS ΣT)^½ in float64.
//!
//! tr (ΣS ΣT)^½ is the sum of √λᵢ over the eigenvalues of ΣS ΣT. Two exact routes reach them:
//! * **symmetric** (statistics only): ΣSΣT has the same eigenvalues as ΣS^½ ΣT ΣS^½, a symmetric
//!   PSD matrix, so two symmetric eigensolves give real eigenvalues (negatives from rounding are
//!   clamped to zero, as torch-fidelity and torchmetrics do with the real parts).
//! * **low rank** (features at hand, fewer samples than dimensions): with centred feature matrices
//!   A (nS×d) and B (nT×d), the nonzero eigenvalues of ΣSΣT are the squared singular values of
//!   A Bᵀ / √((nS−1)(nT−1)), so the trace is that matrix's nuclear norm. Here the covariances are
//!   singular, and taking square roots of eigenvalues that are zero up to rounding would add
//!   ~1e-8·λmax per null direction; singular values carry no such error, and identical feature sets
//!   give FID = 0 to rounding.
use serde::Serialize;

use super::{linalg, FeatureStats, FeatureView, Gaussian, MetricError};

/// An FID value with its two parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fid {
    /// The distance.
    pub value: f64,
    /// ‖μS−μT‖², the content-location part.
    pub mean_term: f64,
    /// tr ΣS + tr ΣT − 2·tr (ΣSΣT)^½, the spread part (Bures–Wasserstein distance squared).
    pub covariance_term: f64,
}

impl Fid {
    fn new(mean_term: f64, trace_s: f64, trace_t: f64, trace_sqrt: f64) -> Self {
        let covariance_term = trace_s + trace_t - 2.0 * trace_sqrt;
        Self {
            value: mean_term + covariance_term,
            mean_term,
            covariance_term,
        }
    }
}

fn mean_term(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn trace(cov: &[f64], d: usize) -> f64 {
    (0..d).map(|i| cov[i * d + i]).sum()
}

/// FID between two Gaussians (mean and covariance), e.g. pytorch-fid `.npz` statistics.
///
/// ```
/// use gapmeter::metrics::{fid_from_gaussians, Gaussian};
/// // N(0, I₂) vs N(1, 4·I₂): ‖μ‖² = 2, trace part = 2 + 8 − 2·(2 + 2) = 2.
/// let s = Gaussian { mean: vec![0.0, 0.0], cov: vec![1.0, 0.0, 0.0, 1.0], n: None };
/// let t = Gaussian { mean: vec![1.0, 1.0], cov: vec![4.0, 0.0, 0.0, 4.0], n: None };
/// let fid = fid_from_gaussians(&s, &t).unwrap();
/// assert!((fid.value - 4.0).abs() < 1e-12);
/// ```
pub fn fid_from_gaussians(s: &Gaussian, t: &Gaussian) -> Result<Fid, MetricError> {
    let d = s.validate()?;
    let dt = t.validate()?;
    if d != dt {
        return Err(MetricError::DimensionMismatch(d, dt));
    }
    let trace_sqrt = trace_sqrt_product(linalg::square(&s.cov, d), linalg::square(&t.cov, d))?;
    Ok(Fid::new(
        mean_term(&s.mean, &t.mean),
        trace(&s.cov, d),
        trace(&t.cov, d),
        trace_sqrt,
    ))
}

/// tr (ΣS ΣT)^½ by the symmetric route, taking the covariances as tensors so that callers
/// holding them only as statistics can free their own copies first.
fn trace_sqrt_product(cs: tch::Tensor, ct: tch::Tensor) -> Result<f64, MetricError> {
    // One statement per step and in-place updates: at d = 2048 each d×d matrix is 32 MiB, and
    // temporaries of a chained expression would all live until its end.
    let root = linalg::psd_sqrt(&cs)?;
    drop(cs);
    let half = root.f_mm(&ct)?;
    drop(ct);
    let mut inner = half.f_mm(&root)?;
    drop((half, root));
    // Symmetrise: rounding leaves inner slightly asymmetric, eigh reads one triangle only.
    let transposed = inner.f_tr()?.f_contiguous()?;
    let _ = inner.f_add_(&transposed)?;
    drop(transposed);
    let _ = inner.f_mul_scalar_(0.5)?;
    let eig = inner.f_linalg_eigvalsh("L")?;
    drop(inner);
    linalg::scalar(&eig.f_clamp_min(0.0)?.f_sqrt()?.f_sum(tch::Kind::Double)?)
}

/// FID between two feature sets (rows are samples). Uses the low-rank route when a set has no
/// more samples than dimensions, the symmetric route otherwise (see the module docs).
///
/// ```
/// use gapmeter::metrics::fid_from_features;
/// use ndarray::array;
/// let a = array![[0.0, 1.0], [1.0, 0.5], [2.0, 2.0]];
/// let fid = fid_from_features(a.view(), a.view()).unwrap();
/// assert!(fid.value.abs() < 1e-12);
/// ```
pub fn fid_from_features<'a, 'b>(
    s: impl Into<FeatureView<'a>>,
    t: impl Into<FeatureView<'b>>,
) -> Result<Fid, MetricError> {
    let (s, t) = (s.into(), t.into());
    let (ns, d) = s.dim();
    let (nt, dt) = t.dim();
    if d != dt {
        return Err(MetricError::DimensionMismatch(d, dt));
    }
    let needed = 2;
    if ns.min(nt) < needed {
        return Err(MetricError::TooFewSamples {
            metric: "FID",
            needed,
            got: ns.min(nt),
        });
    }
    let ss = FeatureStats::from_features(s)?;
    let st = FeatureStats::from_features(t)?;
    if ns.min(nt) > d {
        // The same computation as fid_from_gaussians, with each covariance held once: as a
        // tensor, its vector freed as soon as it is copied.
        let (gs, gt) = (ss.into_gaussian(), st.into_gaussian());
        let (mean, trace_s, trace_t) = (
            mean_term(&gs.mean, &gt.mean),
            trace(&gs.cov, d),
            trace(&gt.cov, d),
        );
        let cs = linalg::square(&gs.cov, d);
        drop(gs);
        let ct = linalg::square(&gt.cov, d);
        drop(gt);
        return Ok(Fid::new(
            mean,
            trace_s,
            trace_t,
            trace_sqrt_product(cs, ct)?,
        ));
    }
    // The nuclear norm is the same for the matrix and its transpose, so which set is "small"
    // does not matter to the value.
    let cross = if ns <= nt {
        centred_cross(s, ss.mean(), t, st.mean())?
    } else {
        centred_cross(t, st.mean(), s, ss.mean())?
    }
    .f_div_scalar((((ns - 1) * (nt - 1)) as f64).sqrt())?;
    // Singular values only (torch.svd with compute_uv=false; linalg_svdvals would need a driver
    // argument that the C API cannot leave unset).
    let (_, singular, _) = cross.f_svd(true, false)?;
    let nuclear = singular.f_sum(tch::Kind::Double)?;
    let cs = ss.covariance();
    let ct = st.covariance();
    Ok(Fid::new(
        mean_term(ss.mean(), st.mean()),
        trace(&cs, d),
        trace(&ct, d),
        linalg::scalar(&nuclear)?,
    ))
}

/// (small − μ)(large − μ)ᵀ. The small set has at most d rows here, so its centred float64 copy is
/// no larger than a covariance; the large one joins a row block at a time.
fn centred_cross(
    small: FeatureView,
    small_mean: &[f64],
    large: FeatureView,
    large_mean: &[f64],
) -> Result<tch::Tensor, MetricError> {
    let centre = |mean: &[f64]| super::device::here(tch::Tensor::from_slice(mean)).f_unsqueeze(0);
    let a = small.tensor().f_sub(&centre(small_mean)?)?;
    let large_centre = centre(large_mean)?;
    let rows = super::features::rows_within(large.ncols() * 8, CROSS_BLOCK_BYTES);
    let mut parts = Vec::new();
    for (start, len) in large.block_ranges(rows) {
        let b = large.block(start, len).f_sub(&large_centre)?;
        parts.push(a.f_mm(&b.f_tr()?.f_contiguous()?)?);
    }
    Ok(tch::Tensor::f_cat(&parts, 1)?)
}

/// Bytes of float64 rows of the larger set per block of the low-rank route's cross product.
const CROSS_BLOCK_BYTES: usize = 32 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::SeedableRng;
    use rand_distr_free::normal;

    /// Box–Muller standard normals, so tests need no extra crate.
    mod rand_distr_free {
        use rand::Rng;
        pub fn normal(rng: &mut impl Rng) -> f64 {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    fn gaussian_sample(n: usize, d: usize, sd: f64, seed: u64) -> Array2<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| sd * normal(&mut rng))
    }

    #[test]
    fn analytic_isotropic_gaussians() {
        // N(0, I) vs N(μ, 4I): FID = ‖μ‖² + d + 4d − 2·2d = ‖μ‖² + d.
        let d = 16;
        let eye: Vec<f64> = (0..d * d)
            .map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let s = Gaussian {
            mean: vec![0.0; d],
            cov: eye.clone(),
            n: None,
        };
        let t = Gaussian {
            mean: vec![0.5; d],
            cov: eye.iter().map(|v| 4.0 * v).collect(),
            n: None,
        };
        let fid = fid_from_gaussians(&s, &t).unwrap();
        // 1e-9 relative: the eigensolver's result varies in its last digits with how LAPACK is
        // threaded while other tests run (a full-suite run once gave 19.9999999984 here).
        assert!(
            (fid.value - (0.25 * d as f64 + d as f64)).abs() < 1e-9 * 20.0,
            "{fid:?}"
        );
        assert!((fid.mean_term - 0.25 * d as f64).abs() < 1e-12);
    }

    #[test]
    fn sampled_gaussians_approach_d() {
        // N(0, I_d) vs N(0, 4 I_d) tends to FID = d as n grows; at n = 20000, d = 8 the sampling
        // error is well under 1%.
        let d = 8;
        let a = gaussian_sample(20_000, d, 1.0, 1);
        let b = gaussian_sample(20_000, d, 2.0, 2);
        let fid = fid_from_features(a.view(), b.view()).unwrap();
        assert!((fid.value - d as f64).abs() < 0.1, "{fid:?}");
    }

    #[test]
    fn identical_sets_give_zero_on_both_routes() {
        for (n, d) in [(30, 64), (300, 16)] {
            let a = gaussian_sample(n, d, 1.5, 3);
            let fid = fid_from_features(a.view(), a.view()).unwrap();
            assert!(fid.value.abs() < 1e-9, "n={n} d={d}: {fid:?}");
        }
    }

    #[test]
    fn low_rank_route_equals_symmetric_route() {
        // Both routes apply when n > d; force the low-rank one by comparing against statistics.
        let a = gaussian_sample(40, 24, 1.0, 5);
        let b = gaussian_sample(35, 24, 1.3, 6) + 0.2;
        let via_features = fid_from_features(a.view(), b.view()).unwrap().value;
        let via_stats = fid_from_gaussians(
            &FeatureStats::from_features(a.view()).unwrap().gaussian(),
            &FeatureStats::from_features(b.view()).unwrap().gaussian(),
        )
        .unwrap()
        .value;
        assert!(((via_features - via_stats) / via_stats).abs() < 1e-10);
        // And at n < d, where the covariances are singular.
        let a = gaussian_sample(20, 48, 1.0, 7);
        let b = gaussian_sample(25, 48, 1.3, 8);
        let lr = fid_from_features(a.view(), b.view()).unwrap().value;
        let sym = fid_from_gaussians(
            &FeatureStats::from_features(a.view()).unwrap().gaussian(),
            &FeatureStats::from_features(b.view()).unwrap().gaussian(),
        )
        .unwrap()
        .value;
        assert!(((lr - sym) / lr).abs() < 1e-6, "{lr} vs {sym}");
    }

    #[test]
    fn symmetric_route_equals_general_eigenvalues_of_the_product() {
        // The textbook definition, as torch-fidelity applies it: Σ √max(Re λ, 0) over the eigenvalues
        // of ΣSΣT.
        let a = gaussian_sample(200, 12, 1.0, 9);
        let b = gaussian_sample(180, 12, 0.7, 10);
        let gs = FeatureStats::from_features(a.view()).unwrap().gaussian();
        let gt = FeatureStats::from_features(b.view()).unwrap().gaussian();
        let prod = linalg::square(&gs.cov, 12).mm(&linalg::square(&gt.cov, 12));
        let eig = prod.linalg_eigvals();
        let re = eig
            .real()
            .clamp_min(0.0)
            .sqrt()
            .sum(tch::Kind::Double)
            .double_value(&[]);
        let fid = fid_from_gaussians(&gs, &gt).unwrap();
        let expected = fid.mean_term + trace(&gs.cov, 12) + trace(&gt.cov, 12) - 2.0 * re;
        assert!(((fid.value - expected) / expected).abs() < 1e-12);
    }

    #[test]
    fn fid_infinity_interval_contains_the_analytic_value() {
        // N(0, I₄) vs N(0.5, 1.5² I₄): FID = 4·(0.25 + 0.25) = 2. At N = 300 the plain FID is
        // biased upwards by about tr-terms/N; FID∞ removes that and its interval covers 2.
        use crate::metrics::{fid_infinity_start, sizes_between, subsample_fit, SubsampleFit};
        let (n, d) = (300, 4);
        let a = gaussian_sample(n, d, 1.0, 11);
        let b = gaussian_sample(n, d, 1.5, 12) + 0.5;
        let start = fid_infinity_start(n, d).unwrap();
        let fit = SubsampleFit {
            sizes: sizes_between((start * n as f64).ceil() as usize, n, 5),
            repetitions: 2,
            seed: 3,
        };
        let (line, ci) = subsample_fit(n, Some(n), &fit, Some(0.95), |si, ti| {
            let x = a.select(ndarray::Axis(0), si);
            let y = b.select(ndarray::Axis(0), ti);
            Ok::<_, MetricError>(fid_from_features(x.view(), y.view())?.value)
        })
        .unwrap();
        let ci = ci.unwrap();
        assert!(
            ci.contains(2.0) && ci.contains(line.value),
            "{line:?} {ci:?}"
        );
        assert!(ci.high - ci.low < 2.0, "{ci:?}");
    }

    #[test]
    fn float32_storage_gives_the_value_of_its_float64_upcast_on_both_routes() {
        for (n, d) in [(30, 64), (300, 16)] {
            let a = gaussian_sample(n, d, 1.5, 13).mapv(|v| v as f32);
            let b = (gaussian_sample(n + 7, d, 1.0, 14) + 0.3).mapv(|v| v as f32);
            let narrow = fid_from_features(a.view(), b.view()).unwrap().value;
            let (a64, b64) = (a.mapv(f64::from), b.mapv(f64::from));
            let wide = fid_from_features(a64.view(), b64.view()).unwrap().value;
            assert!(((narrow - wide) / wide).abs() < 1e-12, "{narrow} vs {wide}");
            // The low-rank route with the sets swapped: the larger set goes in blocks either way.
            let swapped = fid_from_features(b64.view(), a64.view()).unwrap().value;
            assert!(
                ((swapped - wide) / wide).abs() < 1e-10,
                "{swapped} vs {wide}"
            );
        }
    }

    #[test]
    fn errors_are_reported() {
        let a = gaussian_sample(5, 3, 1.0, 1);
        let b = gaussian_sample(5, 4, 1.0, 1);
        assert!(matches!(
            fid_from_features(a.view(), b.view()),
            Err(MetricError::DimensionMismatch(3, 4))
        ));
        let one = gaussian_sample(1, 3, 1.0, 1);
        assert!(matches!(
            fid_from_features(one.view(), a.view()),
            Err(MetricError::TooFewSamples { .. })
        ));
    }
}
