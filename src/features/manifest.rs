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
    /// The text tower that embeds prompts in the same space as `features` (CLIP-like models),
    /// for explaining a gap in words; absent for image-only extractors. Left out when absent so
    /// that existing manifests keep their [`Self::cache_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<TextEncoderSpec>,
    /// Where the manifest was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
}

/// The manifest's `[text_encoder]` table: a TorchScript text tower next to the image model,
/// checked by sha256 like it, and the tokenizer vocabulary it was trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderSpec {
    /// TorchScript file, relative to the manifest's directory; `forward` takes int64 token ids
    /// (N × `context_length`) and returns N × D floats (or a tuple whose first element is that).
    pub file: String,
    /// Lower-case hex sha256 of `file`, checked at load.
    pub sha256: String,
    /// Token positions per prompt the tower was trained with.
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    /// A CLIP BPE merges file (`.txt` or `.txt.gz`) relative to the manifest's directory; absent:
    /// OpenAI's vocabulary, which gapmeter embeds.
    #[serde(default)]
    pub vocab: Option<String>,
}

fn default_context_length() -> usize {
    77
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
        if !is_sha256_hex(&m.sha256) {
            return Err(invalid("`sha256` must be 64 hex digits".into()));
        }
        m.sha256 = m.sha256.to_ascii_lowercase();
        if let Some(text) = &mut m.text_encoder {
            if text.file.trim().is_empty() {
                return Err(invalid("`text_encoder.file` is empty".into()));
            }
            if !is_sha256_hex(&text.sha256) {
                return Err(invalid(
                    "`text_encoder.sha256` must be 64 hex digits".into(),
                ));
            }
            text.sha256 = text.sha256.to_ascii_lowercase();
            if text.context_length < 2 {
                return Err(invalid(
                    "`text_encoder.context_length` must hold start and end of text (at least 2)"
                        .into(),
                ));
            }
        }
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
        verified_bytes(self.model_path(), &self.sha256)
    }

    /// A path the manifest gives, relative to the manifest's directory.
    fn beside(&self, file: &str) -> PathBuf {
        match self.path.parent() {
            Some(dir) => dir.join(file),
            None => PathBuf::from(file),
        }
    }

    /// The text tower's full path, if the manifest has a `[text_encoder]` table.
    pub fn text_encoder_path(&self) -> Option<PathBuf> {
        self.text_encoder.as_ref().map(|t| self.beside(&t.file))
    }

    /// The text tower's vocabulary file's full path; `None` when the table names none (OpenAI's
    /// vocabulary) or there is no table.
    pub fn text_vocab_path(&self) -> Option<PathBuf> {
        self.text_encoder
            .as_ref()
            .and_then(|t| t.vocab.as_deref())
            .map(|v| self.beside(v))
    }

    /// Reads the text tower's file and checks its sha256 against the `[text_encoder]` table, as
    /// [`Self::verified_model_bytes`] does for the image model.
    pub fn verified_text_encoder_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let (Some(spec), Some(path)) = (&self.text_encoder, self.text_encoder_path()) else {
            return Err(ManifestError::Invalid {
                path: self.path.clone(),
                message: format!(
                    "extractor {:?} has no text encoder (no `[text_encoder]` table)",
                    self.id
                ),
            });
        };
        verified_bytes(path, &spec.sha256)
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Reads `path` and checks its sha256 against `expected` (lower-case hex).
fn verified_bytes(path: PathBuf, expected: &str) -> Result<Vec<u8>, ManifestError> {
    let bytes = std::fs::read(&path).map_err(|source| ManifestError::ModelRead {
        path: path.clone(),
        source,
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != expected {
        return Err(ManifestError::Sha256Mismatch {
            path,
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(bytes)
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
    fn a_text_encoder_table_is_optional_and_resolved_beside_the_manifest() {
        let plain = Manifest::parse(GOOD, Path::new("/models/mine.toml")).unwrap();
        assert!(plain.text_encoder.is_none() && plain.text_encoder_path().is_none());
        // Absent, it is not serialised: existing manifests keep their cache keys.
        assert!(!serde_json::to_string(&plain)
            .unwrap()
            .contains("text_encoder"));
        let err = plain.verified_text_encoder_bytes().unwrap_err().to_string();
        assert!(
            err.contains("/models/mine.toml") && err.contains("text_encoder"),
            "{err}"
        );

        let text = format!(
            "{GOOD}[text_encoder]\nfile = \"mine-text.pt\"\nsha256 = \"{}\"\n",
            "CD".repeat(32)
        );
        let m = Manifest::parse(&text, Path::new("/models/mine.toml")).unwrap();
        let t = m.text_encoder.as_ref().unwrap();
        assert_eq!((t.context_length, t.vocab.as_deref()), (77, None));
        assert_eq!(t.sha256, "cd".repeat(32));
        assert_eq!(
            m.text_encoder_path().unwrap(),
            Path::new("/models/mine-text.pt")
        );
        assert!(m.text_vocab_path().is_none());
        assert_ne!(m.cache_key(), plain.cache_key());

        let with_vocab = format!("{text}context_length = 64\nvocab = \"v/bpe.txt.gz\"\n");
        let m = Manifest::parse(&with_vocab, Path::new("/models/mine.toml")).unwrap();
        assert_eq!(m.text_encoder.as_ref().unwrap().context_length, 64);
        assert_eq!(
            m.text_vocab_path().unwrap(),
            Path::new("/models/v/bpe.txt.gz")
        );
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
            (
                format!("{GOOD}[text_encoder]\nfile = \"t.pt\"\nsha256 = \"12\"\n"),
                "text_encoder.sha256",
            ),
            (
                format!(
                    "{GOOD}[text_encoder]\nfile = \"t.pt\"\nsha256 = \"{}\"\ncontext_length = 1\n",
                    "0".repeat(64)
                ),
                "context_length",
            ),
            (
                format!(
                    "{GOOD}[text_encoder]\nfile = \"t.pt\"\nsha256 = \"{}\"\ntokens = 3\n",
                    "0".repeat(64)
                ),
                "tokens",
            ),
        ] {
            let err = Manifest::parse(&bad, Path::new("/m/x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("/m/x.toml") && err.contains(needle), "{err}");
        }
    }
}
