//! The worker's decisions, apart from their effects: which images to read or extract, where each
//! image's rows are last needed, and how each dataset's statistics are obtained. Pure functions
//! of what the caches hold, so they are unit-tested without a database or a model.
use std::collections::{HashMap, HashSet};

use crate::metrics::FeatureStats;
use crate::store::{Checkpoint, Member, Snapshot};

/// Every distinct image of the snapshots, in first-seen order (each is read or extracted once,
/// however many datasets or paths hold it).
pub(super) fn distinct_images(snaps: &[Snapshot]) -> Vec<[u8; 32]> {
    let mut seen = HashSet::new();
    snaps
        .iter()
        .flat_map(|s| s.images.iter().map(|m| m.hash))
        .filter(|h| seen.insert(*h))
        .collect()
}

/// For each image, the (snapshot, position) of its last occurrence: there its rows can be moved
/// into the set instead of copied. Positions matter because a dataset may hold the same bytes at
/// several paths.
pub(super) fn last_uses(snaps: &[Snapshot]) -> HashMap<[u8; 32], (usize, usize)> {
    let mut last = HashMap::new();
    for (i, s) in snaps.iter().enumerate() {
        for (j, m) in s.images.iter().enumerate() {
            last.insert(m.hash, (i, j));
        }
    }
    last
}

/// How one dataset's statistics are obtained on the statistics route.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum StatsPlan {
    /// The statistics cache has this content's statistics.
    Cached(FeatureStats),
    /// The dataset's checkpoint covers all but these members: read or extract only them, and
    /// merge.
    Extend(FeatureStats, Vec<Member>),
}

/// The statistics route for one dataset, or `None` when the job must go through every image's
/// features (no usable cache, a checkpoint that covers removed files, or too few samples for
/// the statistics route, where `gapmeter score` would not take it either).
pub(super) fn plan_statistics(
    snap: &Snapshot,
    cached: Option<FeatureStats>,
    checkpoint: Option<Checkpoint>,
) -> Option<StatsPlan> {
    if let Some(stats) = cached.filter(|s| s.n() as usize > s.dim()) {
        return Some(StatsPlan::Cached(stats));
    }
    let cp = checkpoint?;
    let missing = cp.missing_from(&snap.sorted_hashes())?;
    if cp.stats.n() as usize + missing.len() <= cp.stats.dim() {
        return None;
    }
    Some(StatsPlan::Extend(cp.stats, take_members(snap, &missing)))
}

/// Members of `snap` holding the images of the multiset `hashes`, one member per occurrence.
fn take_members(snap: &Snapshot, hashes: &[[u8; 32]]) -> Vec<Member> {
    let mut wanted: HashMap<[u8; 32], usize> = HashMap::new();
    for h in hashes {
        *wanted.entry(*h).or_default() += 1;
    }
    snap.images
        .iter()
        .filter(|m| match wanted.get_mut(&m.hash) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .cloned()
        .collect()
}

/// The images whose outputs are not all cached.
pub(super) fn to_extract(all: &[[u8; 32]], cached: impl Fn(&[u8; 32]) -> bool) -> Vec<[u8; 32]> {
    all.iter().filter(|h| !cached(h)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DatasetId, DatasetKind, DatasetStatus};
    use ndarray::Array2;

    fn h(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn snap(members: &[(u8, &str)]) -> Snapshot {
        Snapshot {
            id: DatasetId::new(),
            name: "d".into(),
            status: DatasetStatus::Ready,
            kind: DatasetKind::Images,
            images: members
                .iter()
                .map(|(b, p)| Member {
                    hash: h(*b),
                    path: p.to_string(),
                })
                .collect(),
            content_hash: None,
        }
    }

    fn stats(n: usize, d: usize) -> FeatureStats {
        let x = Array2::from_shape_fn((n, d), |(i, j)| ((i * 7 + j * 3) % 11) as f64);
        FeatureStats::from_features(x.view()).unwrap()
    }

    #[test]
    fn duplicates_are_extracted_once_and_moved_at_their_last_path() {
        let a = snap(&[(1, "a.png"), (2, "b.png"), (1, "copy/a.png")]);
        let b = snap(&[(2, "x.png"), (3, "y.png")]);
        let snaps = [a, b];
        assert_eq!(distinct_images(&snaps), vec![h(1), h(2), h(3)]);
        let last = last_uses(&snaps);
        assert_eq!(last[&h(1)], (0, 2));
        assert_eq!(last[&h(2)], (1, 0));
        assert_eq!(last[&h(3)], (1, 1));
        let cached: HashSet<[u8; 32]> = [h(2)].into();
        assert_eq!(
            to_extract(&distinct_images(&snaps), |x| cached.contains(x)),
            vec![h(1), h(3)]
        );
    }

    #[test]
    fn cached_statistics_are_used_only_with_more_samples_than_dimensions() {
        let s = snap(&[(1, "a.png")]);
        assert_eq!(
            plan_statistics(&s, Some(stats(5, 2)), None),
            Some(StatsPlan::Cached(stats(5, 2)))
        );
        assert_eq!(plan_statistics(&s, Some(stats(2, 2)), None), None);
        assert_eq!(plan_statistics(&s, None, None), None);
    }

    #[test]
    fn a_checkpoint_is_extended_by_exactly_the_added_copies() {
        // The checkpoint covers a.png and b.png; since then a second copy of image 1 and a new
        // image 3 were added.
        let s = snap(&[(1, "a.png"), (2, "b.png"), (1, "c.png"), (3, "d.png")]);
        let mut covered = vec![h(1), h(2)];
        covered.sort();
        let cp = Checkpoint {
            images: covered,
            stats: stats(5, 2),
        };
        match plan_statistics(&s, None, Some(cp)) {
            Some(StatsPlan::Extend(base, members)) => {
                assert_eq!(base, stats(5, 2));
                let paths: Vec<&str> = members.iter().map(|m| m.path.as_str()).collect();
                assert_eq!(paths, ["a.png", "d.png"]);
                assert_eq!(members.len(), 2, "one copy of image 1, and image 3");
            }
            other => panic!("{other:?}"),
        }
        // A checkpoint covering a file that was removed cannot be extended.
        let gone = Checkpoint {
            images: vec![h(9)],
            stats: stats(5, 2),
        };
        assert_eq!(plan_statistics(&s, None, Some(gone)), None);
    }
}
