//! Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020),
//! with the k-NN radii and strict comparisons of the `prdc` reference package.
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{blocks, FeatureView, MetricError};

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

/// Distances of each row of `x` to its `k + 1` nearest rows, ascending, the row itself first (the
/// 0-th neighbour, at 0), from tiles of `tile` rows: column `k` is the k-NN radius, and one pass
/// serves every k up to `k`.
fn nearest_distances(x: FeatureView, k: usize, tile: usize) -> Result<Tensor, MetricError> {
    let mut nearest = Vec::with_capacity(x.nrows().div_ceil(tile.max(1)));
    let tiles = blocks::Tiles::new(tile.min(x.nrows()), x.ncols())?;
    for (start, len) in x.block_ranges(tile) {
        let block = tiles.load_rows(x, start, len)?;
        nearest.push(tiles.smallest_own_squared_distances(&block, x, start, k + 1)?);
    }
    // Euclidean distances as sklearn's `pairwise_distances` forms them for float64 input: the
    // square root of the clamped squared distance. The root is monotone, so the k-th smallest is
    // the same element either side of it.
    Ok(Tensor::f_cat(&nearest, 0)?.f_sqrt()?)
}

/// Column `k` of [`nearest_distances`]: each row's k-NN radius.
fn radius(nearest: &Tensor, k: usize) -> Result<Tensor, MetricError> {
    Ok(nearest.f_select(1, k as i64)?.f_contiguous()?)
}

/// Precision/recall with `k_pr` and density/coverage with `k_dc`. Source plays the role of the
/// `prdc` package's "fake" features, target the "real" ones.
///
/// Computed by tiles (docs/metrics.md, "Blockwise computation"): the k-NN radii of each set from
/// the k smallest distances merged tile by tile, then one pass of real row tiles against fake
/// column tiles that counts what the four measures need. The comparisons are those of the whole
/// distance matrix, so the counts are the same.
///
/// ```
/// use gapmeter::metrics::{prdc, PrdcParams};
/// let a = ndarray::Array2::from_shape_fn((30, 2), |(i, j)| ((i * 7 + j * 3) % 10) as f64);
/// let r = prdc(a.view(), a.view(), &PrdcParams::default()).unwrap();
/// assert_eq!((r.precision, r.recall, r.coverage), (1.0, 1.0, 1.0));
/// ```
pub fn prdc<'a, 'b>(
    source: impl Into<FeatureView<'a>>,
    target: impl Into<FeatureView<'b>>,
    params: &PrdcParams,
) -> Result<Prdc, MetricError> {
    let (source, target) = (source.into(), target.into());
    let tile = blocks::tile_rows(source.ncols());
    prdc_in_blocks(source, target, params, tile)
}

fn prdc_in_blocks(
    fake: FeatureView,
    real: FeatureView,
    params: &PrdcParams,
    tile: usize,
) -> Result<Prdc, MetricError> {
    if fake.ncols() != real.ncols() {
        return Err(MetricError::DimensionMismatch(fake.ncols(), real.ncols()));
    }
    let k_max = params.k_pr.max(params.k_dc);
    if params.k_pr == 0 || params.k_dc == 0 {
        return Err(MetricError::InvalidParameter("k must be at least 1".into()));
    }
    let n = fake.nrows().min(real.nrows());
    if n <= k_max {
        return Err(MetricError::TooFewSamples {
            metric: "precision/recall/density/coverage",
            needed: k_max + 1,
            got: n,
        });
    }
    if !(fake.all_finite() && real.all_finite()) {
        return Err(MetricError::NonFinite);
    }
    // One pass per set: the real radii for both k come from the same nearest distances.
    let real_nearest = nearest_distances(real, k_max, tile)?;
    let (real_pr, real_dc) = (
        radius(&real_nearest, params.k_pr)?,
        radius(&real_nearest, params.k_dc)?,
    );
    let fake_pr =
        radius(&nearest_distances(fake, params.k_pr, tile)?, params.k_pr)?.f_unsqueeze(0)?;
    let (nr, nf) = (real.nrows(), fake.nrows());
    // Per fake sample: inside some real ball (precision). Summed over the pass: real balls of
    // radius k_dc holding a fake sample (density). Per real row: some fake ball holds it
    // (recall), nearest fake sample within its k_dc ball (coverage).
    let fake_inside = Tensor::f_zeros([nf as i64], (Kind::Bool, super::device::current()))?;
    let mut density_count: i64 = 0;
    let (mut recalled, mut covered) = (0i64, 0i64);
    let tiles = blocks::Tiles::new(tile.min(real.nrows().max(fake.nrows())), real.ncols())?;
    for (start, len) in real.block_ranges(tile) {
        let pr = real_pr
            .f_narrow(0, start as i64, len as i64)?
            .f_unsqueeze(1)?;
        let dc = real_dc
            .f_narrow(0, start as i64, len as i64)?
            .f_unsqueeze(1)?;
        let mut in_fake_ball =
            Tensor::f_zeros([len as i64], (Kind::Bool, super::device::current()))?;
        let mut nearest: Option<Tensor> = None;
        let block = tiles.load_rows(real, start, len)?;
        tiles.for_each_column_block(&block, fake, |col, mut d| {
            let _ = d.f_sqrt_()?;
            let width = d.size()[1];
            let inside = d.f_lt_tensor(&pr)?.f_any_dim(0, false)?;
            let mut cols = fake_inside.f_narrow(0, col as i64, width)?;
            let merged = cols.f_logical_or(&inside)?;
            cols.f_copy_(&merged)?;
            let radii = fake_pr.f_narrow(1, col as i64, width)?;
            in_fake_ball =
                in_fake_ball.f_logical_or(&d.f_lt_tensor(&radii)?.f_any_dim(1, false)?)?;
            density_count += d.f_lt_tensor(&dc)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            let (m, _) = d.f_min_dim(1, false)?;
            nearest = Some(match nearest.take() {
                Some(prev) => prev.f_minimum(&m)?,
                None => m,
            });
            Ok(())
        })?;
        recalled += in_fake_ball.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        if let Some(m) = nearest {
            covered += m
                .f_lt_tensor(&dc.f_squeeze_dim(1)?)?
                .f_sum(Kind::Int64)?
                .f_int64_value(&[])?;
        }
    }
    let precise = fake_inside.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    // Counts are exact integers, so count/n is what the reference's mean of 0/1 values gives;
    // density keeps its (1/k) · mean(count) order.
    Ok(Prdc {
        precision: precise as f64 / nf as f64,
        recall: recalled as f64 / nr as f64,
        density: (1.0 / params.k_dc as f64) * (density_count as f64 / nf as f64),
        coverage: covered as f64 / nr as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{linalg, mmd::squared_distances};
    use ndarray::Array2;

    /// The whole-matrix computation this module used before it went blockwise: every distance
    /// matrix at once. The oracle for the blockwise counts.
    fn whole_matrix(source: &Array2<f64>, target: &Array2<f64>, params: &PrdcParams) -> Prdc {
        let distances = |a: &Tensor, b: &Tensor| squared_distances(a, b).unwrap().sqrt();
        let knn_radii = |x: &Tensor, k: usize| {
            let mut d = distances(x, x);
            let _ = d.fill_diagonal_(0.0, false);
            d.kthvalue(k as i64 + 1, 1, false).0
        };
        let fake = linalg::tensor(source.view());
        let real = linalg::tensor(target.view());
        let d = distances(&real, &fake);
        let real_pr = knn_radii(&real, params.k_pr).unsqueeze(1);
        let fake_pr = knn_radii(&fake, params.k_pr).unsqueeze(0);
        let real_dc = knn_radii(&real, params.k_dc).unsqueeze(1);
        let mean = |t: Tensor| t.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        let inside_dc = d.lt_tensor(&real_dc).to_kind(Kind::Double);
        Prdc {
            precision: mean(d.lt_tensor(&real_pr).any_dim(0, false)),
            recall: mean(d.lt_tensor(&fake_pr).any_dim(1, false)),
            density: (1.0 / params.k_dc as f64)
                * mean(inside_dc.sum_dim_intlist(0, false, Kind::Double)),
            coverage: mean(d.min_dim(1, false).0.lt_tensor(&real_dc.squeeze_dim(1))),
        }
    }

    #[test]
    fn blocks_give_the_whole_matrix_counts() {
        let mut rng = crate::metrics::rng::LegacyRandomState::new(17);
        // Continuous values: no two distances tie.
        let continuous = |rng: &mut crate::metrics::rng::LegacyRandomState, n, d, shift| {
            Array2::from_shape_simple_fn((n, d), || rng.random_sample() * 2.0 + shift)
        };
        // Quarter steps in [0, 2): every product and sum is exact in float64, so identical rows
        // are at distance exactly 0 and equal distances tie exactly, however the matrix products
        // are blocked or threaded. (With continuous values, a duplicate's distance is rounding
        // noise that varies between runs of the very same whole-matrix product.)
        let grid = |rng: &mut crate::metrics::rng::LegacyRandomState, n, d, shift| {
            Array2::from_shape_simple_fn((n, d), || {
                (rng.random_sample() * 8.0).floor() / 4.0 + shift
            })
        };
        for (nf, nr, d) in [(23, 31, 3), (40, 17, 5), (64, 64, 2)] {
            let sets = [
                (
                    continuous(&mut rng, nf, d, 0.0),
                    continuous(&mut rng, nr, d, 0.25),
                ),
                (grid(&mut rng, nf, d, 0.0), grid(&mut rng, nr, d, 0.25)),
            ];
            for (kind, (fake, real)) in sets.into_iter().enumerate() {
                let (mut fake, mut real) = (fake, real);
                if kind == 1 {
                    // Duplicates: identical rows within each set and shared between the sets.
                    for i in 0..4 {
                        let row = fake.row(i).to_owned();
                        fake.row_mut(nf - 1 - i).assign(&row);
                        real.row_mut(i).assign(&row);
                    }
                    let row = real.row(5).to_owned();
                    real.row_mut(6).assign(&row);
                    real.row_mut(7).assign(&row);
                }
                for params in [
                    PrdcParams::default(),
                    PrdcParams { k_pr: 1, k_dc: 1 },
                    PrdcParams { k_pr: 4, k_dc: 2 },
                ] {
                    let want = whole_matrix(&fake, &real, &params);
                    for rows in [1, 4, 7, 16, 1000] {
                        let got =
                            prdc_in_blocks(fake.view().into(), real.view().into(), &params, rows)
                                .unwrap();
                        assert_eq!(
                            got, want,
                            "{nf}x{nr}x{d} set {kind}, {params:?}, {rows} rows a block"
                        );
                    }
                    // float32 storage: the same counts as its float64 upcast.
                    let (f32_fake, f32_real) = (fake.mapv(|v| v as f32), real.mapv(|v| v as f32));
                    let upcast = whole_matrix(
                        &f32_fake.mapv(f64::from),
                        &f32_real.mapv(f64::from),
                        &params,
                    );
                    assert_eq!(
                        prdc(f32_fake.view(), f32_real.view(), &params).unwrap(),
                        upcast
                    );
                }
            }
        }
    }

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
