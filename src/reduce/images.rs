//! Decoded image sets, for the analyses that change pixels before the model sees them (the
//! selective style gap's photometric copies, the transform search): the images are decoded once
//! and then run through the extractor as often as the analysis needs, each time through a
//! [`Photometric`] transform and the reference resize.
use std::path::Path;

use anyhow::{bail, Context};

use crate::features::{Chunk, Engine, PrepareError, RunOptions};
use crate::imaging::{self, Photometric, RgbImage};
use crate::ingest::list_images;
use crate::metrics::{Features, StyleSet};
use crate::score::{SetProvenance, Skipped, STYLE_OUTPUT};

/// A sample of one set's images, decoded.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// The whole set (its content hash and count), not only the sample.
    pub provenance: SetProvenance,
    /// The sampled images' names (paths in the folder, or dataset member paths), in order.
    pub labels: Vec<String>,
    pub images: Vec<RgbImage>,
    pub warnings: Vec<String>,
}

impl ImageSet {
    /// Reads the images under `dir` (as `gapmeter score` lists them) and decodes a seeded sample
    /// of at most `limit` of them ([`sample_indices`]); unreadable files are skipped with a
    /// warning, as in a score. The content hash covers every file.
    pub fn from_folder(role: &str, dir: &Path, limit: usize, seed: u32) -> anyhow::Result<Self> {
        let paths = list_images(dir)?;
        if paths.is_empty() {
            bail!(
                "{role} {}: no images (jpg, png, webp, gif, bmp, tiff) found",
                dir.display()
            );
        }
        let chosen = sample_indices(paths.len(), limit, seed);
        let mut hashes = Vec::with_capacity(paths.len());
        let mut items = Vec::with_capacity(chosen.len());
        let mut next = chosen.iter().peekable();
        for (i, p) in paths.iter().enumerate() {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            hashes.push(crate::content::image_hash(&bytes));
            if next.peek() == Some(&&i) {
                next.next();
                items.push((p.display().to_string(), bytes));
            }
        }
        let provenance = SetProvenance {
            path: dir.display().to_string(),
            kind: "images".into(),
            content_hash: crate::content::dataset_hash(hashes),
            count: Some(paths.len()),
            skipped: Vec::new(),
        };
        Self::decode(role, provenance, items)
    }

    /// Decodes a sample of a set (names and bytes, in the set's order) whose provenance the
    /// caller knows (the service reads the sample from the blob store and has the dataset's
    /// content hash).
    pub fn decode(
        role: &str,
        mut provenance: SetProvenance,
        items: Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<Self> {
        let sampled = items.len();
        let mut labels = Vec::with_capacity(sampled);
        let mut images = Vec::with_capacity(sampled);
        let mut warnings = Vec::new();
        for (name, bytes) in items {
            match imaging::decode_rgb(&bytes) {
                Ok(img) => {
                    labels.push(name);
                    images.push(img);
                }
                Err(e) => {
                    warnings.push(format!("{role}: skipped {name}: {e}"));
                    provenance.skipped.push(Skipped {
                        path: name,
                        reason: e.to_string(),
                    });
                }
            }
        }
        if images.is_empty() {
            bail!(
                "{role} {}: none of the sampled images could be decoded",
                provenance.path
            );
        }
        if let Some(count) = provenance.count {
            if count > sampled {
                warnings.push(format!(
                    "{role}: a seeded sample of {sampled} of its {count} images was used"
                ));
            }
        }
        Ok(Self {
            provenance,
            labels,
            images,
            warnings,
        })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// `limit` indices of `0..n` chosen with `seed` (all of them, in order, when `n ≤ limit`), sorted
/// so the sample keeps the set's order.
pub fn sample_indices(n: usize, limit: usize, seed: u32) -> Vec<usize> {
    if n <= limit {
        return (0..n).collect();
    }
    let mut rng = crate::metrics::rng::LegacyRandomState::new(seed);
    let mut idx = rng.permutation(n);
    idx.truncate(limit);
    idx.sort_unstable();
    idx
}

/// What one pass of images through the extractor gave.
pub struct Embedded {
    /// Content features, float32 as the model computed them (what `gapmeter score` holds).
    pub features: Features,
    /// Per-image channel covariances of the `early` output, when asked for.
    pub style: Option<StyleSet>,
}

/// Runs `images`, each through `transform` first (seeded per image, so a setting always gives the
/// same pixels), through `engine`. Every image must go through: an image the model rejects fails
/// the call, since a pass with a different subset would not be comparable with the others.
pub fn embed(
    engine: &Engine,
    images: &[RgbImage],
    transform: &Photometric,
    seed: u64,
    style: bool,
    batch_size: usize,
) -> anyhow::Result<Embedded> {
    let manifest = engine.manifest();
    let (h, w) = manifest.input_size.height_width();
    let mode = manifest.resize;
    if style && !manifest.outputs.iter().any(|o| o == STYLE_OUTPUT) {
        bail!(
            "this analysis needs an output named {STYLE_OUTPUT:?}, but extractor {:?} has outputs {:?}",
            manifest.id,
            manifest.outputs
        );
    }
    let feature_name = manifest.feature_output().to_string();
    let prepare = |i: usize| {
        let img = if transform.is_identity() {
            std::borrow::Cow::Borrowed(&images[i])
        } else {
            std::borrow::Cow::Owned(
                transform
                    .apply(&images[i], seed.wrapping_add(i as u64))
                    .map_err(|e| PrepareError::Rejected(e.to_string()))?,
            )
        };
        imaging::prepare(&img, h, w, mode).map_err(|e| PrepareError::Rejected(e.to_string()))
    };
    let mut rows: Vec<f32> = Vec::new();
    let mut dim = engine.feature_dim();
    let mut covs = style.then(|| StyleSet::new(0));
    let mut done = 0usize;
    engine.run(
        images.len(),
        &RunOptions::new(batch_size),
        prepare,
        |chunk: Chunk| {
            if let Some((i, reason)) = chunk.rejected.first() {
                bail!("image {i} could not be prepared: {reason}");
            }
            if let Some(out) = &chunk.outputs {
                let f = out.rows_f32(&feature_name)?;
                dim = f.ncols();
                rows.extend(f.iter());
                if let Some(covs) = covs.as_mut() {
                    let maps = out.get(STYLE_OUTPUT).context("style output missing")?;
                    covs.push_maps(maps)?;
                }
                done += chunk.kept.len();
            }
            Ok(())
        },
    )?;
    if done != images.len() {
        bail!("{} of {} images went through the model", done, images.len());
    }
    Ok(Embedded {
        features: Features::from_shape_vec((done, dim), rows)?,
        style: covs,
    })
}
