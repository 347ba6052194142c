//! How an interval's width shrinks with the sample size: width(n) = a·n^(−b), fitted in log–log.
//!
//! A study that measured a metric's interval at a few sample sizes can then say how many samples a
//! wanted precision costs ([`PowerLaw::n_for`]). For a standard error that falls like 1/√n the
//! exponent b is ½; a fitted b far from ½ says the widths are not yet in that regime (or are
//! dominated by a bias the interval does not shrink).
use serde::Serialize;

use super::MetricError;

/// width(n) = a · n^(−b), fitted by ordinary least squares on (ln n, ln width).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PowerLaw {
    pub a: f64,
    pub b: f64,
    /// Coefficient of determination of the log–log fit (1 = the points lie on the power law).
    pub r2: f64,
}

impl PowerLaw {
    /// Fits the power law to (`ns[i]`, `widths[i]`) pairs.
    ///
    /// Points whose width is zero or negative have no logarithm and are skipped (a degenerate
    /// interval says nothing about the rate); at least two points with distinct sizes must remain.
    /// Sizes must be positive and every value finite.
    ///
    /// ```
    /// use gapmeter::metrics::PowerLaw;
    /// let ns = [100.0, 400.0, 1600.0];
    /// let widths: Vec<f64> = ns.iter().map(|n: &f64| 3.0 / n.sqrt()).collect();
    /// let fit = PowerLaw::fit(&ns, &widths).unwrap();
    /// assert!((fit.b - 0.5).abs() < 1e-12 && (fit.a - 3.0).abs() < 1e-12);
    /// // Samples for half the width at n = 1600: four times as many.
    /// assert!((fit.n_for(fit.at(1600.0) / 2.0).unwrap() - 6400.0).abs() < 1e-6);
    /// ```
    pub fn fit(ns: &[f64], widths: &[f64]) -> Result<Self, MetricError> {
        if ns.len() != widths.len() {
            return Err(MetricError::InvalidParameter(format!(
                "power-law fit needs one width per sample size, got {} sizes and {} widths",
                ns.len(),
                widths.len()
            )));
        }
        if ns.iter().chain(widths).any(|v| !v.is_finite()) {
            return Err(MetricError::NonFinite);
        }
        if ns.iter().any(|&n| n <= 0.0) {
            return Err(MetricError::InvalidParameter(
                "power-law fit needs positive sample sizes".into(),
            ));
        }
        let points: Vec<(f64, f64)> = ns
            .iter()
            .zip(widths)
            .filter(|(_, &w)| w > 0.0)
            .map(|(&n, &w)| (n.ln(), w.ln()))
            .collect();
        let distinct = points
            .iter()
            .map(|p| p.0.to_bits())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if distinct < 2 {
            return Err(MetricError::InvalidParameter(format!(
                "power-law fit needs at least two distinct sample sizes with a positive width, \
                 got {distinct}"
            )));
        }
        let m = points.len() as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / m;
        let my = points.iter().map(|p| p.1).sum::<f64>() / m;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let slope = sxy / sxx;
        let intercept = my - slope * mx;
        let ss_tot: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
        let ss_res: f64 = points
            .iter()
            .map(|p| (p.1 - intercept - slope * p.0).powi(2))
            .sum();
        let r2 = if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            1.0
        };
        Ok(Self {
            a: intercept.exp(),
            b: -slope,
            r2,
        })
    }

    /// The fitted width at sample size `n`.
    pub fn at(&self, n: f64) -> f64 {
        self.a * n.powf(-self.b)
    }

    /// The sample size at which the fitted width reaches `width`: the inverse of [`Self::at`].
    /// `None` when the width does not fall with n (b ≤ 0), so no sample size would do, or when
    /// `width` is not positive.
    pub fn n_for(&self, width: f64) -> Option<f64> {
        if self.b <= 0.0 || width <= 0.0 || !width.is_finite() {
            return None;
        }
        Some((self.a / width).powf(1.0 / self.b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_power_laws_are_recovered() {
        for (a, b) in [(3.0, 0.5), (0.02, 1.0), (150.0, 0.25), (2.0, -0.3)] {
            let ns = [50.0, 100.0, 250.0, 1000.0, 5000.0];
            let widths: Vec<f64> = ns.iter().map(|&n: &f64| a * n.powf(-b)).collect();
            let fit = PowerLaw::fit(&ns, &widths).unwrap();
            assert!(((fit.a - a) / a).abs() < 1e-12, "{fit:?} vs a = {a}");
            assert!((fit.b - b).abs() < 1e-12, "{fit:?} vs b = {b}");
            assert!((fit.r2 - 1.0).abs() < 1e-12);
            for &n in &ns {
                let w = fit.at(n);
                assert!(((w - a * n.powf(-b)) / w).abs() < 1e-12);
                match fit.n_for(w) {
                    Some(back) => assert!(((back - n) / n).abs() < 1e-10, "{back} vs {n}"),
                    None => assert!(b <= 0.0),
                }
            }
        }
    }

    #[test]
    fn non_positive_widths_are_skipped_until_too_few_remain() {
        let ns = [10.0, 20.0, 40.0, 80.0];
        let widths = [0.0, 1.0 / 20.0, -1.0, 1.0 / 80.0];
        let fit = PowerLaw::fit(&ns, &widths).unwrap();
        assert!((fit.b - 1.0).abs() < 1e-12 && (fit.a - 1.0).abs() < 1e-12);
        assert!(PowerLaw::fit(&ns, &[0.0, 0.1, 0.0, -2.0]).is_err());
        // Two points at the same size do not determine a slope.
        assert!(PowerLaw::fit(&[10.0, 10.0], &[1.0, 2.0]).is_err());
        assert!(matches!(
            PowerLaw::fit(&[10.0, 20.0], &[1.0, f64::NAN]),
            Err(MetricError::NonFinite)
        ));
        assert!(PowerLaw::fit(&[0.0, 20.0], &[1.0, 0.5]).is_err());
        assert!(PowerLaw::fit(&[10.0], &[1.0, 0.5]).is_err());
    }

    #[test]
    fn noisy_widths_have_r2_below_one_and_flat_ones_no_sample_size() {
        let fit = PowerLaw::fit(&[10.0, 20.0, 40.0], &[1.0, 0.8, 0.5]).unwrap();
        assert!(fit.r2 < 1.0 && fit.r2 > 0.9, "{fit:?}");
        let flat = PowerLaw::fit(&[10.0, 20.0, 40.0], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!(flat.b, 0.0);
        assert_eq!(flat.n_for(0.5), None);
        assert_eq!(fit.n_for(0.0), None);
    }
}
