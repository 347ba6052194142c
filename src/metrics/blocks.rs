//! Pairwise squared distances a tile at a time, for the k-NN metrics (PRDC, per-image gap): row
//! blocks of one side against column blocks of the other, each converted to float64 as it is
//! reached. Whatever a metric needs from a whole row of distances (the k nearest, a kernel sum) is
//! merged tile by tile, so neither an N×N distance matrix nor a whole row block's distances to a
//! whole set, nor a float64 copy of the features, ever exists.
use tch::{Kind, Tensor};

use super::features::rows_within;
use super::{FeatureView, MetricError};

/// Bytes of float64 features in one tile side.
const TILE_FEATURE_BYTES: usize = 16 << 20;

/// At most this many rows a tile side, so a tile's distances stay within 8 MiB however small the
/// feature dimension is.
const MAX_TILE: usize = 1024;

/// Rows per tile side for `d`-dimensional features: large enough that the matrix products run at
/// full speed (1024 × 1024 × d), small enough that a tile's operands and distances take tens of MiB.
pub(crate) fn tile_rows(d: usize) -> usize {
    rows_within(d * 8, TILE_FEATURE_BYTES).min(MAX_TILE)
}

/// ‖x‖² of each row, as an (n × 1) column.
pub(crate) fn squared_norms(a: &Tensor) -> Result<Tensor, MetricError> {
    Ok(a.f_mul(a)?.f_sum_dim_intlist(1, true, Kind::Double)?)
}

/// ‖x‖² + ‖y‖² − 2xᵀy clamped at 0, from the row norms `na` (n × 1) and `nb_t` (1 × m); the one
/// formula behind every squared distance here, whichever blocks it is applied to. In place on the
/// product, so one n × m matrix is alive, not five; the operations and their order are the same.
pub(crate) fn squared_distances_normed(
    a: &Tensor,
    na: &Tensor,
    b: &Tensor,
    nb_t: &Tensor,
) -> Result<Tensor, MetricError> {
    let mut d = a.f_mm(&b.f_tr()?)?;
    let _ = d.f_mul_scalar_(-2.0)?;
    let _ = d.f_add_(na)?;
    let _ = d.f_add_(nb_t)?;
    let _ = d.f_clamp_min_(0.0)?;
    Ok(d)
}

/// Calls `f(first column, squared distances)` for the rows of `rows` against each block of
/// `width` rows of `columns`, in column order.
pub(crate) fn for_each_column_block<F>(
    rows: &Tensor,
    columns: FeatureView,
    width: usize,
    mut f: F,
) -> Result<(), MetricError>
where
    F: FnMut(usize, Tensor) -> Result<(), MetricError>,
{
    let na = squared_norms(rows)?;
    for (start, len) in columns.block_ranges(width) {
        let b = columns.block(start, len);
        let nb_t = squared_norms(&b)?.f_tr()?;
        f(start, squared_distances_normed(rows, &na, &b, &nb_t)?)?;
    }
    Ok(())
}

/// Where `rows` are rows `first_row..` of the very set a tile's columns `first_col..` come from,
/// sets each row's distance to itself to exactly 0: rounding in ‖x‖²+‖x‖²−2xᵀx may leave a tiny
/// positive value that would displace the true nearest neighbour.
fn zero_own_distances(d: &Tensor, first_row: usize, first_col: usize) -> Result<(), MetricError> {
    let (rows, cols) = (d.size()[0] as usize, d.size()[1] as usize);
    let lo = first_row.max(first_col);
    let hi = (first_row + rows).min(first_col + cols);
    if lo < hi {
        let mut diagonal = d
            .f_narrow(0, (lo - first_row) as i64, (hi - lo) as i64)?
            .f_narrow(1, (lo - first_col) as i64, (hi - lo) as i64)?;
        let _ = diagonal.f_fill_diagonal_(0.0, false)?;
    }
    Ok(())
}

/// The `k` smallest squared distances from each row of `rows` to the rows of `set`, ascending
/// (rows × min(k, set)), where `rows` are rows `first_row..` of `set` itself: a row's distance to
/// itself counts as 0, its 0-th neighbour. Merged over column blocks of `width`: the k smallest of a
/// row are among the k smallest of each block, and selection does no arithmetic, so the values
/// are those of the whole row.
pub(crate) fn smallest_own_squared_distances(
    rows: &Tensor,
    set: FeatureView,
    first_row: usize,
    k: usize,
    width: usize,
) -> Result<Tensor, MetricError> {
    let mut best: Option<Tensor> = None;
    for_each_column_block(rows, set, width, |col, d| {
        zero_own_distances(&d, first_row, col)?;
        best = Some(keep_smallest(best.take(), d, k)?);
        Ok(())
    })?;
    best.ok_or_else(|| MetricError::InvalidParameter("no samples to measure distances to".into()))
}

/// The `k` smallest values of each row among `best` (a previous result, if any) and the columns
/// of `d`, ascending: one merge step of [`smallest_own_squared_distances`].
pub(crate) fn keep_smallest(
    best: Option<Tensor>,
    d: Tensor,
    k: usize,
) -> Result<Tensor, MetricError> {
    let merged = match best {
        Some(b) => Tensor::f_cat(&[b, d], 1)?,
        None => d,
    };
    let keep = k.min(merged.size()[1] as usize) as i64;
    let (values, _) = merged.f_topk(keep, 1, false, true)?;
    Ok(values)
}
