//! Two-sample U-statistics of MMD² form, with the two variance tools the intervals use: the
//! jackknife of the full-sample statistic, and the within-set sums of a resample that skip pairs of
//! copies of one sample.
use tch::{Kind, Tensor};

use super::{linalg, resampling::distinct_origin_pairs, MetricError};

/// Rows of a kernel block at a time: bounds the memory of a block to about 32 MB of float64.
const BLOCK_ENTRIES: usize = 4_000_000;

/// The unbiased MMD² of x (nx rows) and y (ny rows) under `kernel`, and the two-sample jackknife
/// estimate of its variance (Arvesen 1969): (nx−1)/nx·Σᵢ(U₋ᵢ − Ū₋ₓ)² + (ny−1)/ny·Σⱼ(U₋ⱼ − Ū₋ᵧ)²,
/// where U₋ᵢ leaves out xᵢ. Each U₋ᵢ follows from the kernel matrices' row sums, so the cost is
/// one pass over the (nx+ny)² kernel entries in blocks, never the whole matrix at once. For
/// U-statistics the jackknife variance errs on the large side (Efron & Stein 1981).
pub(crate) fn jackknife<K>(x: &Tensor, y: &Tensor, kernel: K) -> Result<(f64, f64), MetricError>
where
    K: Fn(&Tensor, &Tensor) -> Result<Tensor, MetricError>,
{
    let nx = x.size()[0] as usize;
    let ny = y.size()[0] as usize;
    if nx.min(ny) < 3 {
        return Err(MetricError::TooFewSamples {
            metric: "a U-statistic's jackknife",
            needed: 3,
            got: nx.min(ny),
        });
    }
    let block = (BLOCK_ENTRIES / (nx + ny)).max(1);
    // Off-diagonal row sums of k(a, a) and row sums of k(a, other) (and column sums of the
    // latter when `cols` is asked for).
    let row_sums = |a: &Tensor, n: usize, other: Option<&Tensor>| -> Result<RowSums, MetricError> {
        let mut within = Vec::with_capacity(n);
        let mut cross = Vec::new();
        let mut cols: Option<Tensor> = None;
        let mut start = 0;
        while start < n {
            let len = block.min(n - start);
            let rows = a.f_narrow(0, start as i64, len as i64)?;
            let k = kernel(&rows, a)?;
            let diag = k
                .f_narrow(1, start as i64, len as i64)?
                .f_diagonal(0, 0, 1)?;
            let sums = k.f_sum_dim_intlist(1, false, Kind::Double)?.f_sub(&diag)?;
            within.extend(linalg::to_vec(&sums)?);
            if let Some(b) = other {
                let kb = kernel(&rows, b)?;
                cross.extend(linalg::to_vec(&kb.f_sum_dim_intlist(
                    1,
                    false,
                    Kind::Double,
                )?)?);
                let c = kb.f_sum_dim_intlist(0, false, Kind::Double)?;
                cols = Some(match cols {
                    Some(acc) => acc.f_add(&c)?,
                    None => c,
                });
            }
            start += len;
        }
        let cols = match cols {
            Some(c) => linalg::to_vec(&c)?,
            None => Vec::new(),
        };
        Ok(RowSums {
            within,
            cross,
            cols,
        })
    };
    let xs = row_sums(x, nx, Some(y))?;
    let ys = row_sums(y, ny, None)?;
    Ok(from_row_sums(&xs, &ys.within))
}

/// [`jackknife`] from kernel matrices already at hand: k(x, x), k(y, y) and k(x, y) whole.
pub(crate) fn jackknife_from_kernels(
    kxx: &Tensor,
    kyy: &Tensor,
    kxy: &Tensor,
) -> Result<(f64, f64), MetricError> {
    let (nx, ny) = (kxx.size()[0] as usize, kyy.size()[0] as usize);
    if nx.min(ny) < 3 {
        return Err(MetricError::TooFewSamples {
            metric: "a U-statistic's jackknife",
            needed: 3,
            got: nx.min(ny),
        });
    }
    let off_diagonal_row_sums = |k: &Tensor| -> Result<Vec<f64>, MetricError> {
        let sums = k.f_sum_dim_intlist(1, false, Kind::Double)?;
        linalg::to_vec(&sums.f_sub(&k.f_diagonal(0, 0, 1)?)?)
    };
    let xs = RowSums {
        within: off_diagonal_row_sums(kxx)?,
        cross: linalg::to_vec(&kxy.f_sum_dim_intlist(1, false, Kind::Double)?)?,
        cols: linalg::to_vec(&kxy.f_sum_dim_intlist(0, false, Kind::Double)?)?,
    };
    Ok(from_row_sums(&xs, &off_diagonal_row_sums(kyy)?))
}

/// U and its jackknife variance from x's off-diagonal within-set row sums, its cross row sums
/// and the cross column sums, and y's off-diagonal within-set row sums.
fn from_row_sums(xs: &RowSums, ys_within: &[f64]) -> (f64, f64) {
    let (nx, ny) = (xs.within.len(), ys_within.len());
    let (fx, fy) = (nx as f64, ny as f64);
    let sxx: f64 = xs.within.iter().sum();
    let syy: f64 = ys_within.iter().sum();
    let sxy: f64 = xs.cross.iter().sum();
    let u = sxx / (fx * (fx - 1.0)) + syy / (fy * (fy - 1.0)) - 2.0 * sxy / (fx * fy);
    let without_x: Vec<f64> = (0..nx)
        .map(|i| {
            (sxx - 2.0 * xs.within[i]) / ((fx - 1.0) * (fx - 2.0)) + syy / (fy * (fy - 1.0))
                - 2.0 * (sxy - xs.cross[i]) / ((fx - 1.0) * fy)
        })
        .collect();
    let without_y: Vec<f64> = (0..ny)
        .map(|j| {
            sxx / (fx * (fx - 1.0)) + (syy - 2.0 * ys_within[j]) / ((fy - 1.0) * (fy - 2.0))
                - 2.0 * (sxy - xs.cols[j]) / (fx * (fy - 1.0))
        })
        .collect();
    let spread = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        (n - 1.0) / n * v.iter().map(|x| (x - m) * (x - m)).sum::<f64>()
    };
    (u, spread(&without_x) + spread(&without_y))
}

struct RowSums {
    within: Vec<f64>,
    cross: Vec<f64>,
    cols: Vec<f64>,
}

/// The unbiased MMD² of resampled rows whose originals are `origin_x` and `origin_y`: the
/// within-set means run over pairs of copies of *different* originals only
/// ([`distinct_origin_pairs`]), the cross mean over all pairs. Without duplicates this is the
/// usual unbiased estimator.
pub(crate) fn distinct_origin_mmd2(
    kxx: &Tensor,
    kyy: &Tensor,
    kxy: &Tensor,
    origin_x: &[usize],
    origin_y: &[usize],
) -> Result<f64, MetricError> {
    let within = |k: &Tensor, origins: &[usize]| -> Result<f64, MetricError> {
        let allowed = distinct_origin_pairs(origins);
        let count = allowed.iter().filter(|&&a| a).count();
        if count == 0 {
            return Err(MetricError::InvalidParameter(
                "a resample holds copies of a single sample only".into(),
            ));
        }
        let n = origins.len() as i64;
        let mask: Vec<f64> = allowed.iter().map(|&a| f64::from(u8::from(a))).collect();
        let mask = Tensor::from_slice(&mask)
            .f_view([n, n])?
            .f_to_device(k.device())?;
        Ok(linalg::scalar(&k.f_mul(&mask)?.f_sum(Kind::Double)?)? / count as f64)
    };
    Ok(within(kxx, origin_x)? + within(kyy, origin_y)?
        - 2.0 * linalg::scalar(&kxy.f_mean(Kind::Double)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    fn linear(a: &Tensor, b: &Tensor) -> Result<Tensor, MetricError> {
        Ok(a.f_mm(&b.f_tr()?)?)
    }

    fn sample(n: usize, d: usize, shift: f64, seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        linalg::tensor(Array2::from_shape_fn((n, d), |_| rng.gen::<f64>() + shift).view())
    }

    /// U computed from scratch on a subset of rows.
    fn u_of(x: &Tensor, y: &Tensor) -> f64 {
        let (kxx, kyy, kxy) = (
            linear(x, x).unwrap(),
            linear(y, y).unwrap(),
            linear(x, y).unwrap(),
        );
        let nx = x.size()[0] as usize;
        let ny = y.size()[0] as usize;
        let ox: Vec<usize> = (0..nx).collect();
        let oy: Vec<usize> = (0..ny).collect();
        distinct_origin_mmd2(&kxx, &kyy, &kxy, &ox, &oy).unwrap()
    }

    fn without(t: &Tensor, i: i64) -> Tensor {
        let n = t.size()[0];
        let keep: Vec<i64> = (0..n).filter(|&r| r != i).collect();
        t.index_select(0, &Tensor::from_slice(&keep))
    }

    #[test]
    fn jackknife_matches_leaving_out_by_brute_force() {
        let x = sample(9, 3, 0.0, 1);
        let y = sample(7, 3, 0.3, 2);
        let (u, var) = jackknife(&x, &y, linear).unwrap();
        assert!((u - u_of(&x, &y)).abs() < 1e-12);
        let spread = |v: Vec<f64>| {
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            (n - 1.0) / n * v.iter().map(|a| (a - m).powi(2)).sum::<f64>()
        };
        let brute = spread((0..9).map(|i| u_of(&without(&x, i), &y)).collect())
            + spread((0..7).map(|j| u_of(&x, &without(&y, j))).collect());
        assert!(((var - brute) / brute).abs() < 1e-9, "{var} vs {brute}");
        let (u2, var2) = jackknife_from_kernels(
            &linear(&x, &x).unwrap(),
            &linear(&y, &y).unwrap(),
            &linear(&x, &y).unwrap(),
        )
        .unwrap();
        assert!((u2 - u).abs() < 1e-12 && ((var2 - var) / var).abs() < 1e-12);
    }

    #[test]
    fn copies_do_not_enter_the_within_sums() {
        // Rows 0 and 2 of the resample are both sample 5: their pair must not count, so the
        // statistic equals the one on the distinct pairs written out by hand.
        let x = sample(3, 2, 0.0, 3);
        let x = Tensor::cat(&[&x, &x.narrow(0, 0, 1)], 0); // rows: a, b, c, a
        let origins = [5, 1, 2, 5];
        let y = sample(4, 2, 0.5, 4);
        let oy = [0, 1, 2, 3];
        let got = distinct_origin_mmd2(
            &linear(&x, &x).unwrap(),
            &linear(&y, &y).unwrap(),
            &linear(&x, &y).unwrap(),
            &origins,
            &oy,
        )
        .unwrap();
        let k = linear(&x, &x).unwrap();
        let mut sum = 0.0;
        let mut count = 0.0;
        for i in 0..4 {
            for j in 0..4 {
                if origins[i] != origins[j] {
                    sum += k.double_value(&[i as i64, j as i64]);
                    count += 1.0;
                }
            }
        }
        assert_eq!(count, 10.0);
        let kyy = linear(&y, &y).unwrap();
        let yy = (kyy.sum(Kind::Double).double_value(&[])
            - kyy.diagonal(0, 0, 1).sum(Kind::Double).double_value(&[]))
            / 12.0;
        let xy = linear(&x, &y).unwrap().mean(Kind::Double).double_value(&[]);
        assert!((got - (sum / count + yy - 2.0 * xy)).abs() < 1e-12);
    }
}
