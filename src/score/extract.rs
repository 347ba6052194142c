//! Turning an image folder into a feature matrix through the extraction engine: files read,
//! hashed, decoded and resized on a CPU pool while the model replicas run earlier batches.
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::features::{Chunk, Engine, PrecisionSample, PrepareError, RunOptions};
use crate::imaging::{self, Prepared, ResizeMode};
use crate::ingest::list_images;
use crate::metrics::{FeatureElement, Features, StyleSet};

/// An image left out of a set, and why.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What to extract besides the content features.
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Images per forward pass (already resolved from `auto`).
    pub batch_size: usize,
    /// The engine's options in full, overriding `batch_size` (benchmarks, tests).
    pub run: Option<RunOptions>,
    pub strict: bool,
    pub progress: bool,
    /// Also keep the output named `logits` (for IS).
    pub logits: bool,
    /// Also keep per-image covariances of the output named `early` (for the style gap).
    pub style: bool,
}

/// Output name IS reads.
pub const LOGITS_OUTPUT: &str = "logits";
/// Output name the style gap reads.
pub const STYLE_OUTPUT: &str = "early";

/// A folder's features and what went into them.
pub struct ExtractedSet {
    pub features: Features,
    pub logits: Option<Features>,
    pub style: Option<StyleSet>,
    /// Paths of the rows of `features`, in order.
    pub paths: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// The set's content hash ([`crate::content::dataset_hash`] over every file, in any order).
    pub content_hash: String,
    /// What the run measured that a reader must know (a reduced precision's deviation).
    pub warnings: Vec<String>,
}

/// Extracts the content features of every image under `dir`. Unreadable images are skipped and
/// reported, or fail the call when `strict` (the first in folder order); a folder with no usable
/// image is an error.
pub fn extract_folder(
    dir: &Path,
    engine: &Engine,
    opts: &ExtractOptions,
) -> anyhow::Result<ExtractedSet> {
    let paths = list_images(dir)?;
    if paths.is_empty() {
        bail!(
            "no images (jpg, png, webp, gif, bmp, tiff) found under {}",
            dir.display()
        );
    }
    let manifest = engine.manifest();
    let (h, w) = manifest.input_size.height_width();
    let feature_name = manifest.feature_output().to_string();
    for (wanted, name, metric) in [
        (opts.logits, LOGITS_OUTPUT, "IS"),
        (opts.style, STYLE_OUTPUT, "the style gap"),
    ] {
        if wanted && !manifest.outputs.iter().any(|o| o == name) {
            bail!(
                "{metric} needs an output named {name:?}, but extractor {:?} ({}) has outputs {:?}",
                manifest.id,
                manifest.path.display(),
                manifest.outputs
            );
        }
    }
    let mut logits: Vec<f64> = Vec::new();
    let mut logit_dim = 0;
    let mut style = opts.style.then(|| StyleSet::new(0));
    let bar = progress_bar(
        opts.progress,
        paths.len() as u64,
        &dir.display().to_string(),
    );

    let mut rows: Vec<f32> = Vec::new();
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    let mut dim = engine.feature_dim();
    // Filled by the prepare stage (any order), read in folder order at the end.
    let hashes: Vec<OnceLock<[u8; 32]>> = paths.iter().map(|_| OnceLock::new()).collect();
    let run = opts
        .run
        .clone()
        .unwrap_or_else(|| RunOptions::new(opts.batch_size));
    let prepare = |i: usize| {
        let (hash, prepared) =
            load_one_file(&paths[i], h, w, manifest.resize).map_err(PrepareError::Rejected)?;
        let _ = hashes[i].set(hash);
        Ok(prepared)
    };
    let report = engine.run(paths.len(), &run, prepare, |chunk: Chunk| {
        for (i, reason) in chunk.rejected {
            let path = paths[i].display().to_string();
            if opts.strict {
                bail!("{path}: {reason} (--strict)");
            }
            skipped.push(Skipped { path, reason });
        }
        if let Some(out) = &chunk.outputs {
            let f = out.rows_f32(&feature_name)?;
            dim = f.ncols();
            rows.extend(f.iter());
            if opts.logits {
                let l = out.rows(LOGITS_OUTPUT)?;
                logit_dim = l.ncols();
                logits.extend(l.iter());
            }
            if let Some(style) = style.as_mut() {
                let maps = out.get(STYLE_OUTPUT).context("style output missing")?;
                style.push_maps(maps)?;
            }
        }
        kept.extend(chunk.kept.iter().map(|&i| paths[i].display().to_string()));
        bar.inc(chunk.range.len() as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    if kept.is_empty() {
        bail!(
            "none of the {} images under {} could be read",
            paths.len(),
            dir.display()
        );
    }
    // Skipped files have no hash: the content hash covers what was scored, as before.
    let hashes = hashes.into_iter().filter_map(OnceLock::into_inner);
    let features = features_from_rows(kept.len(), dim, rows)?;
    let logits = if opts.logits {
        Some(features_from_rows(kept.len(), logit_dim, logits)?)
    } else {
        None
    };
    Ok(ExtractedSet {
        features,
        logits,
        style,
        paths: kept,
        skipped,
        content_hash: crate::content::dataset_hash(hashes),
        warnings: report
            .precision_sample
            .as_ref()
            .map(precision_warning)
            .into_iter()
            .collect(),
    })
}

/// What a reduced precision changed on the batch measured both ways: FID between the float32
/// and the reduced features of the same images (with two images or more), and the largest
/// difference of a feature relative to the largest float32 feature magnitude.
pub fn precision_warning(sample: &PrecisionSample) -> String {
    let (reference, reduced) = (&sample.reference, &sample.reduced);
    let scale = reference
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let largest = reference
        .iter()
        .zip(reduced.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let n = reference.nrows();
    let fid = if n >= 2 {
        match crate::metrics::fid_from_features(reference.view(), reduced.view()) {
            Ok(f) => format!(
                "FID between float32 and {} features {:.3e}, ",
                sample.precision, f.value
            ),
            Err(e) => format!(
                "FID between float32 and {} features not computed ({e}), ",
                sample.precision
            ),
        }
    } else {
        String::new()
    };
    format!(
        "features computed in {} (--precision), not float32 as the reference tools: on the first batch ({n} images), {fid}largest feature difference {:.3e} of the largest feature",
        sample.precision,
        largest / scale
    )
}

/// Rows of `dim` values, one per image, as the metrics take them.
fn features_from_rows<T: FeatureElement>(
    n: usize,
    dim: usize,
    rows: Vec<T>,
) -> anyhow::Result<Features> {
    Ok(Features::from_shape_vec((n, dim), rows)?)
}

/// Reads, hashes, decodes and resizes one image; the error is the reason shown to the user.
pub(super) fn load_one_file(
    path: &Path,
    h: usize,
    w: usize,
    mode: ResizeMode,
) -> Result<([u8; 32], Prepared), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read file: {e}"))?;
    let hash = crate::content::image_hash(&bytes);
    Ok((hash, load_one(&bytes, h, w, mode)?))
}

/// Decodes and resizes one image's bytes for a model of input size `h`×`w`; the error is the
/// reason shown to the user.
pub fn load_one(bytes: &[u8], h: usize, w: usize, mode: ResizeMode) -> Result<Prepared, String> {
    let img = imaging::decode_rgb(bytes).map_err(|e| e.to_string())?;
    imaging::prepare(&img, h, w, mode).map_err(|e| e.to_string())
}

fn progress_bar(enabled: bool, len: u64, label: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} images ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("extracting {label}"));
    bar
}
