//! Choosing K images of a pool whose set is closest to a target set: the pool subset a training
//! run could use to shrink the domain gap, and the baseline it must beat (random subsets of the
//! same size). docs/metrics.md, "Subset selection".
//!
//! Both objectives are greedy forward selections, deterministic (ties go to the lowest index):
//! * **MMD** ([`greedy_mmd_selection`]): kernel herding, the biased MMD² between the chosen set
//!   and the target with KID's polynomial kernel, minimised one pick at a time;
//! * **FID** ([`greedy_fid_selection`]): at each step the exact FID of (chosen ∪ {x}) against the
//!   target for the few candidates x that herding ranks best, taking the lowest.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::blocks::tile_rows;
use super::pad::legacy_seed;
use super::MetricError;
use super::{device, linalg, rng::LegacyRandomState, FeatureStats, FeatureView, KidParams};

/// What a subset selection minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectionObjective {
    Mmd,
    Fid,
}

/// Pools up to this many float64 bytes are converted to one tensor once, not block by block at
/// every pick.
const CACHED_POOL_BYTES: usize = 256 << 20;

/// Most float64 bytes of candidate matrices handed to one batched eigensolve.
const EIGEN_BATCH_BYTES: usize = 64 << 20;

fn check_sets(
    pool: FeatureView,
    target: FeatureView,
    k: usize,
    target_needed: usize,
) -> Result<(), MetricError> {
    if pool.ncols() != target.ncols() {
        return Err(MetricError::DimensionMismatch(pool.ncols(), target.ncols()));
    }
    if k == 0 {
        return Err(MetricError::InvalidParameter(
            "a subset selection needs k ≥ 1".into(),
        ));
    }
    if k > pool.nrows() {
        return Err(MetricError::InvalidParameter(format!(
            "cannot choose {k} images from a pool of {}",
            pool.nrows()
        )));
    }
    if target.nrows() < target_needed {
        return Err(MetricError::TooFewSamples {
            metric: "subset selection (target set)",
            needed: target_needed,
            got: target.nrows(),
        });
    }
    if !(pool.all_finite() && target.all_finite()) {
        return Err(MetricError::NonFinite);
    }
    Ok(())
}

/// Kernel herding state: for every pool item x, its mean kernel to the target μ_T(x), k(x, x),
/// and the running sum of its kernel values to the chosen set.
struct Herding<'a> {
    pool: FeatureView<'a>,
    whole: Option<Tensor>,
    gamma: f64,
    coef0: f64,
    degree: i64,
    target_mean: Vec<f64>,
    self_kernel: Vec<f64>,
    running: Vec<f64>,
    chosen: Vec<bool>,
    picks: Vec<usize>,
}

impl<'a> Herding<'a> {
    fn new(
        pool: FeatureView<'a>,
        target: FeatureView,
        params: &KidParams,
    ) -> Result<Self, MetricError> {
        let (n, d) = pool.dim();
        let gamma = params.gamma.unwrap_or(1.0 / d as f64);
        if !(gamma.is_finite() && params.coef0.is_finite()) || params.degree < 1 {
            return Err(MetricError::InvalidParameter(
                "the selection kernel needs a finite γ and c₀ and a degree ≥ 1".into(),
            ));
        }
        let whole = (n * d * 8 <= CACHED_POOL_BYTES).then(|| pool.tensor());
        let mut h = Self {
            pool,
            whole,
            gamma,
            coef0: params.coef0,
            degree: i64::from(params.degree),
            target_mean: vec![0.0; n],
            self_kernel: Vec::with_capacity(n),
            running: vec![0.0; n],
            chosen: vec![false; n],
            picks: Vec::new(),
        };
        // μ_T(x) = mean over the target of k(x, t), one tile of pool rows × target rows at a time.
        let tile = tile_rows(d);
        let m = target.nrows() as f64;
        for (start, len) in pool.block_ranges(tile) {
            let rows = h.rows(start, len)?;
            let norms = rows
                .f_mul(&rows)?
                .f_sum_dim_intlist(1, false, Kind::Double)?;
            h.self_kernel.extend(linalg::to_vec(&h.finish(norms)?)?);
            let mut sum = Tensor::f_zeros([len as i64], (Kind::Double, device::current()))?;
            for (ts, tl) in target.block_ranges(tile) {
                let k = h.finish(rows.f_mm(&target.block(ts, tl).f_tr()?)?)?;
                sum = sum.f_add(&k.f_sum_dim_intlist(1, false, Kind::Double)?)?;
            }
            let sum = linalg::to_vec(&sum)?;
            for (acc, s) in h.target_mean[start..start + len].iter_mut().zip(sum) {
                *acc = s / m;
            }
        }
        Ok(h)
    }

    fn rows(&self, start: usize, len: usize) -> Result<Tensor, MetricError> {
        Ok(match &self.whole {
            Some(t) => t.f_narrow(0, start as i64, len as i64)?,
            None => self.pool.block(start, len),
        })
    }

    /// (γ·products + c₀)^degree, in place.
    fn finish(&self, mut products: Tensor) -> Result<Tensor, MetricError> {
        let _ = products.f_mul_scalar_(self.gamma)?;
        let _ = products.f_add_scalar_(self.coef0)?;
        let _ = products.f_pow_(self.degree)?;
        Ok(products)
    }

    /// For each pool item, m'²·(MMD²(chosen ∪ {x}, T) − terms not depending on x), m' = picks + 1:
    /// 2·Σ_{j chosen} k(x, xⱼ) + k(x, x) − 2m'·μ_T(x); +∞ for chosen items.
    fn scores(&self) -> Vec<f64> {
        let m1 = (self.picks.len() + 1) as f64;
        (0..self.running.len())
            .map(|i| {
                if self.chosen[i] {
                    f64::INFINITY
                } else {
                    2.0 * self.running[i] + self.self_kernel[i] - 2.0 * m1 * self.target_mean[i]
                }
            })
            .collect()
    }

    /// Unchosen indices ordered by score, then index; the first `count`.
    fn ranked(&self, count: usize) -> Vec<usize> {
        let scores = self.scores();
        let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| !self.chosen[i]).collect();
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        idx.truncate(count);
        idx
    }

    /// Adds pool item `j` to the chosen set: one kernel column k(pool, xⱼ).
    fn add(&mut self, j: usize) -> Result<(), MetricError> {
        let x = self.pool.gather(&[j]).f_tr()?.f_contiguous()?;
        let tile = match self.whole {
            Some(_) => self.pool.nrows().max(1),
            None => tile_rows(self.pool.ncols()),
        };
        for (start, len) in self.pool.block_ranges(tile) {
            let column = self.finish(self.rows(start, len)?.f_mm(&x)?)?;
            for (acc, v) in self.running[start..start + len]
                .iter_mut()
                .zip(linalg::to_vec(&column)?)
            {
                *acc += v;
            }
        }
        self.chosen[j] = true;
        self.picks.push(j);
        Ok(())
    }
}

/// The `k` pool items whose set is closest to the target in biased MMD² with KID's polynomial
/// kernel k(x, y) = (γ·xᵀy + c₀)^degree (γ = 1/d unless `kernel.gamma` says otherwise; the
/// subset fields of `kernel` are not used), chosen greedily (kernel herding), in pick order.
///
/// Adding x to a chosen set S of m items changes MMD²(S, T) through
/// [2·Σ_{j∈S} k(x, xⱼ) + k(x, x)]/(m+1)² − 2·μ_T(x)/(m+1), μ_T(x) the mean kernel of x to the
/// target: μ_T is computed once (O(N·M·d), in tiles) and the kernel sums to S are kept up to date
/// with one kernel column per pick, O(K·N·d) in all; no N×N matrix is formed. No item is picked
/// twice; ties go to the lowest index.
///
/// ```
/// use gapmeter::metrics::{greedy_mmd_selection, KidParams};
/// let pool = ndarray::array![[5.0, 5.0], [0.1, 0.0], [4.0, -6.0], [0.0, 0.2]];
/// let target = ndarray::array![[0.0, 0.0], [0.2, 0.1], [0.1, 0.3]];
/// let picks = greedy_mmd_selection(pool.view(), target.view(), 2, &KidParams::default()).unwrap();
/// let mut sorted = picks.clone();
/// sorted.sort();
/// assert_eq!(sorted, vec![1, 3]);
/// ```
pub fn greedy_mmd_selection<'a, 'b>(
    pool: impl Into<FeatureView<'a>>,
    target: impl Into<FeatureView<'b>>,
    k: usize,
    kernel: &KidParams,
) -> Result<Vec<usize>, MetricError> {
    let (pool, target) = (pool.into(), target.into());
    check_sets(pool, target, k, 1)?;
    let mut herding = Herding::new(pool, target, kernel)?;
    for _ in 0..k {
        let next = herding.ranked(1);
        let Some(&j) = next.first() else { break };
        herding.add(j)?;
    }
    Ok(herding.picks)
}

/// Greedy FID of the chosen set against a fixed target, evaluated for candidate additions in
/// O(K·d + K³) each.
///
/// Rows are shifted by the target mean μ_T (FID's covariance part does not see a shift; the
/// shift keeps the products small). For the chosen rows z₁…z_m, the Helmert contrasts
/// w_k = (z₁ + … + z_k − k·z_{k+1})/√(k(k+1)), k = 1…m−1, are orthonormal combinations of the
/// rows orthogonal to their mean, so Σ_k w_kᵀw_k equals the centred scatter and
/// Σ_S = WᵀW/(m−1). The non-zero eigenvalues of Σ_S Σ_T = WᵀWΣ_T/(m−1) are those of the
/// (m−1)×(m−1) symmetric PSD matrix G = W Σ_T Wᵀ/(m−1) (AB and BA share them), so
/// tr (Σ_S Σ_T)^½ = Σ √λ(G), and FID = ‖mean(z)‖² + tr(WWᵀ)/(m−1) + tr Σ_T − 2·Σ √λ(G) exactly.
/// Adding a row appends one contrast, so W Σ_T Wᵀ grows by a border: (m−1)·d products per
/// candidate plus an eigensolve. Unlike double-centring the m×m Gram matrix, the contrasts carry
/// no exact null direction whose rounding-level eigenvalue would enter through its square root.
struct FidSet {
    d: usize,
    target_mean: Tensor,
    sigma_t: Tensor,
    trace_t: f64,
    /// Chosen rows so far.
    m: usize,
    sum_z: Vec<f64>,
    sum_zr: Vec<f64>,
    /// Contrasts W, row-major, (m−1)×d.
    w: Vec<f64>,
    /// W Σ_T Wᵀ, (m−1)×(m−1), and tr WWᵀ.
    q: Vec<f64>,
    trace_w: f64,
}

/// A candidate's shifted row z = x − μ_T and z Σ_T.
struct Shifted {
    z: Vec<f64>,
    zr: Vec<f64>,
}

impl FidSet {
    fn new(target: FeatureView) -> Result<Self, MetricError> {
        let d = target.ncols();
        let stats = FeatureStats::from_features(target)?.into_gaussian();
        let trace_t = (0..d).map(|i| stats.cov[i * d + i]).sum();
        Ok(Self {
            d,
            target_mean: device::here(Tensor::from_slice(&stats.mean)).f_unsqueeze(0)?,
            sigma_t: linalg::square(&stats.cov, d),
            trace_t,
            m: 0,
            sum_z: vec![0.0; d],
            sum_zr: vec![0.0; d],
            w: Vec::new(),
            q: Vec::new(),
            trace_w: 0.0,
        })
    }

    fn shifted(&self, pool: FeatureView, rows: &[usize]) -> Result<Vec<Shifted>, MetricError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let z = pool.gather(rows).f_sub(&self.target_mean)?;
        let zr = linalg::to_vec(&z.f_mm(&self.sigma_t)?)?;
        let z = linalg::to_vec(&z)?;
        let d = self.d;
        Ok((0..rows.len())
            .map(|i| Shifted {
                z: z[i * d..(i + 1) * d].to_vec(),
                zr: zr[i * d..(i + 1) * d].to_vec(),
            })
            .collect())
    }

    /// The contrast (and its Σ_T image) that adding `c` to the current rows appends.
    fn contrast(&self, c: &Shifted) -> (Vec<f64>, Vec<f64>) {
        let m = self.m as f64;
        let norm = (m * (m + 1.0)).sqrt();
        let w = self
            .sum_z
            .iter()
            .zip(&c.z)
            .map(|(s, z)| (s - m * z) / norm)
            .collect();
        let wr = self
            .sum_zr
            .iter()
            .zip(&c.zr)
            .map(|(s, z)| (s - m * z) / norm)
            .collect();
        (w, wr)
    }

    /// The new border of W Σ_T Wᵀ for each contrast: (wr·w_j for chosen contrasts j, wr·w).
    fn borders(&self, contrasts: &[(Vec<f64>, Vec<f64>)]) -> Result<Vec<Vec<f64>>, MetricError> {
        let (d, old) = (self.d, self.m.saturating_sub(1));
        let mut out: Vec<Vec<f64>> = contrasts
            .iter()
            .map(|(w, wr)| {
                let mut b = vec![0.0; old + 1];
                b[old] = w.iter().zip(wr).map(|(a, b)| a * b).sum();
                b
            })
            .collect();
        if old > 0 && !contrasts.is_empty() {
            let flat: Vec<f64> = contrasts.iter().flat_map(|c| c.1.iter().copied()).collect();
            let wrc = device::here(Tensor::from_slice(&flat))
                .f_view([contrasts.len() as i64, d as i64])?;
            let w = device::here(Tensor::from_slice(&self.w)).f_view([old as i64, d as i64])?;
            let cross = linalg::to_vec(&wrc.f_mm(&w.f_tr()?)?)?;
            for (i, b) in out.iter_mut().enumerate() {
                b[..old].copy_from_slice(&cross[i * old..(i + 1) * old]);
            }
        }
        Ok(out)
    }

    /// FID of (current rows ∪ {c}) vs the target, for each candidate; needs m ≥ 1.
    fn evaluate(&self, candidates: &[Shifted]) -> Result<Vec<f64>, MetricError> {
        let contrasts: Vec<_> = candidates.iter().map(|c| self.contrast(c)).collect();
        let borders = self.borders(&contrasts)?;
        let (old, size) = (self.m - 1, self.m);
        let denom = self.m as f64; // m' − 1
        let mut partial = Vec::with_capacity(candidates.len());
        for (c, (w, _)) in candidates.iter().zip(&contrasts) {
            let mean_term: f64 = self
                .sum_z
                .iter()
                .zip(&c.z)
                .map(|(s, z)| ((s + z) / (denom + 1.0)).powi(2))
                .sum();
            let trace_s = (self.trace_w + w.iter().map(|v| v * v).sum::<f64>()) / denom;
            partial.push(mean_term + trace_s + self.trace_t);
        }
        let per_batch = (EIGEN_BATCH_BYTES / (8 * size * size)).max(1);
        let mut fids = Vec::with_capacity(candidates.len());
        for (chunk_start, chunk) in borders
            .chunks(per_batch)
            .enumerate()
            .map(|(i, c)| (i * per_batch, c))
        {
            let mut g = Vec::with_capacity(chunk.len() * size * size);
            for border in chunk {
                for i in 0..size {
                    for j in 0..size {
                        let v = match (i < old, j < old) {
                            (true, true) => self.q[i * old + j],
                            (true, false) => border[i],
                            (false, true) => border[j],
                            (false, false) => border[old],
                        };
                        g.push(v / denom);
                    }
                }
            }
            let g = device::here(Tensor::from_slice(&g)).f_view([
                chunk.len() as i64,
                size as i64,
                size as i64,
            ])?;
            let roots = g
                .f_linalg_eigvalsh("L")?
                .f_clamp_min(0.0)?
                .f_sqrt()?
                .f_sum_dim_intlist(1, false, Kind::Double)?;
            for (i, r) in linalg::to_vec(&roots)?.into_iter().enumerate() {
                fids.push(partial[chunk_start + i] - 2.0 * r);
            }
        }
        Ok(fids)
    }

    fn push(&mut self, c: &Shifted) -> Result<(), MetricError> {
        if self.m > 0 {
            let contrast = self.contrast(c);
            let border = self.borders(std::slice::from_ref(&contrast))?.remove(0);
            let old = self.m - 1;
            let mut q = Vec::with_capacity((old + 1) * (old + 1));
            for (i, &edge) in border[..old].iter().enumerate() {
                q.extend_from_slice(&self.q[i * old..(i + 1) * old]);
                q.push(edge);
            }
            q.extend_from_slice(&border);
            self.q = q;
            self.trace_w += contrast.0.iter().map(|v| v * v).sum::<f64>();
            self.w.extend(contrast.0);
        }
        self.sum_z.iter_mut().zip(&c.z).for_each(|(s, z)| *s += z);
        self.sum_zr.iter_mut().zip(&c.zr).for_each(|(s, z)| *s += z);
        self.m += 1;
        Ok(())
    }
}

/// The `k` pool items whose set has (greedily) the lowest FID to the target, in pick order.
///
/// The first two picks are kernel herding's (FID needs two samples; see
/// [`greedy_mmd_selection`], default KID kernel). Each later step evaluates the exact FID of
/// (chosen ∪ {x}) for the `shortlist` unchosen items x that herding ranks best and takes the
/// lowest (ties: lowest index). Each evaluation costs O(K·d + K³) after one O(shortlist·d²)
/// product per step, through a K×K matrix with the same non-zero eigenvalues as Σ_S Σ_T
/// (docs/metrics.md, "Subset selection"), so K in the hundreds to low thousands is practical; the
/// target needs at least 2 samples. Beyond K > d the K×K matrix has rank ≤ d and its zero
/// eigenvalues carry rounding, as in FID's symmetric route.
///
/// ```
/// use gapmeter::metrics::greedy_fid_selection;
/// let pool = ndarray::Array2::from_shape_fn((20, 3), |(i, j)| {
///     if i % 2 == 0 { 8.0 + (i * j) as f64 % 3.0 } else { ((i * 7 + j * 5) % 11) as f64 / 11.0 }
/// });
/// let target = ndarray::Array2::from_shape_fn((30, 3), |(i, j)| ((i * 5 + j * 3) % 13) as f64 / 13.0);
/// let picks = greedy_fid_selection(pool.view(), target.view(), 5, 8).unwrap();
/// assert!(picks.iter().all(|i| i % 2 == 1));
/// ```
pub fn greedy_fid_selection<'a, 'b>(
    pool: impl Into<FeatureView<'a>>,
    target: impl Into<FeatureView<'b>>,
    k: usize,
    shortlist: usize,
) -> Result<Vec<usize>, MetricError> {
    let (pool, target) = (pool.into(), target.into());
    check_sets(pool, target, k, 2)?;
    if shortlist == 0 {
        return Err(MetricError::InvalidParameter(
            "the FID selection needs a shortlist of at least one candidate".into(),
        ));
    }
    let mut herding = Herding::new(pool, target, &KidParams::default())?;
    let mut fid = FidSet::new(target)?;
    while herding.picks.len() < k {
        let pick = if herding.picks.len() < 2 {
            herding.ranked(1)
        } else {
            let candidates = herding.ranked(shortlist);
            let shifted = fid.shifted(pool, &candidates)?;
            let values = fid.evaluate(&shifted)?;
            let best = (0..candidates.len()).min_by(|&a, &b| {
                values[a]
                    .total_cmp(&values[b])
                    .then(candidates[a].cmp(&candidates[b]))
            });
            best.map(|i| vec![candidates[i]]).unwrap_or_default()
        };
        let Some(&j) = pick.first() else { break };
        let row = fid.shifted(pool, &[j])?;
        for r in &row {
            fid.push(r)?;
        }
        herding.add(j)?;
    }
    Ok(herding.picks)
}

/// `draws` subsets of `k` distinct indices of 0..n (k is capped at n), the baseline a selection
/// must beat. Reproducible from the seed and outside gapmeter: numpy's
/// `rs = np.random.RandomState(seed)` (seeds below 2³²) then `rs.choice(n, k, replace=False)` per
/// draw.
///
/// ```
/// let subsets = gapmeter::metrics::random_subsets(10, 4, 3, 2020);
/// assert_eq!(subsets[0], vec![2, 4, 9, 1]);
/// assert_eq!(subsets.len(), 3);
/// ```
pub fn random_subsets(n: usize, k: usize, draws: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = LegacyRandomState::new(legacy_seed(seed));
    (0..draws)
        .map(|_| rng.choice_without_replacement(n, k.min(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::fid_from_features;
    use ndarray::{Array2, Axis};
    use rand::{Rng, SeedableRng};

    fn normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn gaussian(n: usize, d: usize, shift: f64, sd: f64, seed: u64) -> Array2<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| sd * normal(&mut rng) + shift)
    }

    /// 100 pool rows: odd indices drawn like the target, even ones far from it.
    fn pool_and_target(d: usize) -> (Array2<f64>, Array2<f64>) {
        let near = gaussian(50, d, 0.0, 1.0, 1);
        let far = gaussian(50, d, 2.5, 1.5, 2);
        let pool = Array2::from_shape_fn((100, d), |(i, j)| {
            if i % 2 == 1 {
                near[[i / 2, j]]
            } else {
                far[[i / 2, j]]
            }
        });
        (pool, gaussian(300, d, 0.0, 1.0, 3))
    }

    /// Biased MMD² with KID's kernel, from the definition.
    fn biased_mmd2(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        let d = a.ncols() as f64;
        let mean_k = |x: &Array2<f64>, y: &Array2<f64>| {
            let g = x.dot(&y.t()).mapv(|v| (v / d + 1.0).powi(3));
            g.sum() / (x.nrows() * y.nrows()) as f64
        };
        mean_k(a, a) + mean_k(b, b) - 2.0 * mean_k(a, b)
    }

    #[test]
    fn greedy_mmd_picks_in_domain_images_and_beats_random_subsets() {
        let (pool, target) = pool_and_target(8);
        let picks =
            greedy_mmd_selection(pool.view(), target.view(), 30, &KidParams::default()).unwrap();
        assert_eq!(picks.len(), 30);
        let distinct: std::collections::BTreeSet<_> = picks.iter().collect();
        assert_eq!(distinct.len(), 30, "an index was picked twice: {picks:?}");
        let in_domain = picks.iter().filter(|&&i| i % 2 == 1).count();
        assert!(in_domain >= 25, "{in_domain} of 30 in domain: {picks:?}");
        let chosen = biased_mmd2(&pool.select(Axis(0), &picks), &target);
        for subset in random_subsets(100, 30, 20, 5) {
            let random = biased_mmd2(&pool.select(Axis(0), &subset), &target);
            assert!(chosen < random, "{chosen} vs random {random}");
        }
        // float32 storage picks the same images as its float64 upcast.
        let narrow = pool.mapv(|v| v as f32);
        let t32 = target.mapv(|v| v as f32);
        let a = greedy_mmd_selection(narrow.view(), t32.view(), 30, &KidParams::default()).unwrap();
        let b = greedy_mmd_selection(
            narrow.mapv(f64::from).view(),
            t32.mapv(f64::from).view(),
            30,
            &KidParams::default(),
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn each_herding_step_minimises_the_mmd_of_the_grown_set() {
        let (pool, target) = pool_and_target(5);
        let picks =
            greedy_mmd_selection(pool.view(), target.view(), 6, &KidParams::default()).unwrap();
        for step in 0..6 {
            let value = |j: usize| {
                let mut rows = picks[..step].to_vec();
                rows.push(j);
                biased_mmd2(&pool.select(Axis(0), &rows), &target)
            };
            let best = value(picks[step]);
            for j in (0..100).filter(|j| !picks[..step].contains(j)) {
                assert!(
                    best <= value(j) + 1e-12,
                    "step {step}: {j} beats {}",
                    picks[step]
                );
            }
        }
    }

    #[test]
    fn ties_go_to_the_lowest_index_and_k_equal_to_n_takes_everything() {
        let pool = Array2::from_elem((5, 3), 1.0);
        let target = gaussian(10, 3, 1.0, 0.1, 4);
        let picks =
            greedy_mmd_selection(pool.view(), target.view(), 3, &KidParams::default()).unwrap();
        assert_eq!(picks, vec![0, 1, 2]);
        let picks = greedy_fid_selection(pool.view(), target.view(), 5, 2).unwrap();
        assert_eq!(picks, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn incremental_fid_equals_fid_from_features() {
        let d = 24;
        let pool = gaussian(40, d, 0.3, 1.2, 6);
        let target = gaussian(60, d, 0.0, 1.0, 7);
        let view = FeatureView::from(pool.view());
        let mut set = FidSet::new(target.view().into()).unwrap();
        let order: Vec<usize> = (0..20).map(|i| (i * 7) % 40).collect();
        for (m, &i) in order.iter().enumerate() {
            if m >= 1 {
                let candidates = [33, 1, 38];
                let values = set
                    .evaluate(&set.shifted(view, &candidates).unwrap())
                    .unwrap();
                for (&c, v) in candidates.iter().zip(values) {
                    let mut rows = order[..m].to_vec();
                    rows.push(c);
                    let want = fid_from_features(pool.select(Axis(0), &rows).view(), target.view())
                        .unwrap()
                        .value;
                    assert!(((v - want) / want).abs() < 1e-8, "m = {m}: {v} vs {want}");
                }
            }
            let row = set.shifted(view, &[i]).unwrap();
            set.push(&row[0]).unwrap();
        }
    }

    #[test]
    fn greedy_fid_picks_in_domain_images_and_beats_random_subsets() {
        let (pool, target) = pool_and_target(8);
        let picks = greedy_fid_selection(pool.view(), target.view(), 30, 10).unwrap();
        let distinct: std::collections::BTreeSet<_> = picks.iter().collect();
        assert_eq!(distinct.len(), 30);
        let in_domain = picks.iter().filter(|&&i| i % 2 == 1).count();
        assert!(in_domain >= 25, "{in_domain} of 30 in domain: {picks:?}");
        let fid = |rows: &[usize]| {
            fid_from_features(pool.select(Axis(0), rows).view(), target.view())
                .unwrap()
                .value
        };
        let chosen = fid(&picks);
        for subset in random_subsets(100, 30, 20, 5) {
            let random = fid(&subset);
            assert!(chosen < random, "{chosen} vs random {random}");
        }
        // The first two picks are herding's.
        let herding =
            greedy_mmd_selection(pool.view(), target.view(), 2, &KidParams::default()).unwrap();
        assert_eq!(picks[..2], herding[..]);
    }

    #[test]
    fn random_subsets_are_reproducible_and_without_replacement() {
        let a = random_subsets(50, 20, 4, 9);
        assert_eq!(a, random_subsets(50, 20, 4, 9));
        assert_ne!(a, random_subsets(50, 20, 4, 10));
        for s in &a {
            let set: std::collections::BTreeSet<_> = s.iter().collect();
            assert_eq!(set.len(), 20);
            assert!(s.iter().all(|&i| i < 50));
        }
        assert_eq!(random_subsets(3, 10, 1, 0)[0].len(), 3);
    }

    #[test]
    fn bad_input_is_reported() {
        let (pool, target) = pool_and_target(4);
        let p = KidParams::default();
        assert!(greedy_mmd_selection(pool.view(), target.view(), 0, &p).is_err());
        assert!(greedy_mmd_selection(pool.view(), target.view(), 101, &p).is_err());
        let other = gaussian(10, 5, 0.0, 1.0, 1);
        assert!(matches!(
            greedy_mmd_selection(pool.view(), other.view(), 3, &p),
            Err(MetricError::DimensionMismatch(4, 5))
        ));
        let one = gaussian(1, 4, 0.0, 1.0, 1);
        assert!(matches!(
            greedy_fid_selection(pool.view(), one.view(), 3, 4),
            Err(MetricError::TooFewSamples { .. })
        ));
        assert!(greedy_fid_selection(pool.view(), target.view(), 3, 0).is_err());
        let mut nan = target.clone();
        nan[[0, 0]] = f64::NAN;
        assert!(matches!(
            greedy_fid_selection(pool.view(), nan.view(), 3, 4),
            Err(MetricError::NonFinite)
        ));
    }
}
