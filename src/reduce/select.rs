//! Subset selection: from a source pool, the K images whose set is closest to the target, by
//! greedy MMD minimisation (kernel herding with KID's kernel) or, as an alternative, greedy FID.
//! The report sets the chosen subset beside random K-subsets of the pool, so a user sees what
//! the selection bought. docs/reduce.md, "Subset selection".
use serde::{Deserialize, Serialize};

use super::{check, content_gaps, Gaps, Interrupt, Spread};
use crate::metrics::{self, Features};

/// The objective the greedy selection minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SelectObjective {
    /// Biased MMD² with KID's polynomial kernel (kernel herding).
    Mmd,
    /// FID, evaluated exactly for a shortlist of the best herding candidates at each step.
    Fid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SelectParams {
    /// Images to choose.
    pub k: usize,
    pub objective: SelectObjective,
    /// Random K-subsets of the pool the selection is compared with.
    pub random_draws: usize,
    /// Candidates per step whose FID is evaluated (the FID objective only).
    pub shortlist: usize,
    pub level: f64,
    pub seed: u32,
}

impl Default for SelectParams {
    fn default() -> Self {
        Self {
            k: 0,
            objective: SelectObjective::Mmd,
            random_draws: 20,
            shortlist: 16,
            level: 0.95,
            seed: 0,
        }
    }
}

impl SelectParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.k < 2 {
            return Err("k must be at least 2".into());
        }
        if !(2..=10_000).contains(&self.random_draws) {
            return Err("random_draws must be 2 to 10000".into());
        }
        if !(1..=1000).contains(&self.shortlist) {
            return Err("shortlist must be 1 to 1000".into());
        }
        super::check_level(self.level)
    }
}

/// One chosen image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chosen {
    /// Order of choice (0 first).
    pub rank: usize,
    /// Row in the pool.
    pub index: usize,
    /// The image's name (path in the folder or member path in the dataset).
    pub name: String,
}

/// Random K-subsets of the pool: their gaps' mean and interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RandomSubsets {
    pub fid: Spread,
    pub kid: Spread,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    pub objective: SelectObjective,
    pub k: usize,
    pub pool: usize,
    pub chosen: Vec<Chosen>,
    /// The whole pool against the target.
    pub before: Gaps,
    /// The chosen K against the target.
    pub after: Gaps,
    pub random: RandomSubsets,
    /// The chosen subset's gap lies below the random subsets' interval (per metric).
    pub below_random_interval: BelowRandom,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BelowRandom {
    pub fid: bool,
    pub kid: bool,
}

impl Selection {
    pub fn summary(&self) -> String {
        format!(
            "chose {} of {} images by {}: FID {:.3} (random {}-subsets {:.3}, {:.0} % interval {:.3} to {:.3}; whole pool {:.3}), KID {:.4} (random {:.4}, {:.4} to {:.4})",
            self.k,
            self.pool,
            match self.objective {
                SelectObjective::Mmd => "greedy MMD",
                SelectObjective::Fid => "greedy FID",
            },
            self.after.fid,
            self.k,
            self.random.fid.mean,
            self.random.fid.level * 100.0,
            self.random.fid.low,
            self.random.fid.high,
            self.before.fid,
            self.after.kid,
            self.random.kid.mean,
            self.random.kid.low,
            self.random.kid.high,
        )
    }
}

/// Chooses `params.k` rows of `pool` (named by `names`) closest to `target`.
pub fn select(
    pool: &Features,
    target: &Features,
    names: &[String],
    params: &SelectParams,
    interrupt: Interrupt,
) -> anyhow::Result<Selection> {
    params.validate().map_err(anyhow::Error::msg)?;
    let (n, k) = (pool.nrows(), params.k);
    if k >= n {
        anyhow::bail!("k = {k} must be smaller than the pool ({n} images): choosing all of them selects nothing");
    }
    if target.nrows() < 2 {
        anyhow::bail!("the target needs at least 2 images");
    }
    let kernel = metrics::KidParams {
        seed: params.seed,
        ..metrics::KidParams::default()
    };
    let idx = match params.objective {
        SelectObjective::Mmd => {
            metrics::greedy_mmd_selection(pool.view(), target.view(), k, &kernel)?
        }
        SelectObjective::Fid => {
            metrics::greedy_fid_selection(pool.view(), target.view(), k, params.shortlist)?
        }
    };
    let chosen_rows = pool.select_rows(&idx);
    let after = content_gaps(&chosen_rows, target, params.seed)?;
    let before = content_gaps(pool, target, params.seed)?;
    let (mut fids, mut kids) = (Vec::new(), Vec::new());
    for rows in metrics::random_subsets(n, k, params.random_draws, params.seed as u64) {
        check(interrupt)?;
        let g = content_gaps(&pool.select_rows(&rows), target, params.seed)?;
        fids.push(g.fid);
        kids.push(g.kid);
    }
    let random = RandomSubsets {
        fid: Spread::of(&fids, params.level),
        kid: Spread::of(&kids, params.level),
    };
    Ok(Selection {
        objective: params.objective,
        k,
        pool: n,
        chosen: idx
            .iter()
            .enumerate()
            .map(|(rank, &index)| Chosen {
                rank,
                index,
                name: names
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| format!("row {index}")),
            })
            .collect(),
        below_random_interval: BelowRandom {
            fid: after.fid < random.fid.low,
            kid: after.kid < random.kid.low,
        },
        before,
        after,
        random,
    })
}
