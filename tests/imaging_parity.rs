//! Decoding and resizing against Pillow and torch, on the fixtures written by
//! scripts/reference/make_imaging_fixtures.py (tests/fixtures/imaging/index.json lists them).
//!
//! `GAPMETER_IMAGING_FIXTURES=DIR` points the tests at a `--full` fixture set (every output pixel)
//! to measure whole-image differences; run with `--nocapture` to see the figures.
use std::path::PathBuf;

use gapmeter::imaging::{decode_rgb, prepare, ResizeMode};
use ndarray::{Array2, Array3};
use ndarray_npy::ReadNpyExt;

fn fixtures() -> PathBuf {
    std::env::var_os("GAPMETER_IMAGING_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imaging"))
}

fn index() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("index.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read_npy<T: ReadNpyExt>(name: &str) -> T {
    let f = std::fs::File::open(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    T::read_npy(f).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Max and mean absolute difference between gapmeter's output (CHW, values × `to_ref`) and the
/// reference samples (rows y, x, r, g, b).
fn compare(mode: ResizeMode, prefix: &str, to_ref: f32) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    for case in index()["resize"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(case["input"].as_str().unwrap())).unwrap();
        let img = decode_rgb(&bytes).unwrap();
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let p = prepare(&img, h, w, mode).unwrap();
        let reference: Array2<f32> = read_npy(&format!("{prefix}_{name}.npy"));
        let (mut max, mut sum, mut n) = (0f64, 0f64, 0usize);
        for row in reference.rows() {
            let (y, x) = (row[0] as usize, row[1] as usize);
            for c in 0..3 {
                let ours = p.data[c * h * w + y * w + x] * to_ref;
                let d = (ours as f64 - row[2 + c] as f64).abs();
                max = max.max(d);
                sum += d;
                n += 1;
            }
        }
        let mean = sum / n as f64;
        println!("{prefix} {name}: {n} values, max |diff| {max:.3e}, mean {mean:.3e}");
        out.push((name.to_string(), max, mean));
    }
    out
}

#[test]
fn clean_resize_matches_pillow_bicubic_on_float32() {
    let results = compare(ResizeMode::Clean, "clean", 1.0);
    assert!(results.len() >= 6);
    for (name, max, mean) in results {
        assert!(max <= 1e-3, "{name}: max |diff| {max} on the 0-255 scale");
        assert!(
            mean <= 1e-4,
            "{name}: mean |diff| {mean} on the 0-255 scale"
        );
    }
}

#[test]
fn legacy_resize_matches_torch_interpolate() {
    for (name, max, _) in compare(ResizeMode::LegacyPytorch, "legacy", 1.0) {
        assert!(max <= 1e-4, "{name}: max |diff| {max} on the 0-1 scale");
    }
}

/// Pixel differences between our decoding and Pillow's `convert("RGB")`.
fn decode_diff(name: &str) -> (u8, f64) {
    let bytes = std::fs::read(fixtures().join(name)).unwrap();
    let ours = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let pillow: Array3<u8> = read_npy(&format!("{name}.rgb.npy"));
    let (h, w, _) = pillow.dim();
    assert_eq!(
        (ours.width() as usize, ours.height() as usize),
        (w, h),
        "{name}"
    );
    let mut max = 0u8;
    let mut sum = 0u64;
    for ((y, x, c), v) in pillow.indexed_iter() {
        let d = ours.get_pixel(x as u32, y as u32).0[c].abs_diff(*v);
        max = max.max(d);
        sum += d as u64;
    }
    (max, sum as f64 / pillow.len() as f64)
}

#[test]
fn lossless_formats_decode_exactly_like_pillow() {
    let idx = index();
    let names: Vec<&str> = idx["decode"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|n| !n.ends_with(".jpg") && !n.contains("lossy"))
        .collect();
    assert!(names.len() >= 9, "{names:?}");
    for name in names {
        let (max, _) = decode_diff(name);
        assert_eq!(max, 0, "{name} differs from Pillow's convert(\"RGB\")");
    }
}

/// JPEG goes through libjpeg-turbo's decoder, as in Pillow, and lossy WebP through the same
/// libwebp algorithm: both must decode bit-identically.
#[test]
fn lossy_decoding_against_pillow() {
    let idx = index();
    let mut jpegs = 0;
    for name in idx["decode"].as_object().unwrap().keys() {
        if name.ends_with(".jpg") {
            let (max, mean) = decode_diff(name);
            println!("decode {name}: max |diff| {max}, mean {mean:.4}");
            assert_eq!(max, 0, "{name}: max {max}, mean {mean}");
            jpegs += 1;
        } else if name.contains("lossy") {
            assert_eq!(decode_diff(name).0, 0, "{name}");
        }
    }
    assert!(jpegs >= 5);
}
