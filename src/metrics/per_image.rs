//! Per-image gap: which source images are farthest out of the target domain; docs/metrics.md, "Per-image gap".
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{blocks, linalg, FeatureView, MetricError};

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

/// Witness values (RBF kernel of bandwidth `sigma`) and distances to the `k`-th nearest target
/// sample for every source row, in source order.
///
/// Source rows go in tiles against tiles of the target and of the source itself: kernel sums add
/// up tile by tile, and the k nearest target samples are merged tile by tile, so no whole row of
/// distances is ever held.
pub fn per_image_gap<'a, 'b>(
    source: impl Into<FeatureView<'a>>,
    target: impl Into<FeatureView<'b>>,
    sigma: f64,
    k: usize,
) -> Result<Vec<ImageGap>, MetricError> {
    let (source, target) = (source.into(), target.into());
    let tile = blocks::tile_rows(source.ncols());
    gap_in_blocks(source, target, sigma, k, tile)
}

fn gap_in_blocks(
    source: FeatureView,
    target: FeatureView,
    sigma: f64,
    k: usize,
    tile: usize,
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
    let mut out = Vec::with_capacity(ns);
    let k = k.max(1);
    let kernel_sum = |d2: &Tensor| -> Result<Tensor, MetricError> {
        Ok(d2
            .f_mul_scalar(-gamma)?
            .f_exp()?
            .f_sum_dim_intlist(1, false, Kind::Double)?)
    };
    let tiles = blocks::Tiles::new(tile.min(ns.max(nt)), d)?;
    for (start, len) in source.block_ranges(tile) {
        let block = tiles.load_rows(source, start, len)?;
        // One pass over the target tiles serves the kernel sum and the k nearest.
        let mut to_target =
            Tensor::f_zeros([len as i64], (Kind::Double, super::device::current()))?;
        let mut nearest: Option<Tensor> = None;
        tiles.for_each_column_block(&block, target, |_, d2| {
            to_target = to_target.f_add(&kernel_sum(&d2)?)?;
            nearest = Some(blocks::keep_smallest(nearest.take(), &d2, k)?);
            Ok(())
        })?;
        let to_target = to_target.f_div_scalar(nt as f64)?;
        let mut own = Tensor::f_zeros([len as i64], (Kind::Double, super::device::current()))?;
        tiles.for_each_column_block(&block, source, |_, d2| {
            own = own.f_add(&kernel_sum(&d2)?)?;
            Ok(())
        })?;
        // k(x, x) = 1 exactly for an RBF kernel; leave it out of the own-set mean.
        let to_own = own.f_sub_scalar(1.0)?.f_div_scalar((ns - 1) as f64)?;
        let witness = linalg::to_vec(&to_target.f_sub(&to_own)?)?;
        let nearest = nearest.ok_or_else(|| {
            MetricError::InvalidParameter("no target samples to measure distances to".into())
        })?;
        let knn = linalg::to_vec(&nearest.f_select(1, (k - 1) as i64)?.f_sqrt()?)?;
        for (i, (w, dist)) in witness.into_iter().zip(knn).enumerate() {
            out.push(ImageGap {
                index: start + i,
                witness: w,
                knn_distance: dist,
            });
        }
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
    fn blocks_and_float32_storage_give_the_same_gaps() {
        let mut rng = crate::metrics::rng::LegacyRandomState::new(5);
        let s = Array2::from_shape_simple_fn((37, 6), || rng.random_sample() as f32);
        let mut t = Array2::from_shape_simple_fn((29, 6), || rng.random_sample() as f32 + 0.2);
        let dup = s.row(2).to_owned();
        t.row_mut(0).assign(&dup);
        let (s64, t64) = (s.mapv(f64::from), t.mapv(f64::from));
        let whole = gap_in_blocks(s64.view().into(), t64.view().into(), 0.8, 3, 37).unwrap();
        for rows in [1, 5, 16] {
            let got = gap_in_blocks(s.view().into(), t.view().into(), 0.8, 3, rows).unwrap();
            // Equal up to rounding: matrix products of other shapes may sum in another order.
            for (g, w) in got.iter().zip(&whole) {
                assert_eq!(g.index, w.index);
                assert!(
                    (g.knn_distance - w.knn_distance).abs() < 1e-12,
                    "{g:?} vs {w:?}"
                );
                assert!((g.witness - w.witness).abs() < 1e-14, "{g:?} vs {w:?}");
            }
        }
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
