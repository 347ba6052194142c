//! The proposal's own measure: a style gap on the covariance entries that carry style, learned
//! the way RobustNet's instance-selective whitening (Choi et al., CVPR 2021) finds them.
//!
//! Each image's early-layer channel covariance is computed for the image and for photometrically
//! transformed copies of it. An entry that moves with colour, gamma, blur and the like encodes
//! style; one that stays put encodes content. RobustNet clusters the entries' variances across
//! the transforms and whitens only the high cluster; here the same split decides which entries
//! a gap is measured on: the *selective style gap* on the sensitive entries, a *content gap* on
//! the stable ones, beside the all-entry distances. docs/reduce.md, "Selective style gap".
use serde::{Deserialize, Serialize};

use super::images::{embed, sample_indices, ImageSet};
use super::{check, Interrupt};
use crate::features::Engine;
use crate::imaging::{Photometric, RgbImage};
use crate::metrics::{self, rng::LegacyRandomState, StyleGap, StyleSet};

/// How the mask is learned and the gap measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SelectiveStyleParams {
    /// Images of the source decoded and measured (a seeded sample beyond that).
    pub source_images: usize,
    /// Images of the target decoded and measured.
    pub target_images: usize,
    /// Images per set whose transformed copies decide the mask (RobustNet uses a batch).
    pub mask_images: usize,
    /// Clusters of the entries' variances; the highest is the style-sensitive group (RobustNet: 3).
    pub clusters: usize,
    /// The transforms whose effect defines style; empty: the built-in family
    /// ([`default_family`]).
    pub transforms: Vec<Photometric>,
    /// White-balance casts (per-channel gains on R, G, B, clamped) also applied to the mask
    /// images; empty: the built-in four ([`DEFAULT_CASTS`]). `[[1, 1, 1]]` adds none.
    pub channel_gains: Vec<[f64; 3]>,
    /// Random half-splits of the source that give the source-vs-itself baseline.
    pub baseline_splits: usize,
    pub seed: u32,
}

/// Casts of the built-in family: red/blue and green/blue trades, as a camera's white balance
/// moves them (torchvision has no single operation for it: `img * gains.view(3, 1, 1)`).
pub const DEFAULT_CASTS: [[f64; 3]; 4] = [
    [1.2, 1.0, 0.8],
    [0.8, 1.0, 1.2],
    [1.0, 1.2, 0.8],
    [1.2, 0.8, 1.0],
];

/// `img` with each channel multiplied by its gain, rounded and clamped to 0..=255.
fn channel_gains(img: &RgbImage, gains: [f64; 3]) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for (c, g) in gains.iter().enumerate() {
            p.0[c] = (p.0[c] as f64 * g).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

impl Default for SelectiveStyleParams {
    fn default() -> Self {
        Self {
            source_images: 256,
            target_images: 256,
            mask_images: 32,
            clusters: 3,
            transforms: Vec::new(),
            channel_gains: Vec::new(),
            baseline_splits: 20,
            seed: 0,
        }
    }
}

impl SelectiveStyleParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(4..=100_000).contains(&self.source_images)
            || !(2..=100_000).contains(&self.target_images)
        {
            return Err("source_images must be 4 to 100000 and target_images 2 to 100000".into());
        }
        if !(2..=10_000).contains(&self.mask_images) {
            return Err("mask_images must be 2 to 10000".into());
        }
        if !(2..=10).contains(&self.clusters) {
            return Err("clusters must be 2 to 10".into());
        }
        if !(2..=1000).contains(&self.baseline_splits) {
            return Err("baseline_splits must be 2 to 1000".into());
        }
        if self.transforms.len() > 64 {
            return Err("at most 64 transforms".into());
        }
        for t in &self.transforms {
            t.validate()?;
        }
        if self.channel_gains.len() > 64
            || self
                .channel_gains
                .iter()
                .flatten()
                .any(|g| !(g.is_finite() && (0.0..=10.0).contains(g)))
        {
            return Err("channel_gains: at most 64 casts, each gain 0 to 10".into());
        }
        Ok(())
    }

    /// The casts used: the request's (identity casts dropped), or the built-in four.
    pub fn casts(&self) -> Vec<[f64; 3]> {
        if self.channel_gains.is_empty() {
            DEFAULT_CASTS.to_vec()
        } else {
            self.channel_gains
                .iter()
                .copied()
                .filter(|g| *g != [1.0, 1.0, 1.0])
                .collect()
        }
    }

    /// The transforms used: the request's, or the built-in family.
    pub fn family(&self) -> Vec<Photometric> {
        if self.transforms.is_empty() {
            default_family()
        } else {
            self.transforms.clone()
        }
    }
}

/// The built-in photometric family: RobustNet's colour jitter and blur, and each knob of the
/// transform search at a moderate setting in both directions.
pub fn default_family() -> Vec<Photometric> {
    let id = Photometric::identity();
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut Photometric)| {
        let mut p = id;
        f(&mut p);
        out.push(p);
    };
    push(&|p| p.brightness = 0.7);
    push(&|p| p.brightness = 1.3);
    push(&|p| p.contrast = 0.7);
    push(&|p| p.contrast = 1.3);
    push(&|p| p.saturation = 0.5);
    push(&|p| p.saturation = 1.5);
    push(&|p| p.hue = -0.05);
    push(&|p| p.hue = 0.05);
    push(&|p| p.gamma = 0.7);
    push(&|p| p.gamma = 1.4);
    push(&|p| p.blur_sigma = 1.0);
    push(&|p| p.noise_std = 0.03);
    push(&|p| p.jpeg_quality = 30);
    // RobustNet's ColorJitter(0.8, 0.8, 0.8, 0.3)-style combined draw, at one fixed setting.
    push(&|p| {
        p.brightness = 1.2;
        p.contrast = 0.8;
        p.saturation = 1.3;
        p.hue = 0.03;
    });
    out
}

/// Which covariance entries carry style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StyleMask {
    pub channels: usize,
    /// Off-diagonal entries (i < j) considered; the diagonal is constant after instance
    /// normalisation and carries nothing.
    pub entries: usize,
    /// The style-sensitive entries `[i, j]` (i < j), the highest-variance cluster.
    pub sensitive: Vec<[usize; 2]>,
    /// Cluster centres of the variances, ascending.
    pub cluster_centres: Vec<f64>,
    /// The smallest variance in the sensitive cluster.
    pub threshold: f64,
    /// Images whose copies decided the mask.
    pub images: usize,
    pub transforms: Vec<Photometric>,
    /// The white-balance casts applied besides `transforms`.
    pub casts: Vec<[f64; 3]>,
}

impl StyleMask {
    fn is_sensitive(&self) -> Vec<bool> {
        let c = self.channels;
        let mut out = vec![false; c * c];
        for [i, j] in &self.sensitive {
            out[i * c + j] = true;
        }
        out
    }
}

/// Mean squared difference of two mean covariances over three groups of off-diagonal entries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EntryGaps {
    /// Over the style-sensitive entries: the selective style gap.
    pub selective_style: f64,
    /// Over the style-stable entries: a content gap.
    pub content_stable: f64,
    /// Over every off-diagonal entry: the unselective gap, for comparison.
    pub all_entries: f64,
}

impl EntryGaps {
    fn ratio(&self, base: &EntryGaps) -> EntryGaps {
        let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
        EntryGaps {
            selective_style: r(self.selective_style, base.selective_style),
            content_stable: r(self.content_stable, base.content_stable),
            all_entries: r(self.all_entries, base.all_entries),
        }
    }
}

/// The source against itself: the gaps between random halves of the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub splits: usize,
    pub mean: EntryGaps,
    /// The 95th percentile over the splits.
    pub p95: EntryGaps,
}

/// The result of a selective style gap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelectiveStyle {
    pub gaps: EntryGaps,
    pub baseline: Baseline,
    /// `gaps` divided by the baseline's mean: how many times the source-vs-itself level each
    /// gap is. A style change raises `selective_style` most; a content change `content_stable`.
    pub relative: EntryGaps,
    /// The existing all-entry distances (Deep CORAL, log-Euclidean, Bures–Wasserstein).
    pub style_gap: StyleGap,
    pub mask: StyleMask,
    pub images: [usize; 2],
}

/// Learns the mask on a sample of both sets and measures the gaps on every loaded image.
pub fn selective_style(
    engine: &Engine,
    source: &ImageSet,
    target: &ImageSet,
    params: &SelectiveStyleParams,
    batch_size: usize,
    interrupt: Interrupt,
) -> anyhow::Result<SelectiveStyle> {
    params.validate().map_err(anyhow::Error::msg)?;
    let identity = Photometric::identity();
    let covariances = |images: &[RgbImage], transform: &Photometric, seed: u64| {
        check(interrupt)?;
        embed(engine, images, transform, seed, true, batch_size)?
            .style
            .ok_or_else(|| anyhow::anyhow!("no style output"))
    };
    let s = covariances(&source.images, &identity, params.seed as u64)?;
    let t = covariances(&target.images, &identity, params.seed as u64)?;

    // The mask sample: half from each set, so what counts as style is learned on both domains.
    let half = params.mask_images.div_ceil(2);
    let mut mask_images = Vec::new();
    let mut originals = StyleSet::new(0);
    for (set, covs, salt) in [(source, &s, 0u32), (target, &t, 1)] {
        let idx = sample_indices(set.len(), half, params.seed.wrapping_add(salt));
        mask_images.extend(idx.iter().map(|&i| set.images[i].clone()));
        let sel = covs.select(&idx);
        if originals.channels == 0 {
            originals = sel;
        } else {
            originals.covariances.extend(sel.covariances);
        }
    }
    let family = params.family();
    let mut copies = vec![originals];
    for (k, tr) in family.iter().enumerate() {
        copies.push(covariances(
            &mask_images,
            tr,
            (params.seed as u64) << 8 | k as u64,
        )?);
    }
    for gains in params.casts() {
        let cast: Vec<RgbImage> = mask_images
            .iter()
            .map(|img| channel_gains(img, gains))
            .collect();
        copies.push(covariances(&cast, &identity, 0)?);
    }
    let variances = entry_variances(&copies)?;
    let mut mask = learn_mask(&variances, s.channels, params.clusters)?;
    mask.images = mask_images.len();
    mask.transforms = family;
    mask.casts = params.casts();

    let gaps = entry_gaps(&s, &t, &mask)?;
    let baseline = baseline(&s, &mask, params.baseline_splits, params.seed)?;
    Ok(SelectiveStyle {
        relative: gaps.ratio(&baseline.mean),
        gaps,
        baseline,
        style_gap: metrics::style_gap(&s, &t)?,
        mask,
        images: [s.len(), t.len()],
    })
}

/// For each off-diagonal entry (i < j, row-major order), its variance across the copies of each
/// image, averaged over the images. `copies[k]` holds copy k of every image, in the same order.
pub fn entry_variances(copies: &[StyleSet]) -> anyhow::Result<Vec<f64>> {
    let first = copies
        .first()
        .ok_or_else(|| anyhow::anyhow!("no covariances"))?;
    let (c, n) = (first.channels, first.len());
    if copies.iter().any(|x| x.channels != c || x.len() != n) {
        anyhow::bail!("every copy must hold the same images");
    }
    if copies.len() < 2 || n == 0 {
        anyhow::bail!("a variance across transforms needs an image and at least two copies");
    }
    let cc = c * c;
    let k = copies.len() as f64;
    let mut out = Vec::with_capacity(c * (c - 1) / 2);
    for i in 0..c {
        for j in (i + 1)..c {
            let e = i * c + j;
            let mut total = 0.0;
            for img in 0..n {
                let vals = copies.iter().map(|x| x.covariances[img * cc + e]);
                let mean = vals.clone().sum::<f64>() / k;
                total += vals.map(|v| (v - mean) * (v - mean)).sum::<f64>() / k;
            }
            out.push(total / n as f64);
        }
    }
    Ok(out)
}

/// Splits the entries by 1-D k-means on their variances (centres started at evenly spaced
/// quantiles, so the result is deterministic); the cluster with the highest centre is style.
pub fn learn_mask(
    variances: &[f64],
    channels: usize,
    clusters: usize,
) -> anyhow::Result<StyleMask> {
    if variances.len() != channels * channels.saturating_sub(1) / 2 || variances.is_empty() {
        anyhow::bail!("the style map needs at least two channels");
    }
    if variances.iter().any(|v| !v.is_finite()) {
        anyhow::bail!("a covariance entry's variance is not finite");
    }
    let (centres, labels) = kmeans_1d(variances, clusters.min(variances.len()));
    let top = centres.len() - 1;
    let mut sensitive = Vec::new();
    let mut threshold = f64::INFINITY;
    let mut e = 0;
    for i in 0..channels {
        for j in (i + 1)..channels {
            if labels[e] == top {
                sensitive.push([i, j]);
                threshold = threshold.min(variances[e]);
            }
            e += 1;
        }
    }
    Ok(StyleMask {
        channels,
        entries: variances.len(),
        sensitive,
        cluster_centres: centres,
        threshold,
        images: 0,
        transforms: Vec::new(),
        casts: Vec::new(),
    })
}

/// Lloyd's algorithm in one dimension; returns ascending centres and each value's cluster.
/// Empty clusters are dropped, so fewer than `k` centres can come back (never zero).
fn kmeans_1d(values: &[f64], k: usize) -> (Vec<f64>, Vec<usize>) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let k = k.max(1);
    let mut centres: Vec<f64> = (0..k)
        .map(|c| sorted[((2 * c + 1) * n / (2 * k)).min(n - 1)])
        .collect();
    centres.dedup();
    let mut labels = vec![0; values.len()];
    for _ in 0..300 {
        for (l, v) in labels.iter_mut().zip(values) {
            *l = nearest(&centres, *v);
        }
        let mut sums = vec![(0.0, 0usize); centres.len()];
        for (l, v) in labels.iter().zip(values) {
            sums[*l].0 += v;
            sums[*l].1 += 1;
        }
        let next: Vec<f64> = sums
            .iter()
            .filter(|(_, c)| *c > 0)
            .map(|(s, c)| s / *c as f64)
            .collect();
        if next == centres {
            break;
        }
        centres = next;
    }
    for (l, v) in labels.iter_mut().zip(values) {
        *l = nearest(&centres, *v);
    }
    (centres, labels)
}

fn nearest(centres: &[f64], v: f64) -> usize {
    let mut best = 0;
    for (i, c) in centres.iter().enumerate() {
        if (v - c).abs() < (v - centres[best]).abs() {
            best = i;
        }
    }
    best
}

/// The three entry gaps between two sets' mean covariances.
pub fn entry_gaps(s: &StyleSet, t: &StyleSet, mask: &StyleMask) -> anyhow::Result<EntryGaps> {
    let c = mask.channels;
    if s.channels != c || t.channels != c {
        anyhow::bail!(
            "the mask is for {c} channels, the sets have {} and {}",
            s.channels,
            t.channels
        );
    }
    let cs = s.mean_covariance()?;
    let ct = t.mean_covariance()?;
    let sensitive = mask.is_sensitive();
    let (mut sel, mut stable, mut all) = ((0.0, 0usize), (0.0, 0usize), (0.0, 0usize));
    for i in 0..c {
        for j in (i + 1)..c {
            let e = i * c + j;
            let d = (cs[e] - ct[e]) * (cs[e] - ct[e]);
            let group = if sensitive[e] { &mut sel } else { &mut stable };
            group.0 += d;
            group.1 += 1;
            all.0 += d;
            all.1 += 1;
        }
    }
    let mean = |(s, n): (f64, usize)| if n == 0 { 0.0 } else { s / n as f64 };
    Ok(EntryGaps {
        selective_style: mean(sel),
        content_stable: mean(stable),
        all_entries: mean(all),
    })
}

/// The gaps between random halves of `s`, `splits` times.
fn baseline(s: &StyleSet, mask: &StyleMask, splits: usize, seed: u32) -> anyhow::Result<Baseline> {
    let n = s.len();
    if n < 4 {
        anyhow::bail!("the source-vs-itself baseline needs at least 4 source images, got {n}");
    }
    let mut rng = LegacyRandomState::new(seed);
    let mut draws = Vec::with_capacity(splits);
    for _ in 0..splits {
        let perm = rng.permutation(n);
        let (a, b) = perm.split_at(n / 2);
        draws.push(entry_gaps(&s.select(a), &s.select(b), mask)?);
    }
    let stat = |f: &dyn Fn(&EntryGaps) -> f64| -> (f64, f64) {
        let mut v: Vec<f64> = draws.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let idx = ((v.len() as f64 - 1.0) * 0.95).round() as usize;
        (mean, v[idx])
    };
    let (s_m, s_p) = stat(&|g| g.selective_style);
    let (c_m, c_p) = stat(&|g| g.content_stable);
    let (a_m, a_p) = stat(&|g| g.all_entries);
    Ok(Baseline {
        splits,
        mean: EntryGaps {
            selective_style: s_m,
            content_stable: c_m,
            all_entries: a_m,
        },
        p95: EntryGaps {
            selective_style: s_p,
            content_stable: c_p,
            all_entries: a_p,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_splits_separated_groups_and_the_top_cluster_is_the_mask() {
        // 6 channels → 15 entries: ten near 0, three near 1, two near 5.
        let mut v = vec![0.01, 0.02, 0.0, 0.03, 0.01, 0.02, 0.0, 0.01, 0.02, 0.03];
        v.extend([1.0, 1.1, 0.9, 5.0, 5.2]);
        let mask = learn_mask(&v, 6, 3).unwrap();
        assert_eq!(mask.cluster_centres.len(), 3);
        assert_eq!(mask.sensitive.len(), 2);
        // Entries 13 and 14 in row-major upper-triangle order are (3,5) and (4,5).
        assert_eq!(mask.sensitive, vec![[3, 5], [4, 5]]);
        assert!((mask.threshold - 5.0).abs() < 1e-12);
    }

    #[test]
    fn constant_variances_make_one_cluster_and_everything_sensitive() {
        let mask = learn_mask(&[0.5; 6], 4, 3).unwrap();
        assert_eq!(mask.cluster_centres, vec![0.5]);
        assert_eq!(mask.sensitive.len(), 6);
    }

    fn set(covs: &[[f64; 9]]) -> StyleSet {
        StyleSet {
            channels: 3,
            covariances: covs.iter().flatten().copied().collect(),
        }
    }

    #[test]
    fn variances_and_gaps_by_entry_group() {
        let a = [1.0, 0.1, 0.2, 0.1, 1.0, 0.3, 0.2, 0.3, 1.0];
        let mut b = a;
        b[1] = 0.5; // entry (0,1) moves with the "transform"
        b[3] = 0.5;
        let v = entry_variances(&[set(&[a]), set(&[b])]).unwrap();
        assert_eq!(v.len(), 3);
        assert!((v[0] - 0.04).abs() < 1e-12 && v[1] == 0.0 && v[2] == 0.0);
        let mask = learn_mask(&v, 3, 2).unwrap();
        assert_eq!(mask.sensitive, vec![[0, 1]]);
        let g = entry_gaps(&set(&[a]), &set(&[b]), &mask).unwrap();
        assert!((g.selective_style - 0.16).abs() < 1e-12);
        assert_eq!(g.content_stable, 0.0);
        assert!((g.all_entries - 0.16 / 3.0).abs() < 1e-12);
    }
}
