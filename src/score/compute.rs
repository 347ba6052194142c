//! From two sets' data to named metric values: the one place that maps a metric name to the
//! `metrics` functions, shared by `score`, bootstrap resamples and `matrix`.
use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::Serialize;

use super::input::SetData;
use crate::metrics::{
    self, Bandwidth, Extrapolation, Interval, IsParams, KidParams, MmdParams, PrdcParams,
};

/// The metrics gapmeter computes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MetricName {
    /// Fréchet Inception Distance.
    Fid,
    /// Kernel Inception Distance (polynomial kernel, subsets).
    Kid,
    /// Inception Score of each set (needs a `logits` output).
    Is,
    /// RBF-kernel MMD².
    Mmd,
    /// CMMD (RBF σ = 10 on normalised embeddings, ×1000); meant for CLIP extractors.
    Cmmd,
    /// Precision, recall (k = 3), density and coverage (k = 5).
    Prdc,
    /// Style gap of the `early` output: CORAL, log-Euclidean, Bures–Wasserstein.
    Style,
}

impl MetricName {
    pub const DEFAULT: &'static [MetricName] = &[MetricName::Fid, MetricName::Kid];

    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::Fid => "fid",
            MetricName::Kid => "kid",
            MetricName::Is => "is",
            MetricName::Mmd => "mmd",
            MetricName::Cmmd => "cmmd",
            MetricName::Prdc => "prdc",
            MetricName::Style => "style",
        }
    }

    /// Needs per-sample features (not only `.npz` statistics).
    pub fn needs_features(self) -> bool {
        !matches!(self, MetricName::Fid)
    }

    /// Needs the model's outputs beyond the content features (image folders only).
    pub fn needs_images(self) -> bool {
        matches!(self, MetricName::Is | MetricName::Style)
    }

    /// d(S, T) = d(T, S): usable in a gap matrix.
    pub fn is_symmetric(self) -> bool {
        !matches!(self, MetricName::Is | MetricName::Prdc)
    }
}

/// Parameters of every metric.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricParams {
    pub kid: KidParams,
    pub is: IsParams,
    pub mmd: MmdParams,
    pub prdc: PrdcParams,
}

/// One reported quantity: a `value`, or a `mean` and `std` for subset-based metrics, an optional
/// interval and metric-specific details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct MetricValue {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// Interval (`--bootstrap`), naming its method and its target (docs/metrics.md, "Intervals").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci: Option<Interval>,
    /// FID∞ / KID∞ fit (`--infinity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit: Option<Extrapolation>,
    #[serde(flatten)]
    pub details: BTreeMap<String, serde_json::Value>,
}

impl MetricValue {
    pub fn scalar(value: f64) -> Self {
        Self {
            value: Some(value),
            ..Self::default()
        }
    }

    pub fn mean_std(mean: f64, std: f64) -> Self {
        Self {
            mean: Some(mean),
            std: Some(std),
            ..Self::default()
        }
    }

    fn with(mut self, key: &str, value: impl Serialize) -> Self {
        if let Ok(v) = serde_json::to_value(value) {
            self.details.insert(key.to_string(), v);
        }
        self
    }

    /// The number a table, a matrix or a bootstrap reads: `value`, else `mean`.
    pub fn primary(&self) -> f64 {
        self.value.or(self.mean).unwrap_or(f64::NAN)
    }
}

/// Named values of one metric (PRDC and style yield several).
pub type Values = Vec<(String, MetricValue)>;

/// Computes `metric` between source `s` and target `t`. Warnings (e.g. a reduced KID subset) are
/// appended to `warnings`.
pub fn compute(
    metric: MetricName,
    s: &SetData,
    t: &SetData,
    p: &MetricParams,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Values> {
    let both = |what: &str| -> anyhow::Result<(&metrics::Features, &metrics::Features)> {
        match (&s.features, &t.features) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => bail!(
                "{what} needs per-image features; .npz statistics hold only mean and covariance"
            ),
        }
    };
    let name = metric.as_str().to_string();
    Ok(match metric {
        MetricName::Fid => {
            let fid = match (&s.features, &t.features) {
                (Some(a), Some(b)) => metrics::fid_from_features(a.view(), b.view()),
                _ => metrics::fid_from_gaussians(&s.gaussian()?, &t.gaussian()?),
            }
            .context("computing FID")?;
            vec![(
                name,
                MetricValue::scalar(fid.value)
                    .with("mean_term", fid.mean_term)
                    .with("covariance_term", fid.covariance_term),
            )]
        }
        MetricName::Kid => {
            let (a, b) = both("KID")?;
            let kid = metrics::kid(a.view(), b.view(), &p.kid).context("computing KID")?;
            warnings.extend(kid.warnings.iter().cloned());
            vec![(
                name,
                if kid.standard_error.is_finite() {
                    MetricValue::mean_std(kid.mean, kid.std)
                        .with("standard_error", kid.standard_error)
                        .with("standard_error_method", kid.standard_error_method)
                } else {
                    MetricValue::mean_std(kid.mean, kid.std)
                }
                .with("subset_size", kid.subset_size)
                .with("subsets", kid.subsets),
            )]
        }
        MetricName::Is => {
            let mut out = Vec::new();
            for (key, set) in [("is", s), ("is_target", t)] {
                if let Some(logits) = &set.logits {
                    let is =
                        metrics::inception_score(logits.view(), &p.is).context("computing IS")?;
                    out.push((key.to_string(), MetricValue::mean_std(is.mean, is.std)));
                }
            }
            if out.is_empty() {
                bail!("IS needs classifier logits, which only image folders scored with a `logits` output provide");
            }
            out
        }
        MetricName::Mmd => {
            let (a, b) = both("MMD")?;
            let m = metrics::mmd(a.view(), b.view(), &p.mmd).context("computing MMD")?;
            let mut v = MetricValue::scalar(m.value)
                .with("sigma", m.sigma)
                .with("estimator", p.mmd.estimator);
            if let Some(se) = m.standard_error {
                v = v
                    .with("standard_error", se)
                    .with("standard_error_method", "jackknife");
            }
            vec![(name, v)]
        }
        MetricName::Cmmd => {
            let (a, b) = both("CMMD")?;
            vec![(
                name,
                MetricValue::scalar(metrics::cmmd(a.view(), b.view()).context("computing CMMD")?),
            )]
        }
        MetricName::Prdc => {
            let (a, b) = both("precision/recall")?;
            let r = metrics::prdc(a.view(), b.view(), &p.prdc)
                .context("computing precision/recall/density/coverage")?;
            vec![
                (
                    "precision".into(),
                    MetricValue::scalar(r.precision).with("k", p.prdc.k_pr),
                ),
                (
                    "recall".into(),
                    MetricValue::scalar(r.recall).with("k", p.prdc.k_pr),
                ),
                (
                    "density".into(),
                    MetricValue::scalar(r.density).with("k", p.prdc.k_dc),
                ),
                (
                    "coverage".into(),
                    MetricValue::scalar(r.coverage).with("k", p.prdc.k_dc),
                ),
            ]
        }
        MetricName::Style => {
            let (Some(a), Some(b)) = (&s.style, &t.style) else {
                bail!("the style gap needs early feature maps, which only image folders scored with an `early` output provide");
            };
            let g = metrics::style_gap(a, b).context("computing the style gap")?;
            vec![
                ("style_coral".into(), MetricValue::scalar(g.coral)),
                (
                    "style_log_euclidean".into(),
                    MetricValue::scalar(g.log_euclidean),
                ),
                (
                    "style_bures_wasserstein".into(),
                    MetricValue::scalar(g.bures_wasserstein),
                ),
            ]
        }
    })
}

/// The RBF bandwidth the per-image witness uses: the MMD setting, resolved.
pub fn witness_bandwidth(s: &SetData, t: &SetData, p: &MetricParams) -> anyhow::Result<f64> {
    let (Some(a), Some(b)) = (&s.features, &t.features) else {
        bail!("per-image scores need per-image features");
    };
    Ok(match p.mmd.bandwidth {
        Bandwidth::Fixed(sigma) => sigma,
        Bandwidth::Median => metrics::median_bandwidth(a.view(), b.view(), p.mmd.seed)?,
    })
}
