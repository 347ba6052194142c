//! Results as JSON (`--format json`) or a table.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{LoadedSet, MetricValue, ScoreOptions, SetProvenance};
use crate::features::{Devices, Engine, Manifest, Precision};
use crate::metrics::{BootstrapParams, Interval, Target};

/// One score: values, both inputs' provenance, the extractor and every parameter, so that the
/// result says everything that decided it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub source: SetProvenance,
    pub target: SetProvenance,
    /// `None` when both inputs were precomputed features or statistics.
    pub extractor: Option<ExtractorInfo>,
    /// By name: `fid`, `kid`, `is`, `precision`, `style_coral`, `fid_infinity`, ...
    pub metrics: BTreeMap<String, MetricValue>,
    pub parameters: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_image: Option<PerImage>,
    pub warnings: Vec<String>,
    pub software: Software,
}

/// The most out-of-domain source images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerImage {
    pub ranked_by: Cow<'static, str>,
    /// RBF bandwidth of the witness.
    pub sigma: f64,
    /// k of the k-NN distance.
    pub k: usize,
    pub images: Vec<ImageScore>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageScore {
    pub path: String,
    pub index: usize,
    pub witness: f64,
    pub knn_distance: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style_distance: Option<f64>,
}

/// A pairwise table between several sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixReport {
    pub sets: Vec<SetProvenance>,
    pub extractor: Option<ExtractorInfo>,
    /// By metric name: a symmetric table, `[i][j]` between set i and set j.
    pub metrics: BTreeMap<String, Vec<Vec<f64>>>,
    /// With `--bootstrap`: by metric name, each entry's interval (`None` on the diagonal).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub intervals: BTreeMap<String, Vec<Vec<Option<Interval>>>>,
    /// Comparisons the intervals cannot resolve: two gaps to a common set whose intervals overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlapping: Vec<Overlap>,
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub warnings: Vec<String>,
    pub software: Software,
}

/// Two entries of a gap matrix, `[i, j]` and `[i, k]` (0-based set indices), whose intervals
/// overlap: whether set j or set k is closer to set i is not resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    pub metric: String,
    pub pairs: [[usize; 2]; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractorInfo {
    pub id: String,
    pub sha256: String,
    pub trained: bool,
    pub resize: Cow<'static, str>,
    pub input_size: [usize; 2],
    pub features: String,
    pub dim: usize,
    pub device: String,
    pub batch_size: usize,
    /// The model's floating-point type; absent at float32 (the default, as the references).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

impl ExtractorInfo {
    /// For a loaded engine: its devices and the batch size they resolve to.
    pub fn for_engine(x: &Engine, opts: &ScoreOptions) -> Self {
        Self::new(x, opts)
    }

    pub(super) fn new(x: &Engine, opts: &ScoreOptions) -> Self {
        let devices = x.devices();
        Self {
            device: Devices::List(devices.clone()).to_string(),
            batch_size: opts.batch_size.resolve(&devices),
            ..Self::from_manifest(x.manifest(), x.feature_dim(), opts)
        }
    }

    /// From the manifest alone (a job answered from cached features loads no model).
    pub fn from_manifest(m: &Manifest, dim: usize, opts: &ScoreOptions) -> Self {
        let (h, w) = m.input_size.height_width();
        Self {
            id: m.id.clone(),
            sha256: m.sha256.clone(),
            trained: m.trained,
            resize: m.resize.as_str().into(),
            input_size: [h, w],
            features: m.feature_output().to_string(),
            dim,
            precision: opts.precision,
            device: opts.devices.to_string(),
            batch_size: match &opts.devices {
                Devices::List(list) => opts.batch_size.resolve(list),
                Devices::All => opts.batch_size.resolve(&[]),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Software {
    pub name: Cow<'static, str>,
    pub version: Cow<'static, str>,
    pub libtorch: Cow<'static, str>,
}

impl Software {
    pub fn current() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            libtorch: "2.11.0".into(),
        }
    }
}

impl Report {
    pub(super) fn new(s: &LoadedSet, t: &LoadedSet, extractor: Option<ExtractorInfo>) -> Self {
        Self {
            source: s.provenance.clone(),
            target: t.provenance.clone(),
            extractor,
            metrics: BTreeMap::new(),
            parameters: BTreeMap::new(),
            bootstrap: None,
            per_image: None,
            warnings: Vec::new(),
            software: Software::current(),
        }
    }

    /// A human-readable table: one line per value, then provenance, outliers and warnings.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        set_line(&mut out, "source", &self.source);
        set_line(&mut out, "target", &self.target);
        if let Some(x) = &self.extractor {
            let _ = writeln!(
                out,
                "extractor  {} ({}-d {}, resize {}, sha256 {})",
                x.id,
                x.dim,
                x.features,
                x.resize,
                &x.sha256[..12]
            );
        }
        let _ = writeln!(out);
        let with_ci = self.metrics.values().any(|v| v.ci.is_some());
        let _ = write!(out, "{:<26} {:>16} {:>14}", "metric", "value", "std");
        if with_ci {
            let level = self
                .metrics
                .values()
                .find_map(|v| v.ci.as_ref().map(|c| c.level))
                .unwrap_or(0.95);
            let _ = write!(out, "   {:.0}% interval", level * 100.0);
        }
        let _ = writeln!(out);
        let mut methods: Vec<String> = Vec::new();
        for (name, v) in &self.metrics {
            let std = v.std.map(|s| format!("{s:.8}")).unwrap_or_default();
            let _ = write!(
                out,
                "{:<26} {:>16.8} {:>14}",
                display_name(name),
                v.primary(),
                std
            );
            if let Some(ci) = &v.ci {
                let key = format!("{} ({})", ci.method, target_words(ci.target));
                let number = match methods.iter().position(|m| *m == key) {
                    Some(i) => i + 1,
                    None => {
                        methods.push(key);
                        methods.len()
                    }
                };
                let _ = write!(out, "   [{:.6}, {:.6}] ({number})", ci.low, ci.high);
            }
            if let Some(fit) = &v.fit {
                let _ = write!(
                    out,
                    "   (fit over N = {}..{}, R² {:.3})",
                    fit.points[0].0,
                    fit.points[fit.points.len() - 1].0,
                    fit.r2
                );
            }
            let _ = writeln!(out);
        }
        if !methods.is_empty() {
            let _ = writeln!(out);
            for (i, m) in methods.iter().enumerate() {
                let _ = writeln!(out, "({}) {m}", i + 1);
            }
        }
        if let Some(p) = &self.per_image {
            let _ = writeln!(out, "\nmost out-of-domain source images ({}):", p.ranked_by);
            let _ = writeln!(
                out,
                "{:>12} {:>14} {:>14}  path",
                "witness", "knn distance", "style dist."
            );
            for img in &p.images {
                let style = img
                    .style_distance
                    .map(|d| format!("{d:.6}"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "{:>12.6} {:>14.6} {:>14}  {}",
                    img.witness, img.knn_distance, style, img.path
                );
            }
        }
        warnings(&mut out, &self.warnings);
        out
    }
}

impl MatrixReport {
    /// One table per metric, sets numbered as listed above them.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.sets.iter().enumerate() {
            set_line(&mut out, &format!("[{}]", i + 1), s);
        }
        for (name, table) in &self.metrics {
            let _ = writeln!(out, "\n{}", display_name(name));
            let _ = write!(out, "{:>6}", "");
            for j in 0..table.len() {
                let _ = write!(out, " {:>14}", format!("[{}]", j + 1));
            }
            let _ = writeln!(out);
            for (i, row) in table.iter().enumerate() {
                let _ = write!(out, "{:>6}", format!("[{}]", i + 1));
                for v in row {
                    let _ = write!(out, " {v:>14.6}");
                }
                let _ = writeln!(out);
            }
            if let Some(cis) = self.intervals.get(name) {
                let _ = writeln!(out, "intervals:");
                for (i, row) in cis.iter().enumerate() {
                    for (j, ci) in row.iter().enumerate().skip(i + 1) {
                        if let Some(ci) = ci {
                            let _ = writeln!(
                                out,
                                "  [{}]–[{}]  [{:.6}, {:.6}] ({:.0}%, {})",
                                i + 1,
                                j + 1,
                                ci.low,
                                ci.high,
                                ci.level * 100.0,
                                target_words(ci.target)
                            );
                        }
                    }
                }
            }
        }
        if !self.overlapping.is_empty() {
            let _ = writeln!(out, "\nnot resolved (overlapping intervals):");
            for o in &self.overlapping {
                let [[i, j], [_, k]] = o.pairs;
                let _ = writeln!(
                    out,
                    "  {}: [{}]–[{}] vs [{}]–[{}]",
                    display_name(&o.metric),
                    i + 1,
                    j + 1,
                    i + 1,
                    k + 1
                );
            }
        }
        warnings(&mut out, &self.warnings);
        out
    }
}

fn target_words(t: Target) -> &'static str {
    match t {
        Target::Population => "target: population",
        Target::ThisSampleSize => "target: this sample size",
    }
}

pub(super) fn display_name(name: &str) -> String {
    match name {
        "fid" | "kid" | "mmd" | "cmmd" => name.to_uppercase(),
        "is" => "IS (source)".into(),
        "is_target" => "IS (target)".into(),
        "fid_infinity" => "FID∞".into(),
        "kid_infinity" => "KID∞".into(),
        other => other.replace('_', " "),
    }
}

fn set_line(out: &mut String, label: &str, p: &SetProvenance) {
    let count = p.count.map(|c| c.to_string()).unwrap_or_else(|| "?".into());
    let hash = &p.content_hash[..p.content_hash.len().min(19)];
    let _ = writeln!(out, "{label:<7} {} ({count} {}, {hash})", p.path, p.kind);
}

fn warnings(out: &mut String, warnings: &[String]) {
    if !warnings.is_empty() {
        let _ = writeln!(out);
        for w in warnings {
            let _ = writeln!(out, "warning: {w}");
        }
    }
}
