//! Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020),
//! with the k-NN radii and strict comparisons of the `prdc` reference package.
use ndarray::ArrayView2;
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{linalg, mmd::squared_distances, MetricError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrdcParams {
    /// k for precision and recall.
    pub k_pr: usize,
    /// k for density and coverage.
    pub k_dc: usize,
}

impl Default for PrdcParams {
    fn default() -> Self {
        Self { k_pr: 3, k_dc: 5 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prdc {
    /// Fraction of source samples inside the target manifold.
    pub precision: f64,
    /// Fraction of target samples inside the source manifold.
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

/// Euclidean distances computed as sklearn's `pairwise_distances` does for float64 input.
fn distances(a: &Tensor, b: &Tensor) -> Result<Tensor, MetricError> {
    Ok(squared_distances(a, b)?.f_sqrt()?)
}

/// Distance of each row to its k-th nearest other row (the row itself is the 0-th).
fn knn_radii(x: &Tensor, k: usize) -> Result<Tensor, MetricError> {
    let mut d = distances(x, x)?;
    // A point's distance to itself is 0 by definition; rounding in ‖x‖²+‖x‖²−2xᵀx may leave a
    // tiny positive value that would displace the true nearest neighbour.
    let _ = d.f_fill_diagonal_(0.0, false)?;
    let (values, _) = d.f_kthvalue(k as i64 + 1, 1, false)?;
    Ok(values)
}

/// Precision/recall with `k_pr` and density/coverage with `k_dc`. Source plays the role of the
/// `prdc` package's "fake" features, target the "real" ones.
///
/// ```
/// use gapmeter::metrics::{prdc, PrdcParams};
/// let a = ndarray::Array2::from_shape_fn((30, 2), |(i, j)| ((i * 7 + j * 3) % 10) as f64);
/// let r = prdc(a.view(), a.view(), &PrdcParams::default()).unwrap();
/// assert_eq!((r.precision, r.recall, r.coverage), (1.0, 1.0, 1.0));
/// ```
pub fn prdc(
    source: ArrayView2<f64>,
    target: ArrayView2<f64>,
    params: &PrdcParams,
) -> Result<Prdc, MetricError> {
    if source.ncols() != target.ncols() {
        return Err(MetricError::DimensionMismatch(
            source.ncols(),
            target.ncols(),
        ));
    }
    let k_max = params.k_pr.max(params.k_dc);
    if params.k_pr == 0 || params.k_dc == 0 {
        return Err(MetricError::InvalidParameter("k must be at least 1".into()));
    }
    let n = source.nrows().min(target.nrows());
    if n <= k_max {
        return Err(MetricError::TooFewSamples {
            metric: "precision/recall/density/coverage",
            needed: k_max + 1,
            got: n,
        });
    }
    if source.iter().chain(target.iter()).any(|v| !v.is_finite()) {
        return Err(MetricError::NonFinite);
    }
    let fake = linalg::tensor(source);
    let real = linalg::tensor(target);
    // rows: real, columns: fake
    let d = distances(&real, &fake)?;
    let real_pr = knn_radii(&real, params.k_pr)?.f_unsqueeze(1)?;
    let fake_pr = knn_radii(&fake, params.k_pr)?.f_unsqueeze(0)?;
    let real_dc = if params.k_dc == params.k_pr {
        real_pr.shallow_clone()
    } else {
        knn_radii(&real, params.k_dc)?.f_unsqueeze(1)?
    };
    let mean = |t: Tensor| -> Result<f64, MetricError> {
        linalg::scalar(&t.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?)
    };
    let precision = mean(d.f_lt_tensor(&real_pr)?.f_any_dim(0, false)?)?;
    let recall = mean(d.f_lt_tensor(&fake_pr)?.f_any_dim(1, false)?)?;
    let inside_dc = d.f_lt_tensor(&real_dc)?.f_to_kind(Kind::Double)?;
    // Same operation order as the reference: (1/k) · mean(count).
    let density =
        (1.0 / params.k_dc as f64) * mean(inside_dc.f_sum_dim_intlist(0, false, Kind::Double)?)?;
    let (nearest_fake, _) = d.f_min_dim(1, false)?;
    let coverage = mean(nearest_fake.f_lt_tensor(&real_dc.f_squeeze_dim(1)?)?)?;
    Ok(Prdc {
        precision,
        recall,
        density,
        coverage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// The definitions written out with loops.
    fn naive(fake: &Array2<f64>, real: &Array2<f64>, k: usize) -> [f64; 4] {
        let dist = |x: ndarray::ArrayView1<f64>, y: ndarray::ArrayView1<f64>| {
            (&x - &y).mapv(|v| v * v).sum().sqrt()
        };
        let radii = |x: &Array2<f64>| -> Vec<f64> {
            (0..x.nrows())
                .map(|i| {
                    let mut d: Vec<f64> = (0..x.nrows())
                        .filter(|&j| j != i)
                        .map(|j| dist(x.row(i), x.row(j)))
                        .collect();
                    d.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    d[k - 1]
                })
                .collect()
        };
        let (rr, fr) = (radii(real), radii(fake));
        let (nr, nf) = (real.nrows(), fake.nrows());
        let inside = |i: usize, j: usize| dist(real.row(i), fake.row(j)) < rr[i];
        let precision =
            (0..nf).filter(|&j| (0..nr).any(|i| inside(i, j))).count() as f64 / nf as f64;
        let recall = (0..nr)
            .filter(|&i| (0..nf).any(|j| dist(real.row(i), fake.row(j)) < fr[j]))
            .count() as f64
            / nr as f64;
        let density = (0..nf)
            .map(|j| (0..nr).filter(|&i| inside(i, j)).count())
            .sum::<usize>() as f64
            / (k * nf) as f64;
        let coverage =
            (0..nr).filter(|&i| (0..nf).any(|j| inside(i, j))).count() as f64 / nr as f64;
        [precision, recall, density, coverage]
    }

    #[test]
    fn matches_the_definitions() {
        let mut rng = crate::metrics::rng::LegacyRandomState::new(3);
        let fake = Array2::from_shape_simple_fn((40, 3), || rng.random_sample() * 2.0);
        let real = Array2::from_shape_simple_fn((35, 3), || rng.random_sample() * 1.5 + 0.3);
        for k in [1, 3, 5] {
            let r = prdc(fake.view(), real.view(), &PrdcParams { k_pr: k, k_dc: k }).unwrap();
            let want = naive(&fake, &real, k);
            // Counts must agree exactly; density is a ratio, equal up to the last bit.
            assert_eq!(
                [r.precision, r.recall, r.coverage],
                [want[0], want[1], want[3]],
                "k = {k}"
            );
            assert!(
                (r.density - want[2]).abs() < 1e-14,
                "k = {k}: {} vs {}",
                r.density,
                want[2]
            );
        }
    }

    #[test]
    fn too_few_samples_for_k() {
        let a = Array2::<f64>::zeros((5, 2));
        assert!(matches!(
            prdc(a.view(), a.view(), &PrdcParams::default()),
            Err(MetricError::TooFewSamples { .. })
        ));
    }
}
