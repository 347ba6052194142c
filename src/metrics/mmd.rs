//! Maximum mean discrepancy with a Gaussian RBF kernel, and CMMD (Jayasumana et al. 2024).
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{blocks, linalg, rng::LegacyRandomState, ustat, FeatureView, MetricError};

/// How the RBF bandwidth σ in k(x, y) = exp(−‖x−y‖² / (2σ²)) is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bandwidth {
    Fixed(f64),
    /// σ = median Euclidean distance between distinct points of the pooled sample (on at most
    /// 2000 points, drawn with the seeded legacy stream).
    Median,
}

/// Biased (V-statistic, includes i = j terms) or unbiased (U-statistic) MMD².
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    Biased,
    Unbiased,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MmdParams {
    pub bandwidth: Bandwidth,
    pub estimator: Estimator,
    pub seed: u32,
}

impl Default for MmdParams {
    fn default() -> Self {
        Self {
            bandwidth: Bandwidth::Median,
            estimator: Estimator::Unbiased,
            seed: 2020,
        }
    }
}

/// An MMD² value and the bandwidth it used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mmd {
    pub value: f64,
    pub sigma: f64,
    /// Unbiased estimator only: the two-sample jackknife standard error of the U-statistic (as
    /// KID's; docs/metrics.md, "Intervals"). The biased estimator has none: its bias is not a
    /// sampling error.
    pub standard_error: Option<f64>,
}

/// Squared pairwise Euclidean distances, as sklearn and the CMMD reference form them:
/// ‖x‖² + ‖y‖² − 2xᵀy, clamped at 0.
pub(crate) fn squared_distances(a: &Tensor, b: &Tensor) -> Result<Tensor, MetricError> {
    let nb_t = blocks::squared_norms(b)?.f_tr()?;
    blocks::squared_distances_normed(a, &blocks::squared_norms(a)?, b, &nb_t)
}

fn check(s: FeatureView, t: FeatureView, metric: &'static str) -> Result<(), MetricError> {
    if s.ncols() != t.ncols() {
        return Err(MetricError::DimensionMismatch(s.ncols(), t.ncols()));
    }
    let n = s.nrows().min(t.nrows());
    if n < 2 {
        return Err(MetricError::TooFewSamples {
            metric,
            needed: 2,
            got: n,
        });
    }
    if !(s.all_finite() && t.all_finite()) {
        return Err(MetricError::NonFinite);
    }
    Ok(())
}

/// The median heuristic bandwidth for two feature sets (see [`Bandwidth::Median`]).
pub fn median_bandwidth<'a, 'b>(
    s: impl Into<FeatureView<'a>>,
    t: impl Into<FeatureView<'b>>,
    seed: u32,
) -> Result<f64, MetricError> {
    let (s, t) = (s.into(), t.into());
    check(s, t, "median bandwidth")?;
    median_sigma(s, t, seed)
}

/// The median pairwise distance over the pooled sets, or over 2000 pooled rows drawn with `seed`;
/// only the drawn rows are converted.
fn median_sigma(a: FeatureView, b: FeatureView, seed: u32) -> Result<f64, MetricError> {
    let na = a.nrows();
    let n = na + b.nrows();
    let pooled = if n > 2000 {
        let idx = LegacyRandomState::new(seed).choice_without_replacement(n, 2000);
        let (from_a, from_b): (Vec<usize>, Vec<usize>) = idx.iter().copied().partition(|&i| i < na);
        let from_b: Vec<usize> = from_b.into_iter().map(|i| i - na).collect();
        // Rows in drawn order, as indexing the concatenation would give them.
        let (ta, tb) = (a.gather(&from_a), b.gather(&from_b));
        let (mut ia, mut ib) = (0i64, 0i64);
        let mut order = Vec::with_capacity(idx.len());
        for &i in &idx {
            if i < na {
                order.push(ia);
                ia += 1;
            } else {
                order.push(from_a.len() as i64 + ib);
                ib += 1;
            }
        }
        Tensor::f_cat(&[ta, tb], 0)?
            .f_index_select(0, &super::device::here(Tensor::from_slice(&order)))?
    } else {
        Tensor::f_cat(&[a.tensor(), b.tensor()], 0)?
    };
    let m = pooled.size()[0];
    let d2 = squared_distances(&pooled, &pooled)?;
    // Distinct pairs only: the strict upper triangle.
    let mask = Tensor::f_ones([m, m], (Kind::Bool, pooled.device()))?.f_triu(1)?;
    let upper = d2.f_masked_select(&mask)?;
    let median = linalg::scalar(&upper.f_sqrt()?.f_median()?)?;
    if median <= 0.0 {
        return Err(MetricError::InvalidParameter(
            "median heuristic gives bandwidth 0 (all points identical); pass a bandwidth".into(),
        ));
    }
    Ok(median)
}

fn rbf(x: &Tensor, y: &Tensor, sigma: f64) -> Result<Tensor, MetricError> {
    let gamma = 1.0 / (2.0 * sigma * sigma);
    Ok(squared_distances(x, y)?.f_mul_scalar(-gamma)?.f_exp()?)
}

/// Unbiased RBF MMD² of a resample (rows `rows_s` of `s`, `rows_t` of `t`, drawn with
/// replacement) at a fixed bandwidth, skipping pairs of copies of one sample in the within-set
/// means, like [`kid_resampled`](super::kid_resampled).
pub fn mmd_resampled<'a, 'b>(
    s: impl Into<FeatureView<'a>>,
    t: impl Into<FeatureView<'b>>,
    sigma: f64,
    rows_s: &[usize],
    rows_t: &[usize],
) -> Result<f64, MetricError> {
    let (s, t) = (s.into(), t.into());
    check(s, t, "MMD")?;
    if rows_s.iter().any(|&i| i >= s.nrows()) || rows_t.iter().any(|&i| i >= t.nrows()) {
        return Err(MetricError::InvalidParameter(
            "resample row out of range".into(),
        ));
    }
    let (a, b) = (s.gather(rows_s), t.gather(rows_t));
    ustat::distinct_origin_mmd2(
        &rbf(&a, &a, sigma)?,
        &rbf(&b, &b, sigma)?,
        &rbf(&a, &b, sigma)?,
        rows_s,
        rows_t,
    )
}

fn rbf_mmd2(a: &Tensor, b: &Tensor, sigma: f64, estimator: Estimator) -> Result<f64, MetricError> {
    let gamma = 1.0 / (2.0 * sigma * sigma);
    let k = |x: &Tensor, y: &Tensor| -> Result<Tensor, MetricError> {
        Ok(squared_distances(x, y)?.f_mul_scalar(-gamma)?.f_exp()?)
    };
    let (m, n) = (a.size()[0] as f64, b.size()[0] as f64);
    let kxx = k(a, a)?;
    let kyy = k(b, b)?;
    let kxy = linalg::scalar(&k(a, b)?.f_mean(Kind::Double)?)?;
    let sum = |t: &Tensor| linalg::scalar(&t.f_sum(Kind::Double)?);
    Ok(match estimator {
        Estimator::Biased => sum(&kxx)? / (m * m) + sum(&kyy)? / (n * n) - 2.0 * kxy,
        // The diagonal of an RBF kernel is exactly 1.
        Estimator::Unbiased => {
            (sum(&kxx)? - m) / (m * (m - 1.0)) + (sum(&kyy)? - n) / (n * (n - 1.0)) - 2.0 * kxy
        }
    })
}

/// MMD² between two feature sets with a Gaussian RBF kernel.
///
/// ```
/// use gapmeter::metrics::{mmd, Bandwidth, Estimator, MmdParams};
/// let a = ndarray::array![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
/// let p = MmdParams { bandwidth: Bandwidth::Fixed(1.0), estimator: Estimator::Biased, seed: 0 };
/// assert!(mmd(a.view(), a.view(), &p).unwrap().value.abs() < 1e-12);
/// ```
pub fn mmd<'a, 'b>(
    s: impl Into<FeatureView<'a>>,
    t: impl Into<FeatureView<'b>>,
    params: &MmdParams,
) -> Result<Mmd, MetricError> {
    let (s, t) = (s.into(), t.into());
    check(s, t, "MMD")?;
    let sigma = match params.bandwidth {
        Bandwidth::Fixed(sigma) if sigma > 0.0 && sigma.is_finite() => sigma,
        Bandwidth::Fixed(sigma) => {
            return Err(MetricError::InvalidParameter(format!(
                "bandwidth must be positive, got {sigma}"
            )))
        }
        Bandwidth::Median => median_sigma(s, t, params.seed)?,
    };
    // MMD's kernel matrices are quadratic in the rows anyway; a float64 copy adds little.
    let a = s.tensor();
    let b = t.tensor();
    let standard_error = match params.estimator {
        Estimator::Biased => None,
        Estimator::Unbiased if s.nrows().min(t.nrows()) >= 3 => {
            let (_, var) = ustat::jackknife(&a, &b, |x, y| rbf(x, y, sigma))?;
            Some(var.sqrt())
        }
        Estimator::Unbiased => None,
    };
    Ok(Mmd {
        value: rbf_mmd2(&a, &b, sigma, params.estimator)?,
        sigma,
        standard_error,
    })
}

/// CMMD: 1000 × biased MMD² with σ = 10 on L2-normalised embeddings (rows are normalised here,
/// which leaves already-normalised CLIP embeddings unchanged).
///
/// ```
/// let a = ndarray::array![[1.0, 0.0], [0.0, 1.0]];
/// let b = ndarray::array![[1.0, 1.0], [2.0, 2.0]];
/// assert!(gapmeter::metrics::cmmd(a.view(), b.view()).unwrap() > 0.0);
/// ```
pub fn cmmd<'a, 'b>(
    s: impl Into<FeatureView<'a>>,
    t: impl Into<FeatureView<'b>>,
) -> Result<f64, MetricError> {
    let (s, t) = (s.into(), t.into());
    check(s, t, "CMMD")?;
    let normalise = |x: FeatureView| -> Result<Tensor, MetricError> {
        let x = x.tensor();
        let norm = x
            .f_mul(&x)?
            .f_sum_dim_intlist(1, true, Kind::Double)?
            .f_sqrt()?;
        Ok(x.f_div(&norm.f_clamp_min(1e-12)?)?)
    };
    Ok(1000.0 * rbf_mmd2(&normalise(s)?, &normalise(t)?, 10.0, Estimator::Biased)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn grid(n: usize, d: usize, shift: f64) -> Array2<f64> {
        Array2::from_shape_fn((n, d), |(i, j)| {
            ((i * 13 + j * 7) % 17) as f64 / 17.0 + shift
        })
    }

    fn naive(a: &Array2<f64>, b: &Array2<f64>, sigma: f64, unbiased: bool) -> f64 {
        let k = |x: ndarray::ArrayView1<f64>, y: ndarray::ArrayView1<f64>| {
            (-(&x - &y).mapv(|v| v * v).sum() / (2.0 * sigma * sigma)).exp()
        };
        let avg = |p: &Array2<f64>, q: &Array2<f64>, skip_diag: bool| {
            let (mut s, mut c) = (0.0, 0.0);
            for i in 0..p.nrows() {
                for j in 0..q.nrows() {
                    if skip_diag && i == j {
                        continue;
                    }
                    s += k(p.row(i), q.row(j));
                    c += 1.0;
                }
            }
            s / c
        };
        avg(a, a, unbiased) + avg(b, b, unbiased) - 2.0 * avg(a, b, false)
    }

    #[test]
    fn both_estimators_match_the_definition() {
        let a = grid(15, 3, 0.0);
        let b = grid(11, 3, 0.4);
        for (est, unbiased) in [(Estimator::Biased, false), (Estimator::Unbiased, true)] {
            let p = MmdParams {
                bandwidth: Bandwidth::Fixed(0.7),
                estimator: est,
                seed: 0,
            };
            let got = mmd(a.view(), b.view(), &p).unwrap().value;
            let want = naive(&a, &b, 0.7, unbiased);
            assert!((got - want).abs() < 1e-12, "{est:?}: {got} vs {want}");
        }
    }

    #[test]
    fn median_heuristic_is_the_median_distance() {
        let a = ndarray::array![[0.0], [1.0]];
        let b = ndarray::array![[3.0]];
        // Pairwise distances 1, 3, 2: median 2.
        let m = mmd(a.view(), a.view(), &MmdParams::default()).unwrap();
        assert_eq!(m.sigma, 1.0);
        let pooled = median_sigma(a.view().into(), b.view().into(), 0).unwrap();
        assert_eq!(pooled, 2.0);
    }

    #[test]
    fn median_over_drawn_rows_takes_them_in_drawn_order_from_either_set() {
        // Above 2000 pooled rows the median runs on a draw; gathering the drawn rows per set must
        // give the rows that indexing the concatenation gives.
        let a = grid(1500, 3, 0.0);
        let b = grid(900, 3, 0.4).mapv(|v| v as f32);
        let got = median_sigma(a.view().into(), b.view().into(), 7).unwrap();
        let pooled =
            ndarray::concatenate(ndarray::Axis(0), &[a.view(), b.mapv(f64::from).view()]).unwrap();
        let idx = LegacyRandomState::new(7).choice_without_replacement(2400, 2000);
        let x = linalg::tensor(pooled.select(ndarray::Axis(0), &idx).view());
        let d2 = squared_distances(&x, &x).unwrap();
        let mask = Tensor::ones([2000, 2000], (Kind::Bool, tch::Device::Cpu)).triu(1);
        let want = d2.masked_select(&mask).sqrt().median().double_value(&[]);
        assert_eq!(got, want);
    }

    #[test]
    fn cmmd_is_zero_for_identical_sets_and_scale_free() {
        let a = grid(20, 5, 0.1);
        assert!(cmmd(a.view(), a.view()).unwrap().abs() < 1e-9);
        let b = grid(20, 5, 0.5);
        let scaled = &b * 7.0;
        let (x, y) = (
            cmmd(a.view(), b.view()).unwrap(),
            cmmd(a.view(), scaled.view()).unwrap(),
        );
        assert!((x - y).abs() < 1e-9 && x > 0.0);
    }
}
