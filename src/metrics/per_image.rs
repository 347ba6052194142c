//! Per-image gap: which source images are farthest out of the target domain; docs/metrics.md, "Per-image gap".
use ndarray::ArrayView2;
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{linalg, mmd::squared_distances, MetricError};

/// One source image's gap scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ImageGap {
    /// Row of the image in the source set.
    pub index: usize,
    /// MMD witness mean k(x, T) − mean k(x, S∖{x}) with a Gaussian RBF kernel: negative where
    /// the source is dense and the target is not, so the most negative images are those of
    /// source-only modes. An isolated outlier, far from both sets, has a witness near 0; its
    /// `knn_distance` is what singles it out.
    pub witness: f64,
    /// Euclidean distance to the k-th nearest target sample.
    pub knn_distance: f64,
}

/// Rows handled per block, bounding memory to block × n kernel entries.
const BLOCK: i64 = 1024;

/// Witness values (RBF kernel of bandwidth `sigma`) and distances to the `k`-th nearest target
/// sample for every source row, in source order.
pub fn per_image_gap(
    source: ArrayView2<f64>,
    target: ArrayView2<f64>,
    sigma: f64,
    k: usize,
) -> Result<Vec<ImageGap>, MetricError> {
    let (ns, d) = source.dim();
    let nt = target.nrows();
    if d != target.ncols() {
        return Err(MetricError::DimensionMismatch(d, target.ncols()));
    }
    if ns < 2 || nt < k.max(1) {
        return Err(MetricError::TooFewSamples {
            metric: "per-image gap",
            needed: k.max(2),
            got: ns.min(nt),
        });
    }
    if !(sigma > 0.0 && sigma.is_finite()) {
        return Err(MetricError::InvalidParameter(format!(
            "bandwidth must be positive, got {sigma}"
        )));
    }
    let gamma = 1.0 / (2.0 * sigma * sigma);
    let s = linalg::tensor(source);
    let t = linalg::tensor(target);
    let rbf = |a: &Tensor, b: &Tensor| -> Result<Tensor, MetricError> {
        Ok(squared_distances(a, b)?.f_mul_scalar(-gamma)?.f_exp()?)
    };
    let mut out = Vec::with_capacity(ns);
    let mut start = 0i64;
    while start < ns as i64 {
        let len = BLOCK.min(ns as i64 - start);
        let block = s.f_narrow(0, start, len)?;
        let to_target = rbf(&block, &t)?.f_mean_dim(1, false, Kind::Double)?;
        // k(x, x) = 1 exactly for an RBF kernel; leave it out of the own-set mean.
        let to_own = rbf(&block, &s)?
            .f_sum_dim_intlist(1, false, Kind::Double)?
            .f_sub_scalar(1.0)?
            .f_div_scalar((ns - 1) as f64)?;
        let witness = linalg::to_vec(&to_target.f_sub(&to_own)?)?;
        let (knn, _) = squared_distances(&block, &t)?.f_kthvalue(k.max(1) as i64, 1, false)?;
        let knn = linalg::to_vec(&knn.f_sqrt()?)?;
        for (i, (w, dist)) in witness.into_iter().zip(knn).enumerate() {
            out.push(ImageGap {
                index: start as usize + i,
                witness: w,
                knn_distance: dist,
            });
        }
        start += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn source_only_modes_have_the_lowest_witness_and_outliers_the_largest_distance() {
        let mut rng = crate::metrics::rng::LegacyRandomState::new(11);
        let mut s = Array2::from_shape_simple_fn((30, 4), || rng.random_sample());
        let t = Array2::from_shape_simple_fn((40, 4), || rng.random_sample());
        // A source-only mode (rows 20..26 near 1.6) and an isolated outlier (row 3).
        for i in 20..26 {
            s.row_mut(i).mapv_inplace(|v| 1.6 + 0.05 * v);
        }
        s.row_mut(3).fill(6.0);
        let gaps = per_image_gap(s.view(), t.view(), 0.5, 3).unwrap();
        assert_eq!(gaps.len(), 30);
        let mut by_witness = gaps.clone();
        by_witness.sort_by(|a, b| a.witness.total_cmp(&b.witness));
        let lowest: std::collections::BTreeSet<usize> =
            by_witness[..6].iter().map(|g| g.index).collect();
        assert_eq!(lowest, (20..26).collect());
        let max_d = gaps
            .iter()
            .max_by(|a, b| a.knn_distance.total_cmp(&b.knn_distance))
            .unwrap();
        assert_eq!(max_d.index, 3);
    }

    #[test]
    fn witness_matches_the_definition() {
        let s = ndarray::array![[0.0, 1.0], [1.0, 0.5], [0.3, 0.3]];
        let t = ndarray::array![[1.0, 1.0], [0.2, 0.9]];
        let k = |a: ndarray::ArrayView1<f64>, b: ndarray::ArrayView1<f64>| {
            (-(&a - &b).mapv(|v| v * v).sum() / 2.0).exp()
        };
        let g = per_image_gap(s.view(), t.view(), 1.0, 1).unwrap();
        let want = (k(s.row(0), t.row(0)) + k(s.row(0), t.row(1))) / 2.0
            - (k(s.row(0), s.row(1)) + k(s.row(0), s.row(2))) / 2.0;
        assert!((g[0].witness - want).abs() < 1e-12);
        let nearest = ((0.0f64 - 0.2).powi(2) + (1.0f64 - 0.9).powi(2)).sqrt();
        assert!((g[0].knn_distance - nearest).abs() < 1e-7);
    }
}
