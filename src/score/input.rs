//! The sides of a score: an image folder, an `.npy` of features or an `.npz` of statistics.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ndarray::{Array1, Array2, Axis};
use ndarray_npy::{NpzReader, ReadNpyExt};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::extract::{extract_folder, ExtractOptions, Skipped};
use crate::features::Engine;
use crate::metrics::{FeatureStats, Features, Gaussian, StyleSet};

/// What an input path holds.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    Folder(PathBuf),
    Features(PathBuf),
    Statistics(PathBuf),
}

impl InputKind {
    pub fn detect(arg: &str) -> anyhow::Result<Self> {
        let path = PathBuf::from(arg);
        if path.is_dir() {
            return Ok(InputKind::Folder(path));
        }
        if !path.exists() {
            bail!("{arg}: no such file or folder");
        }
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("npy") => Ok(InputKind::Features(path)),
            Some("npz") => Ok(InputKind::Statistics(path)),
            _ => bail!("{arg}: expected an image folder, an .npy of features (N×d) or an .npz with mu and sigma"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            InputKind::Folder(_) => "images",
            InputKind::Features(_) => "features",
            InputKind::Statistics(_) => "statistics",
        }
    }
}

/// Where a set came from, recorded with every result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetProvenance {
    pub path: String,
    pub kind: Cow<'static, str>,
    /// blake3 over the sorted blake3 hashes of the images, or over the file's bytes for
    /// `.npy`/`.npz` inputs.
    pub content_hash: String,
    /// Samples used (None for statistics files, which do not record it).
    pub count: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// What metrics read from one set. Every field is optional: a statistics file has only the
/// Gaussian, a feature file has no logits or style maps.
#[derive(Debug, Clone, Default)]
pub struct SetData {
    pub features: Option<Features>,
    pub gaussian: Option<Gaussian>,
    pub logits: Option<Features>,
    pub style: Option<StyleSet>,
}

impl SetData {
    /// Number of samples, when known (statistics record it only when they were computed here).
    pub fn count(&self) -> Option<usize> {
        match (&self.features, &self.gaussian) {
            (Some(f), _) => Some(f.nrows()),
            (None, Some(g)) => g.n.map(|n| n as usize),
            (None, None) => None,
        }
    }

    /// Mean and covariance (from the features when there are any).
    pub fn gaussian(&self) -> anyhow::Result<Gaussian> {
        if let Some(f) = &self.features {
            return Ok(FeatureStats::from_features(f.view())?.gaussian());
        }
        self.gaussian
            .clone()
            .context("this set has neither features nor statistics")
    }

    /// The samples `idx` (with repetition allowed), for resampling. Statistics-only sets cannot be
    /// resampled.
    pub fn select(&self, idx: &[usize]) -> anyhow::Result<Self> {
        let rows = |f: &Features| f.select(Axis(0), idx);
        let features = Some(rows(
            self.features
                .as_ref()
                .context("resampling needs per-sample features")?,
        ));
        Ok(Self {
            features,
            gaussian: None,
            logits: self.logits.as_ref().map(rows),
            style: self.style.as_ref().map(|s| s.select(idx)),
        })
    }
}

/// A set ready for metrics, with its provenance.
pub struct LoadedSet {
    pub provenance: SetProvenance,
    pub data: SetData,
    /// Per-row labels for per-image results: image paths, or `row N` for feature files.
    pub labels: Vec<String>,
    pub warnings: Vec<String>,
}

impl LoadedSet {
    pub fn load(
        role: &str,
        arg: &str,
        extractor: Option<&Engine>,
        opts: &ExtractOptions,
    ) -> anyhow::Result<Self> {
        let kind = InputKind::detect(arg)?;
        let mut warnings = Vec::new();
        let (data, content_hash, skipped, labels) = match &kind {
            InputKind::Folder(dir) => {
                let extractor = extractor.context("an image folder needs an extractor")?;
                let set = extract_folder(dir, extractor, opts)
                    .with_context(|| format!("{role} {arg}"))?;
                for s in &set.skipped {
                    warnings.push(format!("{role}: skipped {}: {}", s.path, s.reason));
                }
                let data = SetData {
                    features: Some(set.features),
                    gaussian: None,
                    logits: set.logits,
                    style: set.style,
                };
                (data, set.content_hash, set.skipped, set.paths)
            }
            InputKind::Features(path) => {
                let f = read_features(path)?;
                let labels = (0..f.nrows()).map(|i| format!("row {i}")).collect();
                let data = SetData {
                    features: Some(f),
                    ..SetData::default()
                };
                (data, file_hash(path)?, Vec::new(), labels)
            }
            InputKind::Statistics(path) => {
                let data = SetData {
                    gaussian: Some(read_statistics(path)?),
                    ..SetData::default()
                };
                (data, file_hash(path)?, Vec::new(), Vec::new())
            }
        };
        let count = data.count();
        if count == Some(0) {
            bail!("{role} {arg} is empty: no samples to score");
        }
        Ok(Self {
            provenance: SetProvenance {
                path: arg.to_string(),
                kind: kind.name().into(),
                content_hash,
                count,
                skipped,
            },
            data,
            labels,
            warnings,
        })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        match (&self.data.features, &self.data.gaussian) {
            (Some(f), _) => f.ncols(),
            (None, Some(g)) => g.mean.len(),
            (None, None) => 0,
        }
    }
}

/// True when `arg` names a folder of images (which needs an extractor).
pub fn is_image_folder(arg: &str) -> bool {
    matches!(InputKind::detect(arg), Ok(InputKind::Folder(_)))
}

/// True when `arg` names an `.npz` of statistics (FID only).
pub fn is_statistics(arg: &str) -> bool {
    matches!(InputKind::detect(arg), Ok(InputKind::Statistics(_)))
}

fn file_hash(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

/// An N×d float32 or float64 `.npy`, as float64.
pub fn read_features(path: &Path) -> anyhow::Result<Features> {
    let open = || std::fs::File::open(path).with_context(|| format!("opening {}", path.display()));
    let f = match Array2::<f64>::read_npy(open()?) {
        Ok(a) => a,
        Err(_) => Array2::<f32>::read_npy(open()?)
            .map(|a| a.mapv(f64::from))
            .with_context(|| {
                format!(
                    "{}: expected a 2-D float32 or float64 array (N×d)",
                    path.display()
                )
            })?,
    };
    if f.iter().any(|v| !v.is_finite()) {
        bail!("{}: features contain NaN or infinity", path.display());
    }
    Ok(f)
}

/// `mu` (d) and `sigma` (d×d) from a pytorch-fid / clean-fid `.npz`.
pub fn read_statistics(path: &Path) -> anyhow::Result<Gaussian> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut npz =
        NpzReader::new(file).with_context(|| format!("{}: not an .npz archive", path.display()))?;
    let ctx = |what: &str| {
        format!(
            "{}: expected `{what}` as a float32/float64 array",
            path.display()
        )
    };
    let mu: Array1<f64> = match npz.by_name::<_, ndarray::Ix1>("mu") {
        Ok(a) => a,
        Err(_) => npz
            .by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix1>("mu")
            .map(|a| a.mapv(f64::from))
            .with_context(|| ctx("mu"))?,
    };
    let sigma: Array2<f64> = match npz.by_name::<_, ndarray::Ix2>("sigma") {
        Ok(a) => a,
        Err(_) => npz
            .by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix2>("sigma")
            .map(|a| a.mapv(f64::from))
            .with_context(|| ctx("sigma"))?,
    };
    let d = mu.len();
    if sigma.dim() != (d, d) {
        bail!(
            "{}: sigma is {:?} but mu has {d} entries",
            path.display(),
            sigma.dim()
        );
    }
    let g = Gaussian {
        mean: mu.to_vec(),
        cov: sigma.as_standard_layout().iter().copied().collect(),
        n: None,
    };
    g.validate().with_context(|| path.display().to_string())?;
    Ok(g)
}
