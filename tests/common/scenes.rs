//! Seeded synthetic image sets whose differences are known, for the analyses' tests: "blob"
//! scenes (soft coloured discs on a gradient) and "stripe" scenes (oriented sinusoidal
//! stripes), photometric changes of them, and stripes brought to the blobs' colour statistics
//! (a content change with matched colour).
#![allow(dead_code)]
use std::path::Path;

use image::{Rgb, RgbImage};
use rand::{rngs::StdRng, Rng, SeedableRng};

pub const SIZE: u32 = 64;

/// A scene of soft discs on a two-colour gradient.
pub fn blobs(seed: u64) -> RgbImage {
    let mut rng = StdRng::seed_from_u64(seed);
    let c0: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
    let c1: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
    let discs: Vec<(f32, f32, f32, [f32; 3])> = (0..rng.gen_range(3..6))
        .map(|_| {
            (
                rng.gen_range(0.0..SIZE as f32),
                rng.gen_range(0.0..SIZE as f32),
                rng.gen_range(6.0..18.0),
                [rng.gen(), rng.gen(), rng.gen()],
            )
        })
        .collect();
    RgbImage::from_fn(SIZE, SIZE, |x, y| {
        let t = (x + y) as f32 / (2 * SIZE) as f32;
        let mut px = [0f32; 3];
        for c in 0..3 {
            px[c] = c0[c] * (1.0 - t) + c1[c] * t;
        }
        for (cx, cy, r, col) in &discs {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            let w = (1.0 - (d - r).max(0.0) / 3.0).clamp(0.0, 1.0);
            for c in 0..3 {
                px[c] = px[c] * (1.0 - w) + col[c] * w;
            }
        }
        to_rgb(px)
    })
}

/// A scene of oriented sinusoidal stripes between two colours.
pub fn stripes(seed: u64) -> RgbImage {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5151);
    let c0: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
    let c1: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
    let angle: f32 = rng.gen_range(0.0..std::f32::consts::PI);
    let freq: f32 = rng.gen_range(0.15..0.6);
    let phase: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
    RgbImage::from_fn(SIZE, SIZE, |x, y| {
        let u = x as f32 * angle.cos() + y as f32 * angle.sin();
        let t = 0.5 + 0.5 * (u * freq + phase).sin();
        let mut px = [0f32; 3];
        for c in 0..3 {
            px[c] = c0[c] * (1.0 - t) + c1[c] * t;
        }
        to_rgb(px)
    })
}

fn to_rgb(px: [f32; 3]) -> Rgb<u8> {
    Rgb(px.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
}

/// A colour cast (red up, blue down) and a gamma: a purely photometric change.
pub fn cast_and_gamma(img: &RgbImage, gamma: f32) -> RgbImage {
    let gains = [1.15f32, 1.0, 0.8];
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        let mut out = [0f32; 3];
        for c in 0..3 {
            out[c] = ((p[c] as f32 / 255.0) * gains[c])
                .clamp(0.0, 1.0)
                .powf(gamma);
        }
        to_rgb(out)
    })
}

/// Per-channel mean and standard deviation over a set of images.
pub fn channel_stats(imgs: &[RgbImage]) -> [(f32, f32); 3] {
    let mut out = [(0f32, 0f32); 3];
    for (c, o) in out.iter_mut().enumerate() {
        let vals: Vec<f32> = imgs
            .iter()
            .flat_map(|i| i.pixels().map(move |p| p.0[c] as f32))
            .collect();
        let m = vals.iter().sum::<f32>() / vals.len() as f32;
        let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / vals.len() as f32;
        *o = (m, v.sqrt());
    }
    out
}

/// `imgs` moved, channel by channel, to the mean and standard deviation of `stats`.
pub fn match_colour(imgs: &[RgbImage], stats: [(f32, f32); 3]) -> Vec<RgbImage> {
    let own = channel_stats(imgs);
    imgs.iter()
        .map(|img| {
            RgbImage::from_fn(img.width(), img.height(), |x, y| {
                let p = img.get_pixel(x, y).0;
                let mut out = [0u8; 3];
                for c in 0..3 {
                    let z = (p[c] as f32 - own[c].0) / own[c].1.max(1e-3);
                    out[c] = (stats[c].0 + z * stats[c].1).round().clamp(0.0, 255.0) as u8;
                }
                Rgb(out)
            })
        })
        .collect()
}

/// Writes `imgs` as `dir/{prefix}{i:03}.png` and returns the directory.
pub fn write(dir: &Path, prefix: &str, imgs: &[RgbImage]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, img) in imgs.iter().enumerate() {
        img.save(dir.join(format!("{prefix}{i:03}.png"))).unwrap();
    }
}

/// PNG bytes of every image, named as [`write`] names them (for uploads).
pub fn png_files(prefix: &str, imgs: &[RgbImage]) -> Vec<(String, Vec<u8>)> {
    imgs.iter()
        .enumerate()
        .map(|(i, img)| {
            let mut out = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .unwrap();
            (format!("{prefix}{i:03}.png"), out)
        })
        .collect()
}

/// A models directory holding every default model (linked) and `tiny-clip`: tiny-cnn's image
/// tower with a seeded synthetic text tower in which "night" is "day" moved along the actual
/// shift between the (normalised) image embeddings of `source` and `target`, so that the
/// day → night direction carries the gap. Returns the directory.
pub fn clip_models(work: &Path, source: &Path, target: &Path) -> std::path::PathBuf {
    use ndarray::Array1;
    use ndarray_npy::{ReadNpyExt, WriteNpyExt};
    let models = gapmeter::features::default_models_dir();
    let out = work.join("models");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(&models).unwrap() {
        let p = entry.unwrap().path();
        let link = out.join(p.file_name().unwrap());
        if !link.exists() {
            std::os::unix::fs::symlink(&p, &link).unwrap();
        }
    }
    let mean_direction = |dir: &Path, name: &str| -> Array1<f64> {
        let npy = work.join(format!("{name}.npy"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_gapmeter"))
            .args([
                "extract",
                dir.to_str().unwrap(),
                "-o",
                npy.to_str().unwrap(),
            ])
            .args(["-x", "tiny-cnn", "--no-progress"])
            .status()
            .unwrap();
        assert!(status.success());
        let f = ndarray::Array2::<f32>::read_npy(std::fs::File::open(&npy).unwrap()).unwrap();
        let mut m = Array1::<f64>::zeros(f.ncols());
        for row in f.rows() {
            let r = row.mapv(f64::from);
            m += &(&r / r.dot(&r).sqrt());
        }
        m / f.nrows() as f64
    };
    let delta = mean_direction(target, "t") - mean_direction(source, "s");
    let dir_npy = work.join("direction.npy");
    delta
        .write_npy(std::fs::File::create(&dir_npy).unwrap())
        .unwrap();
    let tok = gapmeter::features::ClipTokenizer::bundled().unwrap();
    let (day, night) = (tok.encode("day"), tok.encode("night"));
    assert_eq!(
        (day.len(), night.len()),
        (1, 1),
        "day and night are one token each"
    );
    let python = std::env::var("GAPMETER_PYTHON").unwrap_or_else(|_| "python3".into());
    let text_dir = work.join("text");
    let out_json = std::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_text_tower.py"))
        .args([
            "--out",
            text_dir.to_str().unwrap(),
            "--dim",
            &delta.len().to_string(),
        ])
        .args(["--seed", "0", "--plant"])
        .args([day[0].to_string(), night[0].to_string()])
        .args([dir_npy.to_str().unwrap(), "60"])
        .output()
        .unwrap();
    assert!(
        out_json.status.success(),
        "{}",
        String::from_utf8_lossy(&out_json.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out_json.stdout).unwrap();
    std::fs::copy(text_dir.join("text.pt"), out.join("tiny-clip-text.pt")).unwrap();
    let tiny = std::fs::read_to_string(models.join("tiny-cnn.toml")).unwrap();
    let manifest = tiny.replace("id = \"tiny-cnn\"", "id = \"tiny-clip\"")
        + &format!(
            "\n[text_encoder]\nfile = \"tiny-clip-text.pt\"\nsha256 = \"{}\"\n",
            info["sha256"].as_str().unwrap()
        );
    std::fs::write(out.join("tiny-clip.toml"), manifest).unwrap();
    out
}
