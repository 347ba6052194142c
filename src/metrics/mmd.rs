//! Maximum mean discrepancy with a Gaussian RBF kernel, and CMMD (Jayasumana et al. 2024).
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{linalg, rng::LegacyRandomState, ustat, MetricError};

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
    let na = a.f_mul(a)?.f_sum_dim_intlist(1, true, Kind::Double)?;
    let nb = b
        .f_mul(b)?
        .f_sum_dim_intlist(1, true, Kind::Double)?
        .f_tr()?;
    let cross = a.f_mm(&b.f_tr()?)?;
    Ok(cross
        .f_mul_scalar(-2.0)?
        .f_add(&na)?
        .f_add(&nb)?
        .f_clamp_min(0.0)?)
}

fn check(s: ArrayView2<f64>, t: ArrayView2<f64>, metric: &'static str) -> Result<(), MetricError> {
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
    if s.iter().chain(t.iter()).any(|v| !v.is_finite()) {
        return Err(MetricError::NonFinite);
    }
    Ok(())
}

/// The median heuristic bandwidth for two feature sets (see [`Bandwidth::Median`]).
pub fn median_bandwidth(
    s: ArrayView2<f64>,
    t: ArrayView2<f64>,
    seed: u32,
) -> Result<f64, MetricError> {
    check(s, t, "median bandwidth")?;
    median_sigma(&linalg::tensor(s), &linalg::tensor(t), seed)
}

fn median_sigma(a: &Tensor, b: &Tensor, seed: u32) -> Result<f64, MetricError> {
    let pooled = Tensor::f_cat(&[a, b], 0)?;
    let n = pooled.size()[0] as usize;
    let pooled = if n > 2000 {
        let idx: Vec<i64> = LegacyRandomState::new(seed)
            .choice_without_replacement(n, 2000)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        pooled.f_index_select(0, &Tensor::from_slice(&idx))?
    } else {
        pooled
    };
    let m = pooled.size()[0];
    let d2 = squared_distances(&pooled, &pooled)?;
    // Distinct pairs only: the strict upper triangle.
    let mask = Tensor::f_ones([m, m], (Kind::Bool, tch::Device::Cpu))?.f_triu(1)?;
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
pub fn mmd_resampled(
    s: ArrayView2<f64>,
    t: ArrayView2<f64>,
    sigma: f64,
    rows_s: &[usize],
    rows_t: &[usize],
) -> Result<f64, MetricError> {
    check(s, t, "MMD")?;
    if rows_s.iter().any(|&i| i >= s.nrows()) || rows_t.iter().any(|&i| i >= t.nrows()) {
        return Err(MetricError::InvalidParameter(
            "resample row out of range".into(),
        ));
    }
    let pick = |x: ArrayView2<f64>, rows: &[usize]| -> Result<Tensor, MetricError> {
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        Ok(linalg::tensor(x).f_index_select(0, &Tensor::from_slice(&idx))?)
    };
    let (a, b) = (pick(s, rows_s)?, pick(t, rows_t)?);
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
pub fn mmd(s: ArrayView2<f64>, t: ArrayView2<f64>, params: &MmdParams) -> Result<Mmd, MetricError> {
    check(s, t, "MMD")?;
    let a = linalg::tensor(s);
    let b = linalg::tensor(t);
    let sigma = match params.bandwidth {
        Bandwidth::Fixed(sigma) if sigma > 0.0 && sigma.is_finite() => sigma,
        Bandwidth::Fixed(sigma) => {
            return Err(MetricError::InvalidParameter(format!(
                "bandwidth must be positive, got {sigma}"
            )))
        }
        Bandwidth::Median => median_sigma(&a, &b, params.seed)?,
    };
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
pub fn cmmd(s: ArrayView2<f64>, t: ArrayView2<f64>) -> Result<f64, MetricError> {
    check(s, t, "CMMD")?;
    let normalise = |x: ArrayView2<f64>| -> Result<Tensor, MetricError> {
        let x = linalg::tensor(x);
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
        let pooled = median_sigma(&linalg::tensor(a.view()), &linalg::tensor(b.view()), 0).unwrap();
        assert_eq!(pooled, 2.0);
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
