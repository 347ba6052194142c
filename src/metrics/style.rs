//! The style gap (after RobustNet's instance-whitening and Deep CORAL): second-order statistics of
//! an early feature map, per image and per domain; docs/metrics.md, "Style gap".
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{fid_from_gaussians, linalg, Gaussian, MetricError};

/// Added to each channel variance in instance normalisation and to each covariance's diagonal
/// (the value of PyTorch's `InstanceNorm2d` eps and RobustNet's covariance eps).
const EPS: f64 = 1e-5;

/// Per-image channel covariances of one set: `n` matrices of `c` × `c`, row-major, float64.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StyleSet {
    pub channels: usize,
    pub covariances: Vec<f64>,
}

impl StyleSet {
    pub fn new(channels: usize) -> Self {
        Self {
            channels,
            covariances: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        if self.channels == 0 {
            0
        } else {
            self.covariances.len() / (self.channels * self.channels)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the covariances of a batch of early maps (N × C × H × W).
    pub fn push_maps(&mut self, maps: &Tensor) -> Result<(), MetricError> {
        let covs = image_covariances(maps)?;
        let c = maps.size()[1] as usize;
        if self.channels == 0 {
            self.channels = c;
        } else if self.channels != c {
            return Err(MetricError::DimensionMismatch(self.channels, c));
        }
        self.covariances.extend(linalg::to_vec(&covs)?);
        Ok(())
    }

    /// The subset of images `idx`.
    pub fn select(&self, idx: &[usize]) -> Self {
        let cc = self.channels * self.channels;
        let mut covariances = Vec::with_capacity(idx.len() * cc);
        for &i in idx {
            covariances.extend_from_slice(&self.covariances[i * cc..(i + 1) * cc]);
        }
        Self {
            channels: self.channels,
            covariances,
        }
    }

    fn tensor(&self) -> Tensor {
        let c = self.channels as i64;
        Tensor::from_slice(&self.covariances).view([-1, c, c])
    }

    /// The domain's style: the mean of its images' covariances.
    pub fn mean_covariance(&self) -> Result<Vec<f64>, MetricError> {
        if self.is_empty() {
            return Err(MetricError::TooFewSamples {
                metric: "style gap",
                needed: 1,
                got: 0,
            });
        }
        linalg::to_vec(&self.tensor().f_mean_dim(0, false, Kind::Double)?)
    }
}

/// Σ = F Fᵀ / (HW − 1) + ε·I per image, F the C × HW map after instance normalisation
/// ((x − μ_c) / √(σ²_c + ε), biased variance, as `InstanceNorm2d`).
pub fn image_covariances(maps: &Tensor) -> Result<Tensor, MetricError> {
    let size = maps.size();
    if size.len() != 4 {
        return Err(MetricError::InvalidParameter(format!(
            "style needs N×C×H×W maps, got shape {size:?}"
        )));
    }
    let (n, c, hw) = (size[0], size[1], size[2] * size[3]);
    if hw < 2 {
        return Err(MetricError::InvalidParameter(
            "style maps need at least 2 spatial positions".into(),
        ));
    }
    let f = maps.f_to_kind(Kind::Double)?.f_reshape([n, c, hw])?;
    let mean = f.f_mean_dim(2, true, Kind::Double)?;
    let centred = f.f_sub(&mean)?;
    let var = centred.f_mul(&centred)?.f_mean_dim(2, true, Kind::Double)?;
    let normalised = centred.f_div(&var.f_add_scalar(EPS)?.f_sqrt()?)?;
    let cov = normalised
        .f_bmm(&normalised.f_transpose(1, 2)?)?
        .f_div_scalar((hw - 1) as f64)?;
    let eye = Tensor::f_eye(c, (Kind::Double, maps.device()))?.f_mul_scalar(EPS)?;
    Ok(cov.f_add(&eye)?)
}

/// Distances between two domains' mean covariances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StyleGap {
    /// Deep CORAL's loss: ‖CS − CT‖²_F / (4d²).
    pub coral: f64,
    /// ‖log CS − log CT‖_F (matrix logarithms).
    pub log_euclidean: f64,
    /// Squared Bures–Wasserstein distance: tr CS + tr CT − 2 tr (CS^½ CT CS^½)^½.
    pub bures_wasserstein: f64,
}

/// Matrix logarithm of a symmetric positive definite matrix.
fn spd_log(m: &[f64], d: usize) -> Result<Tensor, MetricError> {
    let (values, vectors) = linalg::square(m, d).f_linalg_eigh("L")?;
    // Covariances carry +ε·I, so eigenvalues are ≥ ε up to rounding; clamp keeps log finite.
    let logs = values.f_clamp_min(EPS * 1e-3)?.f_log()?;
    Ok(vectors
        .f_mul(&logs.f_unsqueeze(0)?)?
        .f_mm(&vectors.f_tr()?)?)
}

fn frobenius(t: &Tensor) -> Result<f64, MetricError> {
    linalg::scalar(&t.f_mul(t)?.f_sum(Kind::Double)?.f_sqrt()?)
}

/// The style gap between two sets of per-image covariances.
pub fn style_gap(source: &StyleSet, target: &StyleSet) -> Result<StyleGap, MetricError> {
    if source.channels != target.channels {
        return Err(MetricError::DimensionMismatch(
            source.channels,
            target.channels,
        ));
    }
    let d = source.channels;
    let cs = source.mean_covariance()?;
    let ct = target.mean_covariance()?;
    let coral = cs
        .iter()
        .zip(&ct)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / (4.0 * (d * d) as f64);
    let log_euclidean = frobenius(&spd_log(&cs, d)?.f_sub(&spd_log(&ct, d)?)?)?;
    let zero = vec![0.0; d];
    let bures_wasserstein = fid_from_gaussians(
        &Gaussian {
            mean: zero.clone(),
            cov: cs,
            n: None,
        },
        &Gaussian {
            mean: zero,
            cov: ct,
            n: None,
        },
    )?
    .covariance_term;
    Ok(StyleGap {
        coral,
        log_euclidean,
        bures_wasserstein,
    })
}

/// For each image of `set`, the log-Euclidean distance of its covariance to `other`'s mean.
pub fn per_image_style_distance(set: &StyleSet, other: &StyleSet) -> Result<Vec<f64>, MetricError> {
    let d = set.channels;
    let target_log = spd_log(&other.mean_covariance()?, d)?;
    let cc = d * d;
    (0..set.len())
        .map(|i| {
            frobenius(&spd_log(&set.covariances[i * cc..(i + 1) * cc], d)?.f_sub(&target_log)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(seed: i64, n: i64, scale_channel_1: f64) -> Tensor {
        tch::manual_seed(seed);
        let x = Tensor::randn([n, 3, 8, 8], (Kind::Double, tch::Device::Cpu));
        // Mix channels 0 and 1 so they correlate; the mixing strength sets the "style".
        let c0 = x.narrow(1, 0, 1);
        let c1 = x.narrow(1, 1, 1) + &c0 * scale_channel_1;
        Tensor::cat(&[c0, c1, x.narrow(1, 2, 1)], 1)
    }

    #[test]
    fn covariances_are_correlations_plus_eps() {
        let m = maps(1, 4, 0.0);
        let cov = image_covariances(&m).unwrap();
        assert_eq!(cov.size(), vec![4, 3, 3]);
        // After instance normalisation the diagonal is HW/(HW−1)·σ²/(σ²+ε) + ε ≈ 64/63.
        let diag: Vec<f64> = Vec::try_from(cov.diagonal(0, 1, 2).reshape([-1])).unwrap();
        assert!(
            diag.iter().all(|v| (v - 64.0 / 63.0).abs() < 1e-4),
            "{diag:?}"
        );
        let sym = (&cov - cov.transpose(1, 2)).abs().max().double_value(&[]);
        assert!(sym < 1e-12);
    }

    #[test]
    fn identical_sets_have_no_gap_and_the_gap_grows_with_the_style_change() {
        let mut a = StyleSet::new(0);
        a.push_maps(&maps(2, 6, 0.0)).unwrap();
        let same = style_gap(&a, &a).unwrap();
        assert!(
            same.coral.abs() < 1e-15
                && same.log_euclidean.abs() < 1e-9
                && same.bures_wasserstein.abs() < 1e-9
        );
        let mut prev = 0.0;
        for strength in [0.3, 0.8, 2.0] {
            let mut b = StyleSet::new(0);
            b.push_maps(&maps(3, 6, strength)).unwrap();
            let g = style_gap(&a, &b).unwrap();
            assert!(g.log_euclidean > prev, "{strength}: {g:?}");
            assert!(g.coral > 0.0 && g.bures_wasserstein > 0.0);
            prev = g.log_euclidean;
        }
    }

    #[test]
    fn per_image_distances_single_out_the_odd_image() {
        let mut a = StyleSet::new(0);
        a.push_maps(&maps(4, 5, 0.0)).unwrap();
        a.push_maps(&maps(5, 1, 3.0)).unwrap();
        let mut t = StyleSet::new(0);
        t.push_maps(&maps(6, 8, 0.0)).unwrap();
        let d = per_image_style_distance(&a, &t).unwrap();
        let argmax = d
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .unwrap()
            .0;
        assert_eq!(argmax, 5);
        assert_eq!(a.select(&[5]).len(), 1);
    }
}
