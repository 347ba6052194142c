//! The gap in words: the difference between the two sets' mean image embeddings (CLIP-style,
//! each embedding L2-normalised) projected onto text directions, each the difference of two
//! prompts' normalised text embeddings ("a photo taken during the day" → "… at night"). A
//! direction's share is the squared projection over the squared gap: the part of the gap it
//! explains. Intervals come from a bootstrap over images, and a permutation test per direction
//! asks whether the sets' images differ along it at all (Holm-corrected over the directions).
//! docs/reduce.md, "The gap in words".
use ndarray::{Array1, Array2, Axis};
use serde::{Deserialize, Serialize};

use super::{check, Interrupt, Spread};
use crate::features::TextEncoder;
use crate::metrics::{rng::LegacyRandomState, Features};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExplainParams {
    /// The user's own directions, each `[from, to]`: the prompt describing the source side
    /// and the one describing the target side.
    pub prompts: Vec<[String; 2]>,
    /// Also test the built-in directions ([`builtin_directions`]).
    pub builtin: bool,
    pub bootstrap: usize,
    pub permutations: usize,
    pub level: f64,
    /// Holm-corrected p-value below which a direction is called significant.
    pub alpha: f64,
    pub seed: u32,
}

impl Default for ExplainParams {
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            builtin: true,
            bootstrap: 200,
            permutations: 999,
            level: 0.95,
            alpha: 0.05,
            seed: 0,
        }
    }
}

impl ExplainParams {
    pub fn validate(&self) -> Result<(), String> {
        if !self.builtin && self.prompts.is_empty() {
            return Err("no direction to test: give prompts or leave builtin on".into());
        }
        if self.prompts.len() > 200 {
            return Err("at most 200 prompt pairs".into());
        }
        if self.prompts.iter().any(|[a, b]| {
            a.trim().is_empty() || b.trim().is_empty() || a.len() > 1000 || b.len() > 1000
        }) {
            return Err("each prompt must be 1 to 1000 characters".into());
        }
        if !(2..=100_000).contains(&self.bootstrap) || !(19..=100_000).contains(&self.permutations)
        {
            return Err("bootstrap must be 2 to 100000 and permutations 19 to 100000".into());
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err("alpha must be between 0 and 1".into());
        }
        super::check_level(self.level)
    }
}

/// The built-in directions: `(name, from, to)`. Groups of more than two (weather, medium) are
/// directions from their first member to each other one.
pub fn builtin_directions() -> Vec<(String, String, String)> {
    let groups: &[(&str, &[(&str, &str)])] = &[
        (
            "time of day",
            &[
                ("day", "a photo taken during the day"),
                ("night", "a photo taken at night"),
            ],
        ),
        (
            "weather",
            &[
                ("clear", "a photo taken in clear weather"),
                ("foggy", "a photo taken in foggy weather"),
                ("rainy", "a photo taken in rainy weather"),
                ("snowy", "a photo taken in snowy weather"),
            ],
        ),
        (
            "medium",
            &[
                ("photo", "a photo"),
                ("3D rendering", "a 3D rendering"),
                ("painting", "a painting"),
                ("sketch", "a pencil sketch"),
            ],
        ),
        (
            "sharpness",
            &[("sharp", "a sharp photo"), ("blurry", "a blurry photo")],
        ),
        (
            "brightness",
            &[("bright", "a bright photo"), ("dark", "a dark photo")],
        ),
        (
            "colour",
            &[
                ("colour", "a colour photo"),
                ("greyscale", "a black and white photo"),
            ],
        ),
        (
            "setting",
            &[
                ("indoor", "a photo taken indoors"),
                ("outdoor", "a photo taken outdoors"),
            ],
        ),
    ];
    let mut out = Vec::new();
    for (_, members) in groups {
        let (first_name, first_prompt) = members[0];
        for (name, prompt) in &members[1..] {
            out.push((
                format!("{first_name} → {name}"),
                first_prompt.to_string(),
                prompt.to_string(),
            ));
        }
    }
    out
}

/// One text direction and how much of the gap lies along it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Direction {
    pub name: String,
    pub from: String,
    pub to: String,
    pub builtin: bool,
    /// ⟨μ_T − μ_S, u⟩: positive when the target is further towards `to` than the source.
    pub projection: f64,
    /// projection² / ‖μ_T − μ_S‖²: the share of the gap along this direction.
    pub share: f64,
    pub projection_interval: Spread,
    pub share_interval: Spread,
    /// Two-sided permutation test of the images' projections (source vs target).
    pub p_value: f64,
    /// Holm-corrected over every direction tested.
    pub p_holm: f64,
    pub significant: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// ‖μ_T − μ_S‖ of the normalised image embeddings.
    pub gap_norm: f64,
    /// By share, largest first.
    pub directions: Vec<Direction>,
    /// Directions left out because their two prompts embed to the same vector.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    pub summary: String,
}

fn normalise_rows(mut a: Array2<f64>) -> Array2<f64> {
    for mut row in a.axis_iter_mut(Axis(0)) {
        let n = row.dot(&row).sqrt();
        if n > 0.0 {
            row /= n;
        }
    }
    a
}

fn mean_of(a: &Array2<f64>, rows: &[usize]) -> Array1<f64> {
    let mut m = Array1::zeros(a.ncols());
    for &r in rows {
        m += &a.row(r);
    }
    m / rows.len().max(1) as f64
}

fn unit(v: Array1<f64>) -> Option<Array1<f64>> {
    let n = v.dot(&v).sqrt();
    (n > 1e-12 && n.is_finite()).then(|| v / n)
}

/// Ranks text directions by the share of the gap between `source` and `target` they explain.
pub fn explain(
    source: &Features,
    target: &Features,
    text: &TextEncoder,
    params: &ExplainParams,
    interrupt: Interrupt,
) -> anyhow::Result<Explanation> {
    params.validate().map_err(anyhow::Error::msg)?;
    let (ns, nt) = (source.nrows(), target.nrows());
    if ns < 2 || nt < 2 {
        anyhow::bail!("explain needs at least 2 images per set");
    }
    if text.dim() != source.ncols() {
        anyhow::bail!(
            "the text encoder gives {}-d embeddings but the image features are {}-d: the text tower must belong to this extractor",
            text.dim(),
            source.ncols()
        );
    }
    let s = normalise_rows(source.to_f64());
    let t = normalise_rows(target.to_f64());
    let mut specs: Vec<(String, String, String, bool)> = Vec::new();
    if params.builtin {
        specs.extend(
            builtin_directions()
                .into_iter()
                .map(|(n, a, b)| (n, a, b, true)),
        );
    }
    specs.extend(
        params
            .prompts
            .iter()
            .map(|[a, b]| (format!("{a} → {b}"), a.clone(), b.clone(), false)),
    );
    let prompts: Vec<String> = specs
        .iter()
        .flat_map(|(_, a, b, _)| [a.clone(), b.clone()])
        .collect();
    let emb = normalise_rows(text.embed(&prompts)?);
    let mut dirs: Vec<(usize, Array1<f64>)> = Vec::new();
    let mut degenerate = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        match unit(&emb.row(2 * i + 1) - &emb.row(2 * i)) {
            Some(u) => dirs.push((i, u)),
            None => degenerate.push(spec.0.clone()),
        }
    }
    if dirs.is_empty() {
        anyhow::bail!("every direction's two prompts have the same text embedding");
    }

    let all_s: Vec<usize> = (0..ns).collect();
    let all_t: Vec<usize> = (0..nt).collect();
    let delta = mean_of(&t, &all_t) - mean_of(&s, &all_s);
    let gap2 = delta.dot(&delta);
    let share = |p: f64, g2: f64| if g2 > 0.0 { p * p / g2 } else { 0.0 };

    // Bootstrap: the same image resamples for every direction.
    let mut rng = LegacyRandomState::new(params.seed);
    let mut boot_p = vec![Vec::with_capacity(params.bootstrap); dirs.len()];
    let mut boot_s = vec![Vec::with_capacity(params.bootstrap); dirs.len()];
    for _ in 0..params.bootstrap {
        check(interrupt)?;
        let rs: Vec<usize> = (0..ns)
            .map(|_| rng.random_interval((ns - 1) as u64) as usize)
            .collect();
        let rt: Vec<usize> = (0..nt)
            .map(|_| rng.random_interval((nt - 1) as u64) as usize)
            .collect();
        let d = mean_of(&t, &rt) - mean_of(&s, &rs);
        let g2 = d.dot(&d);
        for (k, (_, u)) in dirs.iter().enumerate() {
            let p = d.dot(u);
            boot_p[k].push(p);
            boot_s[k].push(share(p, g2));
        }
    }

    // Permutation test on each image's projection: the difference of the two sets' mean
    // projections against its distribution when the set labels are shuffled.
    let pooled = ndarray::concatenate(Axis(0), &[s.view(), t.view()])?;
    let mut p_values = Vec::with_capacity(dirs.len());
    for (_, u) in &dirs {
        check(interrupt)?;
        let proj: Vec<f64> = pooled.dot(u).to_vec();
        let observed = mean_diff(&proj, &(0..ns + nt).collect::<Vec<_>>(), ns);
        let mut rng = LegacyRandomState::new(params.seed.wrapping_add(1));
        let mut extreme = 0usize;
        for _ in 0..params.permutations {
            let perm = rng.permutation(ns + nt);
            if mean_diff(&proj, &perm, ns).abs() >= observed.abs() - 1e-15 {
                extreme += 1;
            }
        }
        p_values.push((extreme + 1) as f64 / (params.permutations + 1) as f64);
    }
    let holm = holm(&p_values);

    let mut directions: Vec<Direction> = dirs
        .iter()
        .enumerate()
        .map(|(k, (i, u))| {
            let (name, from, to, builtin) = specs[*i].clone();
            let projection = delta.dot(u);
            Direction {
                name,
                from,
                to,
                builtin,
                projection,
                share: share(projection, gap2),
                projection_interval: Spread::of(&boot_p[k], params.level),
                share_interval: Spread::of(&boot_s[k], params.level),
                p_value: p_values[k],
                p_holm: holm[k],
                significant: holm[k] < params.alpha,
            }
        })
        .collect();
    directions.sort_by(|a, b| b.share.total_cmp(&a.share));
    let summary = match directions.first() {
        Some(d) if d.significant => format!(
            "the target differs from the source most along {:?} ({:.0} % of the embedding gap, {:.0} % interval {:.0}–{:.0} %; permutation p = {:.3}, Holm-corrected {:.3}): the target looks more like {:?}",
            d.name,
            d.share * 100.0,
            params.level * 100.0,
            d.share_interval.low * 100.0,
            d.share_interval.high * 100.0,
            d.p_value,
            d.p_holm,
            if d.projection >= 0.0 { &d.to } else { &d.from }
        ),
        Some(d) => format!(
            "no direction is significant (Holm-corrected α = {}); the largest share is {:?} with {:.0} %",
            params.alpha,
            d.name,
            d.share * 100.0
        ),
        None => "no direction".into(),
    };
    Ok(Explanation {
        gap_norm: gap2.sqrt(),
        directions,
        skipped: degenerate,
        summary,
    })
}

/// Mean of `values[order[ns..]]` minus mean of `values[order[..ns]]`.
fn mean_diff(values: &[f64], order: &[usize], ns: usize) -> f64 {
    let (a, b) = order.split_at(ns);
    let m = |idx: &[usize]| idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64;
    m(b) - m(a)
}

/// Holm's step-down adjustment, in the input's order.
fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let adj = ((m - rank) as f64 * p[i]).min(1.0);
        running = running.max(adj);
        out[i] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_is_monotone_and_capped() {
        let adj = holm(&[0.01, 0.04, 0.03, 0.5]);
        assert!((adj[0] - 0.04).abs() < 1e-12);
        assert!((adj[2] - 0.09).abs() < 1e-12);
        assert!((adj[1] - 0.09).abs() < 1e-12);
        assert!((adj[3] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn builtin_directions_cover_the_issue_list() {
        let names: Vec<String> = builtin_directions().into_iter().map(|d| d.0).collect();
        for want in [
            "day → night",
            "clear → foggy",
            "clear → rainy",
            "clear → snowy",
            "photo → 3D rendering",
            "photo → painting",
            "photo → sketch",
            "sharp → blurry",
            "bright → dark",
            "colour → greyscale",
            "indoor → outdoor",
        ] {
            assert!(names.iter().any(|n| n == want), "{want}");
        }
    }
}
