//! Feature matrices in the precision they arrive in; docs/metrics.md, "Feature storage".
//!
//! A 50,000 × 2048 set is 0.41 GB as float32 and twice that as float64, so features are kept as
//! they come (float32 from the models and from float32 `.npy` files, float64 from float64 files)
//! and metrics turn *row blocks* into float64 tensors as they go. float32 → float64 is exact, so a
//! metric computed from float32 storage equals the same metric computed from the upcast matrix.
use ndarray::{s, Array2, ArrayView2, Axis, ShapeError};
use tch::{Kind, Tensor};

use super::device;

/// A feature matrix: one row per image, one column per feature dimension, stored as float32 or
/// float64.
///
/// ```
/// use gapmeter::metrics::{fid_from_features, Features};
/// let a = Features::from_shape_vec((3, 2), vec![0.0f32, 1.0, 1.0, 0.5, 2.0, 2.0]).unwrap();
/// assert_eq!((a.nrows(), a.ncols(), a.is_f32()), (3, 2, true));
/// let fid = fid_from_features(a.view(), a.view()).unwrap();
/// assert!(fid.value.abs() < 1e-12);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    F32(Array2<f32>),
    F64(Array2<f64>),
}

/// A borrowed feature matrix (or a row range of one), what every metric takes. Anything that
/// converts into it is accepted: `ArrayView2<f32>`, `ArrayView2<f64>`, `&Features`.
#[derive(Debug, Clone, Copy)]
pub enum FeatureView<'a> {
    F32(ArrayView2<'a, f32>),
    F64(ArrayView2<'a, f64>),
}

/// The element types a feature matrix can be stored in.
pub trait FeatureElement: Copy + sealed::Sealed {
    #[doc(hidden)]
    fn wrap(a: Array2<Self>) -> Features;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

impl FeatureElement for f32 {
    fn wrap(a: Array2<Self>) -> Features {
        Features::F32(a)
    }
}

impl FeatureElement for f64 {
    fn wrap(a: Array2<Self>) -> Features {
        Features::F64(a)
    }
}

impl Features {
    /// Rows of `shape.1` values each, row-major, kept in their own precision.
    pub fn from_shape_vec<T: FeatureElement>(
        shape: (usize, usize),
        data: Vec<T>,
    ) -> Result<Self, ShapeError> {
        Ok(T::wrap(Array2::from_shape_vec(shape, data)?))
    }

    pub fn view(&self) -> FeatureView<'_> {
        match self {
            Features::F32(a) => FeatureView::F32(a.view()),
            Features::F64(a) => FeatureView::F64(a.view()),
        }
    }

    pub fn nrows(&self) -> usize {
        self.view().nrows()
    }

    pub fn ncols(&self) -> usize {
        self.view().ncols()
    }

    pub fn dim(&self) -> (usize, usize) {
        self.view().dim()
    }

    /// True when stored as float32.
    pub fn is_f32(&self) -> bool {
        matches!(self, Features::F32(_))
    }

    /// Rows `rows` (repetition allowed), in the same precision.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        match self {
            Features::F32(a) => Features::F32(a.select(Axis(0), rows)),
            Features::F64(a) => Features::F64(a.select(Axis(0), rows)),
        }
    }

    /// A float64 copy of the whole matrix (for callers that need one; metrics do not).
    pub fn to_f64(&self) -> Array2<f64> {
        self.view().to_f64()
    }
}

impl From<Array2<f64>> for Features {
    fn from(a: Array2<f64>) -> Self {
        Features::F64(a)
    }
}

impl From<Array2<f32>> for Features {
    fn from(a: Array2<f32>) -> Self {
        Features::F32(a)
    }
}

impl<'a> From<ArrayView2<'a, f64>> for FeatureView<'a> {
    fn from(a: ArrayView2<'a, f64>) -> Self {
        FeatureView::F64(a)
    }
}

impl<'a> From<ArrayView2<'a, f32>> for FeatureView<'a> {
    fn from(a: ArrayView2<'a, f32>) -> Self {
        FeatureView::F32(a)
    }
}

impl<'a> From<&'a Features> for FeatureView<'a> {
    fn from(f: &'a Features) -> Self {
        f.view()
    }
}

impl<'a> FeatureView<'a> {
    pub fn nrows(&self) -> usize {
        self.dim().0
    }

    pub fn ncols(&self) -> usize {
        self.dim().1
    }

    pub fn dim(&self) -> (usize, usize) {
        match self {
            FeatureView::F32(a) => a.dim(),
            FeatureView::F64(a) => a.dim(),
        }
    }

    /// True when every value is finite (no NaN, no infinity); reads in place.
    pub fn all_finite(&self) -> bool {
        match self {
            FeatureView::F32(a) => a.iter().all(|v| v.is_finite()),
            FeatureView::F64(a) => a.iter().all(|v| v.is_finite()),
        }
    }

    /// Rows `start..start + len` as a view.
    pub fn rows(&self, start: usize, len: usize) -> FeatureView<'a> {
        match self {
            FeatureView::F32(a) => FeatureView::F32(a.slice_move(s![start..start + len, ..])),
            FeatureView::F64(a) => FeatureView::F64(a.slice_move(s![start..start + len, ..])),
        }
    }

    /// A float64 copy of the whole matrix.
    pub fn to_f64(&self) -> Array2<f64> {
        match self {
            FeatureView::F32(a) => a.mapv(f64::from),
            FeatureView::F64(a) => a.to_owned(),
        }
    }

    /// Rows `start..start + len` as a float64 CPU tensor (a copy of that block only).
    pub(crate) fn block(&self, start: usize, len: usize) -> Tensor {
        self.rows(start, len).tensor()
    }

    /// Rows `start..start + len` written into `out`, a float64 tensor of `len` × d on any device,
    /// with no intermediate copy: the hot loops of the k-NN metrics convert every tile into the
    /// same buffers instead of allocating (and fragmenting the heap with) new ones.
    pub(crate) fn block_into(
        &self,
        start: usize,
        len: usize,
        out: &Tensor,
    ) -> Result<(), tch::TchError> {
        match self.rows(start, len) {
            FeatureView::F32(a) => copy_rows(a, out),
            FeatureView::F64(a) => copy_rows(a, out),
        }
    }

    /// The whole matrix as a float64 CPU tensor. Only for metrics whose cost is quadratic in the
    /// rows anyway (MMD, CMMD, IS, small-sample routes); the scalable ones go by [`Self::block`].
    pub(crate) fn tensor(&self) -> Tensor {
        let (r, c) = self.dim();
        let shape = [r as i64, c as i64];
        match self {
            FeatureView::F64(a) => {
                let standard = a.as_standard_layout();
                device::here(Tensor::from_slice(standard.as_slice().unwrap_or(&[])).view(shape))
            }
            // Copied to the device as float32, half the bytes, and widened there (exactly).
            FeatureView::F32(a) => {
                let standard = a.as_standard_layout();
                device::here(Tensor::from_slice(standard.as_slice().unwrap_or(&[])).view(shape))
                    .to_kind(Kind::Double)
            }
        }
    }

    /// Rows `rows` (repetition allowed) as a float64 CPU tensor, converted row by row so only the
    /// gathered rows are ever held in float64.
    pub(crate) fn gather(&self, rows: &[usize]) -> Tensor {
        let d = self.ncols();
        let mut out = Vec::with_capacity(rows.len() * d);
        match self {
            FeatureView::F32(a) => {
                for &r in rows {
                    out.extend(a.row(r).iter().map(|&v| f64::from(v)));
                }
            }
            FeatureView::F64(a) => {
                for &r in rows {
                    out.extend(a.row(r).iter().copied());
                }
            }
        }
        device::here(Tensor::from_slice(&out).view([rows.len() as i64, d as i64]))
    }

    /// Consecutive row blocks of at most `rows_per_block` rows, as (first row, length).
    pub(crate) fn block_ranges(
        &self,
        rows_per_block: usize,
    ) -> impl Iterator<Item = (usize, usize)> {
        let n = self.nrows();
        let step = rows_per_block.max(1);
        (0..n)
            .step_by(step)
            .map(move |start| (start, step.min(n - start)))
    }
}

/// Copies `rows` into `out` (same shape, any kind and device), converting as it goes, with no
/// intermediate tensor.
fn copy_rows<T: tch::kind::Element>(
    rows: ArrayView2<T>,
    out: &Tensor,
) -> Result<(), tch::TchError> {
    let rows = rows.as_standard_layout();
    let shape = [rows.nrows() as i64, rows.ncols() as i64];
    // SAFETY: `rows` is a contiguous row-major buffer of this shape that outlives `src`, which is
    // only read by the copy below and dropped before it.
    let src = unsafe {
        Tensor::f_from_blob(
            rows.as_ptr().cast(),
            &shape,
            &[shape[1], 1],
            T::KIND,
            tch::Device::Cpu,
        )?
    };
    out.shallow_clone().f_copy_(&src)?;
    Ok(())
}

/// Rows per block so that a block of `row_bytes`-byte rows stays within `budget` bytes (at least
/// one row).
pub(crate) fn rows_within(row_bytes: usize, budget: usize) -> usize {
    (budget / row_bytes.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_blocks_and_gathers_are_exact_upcasts() {
        let a = Array2::from_shape_fn((7, 3), |(i, j)| (i as f32 + 0.1) * (j as f32 - 1.3));
        let f = Features::from(a.clone());
        let wide = a.mapv(f64::from);
        let v = f.view();
        let block = v.block(2, 4);
        let want = wide.slice(s![2..6, ..]);
        let got = Vec::<f64>::try_from(&block.view([-1])).unwrap();
        assert_eq!(got, want.iter().copied().collect::<Vec<_>>());
        let g = Vec::<f64>::try_from(&v.gather(&[6, 0, 6]).view([-1])).unwrap();
        let want: Vec<f64> = [6, 0, 6]
            .iter()
            .flat_map(|&r| wide.row(r).to_vec())
            .collect();
        assert_eq!(g, want);
        assert_eq!(f.select_rows(&[1, 1]).to_f64().row(1), wide.row(1));
        let ranges: Vec<_> = v.block_ranges(3).collect();
        assert_eq!(ranges, vec![(0, 3), (3, 3), (6, 1)]);
    }

    #[test]
    fn non_finite_values_are_found_in_either_precision() {
        let mut a = Array2::<f32>::zeros((2, 2));
        assert!(FeatureView::from(a.view()).all_finite());
        a[[1, 0]] = f32::NAN;
        assert!(!FeatureView::from(a.view()).all_finite());
        let b = ndarray::array![[1.0, f64::INFINITY]];
        assert!(!FeatureView::from(b.view()).all_finite());
    }
}
