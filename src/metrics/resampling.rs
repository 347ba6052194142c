//! Small-sample tools: FID∞ / KID∞ (Chong & Forsyth 2020) and bootstrap confidence intervals.
use serde::Serialize;

use super::{inception_score::mean_std, rng::LegacyRandomState, MetricError};

/// A least-squares line value = intercept + slope / N, and its value at 1/N = 0.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Extrapolation {
    /// The extrapolated value (the intercept).
    pub value: f64,
    pub slope: f64,
    /// Coefficient of determination of the fit (1 = the points lie on the line).
    pub r2: f64,
    /// (N, value at N) pairs the line was fitted to.
    pub points: Vec<(usize, f64)>,
}

/// Fits value = a + b/N by ordinary least squares and returns a as the N → ∞ value.
///
/// ```
/// let pts = vec![(100, 3.0 + 50.0 / 100.0), (200, 3.0 + 50.0 / 200.0), (400, 3.0 + 50.0 / 400.0)];
/// let fit = gapmeter::metrics::fit_inverse_n(pts).unwrap();
/// assert!((fit.value - 3.0).abs() < 1e-12 && (fit.slope - 50.0).abs() < 1e-9);
/// ```
pub fn fit_inverse_n(points: Vec<(usize, f64)>) -> Result<Extrapolation, MetricError> {
    let distinct: std::collections::BTreeSet<usize> = points.iter().map(|p| p.0).collect();
    if distinct.len() < 2 {
        return Err(MetricError::InvalidParameter(
            "extrapolation needs at least two distinct sample sizes".into(),
        ));
    }
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|p| 1.0 / p.0 as f64).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_tot: f64 = ys.iter().map(|y| (y - my) * (y - my)).sum();
    let ss_res: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (y - intercept - slope * x).powi(2))
        .sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        1.0
    };
    Ok(Extrapolation {
        value: intercept,
        slope,
        r2,
        points,
    })
}

/// `points` sample sizes evenly spaced from `max(n/5, minimum)` to `n` (distinct, ascending).
pub fn extrapolation_sizes(n: usize, points: usize, minimum: usize) -> Vec<usize> {
    let lo = n.div_ceil(5).max(minimum).min(n);
    if points < 2 || lo == n {
        return vec![n];
    }
    let mut sizes: Vec<usize> = (0..points)
        .map(|i| lo + ((n - lo) as f64 * i as f64 / (points - 1) as f64).round() as usize)
        .collect();
    sizes.dedup();
    sizes
}

/// Evaluates `metric` on seeded random subsets of the source of each size in `sizes` (the target
/// is used whole, as Chong & Forsyth do with the reference statistics) and extrapolates to N = ∞.
/// `metric`'s own error type passes through unchanged.
pub fn extrapolate<F, E>(
    n_source: usize,
    sizes: &[usize],
    seed: u32,
    mut metric: F,
) -> Result<Extrapolation, E>
where
    F: FnMut(&[usize]) -> Result<f64, E>,
    E: From<MetricError>,
{
    let mut rng = LegacyRandomState::new(seed);
    let mut points = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let idx = rng.choice_without_replacement(n_source, size);
        points.push((size, metric(&idx)?));
    }
    Ok(fit_inverse_n(points)?)
}

/// Bootstrap settings: resamples, interval level, seed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BootstrapParams {
    pub resamples: usize,
    pub level: f64,
    pub seed: u32,
}

/// A percentile bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
    pub level: f64,
    pub resamples: usize,
    /// Standard deviation of the bootstrap distribution (a standard error estimate).
    pub std: f64,
}

/// Percentile bootstrap: resamples both sets with replacement (seeded), evaluates `metric` on each
/// pair of index lists — it may return several values, one per quantity — and returns the central
/// `level` interval of each (linear interpolation between order statistics, as numpy's default
/// percentile). `metric`'s own error type passes through unchanged.
///
/// ```
/// use gapmeter::metrics::{bootstrap, BootstrapParams};
/// let data = [1.0, 2.0, 3.0, 4.0, 5.0];
/// let p = BootstrapParams { resamples: 200, level: 0.9, seed: 1 };
/// let mean = |s: &[usize]| s.iter().map(|&i| data[i]).sum::<f64>() / 5.0;
/// let ci = bootstrap(5, 0, &p, |s, _| Ok::<_, gapmeter::metrics::MetricError>(vec![mean(s)])).unwrap();
/// assert!(ci[0].low < 3.0 && 3.0 < ci[0].high);
/// ```
pub fn bootstrap<F, E>(
    n_source: usize,
    n_target: usize,
    params: &BootstrapParams,
    mut metric: F,
) -> Result<Vec<Interval>, E>
where
    F: FnMut(&[usize], &[usize]) -> Result<Vec<f64>, E>,
    E: From<MetricError>,
{
    if params.resamples < 2 {
        return Err(
            MetricError::InvalidParameter("bootstrap needs at least 2 resamples".into()).into(),
        );
    }
    if !(params.level > 0.0 && params.level < 1.0) {
        return Err(MetricError::InvalidParameter(format!(
            "interval level must be in (0, 1), got {}",
            params.level
        ))
        .into());
    }
    let mut rng = LegacyRandomState::new(params.seed);
    let mut draw = |n: usize| -> Vec<usize> {
        (0..n)
            .map(|_| rng.random_interval(n.saturating_sub(1) as u64) as usize)
            .collect()
    };
    let mut columns: Vec<Vec<f64>> = Vec::new();
    for _ in 0..params.resamples {
        let s = draw(n_source);
        let t = draw(n_target);
        let values = metric(&s, &t)?;
        if columns.is_empty() {
            columns = vec![Vec::with_capacity(params.resamples); values.len()];
        }
        if values.len() != columns.len() {
            return Err(MetricError::InvalidParameter(
                "bootstrap metric changed its number of outputs".into(),
            )
            .into());
        }
        for (c, v) in columns.iter_mut().zip(values) {
            c.push(v);
        }
    }
    let tail = (1.0 - params.level) / 2.0;
    Ok(columns
        .into_iter()
        .map(|mut values| {
            values.sort_by(|a, b| a.total_cmp(b));
            let (_, std) = mean_std(&values);
            Interval {
                low: percentile(&values, tail),
                high: percentile(&values, 1.0 - tail),
                level: params.level,
                resamples: params.resamples,
                std,
            }
        })
        .collect())
}

/// Linear-interpolated quantile q ∈ [0, 1] of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    if i + 1 >= sorted.len() {
        return sorted[sorted.len() - 1];
    }
    sorted[i] + frac * (sorted[i + 1] - sorted[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_spread_and_end_at_n() {
        assert_eq!(extrapolation_sizes(100, 5, 2), vec![20, 40, 60, 80, 100]);
        assert_eq!(*extrapolation_sizes(37, 15, 2).last().unwrap(), 37);
        assert_eq!(extrapolation_sizes(3, 15, 2), vec![2, 3]);
        assert_eq!(extrapolation_sizes(2, 15, 2), vec![2]);
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        // np.percentile([1,2,3,4,10], [2.5, 97.5]) = [1.1, 9.4]
        assert!((percentile(&v, 0.025) - 1.1).abs() < 1e-12);
        assert!((percentile(&v, 0.975) - 9.4).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_of_a_mean_covers_it_and_is_seeded() {
        let data: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64).collect();
        let truth = data.iter().sum::<f64>() / 200.0;
        let p = BootstrapParams {
            resamples: 300,
            level: 0.95,
            seed: 7,
        };
        let mean_of = |idx: &[usize]| idx.iter().map(|&i| data[i]).sum::<f64>() / idx.len() as f64;
        let ci = bootstrap(200, 1, &p, |s, _| Ok::<_, MetricError>(vec![mean_of(s)]))
            .unwrap()
            .remove(0);
        assert!(ci.low < truth && truth < ci.high, "{ci:?}");
        // Standard error of a mean of 200 draws of U(0,100)-like data: ~29/√200 ≈ 2.
        assert!(ci.std > 1.0 && ci.std < 3.5, "{ci:?}");
        assert_eq!(
            ci,
            bootstrap(200, 1, &p, |s, _| Ok::<_, MetricError>(vec![mean_of(s)])).unwrap()[0]
        );
    }

    #[test]
    fn extrapolation_recovers_a_known_line() {
        let metric = |idx: &[usize]| Ok::<f64, MetricError>(2.5 + 40.0 / idx.len() as f64);
        let fit = extrapolate(500, &extrapolation_sizes(500, 8, 2), 1, metric).unwrap();
        assert!((fit.value - 2.5).abs() < 1e-9 && (fit.r2 - 1.0).abs() < 1e-12);
    }
}
