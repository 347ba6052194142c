//! Turning an image folder into a feature matrix: decode and resize on a CPU pool, a batch at a
//! time, then the model.
use std::path::Path;

use anyhow::{bail, Context};
use rayon::prelude::*;
use serde::Serialize;

use crate::features::Extractor;
use crate::imaging::{self, Prepared, ResizeMode};
use crate::ingest::list_images;
use crate::metrics::{Features, StyleSet};

/// An image left out of a set, and why.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What to extract besides the content features.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractOptions {
    pub batch_size: usize,
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
}

/// Extracts the content features of every image under `dir`. Unreadable images are skipped and
/// reported, or fail the call when `strict`; a folder with no usable image is an error.
pub fn extract_folder(
    dir: &Path,
    extractor: &Extractor,
    opts: &ExtractOptions,
) -> anyhow::Result<ExtractedSet> {
    let ExtractOptions {
        batch_size,
        strict,
        progress,
        ..
    } = *opts;
    let paths = list_images(dir)?;
    if paths.is_empty() {
        bail!(
            "no images (jpg, png, webp, gif, bmp, tiff) found under {}",
            dir.display()
        );
    }
    let manifest = extractor.manifest();
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
    let bar = progress_bar(progress, paths.len() as u64, &dir.display().to_string());

    let mut rows: Vec<f32> = Vec::new();
    let mut kept = Vec::new();
    let mut hashes = Vec::new();
    let mut skipped = Vec::new();
    let mut dim = extractor.feature_dim();
    for chunk in paths.chunks(batch_size.max(1)) {
        // Order is kept: rayon's collect preserves the chunk's order.
        let prepared: Vec<Result<([u8; 32], Prepared), String>> = chunk
            .par_iter()
            .map(|p| load_one_file(p, h, w, manifest.resize))
            .collect();
        let mut batch = Vec::with_capacity(chunk.len());
        for (p, result) in chunk.iter().zip(prepared) {
            let path = p.display().to_string();
            match result {
                Ok((hash, p)) => {
                    hashes.push(hash);
                    kept.push(path);
                    batch.push(p);
                }
                Err(reason) if strict => bail!("{path}: {reason} (--strict)"),
                Err(reason) => skipped.push(Skipped { path, reason }),
            }
        }
        if !batch.is_empty() {
            let out = extractor.run(&batch)?;
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
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if kept.is_empty() {
        bail!(
            "none of the {} images under {} could be read",
            paths.len(),
            dir.display()
        );
    }
    let features = Features::from_shape_vec((kept.len(), dim), rows)?;
    let logits = if opts.logits {
        Some(Features::from_shape_vec((kept.len(), logit_dim), logits)?)
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
    })
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
