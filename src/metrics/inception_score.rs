//! Inception Score (Salimans et al. 2016) from classifier logits, as torch-fidelity computes it.
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{linalg, rng::LegacyRandomState, FeatureView, MetricError};

/// IS parameters; `Default` is torch-fidelity's (10 splits, shuffled with seed 2020).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IsParams {
    pub splits: usize,
    /// Shuffle rows with numpy's `RandomState(seed).permutation` before splitting (torch-fidelity's
    /// `samples_shuffle`); `None` keeps the input order.
    pub shuffle_seed: Option<u32>,
}

impl Default for IsParams {
    fn default() -> Self {
        Self {
            splits: 10,
            shuffle_seed: Some(2020),
        }
    }
}

/// Mean and population standard deviation over splits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InceptionScore {
    pub mean: f64,
    pub std: f64,
}

/// exp(E_x KL(p(y|x) ‖ p(y))) per split, p(y) the split's mean prediction; float64 throughout.
///
/// ```
/// use gapmeter::metrics::{inception_score, IsParams};
/// // Confident, evenly spread predictions over 4 classes give IS = 4.
/// let logits = ndarray::Array2::from_shape_fn((40, 4), |(i, j)| if i % 4 == j { 50.0 } else { 0.0 });
/// let is = inception_score(logits.view(), &IsParams { splits: 1, shuffle_seed: None }).unwrap();
/// assert!((is.mean - 4.0).abs() < 1e-9);
/// ```
pub fn inception_score<'a>(
    logits: impl Into<FeatureView<'a>>,
    params: &IsParams,
) -> Result<InceptionScore, MetricError> {
    let logits = logits.into();
    let (n, _) = logits.dim();
    if params.splits == 0 {
        return Err(MetricError::InvalidParameter(
            "IS needs at least one split".into(),
        ));
    }
    if n < params.splits {
        return Err(MetricError::TooFewSamples {
            metric: "IS",
            needed: params.splits,
            got: n,
        });
    }
    if !logits.all_finite() {
        return Err(MetricError::NonFinite);
    }
    // Logits are N × classes (~1000): small next to the softmax work, so converted whole.
    let mut x = logits.tensor();
    if let Some(seed) = params.shuffle_seed {
        let perm: Vec<i64> = LegacyRandomState::new(seed)
            .permutation(n)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        x = x.f_index_select(0, &super::device::here(Tensor::from_slice(&perm)))?;
    }
    let p = x.f_softmax(1, Kind::Double)?;
    let log_p = x.f_log_softmax(1, Kind::Double)?;
    let mut scores = Vec::with_capacity(params.splits);
    for i in 0..params.splits {
        let (a, b) = (
            (i * n / params.splits) as i64,
            ((i + 1) * n / params.splits) as i64,
        );
        let pc = p.f_narrow(0, a, b - a)?;
        let lpc = log_p.f_narrow(0, a, b - a)?;
        let log_q = pc.f_mean_dim(0, true, Kind::Double)?.f_log()?;
        let kl = pc
            .f_mul(&lpc.f_sub(&log_q)?)?
            .f_sum_dim_intlist(1, false, Kind::Double)?;
        scores.push(linalg::scalar(&kl.f_mean(Kind::Double)?)?.exp());
    }
    let (mean, std) = mean_std(&scores);
    Ok(InceptionScore { mean, std })
}

/// Mean and population standard deviation (numpy's default `ddof=0`).
pub(crate) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn uniform_predictions_score_one() {
        let logits = Array2::<f64>::zeros((20, 7));
        let is = inception_score(logits.view(), &IsParams::default()).unwrap();
        assert!((is.mean - 1.0).abs() < 1e-12 && is.std < 1e-12);
    }

    #[test]
    fn split_boundaries_follow_integer_division() {
        // 25 samples in 10 splits: sizes 2 or 3, as i·N/splits gives; every sample used once.
        let logits = Array2::from_shape_fn((25, 5), |(i, j)| ((i * 3 + j * 7) % 11) as f64 / 3.0);
        let is = inception_score(
            logits.view(),
            &IsParams {
                splits: 10,
                shuffle_seed: None,
            },
        )
        .unwrap();
        assert!(is.mean > 1.0 && is.mean < 5.0);
        assert!(inception_score(
            logits.view(),
            &IsParams {
                splits: 30,
                shuffle_seed: None
            }
        )
        .is_err());
    }
}
