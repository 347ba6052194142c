//! The extractor manifest: a TOML file next to a TorchScript model that says how to feed it and
//! what it returns. See docs/extractors.md.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::imaging::ResizeMode;

/// The model's input size: one number for square inputs or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

impl InputSize {
    pub fn height_width(self) -> (usize, usize) {
        match self {
            InputSize::Square(s) => (s, s),
            InputSize::HeightWidth([h, w]) => (h, w),
        }
    }
}

/// The value range the model expects before `mean`/`std` are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputRange {
    #[serde(rename = "0-255")]
    Byte,
    #[serde(rename = "0-1")]
    Unit,
    #[serde(rename = "-1-1")]
    Symmetric,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Identifier used on the command line and recorded with every result.
    pub id: String,
    /// TorchScript file, relative to the manifest's directory.
    pub file: PathBuf,
    /// Lower-case hex sha256 of `file`, checked at load.
    pub sha256: String,
    pub input_size: InputSize,
    #[serde(default = "default_resize")]
    pub resize: ResizeMode,
    #[serde(default = "default_range")]
    pub input_range: InputRange,
    /// Per-channel mean subtracted after scaling to `input_range`.
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel divisor applied after `mean`.
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    /// Names of what `forward` returns, in order (one name: a tensor; several: a tuple).
    pub outputs: Vec<String>,
    /// The output used for content metrics (FID, KID); default: the first output.
    #[serde(default)]
    pub features: Option<String>,
    /// Whether the weights are trained; results from untrained weights carry a warning.
    #[serde(default = "default_trained")]
    pub trained: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// Generator metadata written by the project's scripts (seed, source hash).
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub generator: Option<String>,
    /// Where the manifest was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_resize() -> ResizeMode {
    ResizeMode::Clean
}
fn default_range() -> InputRange {
    InputRange::Unit
}
fn default_trained() -> bool {
    true
}

/// A manifest that cannot be used, always naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read manifest: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: cannot read model file: {source}")]
    ModelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: sha256 mismatch: manifest says {expected}, file has {actual}")]
    Sha256Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

impl Manifest {
    /// Reads and validates a manifest file (the model file is not touched).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses manifest text; `path` locates the model file and names errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut m: Manifest = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        m.path = path.to_path_buf();
        if m.id.trim().is_empty() {
            return Err(invalid("`id` is empty".into()));
        }
        if m.outputs.is_empty() {
            return Err(invalid("`outputs` names no output".into()));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = m.outputs.iter().find(|o| !seen.insert(o.as_str())) {
            return Err(invalid(format!("output {dup:?} is named twice")));
        }
        if let Some(f) = &m.features {
            if !m.outputs.contains(f) {
                return Err(invalid(format!(
                    "`features = {f:?}` is not one of `outputs` {:?}",
                    m.outputs
                )));
            }
        }
        let (h, w) = m.input_size.height_width();
        if h == 0 || w == 0 {
            return Err(invalid("`input_size` must be positive".into()));
        }
        if let Some(std) = m.std {
            if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
                return Err(invalid("`std` entries must be finite and nonzero".into()));
            }
        }
        if m.sha256.len() != 64 || !m.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid("`sha256` must be 64 hex digits".into()));
        }
        m.sha256 = m.sha256.to_ascii_lowercase();
        Ok(m)
    }

    /// The model file's full path.
    /// Identifies the extractor for the feature caches: its id and a hash of every manifest field
    /// (weights' sha256, input size, resize, normalisation, outputs), so that changing any of them
    /// never serves features computed the old way.
    pub fn cache_key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let hash = blake3::hash(&json).to_hex();
        format!("{}@{}", self.id, &hash[..16])
    }

    /// Identifies the features this extractor computes at `precision`, for the feature and
    /// statistics caches: [`Self::cache_key`] at float32 (so existing caches stay valid), with the
    /// precision appended otherwise, so reduced-precision features never answer a float32 job.
    pub fn features_key(&self, precision: super::Precision) -> String {
        if precision.is_fp32() {
            self.cache_key()
        } else {
            format!("{}+{precision}", self.cache_key())
        }
    }

    pub fn model_path(&self) -> PathBuf {
        match self.path.parent() {
            Some(dir) => dir.join(&self.file),
            None => self.file.clone(),
        }
    }

    /// The output used for content metrics.
    pub fn feature_output(&self) -> &str {
        self.features.as_deref().unwrap_or(&self.outputs[0])
    }

    /// Reads the model file and checks its sha256 against the manifest.
    pub fn verified_model_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let path = self.model_path();
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::ModelRead {
            path: path.clone(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != self.sha256 {
            return Err(ManifestError::Sha256Mismatch {
                path,
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "mine"
file = "mine.pt"
sha256 = "AB00000000000000000000000000000000000000000000000000000000000000"
input_size = [224, 200]
input_range = "0-1"
mean = [0.5, 0.5, 0.5]
std = [0.2, 0.2, 0.2]
outputs = ["pool", "logits"]
"#;

    #[test]
    fn parses_a_hand_written_manifest() {
        let m = Manifest::parse(GOOD, Path::new("/models/mine.toml")).unwrap();
        assert_eq!(m.input_size.height_width(), (224, 200));
        assert_eq!(m.resize, ResizeMode::Clean);
        assert_eq!(m.feature_output(), "pool");
        assert!(m.trained);
        assert_eq!(m.model_path(), Path::new("/models/mine.pt"));
        assert!(m.sha256.starts_with("ab"));
    }

    #[test]
    fn rejects_bad_manifests_naming_the_file() {
        for (bad, needle) in [
            (
                GOOD.replace("outputs = [\"pool\", \"logits\"]", "outputs = []"),
                "outputs",
            ),
            (GOOD.replace("\"logits\"]", "\"pool\"]"), "twice"),
            (format!("{GOOD}features = \"early\"\n"), "early"),
            (GOOD.replace("AB00", "zz00"), "sha256"),
            (GOOD.replace("\"0-1\"", "\"0-2\""), "0-2"),
            (format!("{GOOD}colour = 1\n"), "colour"),
        ] {
            let err = Manifest::parse(&bad, Path::new("/m/x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("/m/x.toml") && err.contains(needle), "{err}");
        }
    }
}
