//! Kernel Inception Distance (Bińkowski et al. 2018) with torch-fidelity's defaults: the unbiased
//! MMD² with a cubic polynomial kernel, averaged over random subsets. Also its standard error and
//! the statistic on a resample, for intervals (docs/metrics.md, "Intervals").
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{linalg, rng::LegacyRandomState, ustat, FeatureView, MetricError};

/// Up to this many samples in both sets together, the standard error comes from the jackknife of
/// the full-sample U-statistic, whose kernel pass then costs at most about a quarter of the 100
/// default subsets of 1000; above it, from the spread over subsets.
const JACKKNIFE_MAX_SAMPLES: usize = 10_000;

/// The most float64 bytes the three whole kernel matrices may take when [`kid`] reuses them.
const REUSED_KERNEL_BYTES: usize = 1 << 30;

/// How [`kid_with`] obtains each subset's kernel matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KidKernels {
    /// Whole kernel matrices k(S, S), k(T, T), k(S, T) computed once and each subset's blocks
    /// taken from them, when that is cheaper than the subsets' own kernels
    /// ((nS + nT)² < subsets · (2m)²) and the three fit in 1 GiB of float64; per subset otherwise.
    Auto,
    /// Every subset's kernels computed from its own rows (torch-fidelity's way).
    PerSubset,
}

/// Whether [`KidKernels::Auto`] computes the whole kernel matrices once.
fn reuse_kernels(ns: usize, nt: usize, m: usize, subsets: usize) -> bool {
    let (ns, nt, m, subsets) = (ns as f64, nt as f64, m as f64, subsets as f64);
    let cheaper = (ns + nt) * (ns + nt) < subsets * (2.0 * m) * (2.0 * m);
    let bytes = 8.0 * (ns * ns + nt * nt + ns * nt);
    cheaper && bytes <= REUSED_KERNEL_BYTES as f64
}

/// KID parameters; `Default` is torch-fidelity's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KidParams {
    /// Number of random subsets averaged.
    pub subsets: usize,
    /// Samples per subset from each set; reduced to the smaller set's size when larger (with a
    /// warning in the result).
    pub subset_size: usize,
    /// Polynomial kernel k(x, y) = (γ·xᵀy + c₀)^degree.
    pub degree: i32,
    /// γ; `None` means 1/d.
    pub gamma: Option<f64>,
    pub coef0: f64,
    /// Seed of numpy's legacy RandomState stream the subsets are drawn from.
    pub seed: u32,
}

impl Default for KidParams {
    fn default() -> Self {
        Self {
            subsets: 100,
            subset_size: 1000,
            degree: 3,
            gamma: None,
            coef0: 1.0,
            seed: 2020,
        }
    }
}

/// KID over subsets: mean and (population) standard deviation of the per-subset unbiased MMD²,
/// and the standard error of the mean.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kid {
    pub mean: f64,
    /// torch-fidelity's `kid_std`: the spread of the subset values around their mean. It is not
    /// a standard error: subsets overlap, and when every subset is the whole set it is 0.
    pub std: f64,
    /// Standard error of `mean` as an estimate of the population MMD², from
    /// [`standard_error_method`](Self::standard_error_method).
    pub standard_error: f64,
    /// `"none"` (NaN standard error) when a set has only 2 samples. `"jackknife"`: the two-sample
    /// jackknife variance of the full-sample U-statistic (which
    /// the subset mean estimates without bias) plus the subsets' own Monte Carlo variance
    /// std²/(subsets−1). `"subsets"` (sets too large for the jackknife): the spread over subsets
    /// scaled to the full sample, std²·(m/(n−m) + 1/(subsets−1)) for subset size m and smaller
    /// set size n, which holds to first order and errs on the large side beyond it.
    pub standard_error_method: &'static str,
    /// The subset size actually used.
    pub subset_size: usize,
    pub subsets: usize,
    /// Things the caller should tell the user (e.g. a reduced subset size); reported once, in the
    /// result's top-level warnings.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// KID between two feature sets (rows are samples).
///
/// Subsets are drawn as torch-fidelity draws them (`RandomState(seed).choice(n, m,
/// replace=False)` for the source set, then for the target set, per subset), so with the same
/// seed the values agree with torch-fidelity's to rounding.
///
/// ```
/// use gapmeter::metrics::{kid, KidParams};
/// use ndarray::Array2;
/// let a = Array2::from_shape_fn((40, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 11.0);
/// let params = KidParams { subsets: 10, subset_size: 20, ..KidParams::default() };
/// let k = kid(a.view(), a.view(), &params).unwrap();
/// assert!(k.mean.is_finite() && k.std >= 0.0);
/// ```
pub fn kid<'a, 'b>(
    s: impl Into<FeatureView<'a>>,
    t: impl Into<FeatureView<'b>>,
    params: &KidParams,
) -> Result<Kid, MetricError> {
    kid_with(s, t, params, KidKernels::Auto)
}

/// [`kid`] with a choice of how the subsets' kernel matrices are obtained; both give the same
/// values up to rounding.
///
/// ```
/// use gapmeter::metrics::{kid, kid_with, KidKernels, KidParams};
/// use ndarray::Array2;
/// let a = Array2::from_shape_fn((40, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 11.0);
/// let b = a.mapv(|v| v * 1.1 + 0.05);
/// let params = KidParams { subsets: 10, subset_size: 20, ..KidParams::default() };
/// let reused = kid(a.view(), b.view(), &params).unwrap();
/// let own = kid_with(a.view(), b.view(), &params, KidKernels::PerSubset).unwrap();
/// assert!((reused.mean - own.mean).abs() < 1e-12 * own.mean.abs());
/// ```
pub fn kid_with<'a, 'b>(
    s: impl Into<FeatureView<'a>>,
    t: impl Into<FeatureView<'b>>,
    params: &KidParams,
    kernels: KidKernels,
) -> Result<Kid, MetricError> {
    let (s, t) = (s.into(), t.into());
    let (ns, d) = s.dim();
    let (nt, dt) = t.dim();
    if d != dt {
        return Err(MetricError::DimensionMismatch(d, dt));
    }
    if params.subsets == 0 {
        return Err(MetricError::InvalidParameter(
            "KID needs at least one subset".into(),
        ));
    }
    if params.subset_size < 2 {
        return Err(MetricError::InvalidParameter(
            "KID subset size must be at least 2".into(),
        ));
    }
    if ns.min(nt) < 2 {
        return Err(MetricError::TooFewSamples {
            metric: "KID",
            needed: 2,
            got: ns.min(nt),
        });
    }
    if !(s.all_finite() && t.all_finite()) {
        return Err(MetricError::NonFinite);
    }
    let mut warnings = Vec::new();
    let m = params.subset_size.min(ns).min(nt);
    if m < params.subset_size {
        warnings.push(format!(
            "KID subset size reduced from {} to {m}: a set has only {} samples",
            params.subset_size,
            ns.min(nt)
        ));
    }
    let gamma = params.gamma.unwrap_or(1.0 / d as f64);
    let kernel = |a: &Tensor, b: &Tensor| kernel(a, b, gamma, params.coef0, params.degree);
    let whole = match kernels {
        KidKernels::Auto if reuse_kernels(ns, nt, m, params.subsets) => {
            let (xs, xt) = (s.tensor(), t.tensor());
            Some((kernel(&xs, &xs)?, kernel(&xt, &xt)?, kernel(&xs, &xt)?))
        }
        _ => None,
    };
    let mut rng = LegacyRandomState::new(params.seed);
    let mut values = Vec::with_capacity(params.subsets);
    for _ in 0..params.subsets {
        // The same draws in the same order on either path: the subsets are torch-fidelity's.
        let rows_s = rng.choice_without_replacement(ns, m);
        let rows_t = rng.choice_without_replacement(nt, m);
        values.push(match &whole {
            Some((kss, ktt, kst)) => {
                let (is, it) = (index(&rows_s), index(&rows_t));
                let pick = |k: &Tensor, r: &Tensor, c: &Tensor| -> Result<Tensor, MetricError> {
                    Ok(k.f_index_select(0, r)?.f_index_select(1, c)?)
                };
                unbiased_mmd2_of_kernels(
                    &pick(kss, &is, &is)?,
                    &pick(ktt, &it, &it)?,
                    &pick(kst, &is, &it)?,
                )?
            }
            None => {
                let (a, b) = (s.gather(&rows_s), t.gather(&rows_t));
                unbiased_mmd2_of_kernels(&kernel(&a, &a)?, &kernel(&b, &b)?, &kernel(&a, &b)?)?
            }
        });
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    // When every subset is both whole sets, the subsets differ only in row order: the values
    // are one statistic, and their spread is rounding noise (~1e-16), which was seen to differ
    // between two processes computing the same KID. It is 0.
    let std = if m == ns && m == nt {
        0.0
    } else {
        (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
    };
    // Variance of the average of `subsets` draws around the full-sample statistic.
    let monte_carlo = if params.subsets > 1 {
        std * std / (n - 1.0)
    } else {
        0.0
    };
    let n_min = ns.min(nt);
    let (variance, method) = if ns + nt > JACKKNIFE_MAX_SAMPLES && n_min > m && params.subsets > 1 {
        (
            monte_carlo * n * m as f64 / (n_min - m) as f64 + monte_carlo,
            "subsets",
        )
    } else if n_min >= 3 {
        let (_, jack) = match &whole {
            Some((kss, ktt, kst)) => ustat::jackknife_from_kernels(kss, ktt, kst)?,
            // The jackknife's pass is quadratic in the rows; whole float64 copies add little.
            None => ustat::jackknife(&s.tensor(), &t.tensor(), kernel)?,
        };
        (jack + monte_carlo, "jackknife")
    } else {
        // Leaving one of two samples out leaves no pair: no variance estimate exists.
        (f64::NAN, "none")
    };
    Ok(Kid {
        mean,
        std,
        standard_error: variance.sqrt(),
        standard_error_method: method,
        subset_size: m,
        subsets: params.subsets,
        warnings,
    })
}

/// KID of a resample: rows `rows_s` of `s` and `rows_t` of `t`, drawn with replacement. Subsets
/// are drawn from the resample as [`kid`] draws them, and within each subset the within-set
/// kernel means skip every pair of copies of one original sample, so duplicates cannot pose as
/// pairs of identical draws (docs/metrics.md, "Intervals"). The resample's statistic is then
/// centred on the original sample's full U-statistic.
///
/// ```
/// use gapmeter::metrics::{kid, kid_resampled, KidParams};
/// use ndarray::Array2;
/// let a = Array2::from_shape_fn((30, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 11.0);
/// let p = KidParams { subsets: 1, subset_size: 30, ..KidParams::default() };
/// let identity: Vec<usize> = (0..30).collect();
/// let same = kid_resampled(a.view(), a.view(), &p, &identity, &identity).unwrap();
/// assert!((same - kid(a.view(), a.view(), &p).unwrap().mean).abs() < 1e-12);
/// ```
pub fn kid_resampled<'a, 'b>(
    s: impl Into<FeatureView<'a>>,
    t: impl Into<FeatureView<'b>>,
    params: &KidParams,
    rows_s: &[usize],
    rows_t: &[usize],
) -> Result<f64, MetricError> {
    let (s, t) = (s.into(), t.into());
    let d = s.ncols();
    if d != t.ncols() {
        return Err(MetricError::DimensionMismatch(d, t.ncols()));
    }
    let (ns, nt) = (rows_s.len(), rows_t.len());
    if ns.min(nt) < 2 || params.subsets == 0 || params.subset_size < 2 {
        return Err(MetricError::InvalidParameter(
            "a KID resample needs two rows per set, a subset and a subset size of 2 or more".into(),
        ));
    }
    if rows_s.iter().any(|&i| i >= s.nrows()) || rows_t.iter().any(|&i| i >= t.nrows()) {
        return Err(MetricError::InvalidParameter(
            "resample row out of range".into(),
        ));
    }
    let m = params.subset_size.min(ns).min(nt);
    let gamma = params.gamma.unwrap_or(1.0 / d as f64);
    let mut rng = LegacyRandomState::new(params.seed);
    let mut total = 0.0;
    for _ in 0..params.subsets {
        let origin_s: Vec<usize> = rng
            .choice_without_replacement(ns, m)
            .into_iter()
            .map(|p| rows_s[p])
            .collect();
        let origin_t: Vec<usize> = rng
            .choice_without_replacement(nt, m)
            .into_iter()
            .map(|p| rows_t[p])
            .collect();
        let (a, b) = (s.gather(&origin_s), t.gather(&origin_t));
        let k = |x: &Tensor, y: &Tensor| kernel(x, y, gamma, params.coef0, params.degree);
        total += ustat::distinct_origin_mmd2(
            &k(&a, &a)?,
            &k(&b, &b)?,
            &k(&a, &b)?,
            &origin_s,
            &origin_t,
        )?;
    }
    Ok(total / params.subsets as f64)
}

fn index(rows: &[usize]) -> Tensor {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    super::device::here(Tensor::from_slice(&rows))
}

fn kernel(
    a: &Tensor,
    b: &Tensor,
    gamma: f64,
    coef0: f64,
    degree: i32,
) -> Result<Tensor, MetricError> {
    // In place: the whole-set kernels are large, and a chain of fresh tensors would hold four.
    let mut k = a.f_mm(&b.f_tr()?.f_contiguous()?)?;
    let _ = k.f_mul_scalar_(gamma)?;
    let _ = k.f_add_scalar_(coef0)?;
    let _ = k.f_pow_(degree as i64)?;
    Ok(k)
}

/// (Σ_{i≠j} k(xᵢ,xⱼ) + Σ_{i≠j} k(yᵢ,yⱼ)) / (m(m−1)) − 2·Σ k(xᵢ,yⱼ) / m², from the subset's
/// kernel matrices.
fn unbiased_mmd2_of_kernels(kxx: &Tensor, kyy: &Tensor, kxy: &Tensor) -> Result<f64, MetricError> {
    let m = kxx.size()[0] as f64;
    let off_diagonal_sum = |k: &Tensor| -> Result<f64, MetricError> {
        let total = linalg::scalar(&k.f_sum(Kind::Double)?)?;
        let diag = linalg::scalar(&k.f_diagonal(0, 0, 1)?.f_sum(Kind::Double)?)?;
        Ok(total - diag)
    };
    let (xx, yy) = (off_diagonal_sum(kxx)?, off_diagonal_sum(kyy)?);
    let xy = linalg::scalar(&kxy.f_sum(Kind::Double)?)?;
    Ok((xx + yy) / (m * (m - 1.0)) - 2.0 * xy / (m * m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    fn uniform(n: usize, d: usize, shift: f64, seed: u64) -> Array2<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| rng.gen::<f64>() + shift)
    }

    /// The estimator written out with loops, straight from the definition.
    fn naive_mmd2(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        let (m, d) = a.dim();
        let k = |x: ndarray::ArrayView1<f64>, y: ndarray::ArrayView1<f64>| {
            (x.dot(&y) / d as f64 + 1.0).powi(3)
        };
        let (mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0);
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    xx += k(a.row(i), a.row(j));
                    yy += k(b.row(i), b.row(j));
                }
                xy += k(a.row(i), b.row(j));
            }
        }
        let m = m as f64;
        (xx + yy) / (m * (m - 1.0)) - 2.0 * xy / (m * m)
    }

    #[test]
    fn one_full_subset_equals_the_definition() {
        let a = uniform(30, 5, 0.0, 1);
        let b = uniform(30, 5, 0.3, 2);
        let params = KidParams {
            subsets: 1,
            subset_size: 30,
            ..KidParams::default()
        };
        let k = kid(a.view(), b.view(), &params).unwrap();
        let expected = naive_mmd2(&a, &b);
        assert!(
            ((k.mean - expected) / expected).abs() < 1e-12,
            "{} vs {expected}",
            k.mean
        );
        assert_eq!(k.std, 0.0);
        // Every subset is the whole set: the standard error is the full-sample jackknife's.
        assert_eq!(k.standard_error_method, "jackknife");
        assert!(k.standard_error > 1e-3 * k.mean.abs(), "{k:?}");
    }

    #[test]
    fn reused_kernels_give_the_per_subset_values() {
        let a = uniform(60, 5, 0.0, 21);
        let b = uniform(50, 5, 0.2, 22);
        let params = KidParams {
            subsets: 20,
            subset_size: 30,
            ..KidParams::default()
        };
        assert!(reuse_kernels(60, 50, 30, 20));
        let reused = kid(a.view(), b.view(), &params).unwrap();
        let own = kid_with(a.view(), b.view(), &params, KidKernels::PerSubset).unwrap();
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs();
        assert!(close(reused.mean, own.mean), "{reused:?} vs {own:?}");
        assert!(close(reused.std, own.std), "{reused:?} vs {own:?}");
        assert!(close(reused.standard_error, own.standard_error));
        assert_eq!(reused.standard_error_method, own.standard_error_method);
        // float32 storage: the values of its float64 upcast, on both paths.
        let (a32, b32) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
        let (a64, b64) = (a32.mapv(f64::from), b32.mapv(f64::from));
        for kernels in [KidKernels::Auto, KidKernels::PerSubset] {
            let narrow = kid_with(a32.view(), b32.view(), &params, kernels).unwrap();
            let wide = kid_with(a64.view(), b64.view(), &params, kernels).unwrap();
            assert_eq!(narrow, wide);
        }
    }

    #[test]
    fn kernels_are_reused_only_when_cheaper_and_small_enough() {
        // 5,000 per side, 100 subsets of 1,000: 10⁸ < 4·10⁸ entries, 600 MB of kernels.
        assert!(reuse_kernels(5_000, 5_000, 1_000, 100));
        // 50,000 per side: far more entries than the subsets need.
        assert!(!reuse_kernels(50_000, 50_000, 1_000, 100));
        // Cheaper, but the kernels would not fit in 1 GiB.
        assert!(!reuse_kernels(12_000, 12_000, 5_000, 100));
        // One subset of the whole sets: no cheaper.
        assert!(!reuse_kernels(100, 100, 100, 1));
    }

    #[test]
    fn two_samples_give_a_value_without_a_standard_error() {
        let a = uniform(2, 3, 0.0, 10);
        let b = uniform(2, 3, 0.5, 11);
        let k = kid(a.view(), b.view(), &KidParams::default()).unwrap();
        assert!(k.mean.is_finite() && k.standard_error.is_nan());
        assert_eq!(k.standard_error_method, "none");
    }

    #[test]
    fn standard_error_tracks_the_spread_over_repeated_draws() {
        // Over independent draws of the same pair of distributions, the KID values scatter by
        // about the standard error that each draw reports.
        let params = KidParams {
            subsets: 1,
            subset_size: 60,
            ..KidParams::default()
        };
        let (mut values, mut ses) = (Vec::new(), Vec::new());
        for seed in 0..20 {
            let a = uniform(60, 4, 0.0, 100 + seed);
            let b = uniform(60, 4, 0.3, 200 + seed);
            let k = kid(a.view(), b.view(), &params).unwrap();
            values.push(k.mean);
            ses.push(k.standard_error);
        }
        let m = values.iter().sum::<f64>() / 20.0;
        let sd = (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 19.0).sqrt();
        let se = ses.iter().sum::<f64>() / 20.0;
        assert!(
            se > 0.6 * sd && se < 2.0 * sd,
            "reported {se}, observed {sd}"
        );
    }

    #[test]
    fn a_resample_without_duplicates_is_the_statistic_itself_and_copies_are_skipped() {
        let a = uniform(25, 3, 0.0, 8);
        let b = uniform(25, 3, 0.2, 9);
        let p = KidParams {
            subsets: 3,
            subset_size: 20,
            ..KidParams::default()
        };
        let all: Vec<usize> = (0..25).collect();
        let point = kid(a.view(), b.view(), &p).unwrap().mean;
        let same = kid_resampled(a.view(), b.view(), &p, &all, &all).unwrap();
        assert!((same - point).abs() < 1e-12 * point.abs().max(1.0));
        // A resample made of two copies of each of 12 samples: pairs of copies would add
        // k(x, x) terms; the result must equal the plain statistic on the 12 distinct samples
        // (one full subset: every pair of distinct originals appears 4 times).
        let twice: Vec<usize> = (0..12).flat_map(|i| [i, i]).collect();
        let full = KidParams {
            subsets: 1,
            subset_size: 24,
            ..KidParams::default()
        };
        let doubled = kid_resampled(a.view(), b.view(), &full, &twice, &twice).unwrap();
        let a12 = a.slice(ndarray::s![..12, ..]).to_owned();
        let b12 = b.slice(ndarray::s![..12, ..]).to_owned();
        let plain = naive_mmd2(&a12, &b12);
        assert!(
            ((doubled - plain) / plain).abs() < 1e-10,
            "{doubled} vs {plain}"
        );
    }

    #[test]
    fn unbiased_estimator_is_centred_for_one_distribution() {
        // Two samples of the same distribution: the mean over subsets is ~0 within its spread,
        // while a shifted set is far away.
        let a = uniform(400, 8, 0.0, 3);
        let b = uniform(400, 8, 0.0, 4);
        let params = KidParams {
            subsets: 50,
            subset_size: 100,
            ..KidParams::default()
        };
        let same = kid(a.view(), b.view(), &params).unwrap();
        assert!(
            same.mean.abs() < 3.0 * same.std / (50f64).sqrt() + 1e-4,
            "{same:?}"
        );
        let c = uniform(400, 8, 0.5, 5);
        let shifted = kid(a.view(), c.view(), &params).unwrap();
        assert!(
            shifted.mean > 20.0 * same.mean.abs(),
            "{shifted:?} vs {same:?}"
        );
    }

    #[test]
    fn subset_size_is_reduced_with_a_warning() {
        let a = uniform(50, 3, 0.0, 6);
        let b = uniform(60, 3, 0.0, 7);
        let k = kid(
            a.view(),
            b.view(),
            &KidParams {
                subsets: 3,
                ..KidParams::default()
            },
        )
        .unwrap();
        assert_eq!(k.subset_size, 50);
        assert_eq!(k.warnings.len(), 1);
    }

    #[test]
    fn legacy_rng_matches_numpy_stream() {
        // np.random.RandomState(2020): first draws, and choice(10, 4, replace=False).
        let mut r = LegacyRandomState::new(2020);
        let first: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(first, vec![4236026720, 639299976, 3751189827]);
        let mut r = LegacyRandomState::new(2020);
        assert_eq!(r.choice_without_replacement(10, 4), vec![2, 4, 9, 1]);
        let mut r = LegacyRandomState::new(2020);
        assert_eq!(r.permutation(1000)[..5], [725, 986, 815, 656, 469]);
        // RandomState(5).random_sample(3)
        let mut r = LegacyRandomState::new(5);
        let u: Vec<f64> = (0..3).map(|_| r.random_sample()).collect();
        assert_eq!(
            u,
            vec![0.22199317108973948, 0.8707323061773764, 0.20671915533942642]
        );
    }
}
