//! Small-sample tools: N → ∞ fits over subsamples drawn without replacement (FID∞, KID∞; Chong &
//! Forsyth 2020), their delete-a-group jackknife intervals, and the pieces of a bootstrap that
//! never pairs a sample with its own copy. docs/metrics.md, "Intervals", says which metric gets
//! which interval and why.
use serde::Serialize;

use super::{rng::LegacyRandomState, MetricError};

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
    sizes_between(n.div_ceil(5).max(minimum), n, points)
}

/// `points` sample sizes evenly spaced from `lo` to `n` (distinct, ascending; `[n]` when the
/// range is empty).
pub fn sizes_between(lo: usize, n: usize, points: usize) -> Vec<usize> {
    let lo = lo.min(n);
    if points < 2 || lo == n {
        return vec![n];
    }
    let mut sizes: Vec<usize> = (0..points)
        .map(|i| lo + ((n - lo) as f64 * i as f64 / (points - 1) as f64).round() as usize)
        .collect();
    sizes.dedup();
    sizes
}

/// Bootstrap settings: resamples, interval level, seed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BootstrapParams {
    pub resamples: usize,
    pub level: f64,
    pub seed: u32,
}

impl BootstrapParams {
    /// Fails on fewer than 2 resamples or a level outside (0, 1).
    pub fn validate(&self) -> Result<(), MetricError> {
        if self.resamples < 2 {
            return Err(MetricError::InvalidParameter(
                "bootstrap needs at least 2 resamples".into(),
            ));
        }
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(MetricError::InvalidParameter(format!(
                "interval level must be in (0, 1), got {}",
                self.level
            )));
        }
        Ok(())
    }
}

/// What an interval is an interval for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Target {
    /// The metric between the two distributions the sets were drawn from (N → ∞).
    #[serde(rename = "population")]
    Population,
    /// The metric's expected value at the sets' own sample sizes (a biased metric's bias
    /// included).
    #[serde(rename = "this sample size")]
    ThisSampleSize,
}

/// A two-sided interval around a point estimate, with the method that made it and its target.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
    pub level: f64,
    /// How the interval was made, in words (see docs/metrics.md, "Intervals").
    pub method: String,
    pub target: Target,
    /// Resamples behind the standard error, where it came from resampling.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resamples: Option<usize>,
    /// The standard error the interval is built from.
    pub std: f64,
}

impl Interval {
    /// `center ± z·se`, z the two-sided normal quantile of `level`. A normal interval always
    /// contains its centre, which is the point estimate of the same target.
    ///
    /// ```
    /// use gapmeter::metrics::{Interval, Target};
    /// let ci = Interval::normal(1.0, 0.5, 0.95, "example", Target::Population, None);
    /// assert!((ci.low - (1.0 - 1.959964 * 0.5)).abs() < 1e-5 && ci.low < 1.0 && 1.0 < ci.high);
    /// ```
    pub fn normal(
        center: f64,
        se: f64,
        level: f64,
        method: &str,
        target: Target,
        resamples: Option<usize>,
    ) -> Self {
        let half = normal_quantile(0.5 + level / 2.0) * se;
        Self {
            low: center - half,
            high: center + half,
            level,
            method: method.to_string(),
            target,
            resamples,
            std: se,
        }
    }

    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    /// Whether two intervals share a point (then the two results cannot be told apart at this
    /// level).
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.low <= other.high && other.low <= self.high
    }
}

/// Standard normal CDF. erfc by the Chebyshev-fitted exponential form (fractional error below
/// 1.2e-7), which is plenty for interval half-widths.
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ]
    .iter()
    .rev()
    .fold(0.0, |acc, c| c + t * acc);
    let erfc = t * (-z * z + poly).exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// Inverse of [`normal_cdf`] by bisection: called once per interval, so simplicity wins.
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0, 40.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `n` indices drawn uniformly with replacement from 0..n (numpy's `randint` stream). Duplicates
/// are expected; U-statistics must skip pairs of copies (see [`distinct_origin_pairs`]).
pub fn resample_with_replacement(rng: &mut LegacyRandomState, n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| rng.random_interval(n.saturating_sub(1) as u64) as usize)
        .collect()
}

/// For a resample whose rows are copies of original samples `origins`, whether each ordered pair
/// (i, j) of rows may enter a within-set U-statistic sum: only when the rows are copies of
/// different originals. The diagonal is excluded as in the unbiased estimator, and so is every
/// pair of copies of one sample, which would otherwise act like two identical draws and inflate
/// the within-set kernel sums. Row-major, `origins.len()²` entries.
///
/// ```
/// let allowed = gapmeter::metrics::distinct_origin_pairs(&[4, 7, 4]);
/// // rows 0 and 2 are both copies of sample 4.
/// assert_eq!(allowed, vec![false, true, false, true, false, true, false, true, false]);
/// ```
pub fn distinct_origin_pairs(origins: &[usize]) -> Vec<bool> {
    origins
        .iter()
        .flat_map(|&a| origins.iter().map(move |&b| a != b))
        .collect()
}

/// Settings of an N → ∞ fit over subsamples drawn without replacement from both sets.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsampleFit {
    /// Source subsample sizes, ascending, the last the whole source set; the target is subsampled
    /// at the same fraction of its own size.
    pub sizes: Vec<usize>,
    /// Independent subsample sequences averaged (reduces the randomness of the subsets).
    pub repetitions: usize,
    pub seed: u32,
}

/// Groups of the delete-a-group jackknife around a [`SubsampleFit`].
pub const JACKKNIFE_GROUPS: usize = 10;

/// Subsample sequences averaged per N → ∞ fit in a report.
pub const FIT_REPETITIONS: usize = 2;

/// Where FID∞'s subsample sizes start, as a fraction of the smaller set's size `n_min`, when the
/// sets are large enough for an interval (`None` otherwise). FID's bias is close to linear in
/// 1/N only where N exceeds the feature dimension `d`, so the fit starts at max(N/2, d + 1), and
/// an interval needs that range to span at least a fifth of N: N ≥ 1.25·(d + 1). The coverage
/// simulation (`make coverage`) checks the intervals this rule allows.
///
/// ```
/// use gapmeter::metrics::fid_infinity_start;
/// assert_eq!(fid_infinity_start(1000, 64), Some(0.5));
/// assert_eq!(fid_infinity_start(100, 64), Some(0.65));
/// assert_eq!(fid_infinity_start(500, 2048), None);
/// ```
pub fn fid_infinity_start(n_min: usize, d: usize) -> Option<f64> {
    let f = (0.5f64).max((d + 1) as f64 / n_min as f64);
    (f <= 0.8).then_some(f)
}

/// Evaluates `metric` on nested subsamples, drawn without replacement, of the source (and of the
/// target, when `n_target` is given, at the same fraction), fits value = a + b/N per sequence of
/// subsamples, and averages the fits: FID∞ / KID∞ (Chong & Forsyth 2020), with the target's
/// small-sample bias removed too when it is subsampled.
///
/// With `interval_level`, the whole procedure is repeated with each of [`JACKKNIFE_GROUPS`]
/// disjoint groups of samples left out of both sets (delete-a-group jackknife), and the
/// jackknife variance, plus the variance of the average over subsample sequences, gives a normal
/// interval for the population value. `metric` receives source and target indices (the latter
/// empty when the target is not subsampled); its error type passes through.
///
/// ```
/// use gapmeter::metrics::{subsample_fit, MetricError, SubsampleFit};
/// let fit = SubsampleFit { sizes: vec![100, 150, 200], repetitions: 2, seed: 1 };
/// // A metric whose value is exactly 2 + 30/N: a population value of 2 and a 1/N bias.
/// let metric = |s: &[usize], _: &[usize]| Ok::<_, MetricError>(2.0 + 30.0 / s.len() as f64);
/// let (line, ci) = subsample_fit(200, None, &fit, Some(0.95), metric).unwrap();
/// assert!((line.slope - 30.0).abs() < 1e-9 && (line.value - 2.0).abs() < 1e-9);
/// assert!(ci.unwrap().contains(line.value));
/// ```
pub fn subsample_fit<F, E>(
    n_source: usize,
    n_target: Option<usize>,
    fit: &SubsampleFit,
    interval_level: Option<f64>,
    mut metric: F,
) -> Result<(Extrapolation, Option<Interval>), E>
where
    F: FnMut(&[usize], &[usize]) -> Result<f64, E>,
    E: From<MetricError>,
{
    let distinct: std::collections::BTreeSet<usize> = fit.sizes.iter().copied().collect();
    if distinct.len() < 2 || fit.sizes.iter().any(|&k| k < 2 || k > n_source) {
        return Err(MetricError::InvalidParameter(
            "a subsample fit needs at least two distinct sizes between 2 and the set size".into(),
        )
        .into());
    }
    if fit.repetitions == 0 {
        return Err(MetricError::InvalidParameter("no subsample sequence".into()).into());
    }
    let fractions: Vec<f64> = fit
        .sizes
        .iter()
        .map(|&k| k as f64 / n_source as f64)
        .collect();
    let mut rng = LegacyRandomState::new(fit.seed);
    let sequences: Vec<(Vec<usize>, Vec<usize>)> = (0..fit.repetitions)
        .map(|_| {
            let s = rng.permutation(n_source);
            let t = n_target.map(|n| rng.permutation(n)).unwrap_or_default();
            (s, t)
        })
        .collect();
    // One fit's points: nested prefixes of the (possibly group-reduced) sequences, so that
    // leaving a group out changes the subsets only by the samples it removes.
    let mut points_of = |s: &[usize], t: &[usize]| -> Result<Vec<(usize, f64)>, E> {
        let mut out = Vec::with_capacity(fractions.len());
        for &f in &fractions {
            let ks = ((f * s.len() as f64).round() as usize).clamp(2, s.len());
            let kt = if t.is_empty() {
                0
            } else {
                ((f * t.len() as f64).round() as usize).clamp(2, t.len())
            };
            out.push((ks, metric(&s[..ks], &t[..kt])?));
        }
        Ok(out)
    };
    let mut per_size = vec![0.0; fractions.len()];
    let mut intercepts = Vec::with_capacity(fit.repetitions);
    for (s, t) in &sequences {
        let points = points_of(s, t)?;
        for (acc, p) in per_size.iter_mut().zip(&points) {
            *acc += p.1 / fit.repetitions as f64;
        }
        intercepts.push(fit_inverse_n(points)?.value);
    }
    let averaged = fit_inverse_n(
        fit.sizes
            .iter()
            .zip(per_size)
            .map(|(&k, v)| (k, v))
            .collect(),
    )?;
    let Some(level) = interval_level else {
        return Ok((averaged, None));
    };
    // Group labels by rank in a seeded permutation, so groups are disjoint, random, and within
    // one sample of equal size.
    let groups = JACKKNIFE_GROUPS;
    let label = |n: usize, rng: &mut LegacyRandomState| -> Vec<usize> {
        let mut g = vec![0; n];
        for (rank, i) in rng.permutation(n).into_iter().enumerate() {
            g[i] = rank % groups;
        }
        g
    };
    let gs = label(n_source, &mut rng);
    let gt = n_target.map(|n| label(n, &mut rng)).unwrap_or_default();
    let mut left_out = Vec::with_capacity(groups);
    for g in 0..groups {
        let mut mean = 0.0;
        for (s, t) in &sequences {
            let s: Vec<usize> = s.iter().copied().filter(|&i| gs[i] != g).collect();
            let t: Vec<usize> = t.iter().copied().filter(|&i| gt[i] != g).collect();
            mean += fit_inverse_n(points_of(&s, &t)?)?.value / fit.repetitions as f64;
        }
        left_out.push(mean);
    }
    let g = groups as f64;
    let jack_mean = left_out.iter().sum::<f64>() / g;
    let jack_var = (g - 1.0) / g
        * left_out
            .iter()
            .map(|v| (v - jack_mean).powi(2))
            .sum::<f64>();
    let r = intercepts.len() as f64;
    let sequence_var = if intercepts.len() > 1 {
        let m = intercepts.iter().sum::<f64>() / r;
        intercepts.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (r - 1.0) / r
    } else {
        0.0
    };
    let ci = Interval::normal(
        averaged.value,
        (jack_var + sequence_var).sqrt(),
        level,
        "normal, delete-a-group jackknife of the subsample fit",
        Target::Population,
        None,
    );
    Ok((averaged, Some(ci)))
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
        assert_eq!(sizes_between(64, 100, 4), vec![64, 76, 88, 100]);
    }

    #[test]
    fn normal_quantiles() {
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_quantile(0.95) - 1.644_854).abs() < 1e-5);
        assert!(normal_quantile(0.5).abs() < 1e-7);
    }

    #[test]
    fn a_resample_never_pairs_a_sample_with_its_own_copy() {
        let mut rng = LegacyRandomState::new(3);
        let rows = resample_with_replacement(&mut rng, 40);
        let allowed = distinct_origin_pairs(&rows);
        let mut copies = 0;
        for i in 0..40 {
            for j in 0..40 {
                let same = rows[i] == rows[j];
                assert_eq!(allowed[i * 40 + j], !same, "rows {i}, {j}");
                copies += usize::from(same && i != j);
            }
        }
        // The draw does hold duplicates (about a third of the rows), so the mask has work to do.
        assert!(copies > 0);
        // Without duplicates the mask is the unbiased estimator's: everything but the diagonal.
        let plain = distinct_origin_pairs(&[0, 1, 2]);
        assert_eq!(plain.iter().filter(|&&a| !a).count(), 3);
    }

    #[test]
    fn subsamples_are_drawn_without_replacement_and_groups_left_out() {
        let fit = SubsampleFit {
            sizes: vec![30, 45, 60],
            repetitions: 2,
            seed: 4,
        };
        let mut calls = 0;
        let metric = |s: &[usize], t: &[usize]| {
            calls += 1;
            for idx in [s, t] {
                let set: std::collections::BTreeSet<_> = idx.iter().collect();
                assert_eq!(set.len(), idx.len(), "a subsample repeats a sample");
            }
            // The target is subsampled at the source's fraction of its own size.
            assert!((t.len() as f64 - s.len() as f64 * 80.0 / 60.0).abs() <= 1.5);
            Ok::<_, MetricError>(1.0 + 5.0 / s.len() as f64)
        };
        let (line, ci) = subsample_fit(60, Some(80), &fit, Some(0.9), metric).unwrap();
        // (1 full + 10 left-out fits) × 2 sequences × 3 sizes.
        assert_eq!(calls, 66);
        assert!((line.value - 1.0).abs() < 1e-12 && (line.slope - 5.0).abs() < 1e-9);
        let ci = ci.unwrap();
        // Every fit is exact, so the interval shrinks to the true intercept (up to rounding).
        assert!(
            (ci.low - 1.0).abs() < 1e-9 && (ci.high - 1.0).abs() < 1e-9,
            "{ci:?}"
        );
        assert_eq!(ci.target, Target::Population);
    }

    #[test]
    fn jackknife_interval_of_a_mean_covers_it() {
        // A plain mean has no N dependence: the fit's intercept is the mean and the jackknife
        // standard error is the textbook one, σ/√n.
        let data: Vec<f64> = (0..300).map(|i| ((i * 37) % 101) as f64).collect();
        let fit = SubsampleFit {
            sizes: vec![150, 225, 300],
            repetitions: 2,
            seed: 9,
        };
        let mean = |s: &[usize], _: &[usize]| {
            Ok::<_, MetricError>(s.iter().map(|&i| data[i]).sum::<f64>() / s.len() as f64)
        };
        let (line, ci) = subsample_fit(300, None, &fit, Some(0.95), mean).unwrap();
        let ci = ci.unwrap();
        let truth = data.iter().sum::<f64>() / 300.0;
        assert!(ci.contains(truth) && ci.contains(line.value), "{ci:?}");
        // σ of these values ≈ 29, so σ/√300 ≈ 1.7.
        assert!(ci.std > 0.8 && ci.std < 4.0, "{ci:?}");
    }
}
