//! Few-shot sufficiency: how precise the metric is with n target images. For sizes n up to the
//! target's, the target is resampled (with replacement, so a size-n draw behaves like n fresh
//! images) and the metric recomputed against the whole source; the interval's width at each n is
//! fitted with a power law, which answers "with n target images the estimate is within ±x %"
//! and "how many images for ±p %". docs/reduce.md, "Few-shot sufficiency".
use serde::{Deserialize, Serialize};

use super::{check, Interrupt, Spread};
use crate::metrics::{self, rng::LegacyRandomState, Features, PowerLaw};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SufficiencyMetric {
    Fid,
    Kid,
}

impl SufficiencyMetric {
    fn as_str(self) -> &'static str {
        match self {
            SufficiencyMetric::Fid => "FID",
            SufficiencyMetric::Kid => "KID",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SufficiencyParams {
    pub metric: SufficiencyMetric,
    /// Target sample sizes; empty: 8 sizes spaced geometrically up to the target's size.
    pub sizes: Vec<usize>,
    /// Resamples per size.
    pub draws: usize,
    pub level: f64,
    /// The precision asked about: the interval's half-width relative to the metric's value
    /// (0.1 = ±10 %).
    pub precision: f64,
    /// KID subsets per evaluation.
    pub kid_subsets: usize,
    pub seed: u32,
}

impl Default for SufficiencyParams {
    fn default() -> Self {
        Self {
            metric: SufficiencyMetric::Kid,
            sizes: Vec::new(),
            draws: 30,
            level: 0.95,
            precision: 0.1,
            kid_subsets: 10,
            seed: 0,
        }
    }
}

impl SufficiencyParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(3..=10_000).contains(&self.draws) {
            return Err("draws must be 3 to 10000".into());
        }
        if !(self.precision > 0.0 && self.precision.is_finite()) {
            return Err("precision must be a positive number".into());
        }
        if !(1..=1000).contains(&self.kid_subsets) {
            return Err("kid_subsets must be 1 to 1000".into());
        }
        if self.sizes.len() > 50 || self.sizes.iter().any(|&n| n < 2) {
            return Err("sizes: at most 50, each at least 2".into());
        }
        super::check_level(self.level)
    }
}

/// The metric at one target size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeRow {
    pub n: usize,
    pub spread: Spread,
    pub std: f64,
    /// Half the interval's width, relative to the metric on the whole target.
    pub relative_half_width: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sufficiency {
    pub metric: SufficiencyMetric,
    /// The metric with every target image.
    pub value: f64,
    pub target_size: usize,
    pub sizes: Vec<SizeRow>,
    /// relative_half_width(n) = a · n^(−b), fitted in log–log.
    pub fit: Option<PowerLaw>,
    pub precision: f64,
    /// Target images the fit says reach ±`precision` (None without a falling fit).
    pub n_for_precision: Option<f64>,
    /// The relative half-width at the target's own size.
    pub your_relative_half_width: f64,
    pub sufficient: bool,
    pub summary: String,
}

/// `points` sizes from `lo` to `n`, evenly spaced on a log scale (distinct, ascending).
fn geometric_sizes(lo: usize, n: usize, points: usize) -> Vec<usize> {
    let lo = lo.clamp(2, n.max(2));
    let mut out: Vec<usize> = (0..points)
        .map(|i| {
            let f = i as f64 / (points - 1).max(1) as f64;
            ((lo as f64).ln() + f * ((n as f64).ln() - (lo as f64).ln()))
                .exp()
                .round() as usize
        })
        .collect();
    out.push(n);
    out.sort_unstable();
    out.dedup();
    out.retain(|&m| (2..=n).contains(&m));
    out
}

pub fn sufficiency(
    source: &Features,
    target: &Features,
    params: &SufficiencyParams,
    warnings: &mut Vec<String>,
    interrupt: Interrupt,
) -> anyhow::Result<Sufficiency> {
    params.validate().map_err(anyhow::Error::msg)?;
    let nt = target.nrows();
    if nt < 4 {
        anyhow::bail!("sufficiency needs at least 4 target images, got {nt}");
    }
    let sizes = if params.sizes.is_empty() {
        geometric_sizes((nt / 20).max(10).min(nt / 2), nt, 8)
    } else {
        let mut s = params.sizes.clone();
        if let Some(&big) = s.iter().find(|&&n| n > nt) {
            anyhow::bail!("size {big} is larger than the target ({nt} images)");
        }
        s.sort_unstable();
        s.dedup();
        s
    };
    let all_source: Vec<usize> = (0..source.nrows()).collect();
    let all_target: Vec<usize> = (0..nt).collect();
    let eval = |rows_t: &[usize]| -> anyhow::Result<f64> {
        Ok(match params.metric {
            SufficiencyMetric::Fid => {
                metrics::fid_from_features(source.view(), target.select_rows(rows_t).view())?.value
            }
            SufficiencyMetric::Kid => {
                let p = metrics::KidParams {
                    subsets: params.kid_subsets,
                    subset_size: rows_t.len().min(source.nrows()),
                    seed: params.seed,
                    ..metrics::KidParams::default()
                };
                metrics::kid_resampled(source.view(), target.view(), &p, &all_source, rows_t)?
            }
        })
    };
    let value = eval(&all_target)?;
    let scale = value.abs();
    if scale < 1e-12 {
        warnings.push(format!(
            "{} on the whole target is {value:.3e}, about 0: relative precision is not defined, so half-widths are absolute",
            params.metric.as_str()
        ));
    }
    let relative = |half: f64| if scale < 1e-12 { half } else { half / scale };
    let mut rng = LegacyRandomState::new(params.seed);
    let mut rows = Vec::with_capacity(sizes.len());
    for &n in &sizes {
        let mut values = Vec::with_capacity(params.draws);
        for _ in 0..params.draws {
            check(interrupt)?;
            let draw: Vec<usize> = (0..n)
                .map(|_| rng.random_interval((nt - 1) as u64) as usize)
                .collect();
            values.push(eval(&draw)?);
        }
        let spread = Spread::of(&values, params.level);
        let mean = spread.mean;
        let std = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>()
            / (values.len() - 1) as f64)
            .sqrt();
        rows.push(SizeRow {
            n,
            relative_half_width: relative((spread.high - spread.low) / 2.0),
            spread,
            std,
        });
    }
    let ns: Vec<f64> = rows.iter().map(|r| r.n as f64).collect();
    let widths: Vec<f64> = rows.iter().map(|r| r.relative_half_width).collect();
    let fit = PowerLaw::fit(&ns, &widths).ok();
    let n_for_precision = fit.and_then(|f| f.n_for(params.precision));
    let yours = rows
        .iter()
        .find(|r| r.n == nt)
        .map(|r| r.relative_half_width)
        .or_else(|| fit.map(|f| f.at(nt as f64)))
        .unwrap_or(f64::NAN);
    let sufficient = yours <= params.precision;
    let pct = |x: f64| x * 100.0;
    let unit = if scale < 1e-12 { "" } else { " %" };
    let show = |x: f64| if scale < 1e-12 { x } else { pct(x) };
    let summary = format!(
        "with {nt} target images {} = {value:.4} is within ±{:.1}{unit} ({:.0} % interval); ±{:.1}{unit} {}",
        params.metric.as_str(),
        show(yours),
        params.level * 100.0,
        show(params.precision),
        match (sufficient, n_for_precision) {
            (true, _) => "is reached: the sample is sufficient for this precision".to_string(),
            (false, Some(n)) => format!(
                "needs about {:.0} target images (power-law fit), {:.1}× what you have",
                n.ceil(),
                n / nt as f64
            ),
            (false, None) => "is not reached, and the widths do not fall with n enough to say when".into(),
        }
    );
    Ok(Sufficiency {
        metric: params.metric,
        value,
        target_size: nt,
        sizes: rows,
        fit,
        precision: params.precision,
        n_for_precision,
        your_relative_half_width: yours,
        sufficient,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_sizes_end_at_n_and_are_distinct() {
        let s = geometric_sizes(10, 500, 8);
        assert_eq!(s.first().copied(), Some(10));
        assert_eq!(s.last().copied(), Some(500));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(geometric_sizes(2, 3, 8), vec![2, 3]);
    }
}
