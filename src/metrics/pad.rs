//! Proxy-A distance (Ben-David et al. 2007, 2010): how well a linear classifier tells source
//! features from target features, as a distance. docs/metrics.md, "Proxy-A distance".
//!
//! PAD = 2·(1 − 2·err), err the k-fold cross-validated test error of an L2-regularised logistic
//! regression trained to label source as 0 and target as 1. PAD ≈ 0 when the sets cannot be told
//! apart (the classifier is at chance), 2 when they are perfectly separable. Being an estimate it
//! can come out slightly below 0 by chance. Unlike FID or KID it asks only whether *some*
//! hyperplane separates the sets, so it saturates at 2 for any pair of clearly different domains.
//!
//! The classifier is scikit-learn's `LogisticRegression(C=c)` exactly (same objective, solved to
//! convergence by Newton's method), after a `StandardScaler` fitted on each training fold, so
//! gapmeter's PAD equals the one a sklearn pipeline computes on the same folds.
use ndarray::{concatenate, Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{device, rng::LegacyRandomState, FeatureView, Interval, MetricError, Target};

/// Settings of [`proxy_a_distance`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PadParams {
    /// Cross-validation folds (k ≥ 2): every sample is classified once by a model that did not
    /// see it in training.
    pub folds: usize,
    /// Inverse L2 regularisation strength, scikit-learn's `C`: the objective is
    /// ½‖w‖² + C·Σ logloss. Larger C fits the training folds harder.
    pub c: f64,
    /// Seed of the fold assignment ([`fold_assignment`]).
    pub seed: u64,
    /// Standardise each feature with the training fold's mean and standard deviation
    /// (`StandardScaler`), so that the one penalty weighs every feature alike.
    pub standardize: bool,
    /// Most Newton iterations per fit; a fit that has not converged by then is an error rather
    /// than a silently different classifier.
    pub max_iter: usize,
}

impl Default for PadParams {
    fn default() -> Self {
        Self {
            folds: 5,
            c: 1.0,
            seed: 0,
            standardize: true,
            max_iter: 100,
        }
    }
}

/// One cross-validation fold's result.
#[derive(Debug, Clone, Serialize)]
pub struct PadFold {
    pub fold: usize,
    /// Samples (source and target) classified in this fold.
    pub n_test: usize,
    /// Fraction of them misclassified.
    pub error: f64,
    /// 2·(1 − 2·error) of this fold alone.
    pub pad: f64,
    /// The fold's fitted weights, in the (standardised, when on) feature space of its training
    /// data; kept for inspection and parity tests, not serialised (d numbers per fold).
    #[serde(skip)]
    pub coef: Vec<f64>,
    /// The fold's fitted intercept.
    #[serde(skip)]
    pub intercept: f64,
}

/// The Proxy-A distance with its per-fold parts.
#[derive(Debug, Clone, Serialize)]
pub struct Pad {
    /// 2·(1 − 2·error): 0 = indistinguishable, 2 = perfectly separable; slightly negative values
    /// happen by chance when the sets are alike.
    pub pad: f64,
    /// Cross-validated test error: misclassified samples over all folds / all samples.
    pub error: f64,
    pub folds: Vec<PadFold>,
    /// PAD ± t_{k−1}·sd/√k, sd the spread of the per-fold PADs. Folds share training data, so
    /// their PADs are positively correlated and this interval tends to be too narrow (Bengio &
    /// Grandvalet 2004); it shows the fold-to-fold noise, not a guaranteed coverage.
    pub interval: Interval,
    /// Accuracy of the fold classifiers on their own training data (pooled over folds). Far above
    /// 1 − error means the classifier memorises, as it always can when d ≥ n.
    pub train_accuracy: f64,
}

/// The numpy legacy seed a u64 seed stands for: the seed itself below 2³², otherwise its two
/// halves xor-ed, so that every bit of it matters.
pub(crate) fn legacy_seed(seed: u64) -> u32 {
    (seed as u32) ^ ((seed >> 32) as u32)
}

/// Stratified fold labels for `n_source + n_target` samples, sources first: each class is shuffled
/// (`np.random.RandomState(seed).permutation(n_source)`, then the same stream's
/// `permutation(n_target)`) and dealt round-robin, the r-th sample of a shuffled class going to
/// fold r mod k. Every fold then holds both classes in proportion, and the folds can be rebuilt
/// outside gapmeter.
///
/// ```
/// let f = gapmeter::metrics::fold_assignment(6, 4, 2, 0);
/// assert_eq!(f.len(), 10);
/// assert_eq!(f[..6].iter().filter(|&&k| k == 0).count(), 3);
/// assert_eq!(f[6..].iter().filter(|&&k| k == 1).count(), 2);
/// ```
pub fn fold_assignment(n_source: usize, n_target: usize, folds: usize, seed: u64) -> Vec<usize> {
    let k = folds.max(1);
    let mut rng = LegacyRandomState::new(legacy_seed(seed));
    let mut out = vec![0; n_source + n_target];
    for (rank, i) in rng.permutation(n_source).into_iter().enumerate() {
        out[i] = rank % k;
    }
    for (rank, i) in rng.permutation(n_target).into_iter().enumerate() {
        out[n_source + i] = rank % k;
    }
    out
}

/// Weights and intercept of an L2-regularised logistic regression: the minimiser of
/// ½‖w‖² + C·Σᵢ logloss(yᵢ, wᵀxᵢ + b), intercept not penalised — scikit-learn's
/// `LogisticRegression(C=c)` objective, so the coefficients equal sklearn's (to its tolerance).
///
/// The objective is strictly convex with a unique minimiser even for separable or rank-deficient
/// data (the penalty bounds w, and both classes bound b), so Newton's method with a backtracking
/// line search reaches it in a few dozen iterations. With n samples and d features each iteration
/// solves a (d+1)×(d+1) system when d < n and, when d ≥ n (few hundred images, 2048 features),
/// an n×n one: then w = Xᵀα stays in the row space of X and the Newton system is reduced by the
/// Woodbury identity to I + S·XXᵀ·S, S² the logistic weights. `y` holds 0s and 1s, both present.
///
/// ```
/// use gapmeter::metrics::logistic_regression;
/// let x = ndarray::array![[-2.0], [-1.0], [1.0], [2.0]];
/// let (w, b) = logistic_regression(x.view(), &[0.0, 0.0, 1.0, 1.0], 1.0, 100).unwrap();
/// assert!(w[0] > 0.0 && b.abs() < 1e-12);
/// ```
pub fn logistic_regression(
    x: ArrayView2<f64>,
    y: &[f64],
    c: f64,
    max_iter: usize,
) -> Result<(Vec<f64>, f64), MetricError> {
    let (n, d) = x.dim();
    if y.len() != n {
        return Err(MetricError::InvalidParameter(format!(
            "logistic regression needs one label per row, got {} labels for {n} rows",
            y.len()
        )));
    }
    if !(c.is_finite() && c > 0.0) {
        return Err(MetricError::InvalidParameter(format!(
            "C must be positive and finite, got {c}"
        )));
    }
    if max_iter == 0 {
        return Err(MetricError::InvalidParameter(
            "logistic regression needs at least one iteration".into(),
        ));
    }
    if y.iter().any(|&v| v != 0.0 && v != 1.0) {
        return Err(MetricError::InvalidParameter(
            "logistic regression labels must be 0 or 1".into(),
        ));
    }
    let ones = y.iter().filter(|&&v| v == 1.0).count();
    if ones == 0 || ones == n {
        return Err(MetricError::InvalidParameter(
            "logistic regression needs samples of both classes".into(),
        ));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(MetricError::NonFinite);
    }
    if d < n {
        newton_primal(x, y, c, max_iter)
    } else {
        newton_row_space(x, y, c, max_iter)
    }
}

/// Newton decrement (λ² = −gᵀΔ = ΔᵀHΔ), relative to 1 + |objective|, below which the iterate is
/// deep in Newton's quadratic region: margins move by well under 1% per step, so full steps are
/// taken without a line search. (A line search there would compare objective values that differ
/// by less than their rounding, and could accept noise-sized steps forever.)
const FULL_STEP_TOL: f64 = 1e-9;

/// Relative decrement at which the fit has converged; the last full step is still taken, which
/// quadratic convergence makes exact to rounding.
const DECREMENT_TOL: f64 = 1e-16;

/// Σ softplus(fᵢ) − yᵢfᵢ: the logistic loss, written to stay exact for large |f|.
fn logloss(f: &[f64], y: &[f64]) -> f64 {
    f.iter()
        .zip(y)
        .map(|(&f, &y)| f.max(0.0) + (-f.abs()).exp().ln_1p() - y * f)
        .sum()
}

fn sigmoid(f: f64) -> f64 {
    if f >= 0.0 {
        1.0 / (1.0 + (-f).exp())
    } else {
        let e = f.exp();
        e / (1.0 + e)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn host(t: &Tensor) -> Result<Vec<f64>, MetricError> {
    super::linalg::to_vec(t)
}

fn vector(v: &[f64]) -> Tensor {
    device::here(Tensor::from_slice(v))
}

/// A float64 tensor copy of `a` on the metrics' device.
fn matrix(a: ArrayView2<f64>) -> Tensor {
    let (r, c) = a.dim();
    let standard = a.as_standard_layout();
    device::here(Tensor::from_slice(standard.as_slice().unwrap_or(&[])).view([r as i64, c as i64]))
}

/// Per-iteration quantities of the loss at margins `f`: p, C(p − y), C·p(1 − p).
fn loss_terms(f: &[f64], y: &[f64], c: f64) -> (Vec<f64>, Vec<f64>) {
    let p: Vec<f64> = f.iter().map(|&v| sigmoid(v)).collect();
    let r = p.iter().zip(y).map(|(p, y)| c * (p - y)).collect();
    let s2 = p.iter().map(|p| c * p * (1.0 - p)).collect();
    (r, s2)
}

/// What to do with a Newton direction.
enum Step {
    /// Move by this multiple of it and iterate again.
    Length(f64),
    /// Take the full step and stop: converged.
    Last,
}

/// The step along a Newton direction with decrement `decrement` at objective `obj`: far from the
/// optimum the largest t in 1, ½, ¼, … with obj(t) ≤ obj − 10⁻⁴·t·decrement (Armijo); in the
/// quadratic region full steps, until the decrement is negligible or stops shrinking (the
/// rounding floor). `previous` is the last full step's decrement.
fn choose_step(
    objective: impl Fn(f64) -> f64,
    obj: f64,
    decrement: f64,
    previous: &mut f64,
) -> Result<Step, MetricError> {
    let scale = 1.0 + obj.abs();
    if decrement < -FULL_STEP_TOL * scale || decrement.is_nan() {
        return Err(MetricError::Linalg(format!(
            "logistic regression: the Newton system gave no descent direction (decrement \
             {decrement:e})"
        )));
    }
    if decrement <= FULL_STEP_TOL * scale {
        let last = decrement <= DECREMENT_TOL * scale || decrement > 0.5 * *previous;
        *previous = decrement;
        return Ok(if last { Step::Last } else { Step::Length(1.0) });
    }
    let mut t = 1.0;
    while t > 1e-12 {
        if objective(t) <= obj - 1e-4 * t * decrement {
            return Ok(Step::Length(t));
        }
        t *= 0.5;
    }
    Err(MetricError::Linalg(format!(
        "logistic regression line search failed (Newton decrement {decrement:e})"
    )))
}

fn not_converged(max_iter: usize) -> MetricError {
    MetricError::Linalg(format!(
        "logistic regression did not converge in {max_iter} Newton iterations"
    ))
}

/// Newton's method on θ = (w, b) with the (d+1)×(d+1) Hessian Zᵀ diag(s²) Z + diag(1,…,1,0),
/// Z = [X 1].
fn newton_primal(
    x: ArrayView2<f64>,
    y: &[f64],
    c: f64,
    max_iter: usize,
) -> Result<(Vec<f64>, f64), MetricError> {
    let (n, d) = x.dim();
    let ones = Tensor::f_ones([n as i64, 1], (Kind::Double, device::current()))?;
    let z = Tensor::f_cat(&[matrix(x), ones], 1)?;
    let zt = z.f_tr()?.f_contiguous()?;
    let mut penalty = vec![1.0; d + 1];
    penalty[d] = 0.0;
    let penalty_diag = vector(&penalty).f_diag(0)?;
    let mut theta = vec![0.0; d + 1];
    let mut f = vec![0.0; n];
    let pen = |theta: &[f64]| 0.5 * dot(&theta[..d], &theta[..d]);
    let mut previous = f64::INFINITY;
    for _ in 0..max_iter {
        let obj = pen(&theta) + c * logloss(&f, y);
        let (r, s2) = loss_terms(&f, y, c);
        let mut g = host(&zt.f_mv(&vector(&r))?)?;
        for (gi, (t, p)) in g.iter_mut().zip(theta.iter().zip(&penalty)) {
            *gi += p * t;
        }
        let weighted = z.f_mul(&vector(&s2).f_unsqueeze(1)?)?;
        let hessian = zt.f_mm(&weighted)?.f_add(&penalty_diag)?;
        drop(weighted);
        let minus_g: Vec<f64> = g.iter().map(|v| -v).collect();
        let delta = host(&Tensor::f_linalg_solve(
            &hessian,
            &vector(&minus_g).f_unsqueeze(1)?,
            true,
        )?)?;
        let decrement = -dot(&g, &delta);
        let df = host(&z.f_mv(&vector(&delta))?)?;
        let objective = |t: f64| {
            let th: Vec<f64> = theta.iter().zip(&delta).map(|(a, b)| a + t * b).collect();
            let ft: Vec<f64> = f.iter().zip(&df).map(|(a, b)| a + t * b).collect();
            pen(&th) + c * logloss(&ft, y)
        };
        let step = choose_step(objective, obj, decrement, &mut previous)?;
        let t = match step {
            Step::Length(t) => t,
            Step::Last => 1.0,
        };
        theta.iter_mut().zip(&delta).for_each(|(a, b)| *a += t * b);
        f.iter_mut().zip(&df).for_each(|(a, b)| *a += t * b);
        if matches!(step, Step::Last) {
            return Ok(split(theta));
        }
    }
    Err(not_converged(max_iter))
}

fn split(mut theta: Vec<f64>) -> (Vec<f64>, f64) {
    let b = theta.pop().unwrap_or(0.0);
    (theta, b)
}

/// Newton's method with w = Xᵀα (the minimiser lies in the row space of X, and so does every
/// Newton iterate from w = 0), using only K = XXᵀ.
///
/// The w-block of the Hessian, A = I + Xᵀ S² X, is inverted on the row space by Woodbury:
/// A⁻¹Xᵀβ = Xᵀ(β − S M⁻¹ S K β) with M = I + S K S (n×n, eigenvalues ≥ 1, so its Cholesky
/// factorisation never fails, however singular K is). The intercept is eliminated by its Schur
/// complement c − uᵀA⁻¹u = sᵀM⁻¹s > 0 (u = Xᵀs², s the square roots of the weights), which
/// avoids ever dividing by a vanishing weight.
fn newton_row_space(
    x: ArrayView2<f64>,
    y: &[f64],
    c: f64,
    max_iter: usize,
) -> Result<(Vec<f64>, f64), MetricError> {
    let n = x.nrows();
    let xt = matrix(x);
    let k = xt.f_mm(&xt.f_tr()?)?;
    let eye = Tensor::f_eye(n as i64, (Kind::Double, device::current()))?;
    let kmv = |v: &[f64]| -> Result<Vec<f64>, MetricError> { host(&k.f_mv(&vector(v))?) };
    let mut alpha = vec![0.0; n];
    let mut k_alpha = vec![0.0; n];
    let mut b = 0.0;
    let mut f = vec![0.0; n];
    let finish = |alpha: &[f64], b: f64| -> Result<(Vec<f64>, f64), MetricError> {
        Ok((host(&xt.f_tr()?.f_mv(&vector(alpha))?)?, b))
    };
    let mut previous = f64::INFINITY;
    for _ in 0..max_iter {
        let quad = dot(&alpha, &k_alpha);
        let obj = 0.5 * quad + c * logloss(&f, y);
        let (r, s2) = loss_terms(&f, y, c);
        let gamma: Vec<f64> = alpha.iter().zip(&r).map(|(a, r)| a + r).collect();
        let g_b: f64 = r.iter().sum();
        let s: Vec<f64> = s2.iter().map(|v| v.sqrt()).collect();
        let st = vector(&s);
        let m = k.f_mul(&st.f_outer(&st)?)?.f_add(&eye)?;
        let chol = m.f_linalg_cholesky(false)?;
        drop(m);
        // Right-hand sides S·Kγ, S·K·s², s, solved together.
        let k_gamma = kmv(&gamma)?;
        let k_s2 = kmv(&s2)?;
        let mut rhs = Vec::with_capacity(3 * n);
        for i in 0..n {
            rhs.extend([s[i] * k_gamma[i], s[i] * k_s2[i], s[i]]);
        }
        let rhs = vector(&rhs).f_view([n as i64, 3])?;
        let sol = host(&rhs.f_cholesky_solve(&chol, false)?)?;
        // ã(β) = β − S M⁻¹ S K β: the row-space coefficients of A⁻¹Xᵀβ.
        let a_gamma: Vec<f64> = (0..n).map(|i| gamma[i] - s[i] * sol[3 * i]).collect();
        let a_s2: Vec<f64> = (0..n).map(|i| s2[i] - s[i] * sol[3 * i + 1]).collect();
        let schur: f64 = (0..n).map(|i| s[i] * sol[3 * i + 2]).sum();
        let db = (-g_b + dot(&s2, &kmv(&a_gamma)?)) / schur;
        let delta: Vec<f64> = a_gamma
            .iter()
            .zip(&a_s2)
            .map(|(ag, a2)| -ag - db * a2)
            .collect();
        let k_delta = kmv(&delta)?;
        let decrement = -(dot(&gamma, &k_delta) + g_b * db);
        let df: Vec<f64> = k_delta.iter().map(|v| v + db).collect();
        let (a_kd, d_kd) = (dot(&alpha, &k_delta), dot(&delta, &k_delta));
        let objective = |t: f64| {
            let ft: Vec<f64> = f.iter().zip(&df).map(|(a, b)| a + t * b).collect();
            0.5 * (quad + 2.0 * t * a_kd + t * t * d_kd) + c * logloss(&ft, y)
        };
        let step = choose_step(objective, obj, decrement, &mut previous)?;
        let t = match step {
            Step::Length(t) => t,
            Step::Last => 1.0,
        };
        alpha.iter_mut().zip(&delta).for_each(|(a, d)| *a += t * d);
        k_alpha
            .iter_mut()
            .zip(&k_delta)
            .for_each(|(a, d)| *a += t * d);
        f.iter_mut().zip(&df).for_each(|(a, d)| *a += t * d);
        b += t * db;
        if matches!(step, Step::Last) {
            return finish(&alpha, b);
        }
    }
    Err(not_converged(max_iter))
}

/// Column means and scales of a training fold, as `StandardScaler` fits them: the standard
/// deviation with ddof = 0, and 1 for a column whose variance is within the rounding error of
/// its mean (a constant column is centred, not blown up).
fn fit_scaler(x: &Array2<f64>) -> (Array1<f64>, Array1<f64>) {
    let n = x.nrows() as f64;
    let mean = x.sum_axis(Axis(0)) / n;
    let var = (x - &mean).mapv(|v| v * v).sum_axis(Axis(0)) / n;
    let eps = f64::EPSILON;
    let scale = ndarray::Zip::from(&var).and(&mean).map_collect(|&v, &m| {
        let rounding = n * eps * v + (n * m * eps).powi(2);
        if v <= rounding {
            1.0
        } else {
            v.sqrt()
        }
    });
    (mean, scale)
}

/// Two-sided Student t probability P(|T| ≤ t) for `dof` degrees of freedom, by the finite series
/// for integer degrees of freedom (Abramowitz & Stegun 26.7.3–4).
fn student_t_central(t: f64, dof: usize) -> f64 {
    let nu = dof as f64;
    let theta = (t / nu.sqrt()).atan();
    let (sin, cos) = theta.sin_cos();
    let c2 = cos * cos;
    if dof % 2 == 1 {
        let mut term = cos;
        let mut sum = 0.0;
        if dof > 1 {
            sum = term;
            for j in 1..=(dof - 3) / 2 {
                term *= c2 * (2 * j) as f64 / (2 * j + 1) as f64;
                sum += term;
            }
        }
        2.0 / std::f64::consts::PI * (theta + sin * sum)
    } else {
        let mut term = 1.0;
        let mut sum = 1.0;
        for j in 1..=(dof - 2) / 2 {
            term *= c2 * (2 * j - 1) as f64 / (2 * j) as f64;
            sum += term;
        }
        sin * sum
    }
}

/// t with P(|T| ≤ t) = `level` for `dof` ≥ 1 degrees of freedom (bisection; called once per
/// interval).
fn student_t_quantile(level: f64, dof: usize) -> f64 {
    let mut hi = 1.0;
    while student_t_central(hi, dof) < level && hi < 1e12 {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_central(mid, dof) < level {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The Proxy-A distance between two feature sets, with stratified k-fold cross-validation on the
/// folds of [`fold_assignment`] (params.seed).
///
/// Each class needs at least `folds` samples, so that every fold tests both. PAD near 0 says a
/// linear classifier cannot tell the sets apart, 2 that it separates them perfectly; values a
/// little below 0 are chance. `level` is the interval's (e.g. 0.95).
///
/// ```
/// use gapmeter::metrics::{proxy_a_distance, PadParams};
/// use ndarray::Array2;
/// let a = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f64);
/// let b = a.mapv(|v| v + 20.0);
/// let pad = proxy_a_distance(a.view(), b.view(), &PadParams::default(), 0.95).unwrap();
/// assert_eq!(pad.pad, 2.0);
/// ```
pub fn proxy_a_distance<'a, 'b>(
    source: impl Into<FeatureView<'a>>,
    target: impl Into<FeatureView<'b>>,
    params: &PadParams,
    level: f64,
) -> Result<Pad, MetricError> {
    let (s, t) = (source.into(), target.into());
    check_sets(s, t, params)?;
    let folds = fold_assignment(s.nrows(), t.nrows(), params.folds, params.seed);
    proxy_a_distance_with_folds(s, t, params, level, &folds)
}

fn check_sets(s: FeatureView, t: FeatureView, params: &PadParams) -> Result<(), MetricError> {
    if s.ncols() != t.ncols() {
        return Err(MetricError::DimensionMismatch(s.ncols(), t.ncols()));
    }
    if params.folds < 2 {
        return Err(MetricError::InvalidParameter(format!(
            "PAD needs at least 2 cross-validation folds, got {}",
            params.folds
        )));
    }
    let fewest = s.nrows().min(t.nrows());
    if fewest < params.folds {
        return Err(MetricError::TooFewSamples {
            metric: "PAD (one per cross-validation fold)",
            needed: params.folds,
            got: fewest,
        });
    }
    Ok(())
}

/// [`proxy_a_distance`] on given folds: `folds[i]` < `params.folds` is the fold of sample i,
/// sources first then targets. For reproducing another tool's cross-validation exactly (the
/// scikit-learn parity fixture passes its folds here). Every fold must be non-empty and leave
/// both classes in its training data.
pub fn proxy_a_distance_with_folds<'a, 'b>(
    source: impl Into<FeatureView<'a>>,
    target: impl Into<FeatureView<'b>>,
    params: &PadParams,
    level: f64,
    folds: &[usize],
) -> Result<Pad, MetricError> {
    let (s, t) = (source.into(), target.into());
    check_sets(s, t, params)?;
    if !(level > 0.0 && level < 1.0) {
        return Err(MetricError::InvalidParameter(format!(
            "interval level must lie strictly between 0 and 1, got {level}"
        )));
    }
    if !(params.c.is_finite() && params.c > 0.0) {
        return Err(MetricError::InvalidParameter(format!(
            "PAD's C must be positive and finite, got {}",
            params.c
        )));
    }
    let (ns, nt) = (s.nrows(), t.nrows());
    let n = ns + nt;
    let k = params.folds;
    if folds.len() != n {
        return Err(MetricError::InvalidParameter(format!(
            "{} fold labels for {n} samples",
            folds.len()
        )));
    }
    if let Some(bad) = folds.iter().find(|&&f| f >= k) {
        return Err(MetricError::InvalidParameter(format!(
            "fold label {bad} out of range for {k} folds"
        )));
    }
    for f in 0..k {
        let src_out = folds[..ns].iter().filter(|&&v| v == f).count();
        let tgt_out = folds[ns..].iter().filter(|&&v| v == f).count();
        if src_out + tgt_out == 0 || src_out == ns || tgt_out == nt {
            return Err(MetricError::InvalidParameter(format!(
                "fold {f} must test at least one sample and leave both sets in its training data"
            )));
        }
    }
    if !(s.all_finite() && t.all_finite()) {
        return Err(MetricError::NonFinite);
    }
    let x = concatenate(Axis(0), &[s.to_f64().view(), t.to_f64().view()])
        .map_err(|e| MetricError::InvalidParameter(e.to_string()))?;
    let labels: Vec<f64> = (0..n).map(|i| if i < ns { 0.0 } else { 1.0 }).collect();
    let mut per_fold = Vec::with_capacity(k);
    let (mut wrong, mut train_right, mut train_total) = (0usize, 0usize, 0usize);
    for f in 0..k {
        let train: Vec<usize> = (0..n).filter(|&i| folds[i] != f).collect();
        let test: Vec<usize> = (0..n).filter(|&i| folds[i] == f).collect();
        let mut x_train = x.select(Axis(0), &train);
        let mut x_test = x.select(Axis(0), &test);
        if params.standardize {
            let (mean, scale) = fit_scaler(&x_train);
            x_train = (x_train - &mean) / &scale;
            x_test = (x_test - &mean) / &scale;
        }
        let y_train: Vec<f64> = train.iter().map(|&i| labels[i]).collect();
        let (coef, intercept) =
            logistic_regression(x_train.view(), &y_train, params.c, params.max_iter)?;
        let w = Array1::from(coef);
        let count_wrong = |xs: &Array2<f64>, rows: &[usize]| {
            let decision = xs.dot(&w) + intercept;
            rows.iter()
                .zip(decision.iter())
                .filter(|(&i, &v)| (v > 0.0) != (labels[i] == 1.0))
                .count()
        };
        let fold_wrong = count_wrong(&x_test, &test);
        train_right += train.len() - count_wrong(&x_train, &train);
        train_total += train.len();
        wrong += fold_wrong;
        let error = fold_wrong as f64 / test.len() as f64;
        per_fold.push(PadFold {
            fold: f,
            n_test: test.len(),
            error,
            pad: 2.0 * (1.0 - 2.0 * error),
            coef: w.to_vec(),
            intercept,
        });
    }
    let error = wrong as f64 / n as f64;
    let pad = 2.0 * (1.0 - 2.0 * error);
    let kf = k as f64;
    let mean = per_fold.iter().map(|p| p.pad).sum::<f64>() / kf;
    let sd = (per_fold.iter().map(|p| (p.pad - mean).powi(2)).sum::<f64>() / (kf - 1.0)).sqrt();
    let se = sd / kf.sqrt();
    let half = student_t_quantile(level, k - 1) * se;
    let interval = Interval {
        low: pad - half,
        high: pad + half,
        level,
        method: format!("Student t over the {k} cross-validation folds' PADs"),
        target: Target::ThisSampleSize,
        resamples: None,
        std: se,
    };
    Ok(Pad {
        pad,
        error,
        folds: per_fold,
        interval,
        train_accuracy: train_right as f64 / train_total as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn gaussian(n: usize, d: usize, shift: f64, seed: u64) -> Array2<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| normal(&mut rng) + shift)
    }

    /// ½‖w‖² + C Σ logloss and its gradient, straight from the definition.
    fn gradient(x: &Array2<f64>, y: &[f64], c: f64, w: &[f64], b: f64) -> (Vec<f64>, f64) {
        let f = x.dot(&Array1::from(w.to_vec())) + b;
        let r: Vec<f64> = f
            .iter()
            .zip(y)
            .map(|(&f, &y)| c * (sigmoid(f) - y))
            .collect();
        let gw: Vec<f64> = (0..x.ncols())
            .map(|j| w[j] + (0..x.nrows()).map(|i| x[[i, j]] * r[i]).sum::<f64>())
            .collect();
        (gw, r.iter().sum())
    }

    #[test]
    fn both_newton_routes_reach_the_stationary_point() {
        for (n, d, shift) in [(120, 6, 0.4), (40, 60, 0.3), (50, 50, 3.0)] {
            let mut x = gaussian(n, d, 0.0, 1 + d as u64);
            let y: Vec<f64> = (0..n).map(|i| (i % 2) as f64).collect();
            for (i, &label) in y.iter().enumerate() {
                if label == 1.0 {
                    x.row_mut(i).mapv_inplace(|v| v + shift);
                }
            }
            let (w, b) = logistic_regression(x.view(), &y, 0.7, 100).unwrap();
            let (gw, gb) = gradient(&x, &y, 0.7, &w, b);
            let worst = gw.iter().fold(gb.abs(), |m, v| m.max(v.abs()));
            assert!(worst < 1e-9, "n={n} d={d}: gradient {worst:e}");
            // The other route on the same problem gives the same minimiser.
            let (w2, b2) = if d < n {
                newton_row_space(x.view(), &y, 0.7, 100).unwrap()
            } else {
                newton_primal(x.view(), &y, 0.7, 100).unwrap()
            };
            let scale = w.iter().fold(b.abs(), |m, v| m.max(v.abs()));
            let diff = w
                .iter()
                .zip(&w2)
                .fold((b - b2).abs(), |m, (a, c)| m.max((a - c).abs()));
            assert!(
                diff < 1e-9 * scale,
                "n={n} d={d}: routes differ by {diff:e}"
            );
        }
    }

    #[test]
    fn rank_deficient_and_separable_data_still_converge() {
        // Duplicate rows, a constant column, and classes separated by a wide margin.
        let mut x = gaussian(30, 5, 0.0, 4);
        for j in 0..5 {
            x[[1, j]] = x[[0, j]];
        }
        x.column_mut(3).fill(2.5);
        let y: Vec<f64> = (0..30).map(|i| f64::from(u8::from(i >= 15))).collect();
        for i in 15..30 {
            x[[i, 0]] += 10.0;
        }
        let (w, b) = logistic_regression(x.view(), &y, 1.0, 100).unwrap();
        let (gw, gb) = gradient(&x, &y, 1.0, &w, b);
        assert!(gw.iter().all(|v| v.abs() < 1e-9) && gb.abs() < 1e-9);
        let (w2, _) = newton_row_space(x.view(), &y, 1.0, 100).unwrap();
        assert!(w.iter().zip(&w2).all(|(a, c)| (a - c).abs() < 1e-8));
    }

    #[test]
    fn many_samples_converge_in_a_few_newton_steps() {
        // The objective is ≈ 0.6·n here; near the optimum its change per step falls below its
        // rounding, where a line search could accept noise-sized steps until max_iter. Full
        // Newton steps in the quadratic region end the fit.
        let (n, d) = (4800, 64);
        let mut x = gaussian(n, d, 0.0, 21);
        let y: Vec<f64> = (0..n).map(|i| (i % 2) as f64).collect();
        for i in (1..n).step_by(2) {
            x.row_mut(i).mapv_inplace(|v| v + 0.05);
        }
        let (w, b) = logistic_regression(x.view(), &y, 1.0, 30).unwrap();
        let (gw, gb) = gradient(&x, &y, 1.0, &w, b);
        let worst = gw.iter().fold(gb.abs(), |m, v| m.max(v.abs()));
        assert!(worst < 1e-8, "gradient {worst:e}");
    }

    #[test]
    fn halves_of_one_sample_are_indistinguishable() {
        let x = gaussian(400, 8, 0.0, 7);
        let (a, b) = (
            x.slice(ndarray::s![..200, ..]),
            x.slice(ndarray::s![200.., ..]),
        );
        let pad = proxy_a_distance(a, b, &PadParams::default(), 0.95).unwrap();
        assert!(pad.pad.abs() < 0.3, "{pad:?}");
        assert!(pad.interval.contains(pad.pad), "{:?}", pad.interval);
        assert_eq!(pad.folds.len(), 5);
        assert_eq!(pad.folds.iter().map(|f| f.n_test).sum::<usize>(), 400);
    }

    #[test]
    fn separated_sets_are_at_two_and_float32_storage_changes_nothing() {
        let a = gaussian(100, 10, 0.0, 8);
        let b = gaussian(90, 10, 3.0, 9);
        let pad = proxy_a_distance(a.view(), b.view(), &PadParams::default(), 0.9).unwrap();
        assert!(pad.pad > 1.9, "{pad:?}");
        assert!(pad.interval.contains(pad.pad));
        assert!(pad.train_accuracy >= 1.0 - pad.error - 1e-12);
        let (a32, b32) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
        let narrow = proxy_a_distance(a32.view(), b32.view(), &PadParams::default(), 0.9).unwrap();
        let (a64, b64) = (a32.mapv(f64::from), b32.mapv(f64::from));
        let wide = proxy_a_distance(a64.view(), b64.view(), &PadParams::default(), 0.9).unwrap();
        assert_eq!(narrow.pad, wide.pad);
        assert_eq!(narrow.folds[0].coef, wide.folds[0].coef);
    }

    #[test]
    fn folds_are_stratified_and_reproducible() {
        let f = fold_assignment(23, 17, 5, 11);
        assert_eq!(f, fold_assignment(23, 17, 5, 11));
        assert_ne!(f, fold_assignment(23, 17, 5, 12));
        for k in 0..5 {
            let s = f[..23].iter().filter(|&&v| v == k).count();
            let t = f[23..].iter().filter(|&&v| v == k).count();
            assert!(
                (4..=5).contains(&s) && (3..=4).contains(&t),
                "fold {k}: {s}, {t}"
            );
        }
        // Seeds below 2³² are numpy's seeds; higher bits still change the folds.
        assert_eq!(legacy_seed(7), 7);
        assert_ne!(legacy_seed(7 + (1 << 40)), 7);
    }

    #[test]
    fn student_t_quantiles() {
        for (dof, level, want) in [
            (1, 0.95, 12.706_204_736),
            (2, 0.95, 4.302_652_730),
            (4, 0.95, 2.776_445_105),
            (9, 0.95, 2.262_157_163),
            (4, 0.9, 2.131_846_786),
            (200, 0.95, 1.971_896_224),
        ] {
            let got = student_t_quantile(level, dof);
            assert!(
                (got - want).abs() < 1e-7,
                "t({dof}, {level}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn bad_input_is_reported() {
        let a = gaussian(10, 3, 0.0, 1);
        let b = gaussian(10, 4, 0.0, 2);
        let p = PadParams::default();
        assert!(matches!(
            proxy_a_distance(a.view(), b.view(), &p, 0.95),
            Err(MetricError::DimensionMismatch(3, 4))
        ));
        let few = gaussian(4, 3, 0.0, 3);
        assert!(matches!(
            proxy_a_distance(a.view(), few.view(), &p, 0.95),
            Err(MetricError::TooFewSamples {
                needed: 5,
                got: 4,
                ..
            })
        ));
        let mut nan = gaussian(10, 3, 0.0, 4);
        nan[[2, 1]] = f64::NAN;
        assert!(matches!(
            proxy_a_distance(a.view(), nan.view(), &p, 0.95),
            Err(MetricError::NonFinite)
        ));
        let one_fold = PadParams {
            folds: 1,
            ..p.clone()
        };
        assert!(proxy_a_distance(a.view(), a.view(), &one_fold, 0.95).is_err());
        assert!(proxy_a_distance(a.view(), a.view(), &p, 1.5).is_err());
        // A fold holding all of the source leaves its training data one class only.
        let mut folds = fold_assignment(10, 10, 5, 0);
        folds[..10].fill(0);
        assert!(proxy_a_distance_with_folds(a.view(), a.view(), &p, 0.95, &folds).is_err());
        assert!(logistic_regression(a.view(), &[0.0; 10], 1.0, 10).is_err());
    }
}
