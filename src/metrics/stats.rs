//! Sufficient statistics of a feature set, kept so they merge exactly; docs/metrics.md,
//! "Sufficient statistics".
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::features::rows_within;
use super::{device, linalg, FeatureView, MetricError};

/// Bytes of float64 rows per block of the two passes: large enough for an efficient matrix
/// product, small next to the features themselves.
const STATS_BLOCK_BYTES: usize = 32 << 20;

/// Count, mean and centred scatter matrix Σ(x−μ)(x−μ)ᵀ of a feature set, in float64.
///
/// This is the numerically safe form of (n, Σx, Σxxᵀ): sums of raw outer products lose all
/// precision when the mean is large compared to the spread, centred sums do not. Two sets merge
/// with Chan et al.'s parallel update, so statistics of a dataset can be built batch by batch or
/// from cached parts and equal those of the whole.
///
/// ```
/// use gapmeter::metrics::FeatureStats;
/// use ndarray::array;
/// let all = array![[1.0, 2.0], [3.0, 5.0], [4.0, 4.0], [0.0, 1.0]];
/// let a = FeatureStats::from_features(all.slice(ndarray::s![..2, ..])).unwrap();
/// let b = FeatureStats::from_features(all.slice(ndarray::s![2.., ..])).unwrap();
/// let whole = FeatureStats::from_features(all.view()).unwrap();
/// let merged = a.merge(&b).unwrap();
/// assert_eq!(merged.n(), 4);
/// for (x, y) in merged.covariance().iter().zip(whole.covariance()) {
///     assert!((x - y).abs() < 1e-12);
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    n: u64,
    dim: usize,
    mean: Vec<f64>,
    /// Row-major dim x dim centred scatter matrix.
    scatter: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of no samples, ready to merge into.
    pub fn empty(dim: usize) -> Self {
        Self {
            n: 0,
            dim,
            mean: vec![0.0; dim],
            scatter: vec![0.0; dim * dim],
        }
    }

    /// Statistics of the rows of `features`, centred on their own mean before the outer products.
    ///
    /// Two passes over row blocks, each block turned into float64 on its own: the mean, then the
    /// centred scatter accumulated block by block, so no float64 copy of the whole matrix exists.
    pub fn from_features<'a>(features: impl Into<FeatureView<'a>>) -> Result<Self, MetricError> {
        let features = features.into();
        Self::from_row_blocks(
            features,
            rows_within(features.ncols() * 8, STATS_BLOCK_BYTES),
        )
    }

    fn from_row_blocks(features: FeatureView, rows: usize) -> Result<Self, MetricError> {
        let (n, dim) = features.dim();
        if n == 0 {
            return Ok(Self::empty(dim));
        }
        if !features.all_finite() {
            return Err(MetricError::NonFinite);
        }
        let mut sum = Tensor::f_zeros([dim as i64], (Kind::Double, device::current()))?;
        for (start, len) in features.block_ranges(rows) {
            let block = features.block(start, len);
            sum = sum.f_add(&block.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        }
        let mean = sum.f_div_scalar(n as f64)?;
        let centre = mean.f_unsqueeze(0)?;
        let mut scatter =
            Tensor::f_zeros([dim as i64, dim as i64], (Kind::Double, device::current()))?;
        for (start, len) in features.block_ranges(rows) {
            let centred = features.block(start, len).f_sub(&centre)?;
            let _ = scatter.f_addmm_(&centred.f_tr()?, &centred)?;
        }
        Ok(Self {
            n: n as u64,
            dim,
            mean: linalg::to_vec(&mean)?,
            scatter: linalg::to_vec(&scatter)?,
        })
    }

    /// Statistics of the union of both sets (Chan et al. 1979).
    pub fn merge(&self, other: &Self) -> Result<Self, MetricError> {
        if self.dim != other.dim {
            return Err(MetricError::DimensionMismatch(self.dim, other.dim));
        }
        if other.n == 0 {
            return Ok(self.clone());
        }
        if self.n == 0 {
            return Ok(other.clone());
        }
        let n = self.n + other.n;
        let (na, nb, nn) = (self.n as f64, other.n as f64, n as f64);
        let delta: Vec<f64> = other
            .mean
            .iter()
            .zip(&self.mean)
            .map(|(b, a)| b - a)
            .collect();
        let mean = self
            .mean
            .iter()
            .zip(&delta)
            .map(|(a, d)| a + d * nb / nn)
            .collect();
        let w = na * nb / nn;
        let d = self.dim;
        let mut scatter = Vec::with_capacity(d * d);
        for i in 0..d {
            for j in 0..d {
                let k = i * d + j;
                scatter.push(self.scatter[k] + other.scatter[k] + w * delta[i] * delta[j]);
            }
        }
        Ok(Self {
            n,
            dim: d,
            mean,
            scatter,
        })
    }

    /// Rebuilds statistics stored with [`FeatureStats::scatter`] and friends (the caches).
    pub fn from_parts(
        n: u64,
        dim: usize,
        mean: Vec<f64>,
        scatter: Vec<f64>,
    ) -> Result<Self, MetricError> {
        if mean.len() != dim || scatter.len() != dim * dim {
            return Err(MetricError::InvalidParameter(format!(
                "statistics of dimension {dim} need {dim} means and {} scatter entries, got {} and {}",
                dim * dim,
                mean.len(),
                scatter.len()
            )));
        }
        Ok(Self {
            n,
            dim,
            mean,
            scatter,
        })
    }

    /// The centred scatter matrix Σ(x−μ)(x−μ)ᵀ, row-major.
    pub fn scatter(&self) -> &[f64] {
        &self.scatter
    }

    /// Number of samples.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Mean vector μ = Σx / n.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Σx, the raw sum (derived; the centred form is what is stored).
    pub fn sum(&self) -> Vec<f64> {
        self.mean.iter().map(|m| m * self.n as f64).collect()
    }

    /// Σxxᵀ, the raw sum of outer products (derived), row-major.
    pub fn sum_outer(&self) -> Vec<f64> {
        let n = self.n as f64;
        let d = self.dim;
        (0..d * d)
            .map(|k| self.scatter[k] + n * self.mean[k / d] * self.mean[k % d])
            .collect()
    }

    /// Unbiased covariance (Σxxᵀ − n·μμᵀ)/(n−1), as `np.cov(rowvar=False)`; row-major.
    /// With one sample the covariance is zero.
    pub fn covariance(&self) -> Vec<f64> {
        let denom = (self.n.max(2) - 1) as f64;
        self.scatter.iter().map(|s| s / denom).collect()
    }

    /// [`Self::gaussian`], reusing the scatter matrix's storage for the covariance.
    pub fn into_gaussian(self) -> Gaussian {
        let denom = (self.n.max(2) - 1) as f64;
        let mut cov = self.scatter;
        cov.iter_mut().for_each(|s| *s /= denom);
        Gaussian {
            mean: self.mean,
            cov,
            n: Some(self.n),
        }
    }

    /// Mean and covariance, the Gaussian FID compares.
    pub fn gaussian(&self) -> Gaussian {
        Gaussian {
            mean: self.mean.clone(),
            cov: self.covariance(),
            n: Some(self.n),
        }
    }
}

/// A Gaussian summary of a feature set: mean and covariance (row-major), as stored in
/// pytorch-fid's and clean-fid's `.npz` statistics (`mu`, `sigma`).
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    pub cov: Vec<f64>,
    /// Sample count, when known (`.npz` statistics do not carry it).
    pub n: Option<u64>,
}

impl Gaussian {
    /// Checks shapes and finiteness; `dim` is the mean's length.
    pub fn validate(&self) -> Result<usize, MetricError> {
        let d = self.mean.len();
        if self.cov.len() != d * d {
            return Err(MetricError::InvalidParameter(format!(
                "covariance has {} entries, expected {d}x{d}",
                self.cov.len()
            )));
        }
        if self.mean.iter().chain(&self.cov).any(|v| !v.is_finite()) {
            return Err(MetricError::NonFinite);
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, d: usize, offset: f64, scale: f64, seed: u64) -> Array2<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |(_, j)| {
            offset * (j as f64 + 1.0) + scale * rng.gen::<f64>()
        })
    }

    fn assert_close(a: &[f64], b: &[f64], rel: f64) {
        let scale = b
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(f64::MIN_POSITIVE);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= rel * scale, "{x} vs {y}");
        }
    }

    #[test]
    fn covariance_matches_two_pass_definition() {
        let x = random(50, 4, 0.0, 1.0, 1);
        let st = FeatureStats::from_features(x.view()).unwrap();
        let mean = x.mean_axis(ndarray::Axis(0)).unwrap();
        let c = &x - &mean;
        let cov = c.t().dot(&c) / 49.0;
        assert_close(st.mean(), mean.as_slice().unwrap(), 1e-14);
        assert_close(&st.covariance(), cov.as_slice().unwrap(), 1e-13);
    }

    #[test]
    fn row_blocks_and_float32_storage_change_nothing_but_rounding() {
        let x = random(103, 5, 0.7, 3.0, 5);
        let whole = FeatureStats::from_row_blocks(x.view().into(), 103).unwrap();
        for rows in [1, 10, 64] {
            let blocked = FeatureStats::from_row_blocks(x.view().into(), rows).unwrap();
            assert_close(blocked.mean(), whole.mean(), 1e-14);
            assert_close(blocked.scatter(), whole.scatter(), 1e-13);
        }
        // float32 storage is the float64 computation on the exactly upcast values.
        let narrow = x.mapv(|v| v as f32);
        let wide = narrow.mapv(f64::from);
        let a = FeatureStats::from_features(narrow.view()).unwrap();
        let b = FeatureStats::from_features(wide.view()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.clone().into_gaussian(), a.gaussian());
    }

    #[test]
    fn merging_halves_equals_whole() {
        let x = random(101, 6, 0.3, 2.0, 2);
        let whole = FeatureStats::from_features(x.view()).unwrap();
        let a = FeatureStats::from_features(x.slice(s![..37, ..])).unwrap();
        let b = FeatureStats::from_features(x.slice(s![37.., ..])).unwrap();
        let merged = a.merge(&b).unwrap();
        assert_eq!(merged.n(), 101);
        assert_close(merged.mean(), whole.mean(), 1e-14);
        assert_close(&merged.covariance(), &whole.covariance(), 1e-12);
        assert_close(&merged.sum(), &whole.sum(), 1e-14);
        assert_close(&merged.sum_outer(), &whole.sum_outer(), 1e-13);
        // Merging with nothing changes nothing, on either side.
        assert_eq!(merged.merge(&FeatureStats::empty(6)).unwrap(), merged);
        assert_eq!(FeatureStats::empty(6).merge(&merged).unwrap(), merged);
    }

    #[test]
    fn merge_keeps_precision_with_large_mean_and_small_variance() {
        // Means ~1e4, spread 1e-3: the raw Σxxᵀ − n·μμᵀ route cancels away every digit here.
        let x = random(400, 3, 1e4, 1e-3, 3);
        let parts: Vec<_> = (0..4)
            .map(|k| FeatureStats::from_features(x.slice(s![k * 100..(k + 1) * 100, ..])).unwrap())
            .collect();
        let merged = parts
            .iter()
            .skip(1)
            .fold(parts[0].clone(), |acc, p| acc.merge(p).unwrap());
        let mean = x.mean_axis(ndarray::Axis(0)).unwrap();
        let c = &x - &mean;
        let cov = c.t().dot(&c) / 399.0;
        // Variance of U(0, 1e-3) is ~8.3e-8; demand agreement to 1e-7 of the largest entry.
        assert_close(&merged.covariance(), cov.as_slice().unwrap(), 1e-7);
        assert!(merged.covariance()[0] > 7e-8 && merged.covariance()[0] < 9.5e-8);
        // The naive route on the same data is off by orders of magnitude, which is why the
        // centred form is stored.
        let raw = x.t().dot(&x);
        let naive = (raw[[0, 0]] - 400.0 * mean[0] * mean[0]) / 399.0;
        assert!(
            (naive - cov[[0, 0]]).abs() > 1e-2 * cov[[0, 0]],
            "naive {naive} vs {}",
            cov[[0, 0]]
        );
    }

    #[test]
    fn dimension_mismatch_and_nonfinite_are_errors() {
        let a = FeatureStats::empty(2);
        let b = FeatureStats::empty(3);
        assert!(matches!(
            a.merge(&b),
            Err(MetricError::DimensionMismatch(2, 3))
        ));
        let mut x = random(3, 2, 0.0, 1.0, 4);
        x[[1, 1]] = f64::NAN;
        assert!(matches!(
            FeatureStats::from_features(x.view()),
            Err(MetricError::NonFinite)
        ));
    }
}
