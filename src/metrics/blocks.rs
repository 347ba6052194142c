//! Pairwise squared distances a row block at a time, for the k-NN metrics (PRDC, per-image gap):
//! the rows of one side against column blocks of the other, converted to float64 as they are
//! reached, so neither the whole N×N distance matrix nor a float64 copy of the features exists.
use tch::{Device, Kind, Tensor};

use super::features::rows_within;
use super::{FeatureView, MetricError};

/// Bytes of float64 distances a row block may span across all columns (the k-NN radii need whole
/// rows at once).
pub(crate) const DISTANCE_ROW_BYTES: usize = 128 << 20;

/// Bytes of float64 features per column block.
const COLUMN_BLOCK_BYTES: usize = 16 << 20;

/// Rows per block so that their distances to `columns` samples stay within
/// [`DISTANCE_ROW_BYTES`].
pub(crate) fn distance_rows(columns: usize) -> usize {
    rows_within(columns * 8, DISTANCE_ROW_BYTES)
}

/// ‖x‖² of each row, as an (n × 1) column.
pub(crate) fn squared_norms(a: &Tensor) -> Result<Tensor, MetricError> {
    Ok(a.f_mul(a)?.f_sum_dim_intlist(1, true, Kind::Double)?)
}

/// ‖x‖² + ‖y‖² − 2xᵀy clamped at 0, from the row norms `na` (n × 1) and `nb_t` (1 × m); the one
/// formula behind every squared distance here, whichever blocks it is applied to.
pub(crate) fn squared_distances_normed(
    a: &Tensor,
    na: &Tensor,
    b: &Tensor,
    nb_t: &Tensor,
) -> Result<Tensor, MetricError> {
    let cross = a.f_mm(&b.f_tr()?)?;
    Ok(cross
        .f_mul_scalar(-2.0)?
        .f_add(na)?
        .f_add(nb_t)?
        .f_clamp_min(0.0)?)
}

/// Calls `f(first column, squared distances)` for the rows of `rows` against each column block of
/// `columns`, in column order.
pub(crate) fn for_each_column_block<F>(
    rows: &Tensor,
    columns: FeatureView,
    mut f: F,
) -> Result<(), MetricError>
where
    F: FnMut(usize, Tensor) -> Result<(), MetricError>,
{
    let na = squared_norms(rows)?;
    let width = rows_within(columns.ncols() * 8, COLUMN_BLOCK_BYTES);
    for (start, len) in columns.block_ranges(width) {
        let b = columns.block(start, len);
        let nb_t = squared_norms(&b)?.f_tr()?;
        f(start, squared_distances_normed(rows, &na, &b, &nb_t)?)?;
    }
    Ok(())
}

/// Squared distances of `rows` to every row of `columns` (rows × columns.nrows()).
pub(crate) fn squared_distance_rows(
    rows: &Tensor,
    columns: FeatureView,
) -> Result<Tensor, MetricError> {
    let r = rows.size()[0];
    let out = Tensor::f_empty([r, columns.nrows() as i64], (Kind::Double, Device::Cpu))?;
    for_each_column_block(rows, columns, |start, d| {
        let len = d.size()[1];
        out.f_narrow(1, start as i64, len)?.f_copy_(&d)?;
        Ok(())
    })?;
    Ok(out)
}
