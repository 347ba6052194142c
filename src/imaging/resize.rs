//! PIL's antialiased BICUBIC resampling for single-channel float32 ("F" mode) images, reproduced
//! step for step: the same filter (a = −0.5), the same support scaling by the downscale factor,
//! the same rounding of each output pixel's source window, normalised double-precision weights,
//! double accumulation, a float32 intermediate between the horizontal and the vertical pass.

/// Bicubic convolution kernel with a = −0.5 (PIL's `bicubic_filter`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The source window and weights of each output pixel along one axis: for output `i`,
/// `(first_source_index, weights)`.
pub fn resize_plane_coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    const SUPPORT: f64 = 2.0;
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; negatives are clamped to 0 right after.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// Resizes a `in_w` × `in_h` row-major float32 plane to `out_w` × `out_h` like
/// `Image.fromarray(plane, mode="F").resize((out_w, out_h), Image.BICUBIC)`.
///
/// ```
/// let plane = vec![10.0f32; 6 * 4];
/// let out = gapmeter::imaging::pil_bicubic_resize(&plane, 6, 4, 3, 2);
/// assert_eq!(out.len(), 6);
/// assert!(out.iter().all(|v| (v - 10.0).abs() < 1e-5));
/// ```
pub fn pil_bicubic_resize(
    plane: &[f32],
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<f32> {
    debug_assert_eq!(plane.len(), in_w * in_h);
    let horizontal = if out_w != in_w {
        let coeffs = resize_plane_coefficients(in_w, out_w);
        let mut tmp = Vec::with_capacity(out_w * in_h);
        for y in 0..in_h {
            let row = &plane[y * in_w..(y + 1) * in_w];
            for (xmin, w) in &coeffs {
                let ss: f64 = w
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| row[xmin + k] as f64 * wk)
                    .sum();
                tmp.push(ss as f32);
            }
        }
        tmp
    } else {
        plane.to_vec()
    };
    if out_h == in_h {
        return horizontal;
    }
    let coeffs = resize_plane_coefficients(in_h, out_h);
    let mut out = Vec::with_capacity(out_w * out_h);
    for (ymin, w) in &coeffs {
        for x in 0..out_w {
            let ss: f64 = w
                .iter()
                .enumerate()
                .map(|(k, wk)| horizontal[(ymin + k) * out_w + x] as f64 * wk)
                .sum();
            out.push(ss as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_normalised_and_windows_clamped() {
        for (i, o) in [(100, 299), (640, 299), (299, 299), (7, 3)] {
            let c = resize_plane_coefficients(i, o);
            assert_eq!(c.len(), o);
            for (start, w) in &c {
                assert!(start + w.len() <= i);
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn downscale_widens_the_kernel() {
        // Downscaling by 4 spreads the bicubic support (2) to 8 source pixels each side.
        let c = resize_plane_coefficients(400, 100);
        assert_eq!(c[50].1.len(), 16);
        let up = resize_plane_coefficients(100, 400);
        assert!(up[200].1.len() <= 5);
    }

    #[test]
    fn linear_ramps_stay_linear_inside() {
        let (w, h) = (40, 30);
        let plane: Vec<f32> = (0..w * h).map(|i| (i % w) as f32 * 2.0).collect();
        let out = pil_bicubic_resize(&plane, w, h, 80, 30);
        // Away from the borders a cubic-exact kernel reproduces a ramp: out(x) = 2·((x+0.5)/2−0.5).
        for x in 8..72 {
            let expected = 2.0 * ((x as f32 + 0.5) / 2.0 - 0.5);
            assert!(
                (out[5 * 80 + x] - expected).abs() < 1e-4,
                "{x}: {} vs {expected}",
                out[5 * 80 + x]
            );
        }
    }
}
