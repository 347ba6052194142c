//! Pairwise squared distances a tile at a time, for the k-NN metrics (PRDC, per-image gap): row
//! blocks of one side against column blocks of the other, each converted to float64 as it is
//! reached. Whatever a metric needs from a whole row of distances (the k nearest, a kernel sum) is
//! merged tile by tile, so neither an N×N distance matrix nor a whole row block's distances to a
//! whole set, nor a float64 copy of the features, ever exists.
use tch::{Kind, Tensor};

use super::features::rows_within;
use super::{device, FeatureView, MetricError};

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
    let d = a.f_mm(&b.f_tr()?)?;
    finish_squared_distances(d, na, nb_t)
}

/// −2·(the products in `d`) + ‖x‖² + ‖y‖², clamped at 0, in place.
fn finish_squared_distances(
    mut d: Tensor,
    na: &Tensor,
    nb_t: &Tensor,
) -> Result<Tensor, MetricError> {
    let _ = d.f_mul_scalar_(-2.0)?;
    let _ = d.f_add_(na)?;
    let _ = d.f_add_(nb_t)?;
    let _ = d.f_clamp_min_(0.0)?;
    Ok(d)
}

/// The buffers of a tiled pass, allocated once for the whole pass on the metrics' device: the
/// row tile and column tile in float64, the column tile's squares, and the distances of a full
/// tile. The hot loop then allocates nothing large; per-tile allocations of tens of MiB left the
/// heap holding freed tiles it could not hand back (resident memory grew with N).
pub(crate) struct Tiles {
    width: usize,
    rows: Tensor,
    columns: Tensor,
    squares: Tensor,
    distances: Tensor,
}

impl Tiles {
    /// Buffers for tiles of up to `width` rows of `d`-dimensional features.
    pub(crate) fn new(width: usize, d: usize) -> Result<Self, MetricError> {
        let width = width.max(1);
        let options = (Kind::Double, device::current());
        let block = || Tensor::f_empty([width as i64, d as i64], options);
        Ok(Self {
            width,
            rows: block()?,
            columns: block()?,
            squares: block()?,
            distances: Tensor::f_empty([width as i64, width as i64], options)?,
        })
    }

    /// Rows `start..start + len` of `x` (len ≤ width) in float64: a view of the row buffer,
    /// valid until the next `load_rows`.
    pub(crate) fn load_rows(
        &self,
        x: FeatureView,
        start: usize,
        len: usize,
    ) -> Result<Tensor, MetricError> {
        release_freed_memory();
        let view = self.rows.f_narrow(0, 0, len as i64)?;
        x.block_into(start, len, &view)?;
        Ok(view)
    }

    /// ‖x‖² of each row of `a` (n × 1), as [`squared_norms`] forms it (the same products and
    /// sum), the products written into the squares buffer.
    fn norms(&self, a: &Tensor) -> Result<Tensor, MetricError> {
        let sq = self.squares.f_narrow(0, 0, a.size()[0])?;
        let _ = a.f_mul_out(&sq, a)?;
        Ok(sq.f_sum_dim_intlist(1, true, Kind::Double)?)
    }

    /// Calls `f(first column, squared distances)` for `rows` (a row tile) against each tile of
    /// `columns`, in column order. The distances are a view of the pass's buffer: `f` may change
    /// them in place but must not keep them past its return.
    pub(crate) fn for_each_column_block<F>(
        &self,
        rows: &Tensor,
        columns: FeatureView,
        mut f: F,
    ) -> Result<(), MetricError>
    where
        F: FnMut(usize, Tensor) -> Result<(), MetricError>,
    {
        let na = self.norms(rows)?;
        let r = rows.size()[0];
        for (start, len) in columns.block_ranges(self.width) {
            let b = self.columns.f_narrow(0, 0, len as i64)?;
            columns.block_into(start, len, &b)?;
            let nb_t = self.norms(&b)?.f_tr()?;
            // A narrowed view of a row-major buffer is contiguous only at full width.
            let out = if len == self.width {
                self.distances.f_narrow(0, 0, r)?
            } else {
                Tensor::f_empty([r, len as i64], (Kind::Double, device::current()))?
            };
            let _ = rows.f_mm_out(&out, &b.f_tr()?)?;
            f(start, finish_squared_distances(out, &na, &nb_t)?)?;
        }
        Ok(())
    }

    /// The `k` smallest squared distances from each row of `rows` to the rows of `set`,
    /// ascending (rows × min(k, set)), where `rows` are rows `first_row..` of `set` itself: a
    /// row's distance to itself counts as 0, its 0-th neighbour. Merged tile by tile: the k
    /// smallest of a row are among the k smallest of each tile, and selection does no
    /// arithmetic, so the values are those of the whole row.
    pub(crate) fn smallest_own_squared_distances(
        &self,
        rows: &Tensor,
        set: FeatureView,
        first_row: usize,
        k: usize,
    ) -> Result<Tensor, MetricError> {
        let mut best: Option<Tensor> = None;
        self.for_each_column_block(rows, set, |col, d| {
            zero_own_distances(&d, first_row, col)?;
            best = Some(keep_smallest(best.take(), &d, k)?);
            Ok(())
        })?;
        best.ok_or_else(|| {
            MetricError::InvalidParameter("no samples to measure distances to".into())
        })
    }
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

/// The `k` smallest values of each row among `best` (a previous result, if any) and the columns
/// of `d`, ascending: one merge step of [`Tiles::smallest_own_squared_distances`]. The tile's own
/// k smallest are selected first, so only 2k values a row are ever concatenated.
pub(crate) fn keep_smallest(
    best: Option<Tensor>,
    d: &Tensor,
    k: usize,
) -> Result<Tensor, MetricError> {
    let smallest = |t: &Tensor| -> Result<Tensor, MetricError> {
        let keep = k.min(t.size()[1] as usize) as i64;
        Ok(t.f_topk(keep, 1, false, true)?.0)
    };
    let tile = smallest(d)?;
    match best {
        Some(b) => smallest(&Tensor::f_cat(&[b, tile], 1)?),
        None => Ok(tile),
    }
}

/// Hands the allocator's free pages back to the system, in every arena. The tiles' small and
/// medium temporaries (comparison masks, top-k scratch on libtorch's worker threads) otherwise
/// leave freed pages resident between tiles, and resident memory grew with N (PRDC at 20,000 ×
/// 2048 per side: 45 MiB more per 10,000 rows). Called once a row tile, it costs well under a
/// millisecond against a tile's seconds of products.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
