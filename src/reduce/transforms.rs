//! Transform search: which photometric transform of the source (brightness, contrast,
//! saturation, hue, gamma, blur, noise, JPEG quality, in torchvision's terms) most reduces its
//! gap to the target. The images are decoded once; each evaluation transforms the source sample,
//! runs it through the extractor and measures the objective against the target's features,
//! which are computed once. A coordinate search: a full grid on each knob in turn, then rounds
//! of finer steps around the current best. docs/reduce.md, "Transform search".
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::images::{embed, Embedded, ImageSet};
use super::{check, content_gaps, Gaps, Interrupt, Spread};
use crate::features::Engine;
use crate::imaging::{Knob, Photometric};
use crate::metrics::rng::LegacyRandomState;
use crate::metrics::{self, Features, StyleSet};

/// What the search minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The content gap, FID.
    Fid,
    /// The content gap, KID (unbiased; noisier on small samples).
    Kid,
    /// The style gap, log-Euclidean distance of the mean early-layer covariances.
    Style,
}

impl Objective {
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Fid => "fid",
            Objective::Kid => "kid",
            Objective::Style => "style",
        }
    }
}

/// How the search runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TransformSearchParams {
    /// Source images transformed in every evaluation (a seeded sample beyond that): the search's
    /// cost grows with it.
    pub source_images: usize,
    /// Target images measured once.
    pub target_images: usize,
    pub objective: Objective,
    /// Knobs searched; empty: all eight.
    pub knobs: Vec<Knob>,
    /// Points of the first, full-range grid on each knob (odd keeps the identity... when the
    /// range is symmetric; the identity is always evaluated).
    pub grid: usize,
    /// Refinement rounds after the full grid, each halving the step.
    pub rounds: usize,
    /// A knob joins the setting only if it lowers the objective by at least this share of its
    /// value (forward selection).
    pub min_gain: f64,
    /// Random half-splits behind the source-vs-itself interval.
    pub baseline_splits: usize,
    pub seed: u32,
}

impl Default for TransformSearchParams {
    fn default() -> Self {
        Self {
            source_images: 64,
            target_images: 256,
            objective: Objective::Fid,
            knobs: Vec::new(),
            grid: 9,
            rounds: 3,
            min_gain: 0.02,
            baseline_splits: 20,
            seed: 0,
        }
    }
}

impl TransformSearchParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(4..=100_000).contains(&self.source_images)
            || !(2..=100_000).contains(&self.target_images)
        {
            return Err("source_images must be 4 to 100000 and target_images 2 to 100000".into());
        }
        if !(3..=41).contains(&self.grid) {
            return Err("grid must be 3 to 41".into());
        }
        if self.rounds > 10 {
            return Err("rounds must be 0 to 10".into());
        }
        if !(0.0..1.0).contains(&self.min_gain) {
            return Err("min_gain must be at least 0 and below 1".into());
        }
        if !(2..=1000).contains(&self.baseline_splits) {
            return Err("baseline_splits must be 2 to 1000".into());
        }
        Ok(())
    }

    fn knobs(&self) -> Vec<Knob> {
        if self.knobs.is_empty() {
            Knob::ALL.to_vec()
        } else {
            let mut k = self.knobs.clone();
            k.dedup();
            k
        }
    }
}

/// The best setting of one knob alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SingleTransform {
    pub knob: Knob,
    pub value: f64,
    /// The objective at that value (the other knobs at their identity).
    pub objective: f64,
    pub gaps: Gaps,
    /// The call that applies it in a training pipeline.
    pub torchvision: String,
}

/// The result of a transform search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransformSearch {
    pub objective: Objective,
    /// The best setting found: every knob, identity where the search left it.
    pub best: Photometric,
    /// The torchvision calls of the knobs `best` moves, in the order gapmeter applies them.
    pub torchvision: Vec<String>,
    /// The source as it is.
    pub before: Gaps,
    /// The source under `best`.
    pub after: Gaps,
    /// Each knob on its own.
    pub singles: Vec<SingleTransform>,
    /// The gap between random halves of the (untransformed) source: what sampling alone gives.
    pub source_vs_itself: Spread,
    /// The gap between random halves of the transformed source and of the target, at the same
    /// half sizes: comparable with `source_vs_itself`.
    pub after_halves: Spread,
    /// Whether `after_halves`' mean lies within `source_vs_itself`'s interval: the remaining gap
    /// is no larger than sampling alone explains.
    pub within_noise: bool,
    /// Objective evaluations (extraction passes over the source sample).
    pub evaluations: usize,
    pub images: [usize; 2],
}

struct Search<'a> {
    engine: &'a Engine,
    source: &'a ImageSet,
    target: &'a Embedded,
    objective: Objective,
    seed: u32,
    batch_size: usize,
    cache: HashMap<String, f64>,
    interrupt: Interrupt<'a>,
}

impl Search<'_> {
    fn run(&self, p: &Photometric) -> anyhow::Result<Embedded> {
        check(self.interrupt)?;
        embed(
            self.engine,
            &self.source.images,
            p,
            self.seed as u64,
            self.objective == Objective::Style,
            self.batch_size,
        )
    }

    fn value(&mut self, p: &Photometric) -> anyhow::Result<f64> {
        let key = serde_json::to_string(p)?;
        if let Some(v) = self.cache.get(&key) {
            return Ok(*v);
        }
        let e = self.run(p)?;
        let v = objective_value(self.objective, &e, self.target, self.seed)?;
        self.cache.insert(key, v);
        Ok(v)
    }
}

fn objective_value(
    objective: Objective,
    s: &Embedded,
    t: &Embedded,
    seed: u32,
) -> anyhow::Result<f64> {
    Ok(match objective {
        Objective::Fid => metrics::fid_from_features(s.features.view(), t.features.view())?.value,
        Objective::Kid => kid(&s.features, &t.features, seed)?,
        Objective::Style => {
            let (a, b) = (style_of(s)?, style_of(t)?);
            metrics::style_gap(a, b)?.log_euclidean
        }
    })
}

fn style_of(e: &Embedded) -> anyhow::Result<&StyleSet> {
    e.style
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no style covariances"))
}

fn kid(a: &Features, b: &Features, seed: u32) -> anyhow::Result<f64> {
    let params = metrics::KidParams {
        subset_size: a.nrows().min(b.nrows()),
        seed,
        ..metrics::KidParams::default()
    };
    Ok(metrics::kid(a.view(), b.view(), &params)?.mean)
}

/// The values of a grid of `points` over `knob`'s range, with its identity added.
fn grid(knob: Knob, points: usize) -> Vec<f64> {
    let (lo, hi) = knob.range();
    let mut v: Vec<f64> = (0..points)
        .map(|i| lo + (hi - lo) * i as f64 / (points - 1) as f64)
        .collect();
    v.push(knob.identity());
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// The best value of `knob` with the other knobs as in `base`: the full grid, then (with
/// `refine`) `rounds` rounds of ±1, ±2 steps around the best, the step halved each round.
fn line_search(
    s: &mut Search<'_>,
    base: &Photometric,
    knob: Knob,
    params: &TransformSearchParams,
    refine: bool,
) -> anyhow::Result<(f64, f64)> {
    let mut best = (knob.get(base), s.value(base)?);
    for v in grid(knob, params.grid) {
        let mut p = *base;
        knob.set(&mut p, v);
        let val = s.value(&p)?;
        if val < best.1 {
            best = (knob.get(&p), val);
        }
    }
    if refine {
        let (lo, hi) = knob.range();
        for round in 1..=params.rounds {
            let step = (hi - lo) / (params.grid - 1) as f64 / 2f64.powi(round as i32);
            let c = best.0;
            for k in [-2.0, -1.0, 1.0, 2.0] {
                let mut p = *base;
                knob.set(&mut p, (c + k * step).clamp(lo, hi));
                let val = s.value(&p)?;
                if val < best.1 {
                    best = (knob.get(&p), val);
                }
            }
        }
    }
    Ok(best)
}

/// Searches the transform family for the setting of the source closest to the target.
pub fn search(
    engine: &Engine,
    source: &ImageSet,
    target: &ImageSet,
    params: &TransformSearchParams,
    batch_size: usize,
    interrupt: Interrupt,
) -> anyhow::Result<TransformSearch> {
    params.validate().map_err(anyhow::Error::msg)?;
    let identity = Photometric::identity();
    let target_e = embed(engine, &target.images, &identity, 0, true, batch_size)?;
    let mut s = Search {
        engine,
        source,
        target: &target_e,
        objective: params.objective,
        seed: params.seed,
        batch_size,
        cache: HashMap::new(),
        interrupt,
    };
    let knobs = params.knobs();

    // Each knob alone, from the identity: a line search over its range.
    let mut singles = Vec::new();
    for &knob in &knobs {
        let (v, val) = line_search(&mut s, &identity, knob, params, true)?;
        singles.push((knob, v, val));
    }

    // Forward selection: add the knob whose line search from the current setting lowers the
    // objective most, while that lowers it by at least `min_gain` of its value. Knobs that do
    // not pay their way stay at their identity, so a knob that can only mimic another one
    // (brightness for gamma) is not moved on top of it.
    let mut current = identity;
    let mut current_val = s.value(&current)?;
    let mut used: Vec<Knob> = Vec::new();
    loop {
        let mut best: Option<(Knob, f64, f64)> = None;
        for &knob in knobs.iter().filter(|k| !used.contains(k)) {
            let (v, val) = if used.is_empty() {
                singles
                    .iter()
                    .find(|x| x.0 == knob)
                    .map(|x| (x.1, x.2))
                    .unwrap_or((knob.identity(), current_val))
            } else {
                line_search(&mut s, &current, knob, params, false)?
            };
            if best.is_none_or(|b| val < b.2) {
                best = Some((knob, v, val));
            }
        }
        match best {
            Some((knob, v, val)) if val < current_val - params.min_gain * current_val.abs() => {
                knob.set(&mut current, v);
                current_val = val;
                used.push(knob);
            }
            _ => break,
        }
    }
    // The chosen knobs together: coordinate passes with finer and finer steps.
    for round in 1..=params.rounds {
        for &knob in &used {
            let (lo, hi) = knob.range();
            let step = (hi - lo) / (params.grid - 1) as f64 / 2f64.powi(round as i32);
            let c = knob.get(&current);
            for k in [-2.0, -1.0, 1.0, 2.0] {
                let mut p = current;
                knob.set(&mut p, (c + k * step).clamp(lo, hi));
                let val = s.value(&p)?;
                if val < current_val {
                    current = p;
                    current_val = val;
                }
            }
        }
    }
    let evaluations = s.cache.len();

    // Report every gap for the settings that matter.
    let source_e = s.run(&identity)?;
    let best_e = s.run(&current)?;
    let before = gaps(&source_e, &target_e, params.seed)?;
    let after = gaps(&best_e, &target_e, params.seed)?;
    let mut single_reports = Vec::new();
    for (knob, value, objective) in singles {
        let mut p = identity;
        knob.set(&mut p, value);
        let e = s.run(&p)?;
        single_reports.push(SingleTransform {
            knob,
            value,
            objective,
            gaps: gaps(&e, &target_e, params.seed)?,
            torchvision: torchvision_call(knob, value),
        });
    }
    let (source_vs_itself, after_halves) =
        halves(&source_e, &best_e, &target_e, params, params.objective)?;
    let torchvision = Knob::ALL
        .iter()
        .filter(|k| k.get(&current) != k.identity())
        .map(|k| torchvision_call(*k, k.get(&current)))
        .collect();
    Ok(TransformSearch {
        objective: params.objective,
        best: current,
        torchvision,
        before,
        after,
        singles: single_reports,
        within_noise: after_halves.mean <= source_vs_itself.high,
        source_vs_itself,
        after_halves,
        evaluations,
        images: [source.len(), target.len()],
    })
}

/// The knob's torchvision call with its value filled in.
fn torchvision_call(knob: Knob, v: f64) -> String {
    let value = format_value(v);
    knob.torchvision()
        .replace("round(v)", &format!("{}", v.round()))
        .replace("=v", &format!("={value}"))
        .replace("* v)", &format!("* {value})"))
}

fn format_value(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// FID, KID and the style gap between two embedded sets.
fn gaps(s: &Embedded, t: &Embedded, seed: u32) -> anyhow::Result<Gaps> {
    let mut g = content_gaps(&s.features, &t.features, seed)?;
    if let (Some(a), Some(b)) = (&s.style, &t.style) {
        g.style = Some(metrics::style_gap(a, b)?.log_euclidean);
    }
    Ok(g)
}

/// The objective between random halves of the source, and between random halves of the
/// transformed source and the target (the same splits of the source).
fn halves(
    source: &Embedded,
    transformed: &Embedded,
    target: &Embedded,
    params: &TransformSearchParams,
    objective: Objective,
) -> anyhow::Result<(Spread, Spread)> {
    let (ns, nt) = (source.features.nrows(), target.features.nrows());
    if ns < 4 || nt < 2 {
        anyhow::bail!("the source-vs-itself baseline needs at least 4 source and 2 target images");
    }
    let mut rng = LegacyRandomState::new(params.seed);
    let (mut base, mut after) = (Vec::new(), Vec::new());
    for _ in 0..params.baseline_splits {
        let ps = rng.permutation(ns);
        let pt = rng.permutation(nt);
        let (a, b) = ps.split_at(ns / 2);
        let t_half = &pt[..(nt / 2).max(2).min(nt)];
        base.push(objective_value(
            objective,
            &select(source, a),
            &select(source, b),
            params.seed,
        )?);
        after.push(objective_value(
            objective,
            &select(transformed, a),
            &select(target, t_half),
            params.seed,
        )?);
    }
    Ok((Spread::of(&base, 0.95), Spread::of(&after, 0.95)))
}

fn select(e: &Embedded, rows: &[usize]) -> Embedded {
    Embedded {
        features: e.features.select_rows(rows),
        style: e.style.as_ref().map(|s| s.select(rows)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_the_range_and_the_identity() {
        let g = grid(Knob::Gamma, 9);
        let (lo, hi) = Knob::Gamma.range();
        assert_eq!(g.first().copied(), Some(lo));
        assert_eq!(g.last().copied(), Some(hi));
        assert!(g.contains(&1.0));
        assert!(g.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn torchvision_calls_carry_the_value() {
        assert_eq!(
            torchvision_call(Knob::Gamma, 1.6),
            "torchvision.transforms.v2.functional.adjust_gamma(img, gamma=1.6)"
        );
        let blur = torchvision_call(Knob::BlurSigma, 1.5);
        assert!(blur.contains("3 * 1.5) + 1, sigma=1.5)"), "{blur}");
        assert!(torchvision_call(Knob::JpegQuality, 42.4).ends_with("quality=42)"));
    }

    #[test]
    fn values_print_without_trailing_zeros() {
        assert_eq!(format_value(1.6), "1.6");
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.03126), "0.0313");
    }
}
