//! Thin float64 helpers over libtorch tensors.
use tch::{Kind, Tensor};

use super::{device, MetricError};

/// A float64 CPU tensor holding a copy of `a` (rows x cols); the tests' oracles build theirs with
/// it (metrics convert through `FeatureView`).
#[cfg(test)]
pub(crate) fn tensor(a: ndarray::ArrayView2<f64>) -> Tensor {
    let (r, c) = a.dim();
    let standard = a.as_standard_layout();
    let slice = standard.as_slice().unwrap_or(&[]);
    Tensor::from_slice(slice).view([r as i64, c as i64])
}

/// A square float64 tensor from a row-major d*d buffer, on the metrics' device.
pub(crate) fn square(data: &[f64], d: usize) -> Tensor {
    device::here(Tensor::from_slice(data).view([d as i64, d as i64]))
}

/// A host vector of `t`'s values in float64, from whichever device `t` is on.
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f64>, MetricError> {
    let t = t
        .f_to_kind(Kind::Double)?
        .f_to_device(tch::Device::Cpu)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<f64>::try_from(&t)?)
}

pub(crate) fn scalar(t: &Tensor) -> Result<f64, MetricError> {
    Ok(t.f_to_kind(Kind::Double)?.f_double_value(&[])?)
}

/// Symmetric positive semi-definite square root: V diag(sqrt(max(λ, 0))) Vᵀ.
pub(crate) fn psd_sqrt(m: &Tensor) -> Result<Tensor, MetricError> {
    let (eigenvalues, vectors) = m.f_linalg_eigh("L")?;
    let root = eigenvalues.f_clamp_min(0.0)?.f_sqrt()?;
    // Step by step, so no more than three d×d matrices are alive at once.
    let transposed = vectors.f_tr()?.f_contiguous()?;
    let scaled = vectors.f_mul(&root.f_unsqueeze(0)?)?;
    drop(vectors);
    Ok(scaled.f_mm(&transposed)?)
}
