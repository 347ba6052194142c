//! Pure math on features and statistics: no I/O, no models. Every metric takes features (rows are
//! images, stored as float32 or float64: [`Features`]) or sufficient statistics and returns
//! numbers, computed in float64 on row blocks.
//!
//! Dense linear algebra runs on libtorch's kernels, which gapmeter links anyway: LAPACK/BLAS on the
//! CPU, or cuBLAS/cuSOLVER on a GPU when the caller runs the metrics inside [`on_device`].

mod blocks;
mod device;
mod features;
mod fid;
mod inception_score;
mod kid;
mod linalg;
mod mmd;
mod pad;
mod per_image;
mod power_law;
mod prdc;
mod resampling;
pub mod rng;
mod selection;
mod stats;
mod style;
mod ustat;

pub use device::on_device;
pub use features::{FeatureElement, FeatureView, Features};
pub use fid::{fid_from_features, fid_from_gaussians, Fid};
pub use inception_score::{inception_score, InceptionScore, IsParams};
pub use kid::{kid, kid_resampled, kid_with, Kid, KidKernels, KidParams};
pub use mmd::{cmmd, median_bandwidth, mmd, mmd_resampled, Bandwidth, Estimator, Mmd, MmdParams};
pub use pad::{
    fold_assignment, logistic_regression, proxy_a_distance, proxy_a_distance_with_folds, Pad,
    PadFold, PadParams,
};
pub use per_image::{per_image_gap, ImageGap};
pub use power_law::PowerLaw;
pub use prdc::{prdc, Prdc, PrdcParams};
pub use resampling::{
    distinct_origin_pairs, extrapolation_sizes, fid_infinity_start, fit_inverse_n, normal_quantile,
    resample_with_replacement, sizes_between, subsample_fit, BootstrapParams, Extrapolation,
    Interval, SubsampleFit, Target, FIT_REPETITIONS, JACKKNIFE_GROUPS,
};
pub use selection::{
    greedy_fid_selection, greedy_mmd_selection, random_subsets, SelectionObjective,
};
pub use stats::{FeatureStats, Gaussian};
pub use style::{image_covariances, per_image_style_distance, style_gap, StyleGap, StyleSet};

/// Errors a metric reports for input it cannot score.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("{metric} needs at least {needed} samples per set, got {got}")]
    TooFewSamples {
        metric: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("feature dimensions differ: {0} vs {1}")]
    DimensionMismatch(usize, usize),
    #[error("features contain a non-finite value (NaN or infinity)")]
    NonFinite,
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("linear algebra failed: {0}")]
    Linalg(String),
}

impl From<tch::TchError> for MetricError {
    fn from(e: tch::TchError) -> Self {
        MetricError::Linalg(crate::util::torch_message(&e))
    }
}
