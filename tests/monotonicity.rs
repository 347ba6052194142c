//! docs/metrics.md / Heusel et al. 2017: on the same base set, FID, KID and the style gap grow with the
//! strength of a disturbance. Base images are the bundled generated examples; disturbed copies
//! are written as PNG (lossless) and scored against the clean set with the tiny test extractor.
mod common;

use std::path::{Path, PathBuf};

use gapmeter::features::{BatchSize, DeviceSpec, Registry};
use gapmeter::metrics::rng::LegacyRandomState;
use gapmeter::score::{score, MetricName, MetricParams, ScoreOptions};
use image::{Rgb, RgbImage};

fn base_images() -> Vec<RgbImage> {
    let mut paths: Vec<PathBuf> = ["examples/A", "examples/B"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(common::root().join(d))
                .unwrap()
                .map(|e| e.unwrap().path())
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| image::open(p).unwrap().to_rgb8())
        .collect()
}

/// Normal deviates by Box–Muller on the seeded legacy stream.
fn normal(rng: &mut LegacyRandomState) -> f64 {
    let u1 = rng.random_sample().max(1e-12);
    let u2 = rng.random_sample();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn gaussian_noise(img: &RgbImage, sigma: f64, rng: &mut LegacyRandomState) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in p.0.iter_mut() {
            *c = (*c as f64 + sigma * normal(rng)).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn salt_and_pepper(img: &RgbImage, alpha: f64, rng: &mut LegacyRandomState) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        if rng.random_sample() < alpha {
            *p = if rng.random_sample() < 0.5 {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 255, 255])
            };
        }
    }
    out
}

/// A foreign image: a high-contrast checkerboard of seeded colours, unlike either example domain.
fn foreign(w: u32, h: u32, rng: &mut LegacyRandomState) -> RgbImage {
    let cell = 4 + rng.random_interval(12) as u32;
    let a = Rgb([
        rng.random_interval(255) as u8,
        0,
        rng.random_interval(255) as u8,
    ]);
    let b = Rgb([0, 255, rng.random_interval(255) as u8]);
    RgbImage::from_fn(
        w,
        h,
        |x, y| if (x / cell + y / cell) % 2 == 0 { a } else { b },
    )
}

fn write_set(dir: &Path, images: &[RgbImage]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, img) in images.iter().enumerate() {
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

fn options() -> ScoreOptions {
    ScoreOptions {
        extractor: Some("tiny-cnn".into()),
        metrics: Some(vec![MetricName::Fid, MetricName::Kid, MetricName::Style]),
        params: MetricParams::default(),
        batch_size: BatchSize::Fixed(16),
        devices: DeviceSpec::Cpu.into(),
        metrics_device: None,
        precision: Default::default(),
        strict: true,
        registry: Registry::new(common::models_dir()),
        progress: false,
        bootstrap: None,
        infinity_points: None,
        top: None,
        interrupt: None,
    }
}

#[test]
fn fid_kid_and_style_grow_with_every_disturbance() {
    let base = base_images();
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    write_set(&clean, &base);
    let opts = options();

    type Disturb = fn(&RgbImage, f64, &mut LegacyRandomState, usize) -> RgbImage;
    let disturbances: [(&str, [f64; 3], Disturb); 4] = [
        ("gaussian noise", [6.0, 20.0, 60.0], |img, s, rng, _| {
            gaussian_noise(img, s, rng)
        }),
        ("blur", [0.7, 1.8, 4.0], |img, s, _, _| {
            image::imageops::blur(img, s as f32)
        }),
        ("salt and pepper", [0.01, 0.05, 0.2], |img, a, rng, _| {
            salt_and_pepper(img, a, rng)
        }),
        (
            "swapped-in foreign images",
            [0.15, 0.4, 0.8],
            |img, frac, rng, i| {
                // Image i is replaced when it falls in the first `frac` of the set.
                if (i as f64) < frac * 48.0 {
                    foreign(img.width(), img.height(), rng)
                } else {
                    img.clone()
                }
            },
        ),
    ];
    let mut failures = Vec::new();
    for (name, levels, disturb) in disturbances {
        let mut previous: Option<[f64; 5]> = None;
        for (li, level) in levels.iter().enumerate() {
            let mut rng = LegacyRandomState::new(100 + li as u32);
            let images: Vec<RgbImage> = base
                .iter()
                .enumerate()
                .map(|(i, img)| disturb(img, *level, &mut rng, i))
                .collect();
            let target = dir.path().join(format!("{}-{li}", name.replace(' ', "_")));
            write_set(&target, &images);
            let r = score(clean.to_str().unwrap(), target.to_str().unwrap(), &opts).unwrap();
            let m = |k: &str| r.metrics[k].primary();
            let now = [
                m("fid"),
                m("kid"),
                m("style_coral"),
                m("style_log_euclidean"),
                m("style_bures_wasserstein"),
            ];
            eprintln!(
                "{name} {level}: FID {:.4} KID {:.5} CORAL {:.3e} logE {:.4} BW {:.4}",
                now[0], now[1], now[2], now[3], now[4]
            );
            if let Some(prev) = previous {
                for (k, label) in [
                    "FID",
                    "KID",
                    "style CORAL",
                    "style log-Euclidean",
                    "style Bures-Wasserstein",
                ]
                .iter()
                .enumerate()
                {
                    if now[k] <= prev[k] {
                        failures.push(format!("{label} did not grow with {name}: {} at the previous level, {} at {level}", prev[k], now[k]));
                    }
                }
            }
            previous = Some(now);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
