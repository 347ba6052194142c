//! What a job runs: the request bodies of `POST /v1/jobs` and `POST /v1/matrix`, and the
//! normalised [`JobSpec`] (every default filled in) that is stored with the job, hashed for
//! idempotency keys and turned into the same [`ScoreOptions`] `gapmeter score` uses; and the
//! [`IngestSpec`] of a dataset created from a URI.
use serde::{Deserialize, Serialize};

use crate::features::{
    resolve_extractor, BatchSize, Devices, Manifest, Naming, Precision, Registry,
};
use crate::metrics::{
    Bandwidth, BootstrapParams, Estimator, IsParams, KidParams, MmdParams, PrdcParams,
};
use crate::reduce::Analysis;
use crate::score::{self, MetricName, MetricParams, ScoreOptions, STYLE_OUTPUT};
use crate::store::{DatasetId, JobKind};

/// `POST /v1/analyses`: one of the analyses of `gapmeter measure`, `gapmeter reduce` and
/// `gapmeter explain` between `source` and `target`, as a job.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisRequest {
    /// The source (for `select`: the pool to choose from).
    pub source: DatasetId,
    pub target: DatasetId,
    /// A registered extractor id; default as for a score. `explain` needs one with a text
    /// encoder, `selective_style` one with an `early` output.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    pub extractor: Option<String>,
    /// The analysis and its options, e.g. `{"select": {"k": 50}}`; options left out take
    /// their defaults (docs/reduce.md).
    pub analysis: Analysis,
    #[serde(default)]
    pub precision: Precision,
}

/// `POST /v1/jobs`: score `source` against `target`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub source: DatasetId,
    pub target: DatasetId,
    /// A registered extractor id (`GET /v1/extractors`); default: `inception-v3-fid`, else its
    /// untrained test twin.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    pub extractor: Option<String>,
    /// Default: `["fid", "kid"]`.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub metrics: Option<Vec<MetricName>>,
    #[serde(default)]
    pub parameters: Parameters,
    /// Also list the K most out-of-domain source images.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub top_k: Option<usize>,
    /// Confidence intervals for the population value where one is known to cover (docs/metrics.md,
    /// "Intervals"): KID and unbiased MMD (a bootstrap that never pairs a sample with its own
    /// copy, or the jackknife, whichever is wider), FID∞ with `infinity_points` (a
    /// delete-a-group jackknife of the whole fit). Other metrics get none, and a warning says why.
    #[serde(default)]
    pub bootstrap: Option<Bootstrap>,
    /// FID∞ / KID∞ from this many sample sizes (both sets subsampled at the same fraction).
    #[serde(default)]
    #[schema(minimum = 2, maximum = 50)]
    pub infinity_points: Option<usize>,
    /// The model's floating-point type: `fp32` (default; equal to the reference tools) or, opt-in,
    /// `fp16` / `bf16` (GPU workers). A reduced precision's deviation, measured on the first
    /// batch extracted against a float32 copy of the model, is in the result's warnings; its
    /// features are cached apart from float32 ones.
    #[serde(default)]
    pub precision: Precision,
}

/// `POST /v1/matrix`: the pairwise gap table of several datasets.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatrixRequest {
    #[schema(min_items = 2, max_items = 50)]
    pub datasets: Vec<DatasetId>,
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    pub extractor: Option<String>,
    /// Symmetric metrics only (not `is`, `prdc`); default `["fid", "kid"]`.
    #[serde(default)]
    #[schema(min_items = 1, value_type = Option<Vec<SymmetricMetric>>)]
    pub metrics: Option<Vec<MetricName>>,
    #[serde(default)]
    pub parameters: Parameters,
    /// Intervals for every pair (KID and unbiased MMD), and the comparisons they cannot order
    /// (`overlapping` in the result).
    #[serde(default)]
    pub bootstrap: Option<Bootstrap>,
    /// As for a score job.
    #[serde(default)]
    pub precision: Precision,
}

/// The metrics a gap matrix accepts (documentation of [`MatrixRequest::metrics`]).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SymmetricMetric {
    Fid,
    Kid,
    Mmd,
    Cmmd,
    Style,
}

/// Metric parameters; every field is optional and defaults to torch-fidelity's choice (as the
/// `gapmeter score` flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Parameters {
    /// Seed of every random draw (numpy RandomState stream).
    pub seed: u32,
    pub kid: KidOptions,
    pub is: IsOptions,
    pub mmd: MmdOptions,
    pub prdc: PrdcOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KidOptions {
    #[schema(minimum = 1, maximum = 100000)]
    pub subsets: usize,
    #[schema(minimum = 2)]
    pub subset_size: usize,
    #[schema(minimum = 1, maximum = 10)]
    pub degree: i32,
    /// Kernel γ; default 1/d.
    pub gamma: Option<f64>,
    pub coef0: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IsOptions {
    #[schema(minimum = 1)]
    pub splits: usize,
    /// Shuffle before splitting (torch-fidelity does).
    pub shuffle: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MmdOptions {
    /// RBF σ; default: the median heuristic.
    pub bandwidth: Option<f64>,
    #[schema(value_type = String, pattern = "^(biased|unbiased)$")]
    pub estimator: Estimator,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PrdcOptions {
    #[schema(minimum = 1)]
    pub k_pr: usize,
    #[schema(minimum = 1)]
    pub k_dc: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    #[schema(minimum = 2, maximum = 10000)]
    pub resamples: usize,
    /// Interval level, default 0.95.
    #[serde(default = "default_level")]
    #[schema(exclusive_minimum = 0, exclusive_maximum = 1)]
    pub level: f64,
}

fn default_level() -> f64 {
    0.95
}

impl Default for Parameters {
    fn default() -> Self {
        let kid = KidParams::default();
        Self {
            seed: kid.seed,
            kid: KidOptions::default(),
            is: IsOptions::default(),
            mmd: MmdOptions::default(),
            prdc: PrdcOptions::default(),
        }
    }
}

impl Default for KidOptions {
    fn default() -> Self {
        let k = KidParams::default();
        Self {
            subsets: k.subsets,
            subset_size: k.subset_size,
            degree: k.degree,
            gamma: k.gamma,
            coef0: k.coef0,
        }
    }
}

impl Default for IsOptions {
    fn default() -> Self {
        Self {
            splits: IsParams::default().splits,
            shuffle: true,
        }
    }
}

impl Default for MmdOptions {
    fn default() -> Self {
        Self {
            bandwidth: None,
            estimator: MmdParams::default().estimator,
        }
    }
}

impl Default for PrdcOptions {
    fn default() -> Self {
        let p = PrdcParams::default();
        Self {
            k_pr: p.k_pr,
            k_dc: p.k_dc,
        }
    }
}

/// A request with every default resolved: what is stored, hashed and run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// [`JobKind::Score`] or [`JobKind::Matrix`].
    pub kind: JobKind,
    /// `[source, target]` for a score.
    pub datasets: Vec<DatasetId>,
    pub extractor: String,
    pub metrics: Vec<MetricName>,
    pub parameters: Parameters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infinity_points: Option<usize>,
    /// Left out at float32, so specs (and their result keys) from before it existed are unchanged.
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// An analysis job's own options (its kind names it); absent for scores and matrices, so
    /// their specs and result keys are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// A request that cannot run; the message says why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

impl JobSpec {
    /// Validates a score request and fills in its defaults; also returns the extractor's manifest.
    pub fn score(req: ScoreRequest, registry: &Registry) -> Result<(Self, Manifest), Invalid> {
        let manifest = extractor(req.extractor.as_deref(), registry)?;
        let spec = Self {
            kind: JobKind::Score,
            datasets: vec![req.source, req.target],
            extractor: manifest.id.clone(),
            metrics: resolve_metrics(req.metrics.as_deref())?,
            parameters: req.parameters,
            top_k: req.top_k,
            bootstrap: req.bootstrap,
            infinity_points: req.infinity_points,
            precision: req.precision,
            analysis: None,
        };
        spec.validate()?;
        Ok((spec, manifest))
    }

    /// Validates an analysis request against the extractor it needs; also returns the
    /// extractor's manifest.
    pub fn analysis(
        req: AnalysisRequest,
        registry: &Registry,
    ) -> Result<(Self, Manifest), Invalid> {
        let manifest = extractor(req.extractor.as_deref(), registry)?;
        req.analysis
            .validate()
            .map_err(|e| invalid(format!("analysis.{}: {e}", req.analysis.name())))?;
        if req.analysis.needs_style_output() && !has_output(&manifest, STYLE_OUTPUT) {
            return Err(invalid(format!(
                "{} needs an extractor with an output named {STYLE_OUTPUT:?}; {:?} has {:?}",
                req.analysis.name(),
                manifest.id,
                manifest.outputs
            )));
        }
        if req.analysis.needs_text_encoder() && manifest.text_encoder.is_none() {
            return Err(invalid(format!(
                "{} needs an extractor with a text encoder (a CLIP model exported by scripts/export_models.py); {:?} has none",
                req.analysis.name(),
                manifest.id
            )));
        }
        let kind = JobKind::parse(req.analysis.name())
            .ok_or_else(|| invalid(format!("no job kind for {}", req.analysis.name())))?;
        let spec = Self {
            kind,
            datasets: vec![req.source, req.target],
            extractor: manifest.id.clone(),
            metrics: Vec::new(),
            parameters: Parameters::default(),
            top_k: None,
            bootstrap: None,
            infinity_points: None,
            precision: req.precision,
            analysis: Some(req.analysis),
        };
        Ok((spec, manifest))
    }

    /// Validates a matrix request and fills in its defaults; also returns the extractor's manifest.
    pub fn matrix(req: MatrixRequest, registry: &Registry) -> Result<(Self, Manifest), Invalid> {
        if req.datasets.len() < 2 || req.datasets.len() > 50 {
            return Err(invalid("a gap matrix needs 2 to 50 datasets"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = req.datasets.iter().find(|d| !seen.insert(**d)) {
            return Err(invalid(format!("dataset {dup} is listed twice")));
        }
        let metrics = resolve_metrics(req.metrics.as_deref())?;
        score::check_symmetric(&metrics).map_err(|e| invalid(e.to_string()))?;
        let manifest = extractor(req.extractor.as_deref(), registry)?;
        let spec = Self {
            kind: JobKind::Matrix,
            datasets: req.datasets,
            extractor: manifest.id.clone(),
            metrics,
            parameters: req.parameters,
            top_k: None,
            bootstrap: req.bootstrap,
            infinity_points: None,
            precision: req.precision,
            analysis: None,
        };
        spec.validate()?;
        Ok((spec, manifest))
    }

    fn validate(&self) -> Result<(), Invalid> {
        let p = &self.parameters;
        let range = |name: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(format!("{name} must be {lo} to {hi}, got {v}")))
            }
        };
        range("parameters.kid.subsets", p.kid.subsets, 1, 100_000)?;
        range(
            "parameters.kid.subset_size",
            p.kid.subset_size,
            2,
            1_000_000,
        )?;
        range("parameters.kid.degree", p.kid.degree.max(0) as usize, 1, 10)?;
        range("parameters.is.splits", p.is.splits, 1, 10_000)?;
        range("parameters.prdc.k_pr", p.prdc.k_pr, 1, 1000)?;
        range("parameters.prdc.k_dc", p.prdc.k_dc, 1, 1000)?;
        for (name, v) in [
            ("parameters.kid.gamma", p.kid.gamma),
            ("parameters.mmd.bandwidth", p.mmd.bandwidth),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(invalid(format!("{name} must be a positive number")));
                }
            }
        }
        if !p.kid.coef0.is_finite() {
            return Err(invalid("parameters.kid.coef0 must be finite"));
        }
        if let Some(k) = self.top_k {
            range("top_k", k, 1, 10_000)?;
        }
        if let Some(b) = &self.bootstrap {
            range("bootstrap.resamples", b.resamples, 2, 10_000)?;
            if !(b.level > 0.0 && b.level < 1.0) {
                return Err(invalid("bootstrap.level must be between 0 and 1"));
            }
        }
        if let Some(points) = self.infinity_points {
            range("infinity_points", points, 2, 50)?;
        }
        Ok(())
    }

    /// The options `gapmeter score` would run with.
    pub fn score_options(
        &self,
        registry: Registry,
        devices: Devices,
        batch_size: BatchSize,
    ) -> ScoreOptions {
        let p = &self.parameters;
        ScoreOptions {
            extractor: Some(self.extractor.clone()),
            metrics: Some(self.metrics.clone()),
            params: MetricParams {
                kid: KidParams {
                    subsets: p.kid.subsets,
                    subset_size: p.kid.subset_size,
                    degree: p.kid.degree,
                    gamma: p.kid.gamma,
                    coef0: p.kid.coef0,
                    seed: p.seed,
                },
                is: IsParams {
                    splits: p.is.splits,
                    shuffle_seed: p.is.shuffle.then_some(p.seed),
                },
                mmd: MmdParams {
                    bandwidth: p
                        .mmd
                        .bandwidth
                        .map(Bandwidth::Fixed)
                        .unwrap_or(Bandwidth::Median),
                    estimator: p.mmd.estimator,
                    seed: p.seed,
                },
                prdc: PrdcParams {
                    k_pr: p.prdc.k_pr,
                    k_dc: p.prdc.k_dc,
                },
            },
            batch_size,
            devices,
            metrics_device: None,
            precision: self.precision,
            strict: false,
            registry,
            progress: false,
            bootstrap: self.bootstrap.as_ref().map(|b| BootstrapParams {
                resamples: b.resamples,
                level: b.level,
                seed: p.seed,
            }),
            infinity_points: self.infinity_points,
            top: self.top_k,
            interrupt: None,
        }
    }

    /// Identifies the request for idempotency keys.
    pub fn request_hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&json).to_hex().to_string()
    }

    /// Key of the result cache: this request on exactly this content (each dataset's id and
    /// content hash) with exactly this extractor (see [`Manifest::cache_key`]).
    pub fn result_key(&self, contents: &[&str], extractor_key: &str) -> String {
        let json = serde_json::json!({
            "spec": self,
            "contents": contents,
            "extractor": extractor_key,
            "version": env!("CARGO_PKG_VERSION"),
        });
        let bytes = serde_json::to_vec(&json).unwrap_or_default();
        blake3::hash(&bytes).to_hex().to_string()
    }

    /// Whether the metrics need each image's features (else dataset statistics suffice).
    pub fn needs_features(&self) -> bool {
        self.metrics.iter().any(|m| m.needs_features())
            || self.top_k.is_some()
            || self.bootstrap.is_some()
            || self.infinity_points.is_some()
    }
}

fn resolve_metrics(requested: Option<&[MetricName]>) -> Result<Vec<MetricName>, Invalid> {
    if requested.is_some_and(<[MetricName]>::is_empty) {
        return Err(invalid("metrics must name at least one metric"));
    }
    score::image_metrics(requested).map_err(|e| invalid(e.to_string()))
}

/// A registered extractor by id, never a path (see [`Naming::IdOnly`]).
/// The service's extractor for a request: a registered id (never a path), else the default.
pub fn extractor(requested: Option<&str>, registry: &Registry) -> Result<Manifest, Invalid> {
    resolve_extractor(requested, registry, Naming::IdOnly).map_err(|e| invalid(e.to_string()))
}

/// The job that fills a dataset created with a `uri`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    pub dataset: DatasetId,
    pub uri: String,
}

impl IngestSpec {
    /// Identifies the request for idempotency keys.
    pub fn request_hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&json).to_hex().to_string()
    }
}

/// Whether `manifest` has an output called `name`.
pub fn has_output(manifest: &Manifest, name: &str) -> bool {
    manifest.outputs.iter().any(|o| o == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.toml"),
            format!(
                "id = \"m\"\nfile = \"m.pt\"\nsha256 = \"{}\"\ninput_size = 8\noutputs = [\"pool\"]\n",
                "0".repeat(64)
            ),
        )
        .unwrap();
        let reg = Registry::new(dir.path());
        (dir, reg)
    }

    fn request(json: serde_json::Value) -> ScoreRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn explicit_defaults_are_the_same_request_and_any_change_is_another() {
        let (_dir, reg) = registry();
        let (a, b) = (DatasetId::new(), DatasetId::new());
        let plain = JobSpec::score(
            request(serde_json::json!({"source": a, "target": b, "extractor": "m"})),
            &reg,
        )
        .unwrap()
        .0;
        let explicit = JobSpec::score(
            request(serde_json::json!({"source": a, "target": b, "extractor": "m", "metrics": ["fid", "kid"],
                "parameters": {"seed": 2020, "kid": {"subsets": 100}}})),
            &reg,
        )
        .unwrap()
        .0;
        assert_eq!(plain, explicit);
        assert_eq!(plain.request_hash(), explicit.request_hash());
        let swapped = JobSpec::score(
            request(serde_json::json!({"source": b, "target": a, "extractor": "m"})),
            &reg,
        )
        .unwrap()
        .0;
        assert_ne!(plain.request_hash(), swapped.request_hash());
        // The result key also follows the content and the extractor.
        let k = plain.result_key(&["blake3:1", "blake3:2"], "m@1");
        assert_ne!(k, plain.result_key(&["blake3:1", "blake3:3"], "m@1"));
        assert_ne!(k, plain.result_key(&["blake3:1", "blake3:2"], "m@2"));
        assert_eq!(k, explicit.result_key(&["blake3:1", "blake3:2"], "m@1"));
    }

    #[test]
    fn invalid_requests_say_what_is_wrong() {
        let (_dir, reg) = registry();
        let (a, b) = (DatasetId::new(), DatasetId::new());
        let err =
            |json: serde_json::Value| JobSpec::score(request(json), &reg).unwrap_err().to_string();
        assert!(
            err(serde_json::json!({"source": a, "target": b, "extractor": "../m"}))
                .contains("not an extractor id")
        );
        assert!(
            err(serde_json::json!({"source": a, "target": b, "extractor": "zz"}))
                .contains("no extractor")
        );
        assert!(
            err(serde_json::json!({"source": a, "target": b, "extractor": "m", "top_k": 0}))
                .contains("top_k")
        );
        assert!(err(serde_json::json!({"source": a, "target": b, "extractor": "m", "parameters": {"kid": {"gamma": 0.0}}})).contains("gamma"));
        let dup = JobSpec::matrix(
            serde_json::from_value(serde_json::json!({"datasets": [a, a], "extractor": "m"}))
                .unwrap(),
            &reg,
        );
        assert!(dup.unwrap_err().to_string().contains("twice"));
        let asym = JobSpec::matrix(
            serde_json::from_value(
                serde_json::json!({"datasets": [a, b], "extractor": "m", "metrics": ["prdc"]}),
            )
            .unwrap(),
            &reg,
        );
        assert!(asym.unwrap_err().to_string().contains("not symmetric"));
    }
}
