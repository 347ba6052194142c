//! The result of a score, as JSON (`--format json`) or a table.
use std::fmt::Write as _;

use serde::Serialize;

use super::{LoadedSet, ScoreOptions, SetProvenance};
use crate::features::Extractor;
use crate::metrics::{Fid, Kid, KidParams};

/// One score: values, the inputs' provenance, the extractor and every parameter (DESIGN §1).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source: SetProvenance,
    pub target: SetProvenance,
    /// `None` when both inputs were precomputed features or statistics.
    pub extractor: Option<ExtractorInfo>,
    pub metrics: Metrics,
    pub parameters: MetricParameters,
    pub warnings: Vec<String>,
    pub software: Software,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fid: Option<Fid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<Kid>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<KidParams>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExtractorInfo {
    pub id: String,
    pub sha256: String,
    pub trained: bool,
    pub resize: &'static str,
    pub input_size: [usize; 2],
    pub features: String,
    pub dim: usize,
    pub device: String,
    pub batch_size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Software {
    pub name: &'static str,
    pub version: &'static str,
    pub libtorch: &'static str,
}

impl Software {
    pub fn current() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            libtorch: "2.11.0",
        }
    }
}

impl Report {
    pub(super) fn new(
        s: &LoadedSet,
        t: &LoadedSet,
        extractor: Option<&Extractor>,
        opts: &ScoreOptions,
    ) -> Self {
        let extractor = extractor.map(|x| {
            let m = x.manifest();
            let (h, w) = m.input_size.height_width();
            ExtractorInfo {
                id: m.id.clone(),
                sha256: m.sha256.clone(),
                trained: m.trained,
                resize: m.resize.as_str(),
                input_size: [h, w],
                features: m.feature_output().to_string(),
                dim: x.feature_dim(),
                device: opts.device.to_string(),
                batch_size: opts.batch_size,
            }
        });
        Self {
            source: s.provenance.clone(),
            target: t.provenance.clone(),
            extractor,
            metrics: Metrics::default(),
            parameters: MetricParameters::default(),
            warnings: Vec::new(),
            software: Software::current(),
        }
    }

    /// A human-readable table: one line per value, then provenance and warnings.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let count =
            |p: &SetProvenance| p.count.map(|c| c.to_string()).unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "source  {} ({} {}, {})",
            self.source.path,
            count(&self.source),
            self.source.kind,
            short(&self.source.content_hash)
        );
        let _ = writeln!(
            out,
            "target  {} ({} {}, {})",
            self.target.path,
            count(&self.target),
            self.target.kind,
            short(&self.target.content_hash)
        );
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
        let _ = writeln!(out, "{:<8} {:>16} {:>14}", "metric", "value", "std");
        if let Some(f) = &self.metrics.fid {
            let _ = writeln!(out, "{:<8} {:>16.6} {:>14}", "FID", f.value, "");
        }
        if let Some(k) = &self.metrics.kid {
            let _ = writeln!(out, "{:<8} {:>16.8} {:>14.8}", "KID", k.mean, k.std);
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out);
            for w in &self.warnings {
                let _ = writeln!(out, "warning: {w}");
            }
        }
        out
    }
}

fn short(hash: &str) -> &str {
    let cut = hash.find(':').map(|i| i + 13).unwrap_or(12).min(hash.len());
    &hash[..cut]
}
