//! Photometric transforms with torchvision's meaning, so that a setting found by a search (how
//! much darker, blurrier, more compressed must set A be to look like set B?) can be put into a
//! training pipeline as the torchvision call [`Knob::torchvision`] names, and do the same there.
//!
//! Each step follows `torchvision.transforms.v2.functional` on a float32 image in [0, 1] (the
//! tensor path, not PIL's), including its float32 operation order, so that the u8 result agrees
//! with torchvision's to within one level (tests/transforms_reference.rs measures it against
//! torchvision 0.26 on scripts/reference/make_transform_fixture.py's fixture; docs/reduce.md,
//! "Photometric transforms", gives the figures).

use std::f64::consts::PI;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{ImageError, RgbImage};

/// The largest accepted [`Photometric::blur_sigma`]: the kernel grows as 6σ, and a sigma from an
/// untrusted request must not turn one image into minutes of work. 32 px (a 193-tap kernel) is
/// ten times the search range.
pub const MAX_BLUR_SIGMA: f64 = 32.0;

/// Parameters of a photometric transform, each at its identity by default. Meaning as
/// `torchvision.transforms.v2.functional` on a float image in [0, 1]; a parameter at its identity
/// skips its step (as leaving the call out of a pipeline would).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Photometric {
    /// `adjust_brightness` factor (x·f, clamped to [0, 1]); 1 = identity, ≥ 0.
    pub brightness: f64,
    /// `adjust_contrast` factor: blend with the mean of the grayscale image; 1 = identity, ≥ 0.
    pub contrast: f64,
    /// `adjust_saturation` factor: blend with the grayscale image; 1 = identity, 0 = gray, ≥ 0.
    pub saturation: f64,
    /// `adjust_hue` shift of the HSV hue, in turns, within [-0.5, 0.5]; 0 = identity.
    pub hue: f64,
    /// `adjust_gamma` exponent (gain 1): x^gamma on [0, 1]; 1 = identity, > 0.
    pub gamma: f64,
    /// `gaussian_blur` sigma in pixels, kernel size 2·⌈3σ⌉ + 1, reflect padding; 0 = identity,
    /// at most [`MAX_BLUR_SIGMA`].
    pub blur_sigma: f64,
    /// Standard deviation of additive Gaussian noise on the [0, 1] scale, clipped to [0, 1]
    /// (`gaussian_noise(..., clip=True)`); 0 = identity.
    pub noise_std: f64,
    /// JPEG re-encoding quality 1..=100 (`jpeg`); 100 = identity (no re-encoding).
    pub jpeg_quality: u8,
}

impl Default for Photometric {
    fn default() -> Self {
        Self::identity()
    }
}

impl Photometric {
    /// The transform that changes nothing.
    pub fn identity() -> Self {
        Self {
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            hue: 0.0,
            gamma: 1.0,
            blur_sigma: 0.0,
            noise_std: 0.0,
            jpeg_quality: 100,
        }
    }

    /// True when every parameter is at its identity, so [`apply`](Self::apply) copies the image.
    pub fn is_identity(&self) -> bool {
        Knob::ALL.iter().all(|k| k.get(self) == k.identity())
    }

    /// Checks the ranges torchvision accepts (and [`MAX_BLUR_SIGMA`]); the message names the
    /// field, for an API's error answer.
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: f64, ok: bool, want: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(format!("{name} must be {want}, got {v}"))
            }
        };
        check("brightness", self.brightness, self.brightness >= 0.0, "≥ 0")?;
        check("contrast", self.contrast, self.contrast >= 0.0, "≥ 0")?;
        check("saturation", self.saturation, self.saturation >= 0.0, "≥ 0")?;
        check("hue", self.hue, self.hue.abs() <= 0.5, "within [-0.5, 0.5]")?;
        check("gamma", self.gamma, self.gamma > 0.0, "> 0")?;
        check(
            "blur_sigma",
            self.blur_sigma,
            (0.0..=MAX_BLUR_SIGMA).contains(&self.blur_sigma),
            &format!("within [0, {MAX_BLUR_SIGMA}]"),
        )?;
        check("noise_std", self.noise_std, self.noise_std >= 0.0, "≥ 0")?;
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(format!(
                "jpeg_quality must be within 1..=100, got {}",
                self.jpeg_quality
            ));
        }
        Ok(())
    }

    /// Applies the transform in the fixed order brightness, contrast, saturation, hue, gamma,
    /// blur, noise, JPEG: float32 on [0, 1] between steps (as a torchvision pipeline after
    /// `to_dtype(img, torch.float32, scale=True)`), rounded to u8 once at the end (half to even,
    /// as `torch.round`), before the JPEG step, which works on u8 as torchvision's `jpeg` does.
    ///
    /// `seed` drives the noise only (rand's `StdRng`): the same seed, image size and build give
    /// the same pixels. The noise is not torch's random stream; only its distribution agrees.
    ///
    /// Invalid parameters (see [`validate`](Self::validate)) are an error, not clamped: a
    /// search must not silently measure something else than it asked for.
    pub fn apply(&self, img: &RgbImage, seed: u64) -> Result<RgbImage, ImageError> {
        self.validate()
            .map_err(|msg| ImageError::Transform(format!("invalid parameters: {msg}")))?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        if self.is_identity() || w == 0 || h == 0 {
            return Ok(img.clone());
        }
        let float_steps = Photometric {
            jpeg_quality: 100,
            ..*self
        };
        let mut out = if float_steps.is_identity() {
            img.clone()
        } else {
            let mut px = to_unit_float(img);
            if self.brightness != 1.0 {
                adjust_brightness(&mut px, self.brightness);
            }
            if self.contrast != 1.0 {
                adjust_contrast(&mut px, self.contrast);
            }
            if self.saturation != 1.0 {
                adjust_saturation(&mut px, self.saturation);
            }
            if self.hue != 0.0 {
                adjust_hue(&mut px, self.hue);
            }
            if self.gamma != 1.0 {
                adjust_gamma(&mut px, self.gamma);
            }
            if self.blur_sigma > 0.0 {
                gaussian_blur(&mut px, w, h, self.blur_sigma);
            }
            if self.noise_std > 0.0 {
                gaussian_noise(&mut px, self.noise_std, seed);
            }
            to_u8_image(&px, img.width(), img.height())?
        };
        if self.jpeg_quality < 100 {
            out = jpeg_roundtrip(&out, self.jpeg_quality)?;
        }
        Ok(out)
    }
}

/// One knob of the family, for a coordinate search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    Brightness,
    Contrast,
    Saturation,
    Hue,
    Gamma,
    BlurSigma,
    NoiseStd,
    JpegQuality,
}

impl Knob {
    /// Every knob, in the order [`Photometric::apply`] applies them.
    pub const ALL: [Knob; 8] = [
        Knob::Brightness,
        Knob::Contrast,
        Knob::Saturation,
        Knob::Hue,
        Knob::Gamma,
        Knob::BlurSigma,
        Knob::NoiseStd,
        Knob::JpegQuality,
    ];

    /// The [`Photometric`] field (and JSON key) this knob sets.
    pub fn name(self) -> &'static str {
        match self {
            Knob::Brightness => "brightness",
            Knob::Contrast => "contrast",
            Knob::Saturation => "saturation",
            Knob::Hue => "hue",
            Knob::Gamma => "gamma",
            Knob::BlurSigma => "blur_sigma",
            Knob::NoiseStd => "noise_std",
            Knob::JpegQuality => "jpeg_quality",
        }
    }

    /// The value at which this knob changes nothing.
    pub fn identity(self) -> f64 {
        self.get(&Photometric::identity())
    }

    /// The range a search explores: wide enough for the shifts seen between real datasets, narrow
    /// enough that the image stays recognisable. Each range contains the identity.
    pub fn range(self) -> (f64, f64) {
        match self {
            Knob::Brightness | Knob::Contrast | Knob::Saturation => (0.5, 1.5),
            Knob::Hue => (-0.1, 0.1),
            Knob::Gamma => (0.5, 2.0),
            Knob::BlurSigma => (0.0, 3.0),
            Knob::NoiseStd => (0.0, 0.1),
            Knob::JpegQuality => (10.0, 100.0),
        }
    }

    /// This knob's value in `p`.
    pub fn get(self, p: &Photometric) -> f64 {
        match self {
            Knob::Brightness => p.brightness,
            Knob::Contrast => p.contrast,
            Knob::Saturation => p.saturation,
            Knob::Hue => p.hue,
            Knob::Gamma => p.gamma,
            Knob::BlurSigma => p.blur_sigma,
            Knob::NoiseStd => p.noise_std,
            Knob::JpegQuality => f64::from(p.jpeg_quality),
        }
    }

    /// Sets this knob in `p`. JPEG quality is an integer: `v` is rounded and clamped to 1..=100
    /// (NaN gives 100, the identity). Other values are stored as given; [`Photometric::validate`]
    /// judges them.
    pub fn set(self, p: &mut Photometric, v: f64) {
        match self {
            Knob::Brightness => p.brightness = v,
            Knob::Contrast => p.contrast = v,
            Knob::Saturation => p.saturation = v,
            Knob::Hue => p.hue = v,
            Knob::Gamma => p.gamma = v,
            Knob::BlurSigma => p.blur_sigma = v,
            Knob::NoiseStd => p.noise_std = v,
            Knob::JpegQuality => {
                p.jpeg_quality = if v.is_nan() {
                    100
                } else {
                    v.round().clamp(1.0, 100.0) as u8
                }
            }
        }
    }

    /// The torchvision call that does what this knob does with value `v`, for a user to put in a
    /// training pipeline (`img` a float tensor in [0, 1], except for `jpeg`, which takes uint8).
    pub fn torchvision(self) -> &'static str {
        match self {
            Knob::Brightness => {
                "torchvision.transforms.v2.functional.adjust_brightness(img, brightness_factor=v)"
            }
            Knob::Contrast => {
                "torchvision.transforms.v2.functional.adjust_contrast(img, contrast_factor=v)"
            }
            Knob::Saturation => {
                "torchvision.transforms.v2.functional.adjust_saturation(img, saturation_factor=v)"
            }
            Knob::Hue => "torchvision.transforms.v2.functional.adjust_hue(img, hue_factor=v)",
            Knob::Gamma => "torchvision.transforms.v2.functional.adjust_gamma(img, gamma=v)",
            Knob::BlurSigma => {
                "torchvision.transforms.v2.functional.gaussian_blur(img, kernel_size=2 * math.ceil(3 * v) + 1, sigma=v)"
            }
            Knob::NoiseStd => {
                "torchvision.transforms.v2.functional.gaussian_noise(img, mean=0.0, sigma=v, clip=True)"
            }
            Knob::JpegQuality => "torchvision.transforms.v2.functional.jpeg(img, quality=round(v))",
        }
    }
}

// The steps below work on interleaved RGB float32 (`px[3 * i + c]`), in [0, 1] on entry.

/// uint8 → float32 as `to_dtype(..., scale=True)`: multiplication by the float32 nearest to
/// 1/255 (not a division, which rounds differently for some values).
fn to_unit_float(img: &RgbImage) -> Vec<f32> {
    let scale = (1.0f64 / 255.0) as f32;
    img.as_raw().iter().map(|&v| f32::from(v) * scale).collect()
}

/// float32 → uint8 as `x.mul(255).round().clamp(0, 255)`: `torch.round` rounds halves to even,
/// which matters here: factors like 0.5 put many values exactly on a half.
fn to_u8_image(px: &[f32], w: u32, h: u32) -> Result<RgbImage, ImageError> {
    let raw: Vec<u8> = px
        .iter()
        .map(|&x| (x * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(w, h, raw).ok_or(ImageError::Empty)
}

/// `acc + alpha * x` as torch's `add_(x, alpha=alpha)` computes it on CPU: one fused
/// multiply-add (its vectorised kernel is `fmadd`).
#[inline]
fn add_scaled(acc: f32, x: f32, alpha: f32) -> f32 {
    x.mul_add(alpha, acc)
}

/// `_blend`: `(ratio · a + (1 − ratio) · b).clamp(0, 1)`, both weights rounded to float32 from
/// the double ratio, as torch does with Python scalars.
#[inline]
fn blend(a: f32, b: f32, ratio: f64) -> f32 {
    add_scaled(a * ratio as f32, b, (1.0 - ratio) as f32).clamp(0.0, 1.0)
}

/// ITU-R 601-2 luma with torchvision's weights (0.2989, 0.587, 0.114), in its operation order.
#[inline]
fn grayscale(r: f32, g: f32, b: f32) -> f32 {
    add_scaled(add_scaled(r * 0.2989f32, g, 0.587f32), b, 0.114f32)
}

fn adjust_brightness(px: &mut [f32], factor: f64) {
    let f = factor as f32;
    for x in px.iter_mut() {
        *x = (*x * f).clamp(0.0, 1.0);
    }
}

/// Blends every pixel with one value: the mean of the grayscale image over all pixels.
fn adjust_contrast(px: &mut [f32], factor: f64) {
    let n = px.len() / 3;
    let sum: f64 = px
        .chunks_exact(3)
        .map(|p| f64::from(grayscale(p[0], p[1], p[2])))
        .sum();
    // torch sums in float32 (cascaded, nearly exact), then divides by the count in float32.
    let mean = (sum as f32) / (n as f32);
    for x in px.iter_mut() {
        *x = blend(*x, mean, factor);
    }
}

/// Blends each pixel with its own grayscale value.
fn adjust_saturation(px: &mut [f32], factor: f64) {
    for p in px.chunks_exact_mut(3) {
        let gray = grayscale(p[0], p[1], p[2]);
        for x in p.iter_mut() {
            *x = blend(*x, gray, factor);
        }
    }
}

/// Rotates the HSV hue by `shift` turns: RGB → HSV (hue in [0, 1)), add, wrap, HSV → RGB. The
/// hue sector is chosen as torchvision does when channels tie: red wins over green over blue.
fn adjust_hue(px: &mut [f32], shift: f64) {
    let shift = shift as f32;
    let sixth = (1.0f64 / 6.0) as f32;
    for p in px.chunks_exact_mut(3) {
        let (r, g, b) = (p[0], p[1], p[2]);
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let range = maxc - minc;
        // Gray pixels (max = min) get hue and saturation 0; the divisors become 1 to avoid NaN.
        let gray = maxc == minc;
        let s = range / if gray { 1.0 } else { maxc };
        let div = if gray { 1.0 } else { range };
        let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
        let h = if maxc == r {
            bc - gc
        } else if maxc == g {
            (rc + 2.0) - bc
        } else {
            (gc + 4.0) - rc
        };
        let h = (h * sixth + 1.0) % 1.0;
        // Python-style remainder: the result takes the sign of the divisor (1).
        let mut h = (h + shift) % 1.0;
        if h < 0.0 {
            h += 1.0;
        }
        let (r, g, b) = hsv_to_rgb(h, s, maxc);
        p[0] = r;
        p[1] = g;
        p[2] = b;
    }
}

/// HSV (all in [0, 1]) → RGB by the six hue sectors; the three intermediate values are clamped
/// to [0, 1] as torchvision's `_hsv_to_rgb` does.
#[inline]
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let sf = s * f;
    let one_minus_s = 1.0 - s;
    let q = ((1.0 - sf) * v).clamp(0.0, 1.0);
    let t = ((sf + one_minus_s) * v).clamp(0.0, 1.0);
    let p = (one_minus_s * v).clamp(0.0, 1.0);
    match (sector as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// `x^gamma`. torch's `pow` with a scalar exponent 2 or 3 multiplies (rounding after each
/// product, unlike a general power): so does this. Other exponents go through a power function
/// on both sides, torch's (SLEEF, within 1 ulp) and libm's, which can differ in the last bit.
fn adjust_gamma(px: &mut [f32], gamma: f64) {
    let g = gamma as f32;
    let pow: fn(f32, f32) -> f32 = if g == 2.0 {
        |x, _| x * x
    } else if g == 3.0 {
        |x, _| x * x * x
    } else {
        f32::powf
    };
    for x in px.iter_mut() {
        *x = pow(*x, g).clamp(0.0, 1.0);
    }
}

/// The normalised 1-D Gaussian exp(−x²/(2σ²)) at integer offsets −r..=r, r = ⌈3σ⌉, so the
/// kernel size is 2⌈3σ⌉ + 1: torchvision's `gaussian_blur` takes the size from the caller; this
/// rule keeps 99.7 % of the mass and is what [`Knob::torchvision`] tells the user to pass.
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as i64;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| (w / total) as f32).collect()
}

/// Index `i` (possibly outside 0..n) mirrored into 0..n without repeating the edge sample, as
/// torch's "reflect" padding. torch refuses a padding as wide as the image; this folds again
/// instead, so small images blur too (identical to torch wherever torch accepts the padding).
#[inline]
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Separable Gaussian blur with reflect padding, each channel on its own (a depthwise conv2d with
/// the outer product of the 1-D kernel, as torchvision's, in two passes). The mirrored source
/// index of every padded position is computed once per axis; each output value sums its taps in
/// kernel order.
fn gaussian_blur(px: &mut [f32], w: usize, h: usize, sigma: f64) {
    let kernel = gaussian_kernel(sigma);
    let radius = kernel.len() / 2;
    let source = |n: usize| -> Vec<usize> {
        (0..n + 2 * radius)
            .map(|i| reflect(i as i64 - radius as i64, n))
            .collect()
    };
    let (cols, rows) = (source(w), source(h));
    let stride = 3 * w;
    let mut tmp = vec![0f32; px.len()];
    let mut padded = vec![0f32; 3 * cols.len()];
    for (row, out) in px.chunks_exact(stride).zip(tmp.chunks_exact_mut(stride)) {
        for (p, &x) in padded.chunks_exact_mut(3).zip(&cols) {
            p.copy_from_slice(&row[3 * x..3 * x + 3]);
        }
        // Value i of the row is pixel i / 3, channel i % 3; its tap k sits at i + 3k. Whole rows
        // per tap: the same sum order per value, in a loop that vectorises.
        out.fill(0.0);
        for (k, wk) in kernel.iter().enumerate() {
            for (o, v) in out.iter_mut().zip(&padded[3 * k..]) {
                *o += wk * v;
            }
        }
    }
    let mut acc = vec![0f32; stride];
    for (y, out) in px.chunks_exact_mut(stride).enumerate() {
        acc.fill(0.0);
        for (k, wk) in kernel.iter().enumerate() {
            let src = rows[y + k];
            for (a, v) in acc.iter_mut().zip(&tmp[src * stride..(src + 1) * stride]) {
                *a += wk * v;
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// Adds N(0, std²) to every value (pixels in row order, channels interleaved), then clips to
/// [0, 1]. Normal draws by Box–Muller from `StdRng::seed_from_u64(seed)`: rand 0.8 alone has no
/// normal distribution, and two draws per pair of values keep the stream simple to reproduce.
fn gaussian_noise(px: &mut [f32], std: f64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for pair in px.chunks_mut(2) {
        // 1 − U lies in (0, 1], so the logarithm is finite.
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (2.0 * PI * u2).sin_cos();
        for (x, z) in pair.iter_mut().zip([radius * cos, radius * sin]) {
            *x = (*x + (z * std) as f32).clamp(0.0, 1.0);
        }
    }
}

/// Encodes at `quality` and decodes again, as torchvision's `jpeg` (`encode_jpeg`, then
/// `decode_jpeg`): both sides run libjpeg-turbo's code, so the pixels are torchvision's (the
/// fixture test finds no difference at any quality).
fn jpeg_roundtrip(img: &RgbImage, quality: u8) -> Result<RgbImage, ImageError> {
    super::decode_rgb(&encode_jpeg(img, quality)?)
}

/// JPEG bytes as torchvision's `encode_jpeg` writes them: libjpeg's defaults (4:2:0 chroma,
/// integer DCT, standard Huffman tables, baseline) and `jpeg_set_quality(quality,
/// force_baseline=TRUE)`. The encoder is mozjpeg's (already linked for decoding) in its
/// libjpeg-turbo-compatible profile; its quality setting does not force baseline tables, so the
/// tables are given explicitly ([`quant_tables`]): below quality 24 they differ.
fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (luma, chroma) = quant_tables(quality);
    // libjpeg reports errors by unwinding out of its error handler; keep that inside.
    let encoded = std::panic::catch_unwind(|| -> std::io::Result<Vec<u8>> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_fastest_defaults();
        c.set_size(w, h);
        c.set_luma_qtable(&luma);
        c.set_chroma_qtable(&chroma);
        let mut started = c.start_compress(Vec::new())?;
        started.write_scanlines(img.as_raw())?;
        started.finish()
    });
    let failed = |msg: String| ImageError::Transform(format!("JPEG re-encoding: {msg}"));
    match encoded {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!("libjpeg could not encode a {w}×{h} image"))),
    }
}

/// libjpeg's quantisation tables for `quality` with baseline clamping: the Annex K tables scaled
/// by 5000/q % (integer division) below 50, by 200 − 2q % from 50, each entry
/// ⌊(t·s + 50)/100⌋ clamped to 1..=255. mozjpeg's `QTable::scaled` rounds the float product
/// instead; below 50 its scale is nudged up by one part in a million, so that exact halves round
/// up as libjpeg's integer formula does and nothing else moves (a product of integers and s/100
/// is at least 0.01 away from any other half). A unit test checks every quality against the
/// integer formula.
fn quant_tables(quality: u8) -> (mozjpeg::qtable::QTable, mozjpeg::qtable::QTable) {
    let q = quality.clamp(1, 100);
    let effective = if q < 50 {
        let percent = 5000 / u32::from(q);
        5000.0 / (percent as f32 * 1.000_001)
    } else {
        f32::from(q)
    };
    (
        mozjpeg::qtable::AnnexK_Luma.scaled(effective, effective),
        mozjpeg::qtable::AnnexK_Chroma.scaled(effective, effective),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w.max(2).saturating_sub(1).max(1)) as u8,
                (y * 255 / h.max(2).saturating_sub(1).max(1)) as u8,
                ((x * 37 + y * 91) % 256) as u8,
            ])
        })
    }

    fn with(knob: Knob, v: f64) -> Photometric {
        let mut p = Photometric::identity();
        knob.set(&mut p, v);
        p
    }

    fn mean(img: &RgbImage) -> f64 {
        img.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / img.as_raw().len() as f64
    }

    #[test]
    fn identity_returns_the_same_pixels() {
        let img = test_image(31, 17);
        assert!(Photometric::identity().is_identity());
        assert_eq!(Photometric::default(), Photometric::identity());
        assert_eq!(Photometric::identity().apply(&img, 7).unwrap(), img);
        // The float round trip alone (a step at a value that changes nothing) keeps pixels too.
        let near = Photometric {
            brightness: 1.0 + 1e-12,
            ..Photometric::identity()
        };
        assert!(!near.is_identity());
        assert_eq!(near.apply(&img, 7).unwrap(), img);
    }

    #[test]
    fn json_defaults_to_identity_and_rejects_unknown_fields() {
        let p: Photometric = serde_json::from_str("{}").unwrap();
        assert!(p.is_identity());
        let p: Photometric = serde_json::from_str(r#"{"gamma": 1.5, "jpeg_quality": 40}"#).unwrap();
        assert_eq!((p.gamma, p.jpeg_quality, p.brightness), (1.5, 40, 1.0));
        assert!(serde_json::from_str::<Photometric>(r#"{"gama": 1.5}"#).is_err());
        // Knob names are the JSON keys.
        let json = serde_json::to_value(Photometric::identity()).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut names: Vec<&str> = Knob::ALL.iter().map(|k| k.name()).collect();
        let mut keys = keys;
        keys.sort_unstable();
        names.sort_unstable();
        assert_eq!(keys, names);
        for k in Knob::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::from(k.name())
            );
        }
    }

    #[test]
    fn knobs_get_set_identity_and_ranges() {
        for k in Knob::ALL {
            let (lo, hi) = k.range();
            assert!(lo < hi && (lo..=hi).contains(&k.identity()), "{k:?}");
            let mut p = Photometric::identity();
            let end = if lo == k.identity() { hi } else { lo };
            k.set(&mut p, end);
            assert_eq!(k.get(&p), end, "{k:?}");
            assert!(p.validate().is_ok() && !p.is_identity(), "{k:?}");
            k.set(&mut p, k.identity());
            assert!(p.is_identity(), "{k:?}");
            assert!(k
                .torchvision()
                .starts_with("torchvision.transforms.v2.functional."));
        }
        let mut p = Photometric::identity();
        Knob::JpegQuality.set(&mut p, 37.6);
        assert_eq!(p.jpeg_quality, 38);
        Knob::JpegQuality.set(&mut p, -5.0);
        assert_eq!(p.jpeg_quality, 1);
        Knob::JpegQuality.set(&mut p, 1e9);
        assert_eq!(p.jpeg_quality, 100);
        Knob::JpegQuality.set(&mut p, f64::NAN);
        assert_eq!(p.jpeg_quality, 100);
    }

    #[test]
    fn validate_rejects_out_of_range_values() {
        let bad = [
            (Knob::Brightness, -0.1),
            (Knob::Brightness, f64::INFINITY),
            (Knob::Contrast, -1.0),
            (Knob::Contrast, f64::NAN),
            (Knob::Saturation, -0.5),
            (Knob::Hue, 0.51),
            (Knob::Hue, -0.6),
            (Knob::Hue, f64::NAN),
            (Knob::Gamma, 0.0),
            (Knob::Gamma, -1.0),
            (Knob::BlurSigma, -0.1),
            (Knob::BlurSigma, MAX_BLUR_SIGMA + 1.0),
            (Knob::NoiseStd, -0.01),
            (Knob::NoiseStd, f64::INFINITY),
        ];
        for (k, v) in bad {
            let p = with(k, v);
            let err = p.validate().unwrap_err();
            assert!(err.starts_with(k.name()), "{err}");
            assert!(p.apply(&test_image(4, 4), 0).is_err(), "{k:?} {v}");
        }
        let p = Photometric {
            jpeg_quality: 0,
            ..Photometric::identity()
        };
        assert!(p.validate().unwrap_err().starts_with("jpeg_quality"));
        let p = Photometric {
            jpeg_quality: 101,
            ..Photometric::identity()
        };
        assert!(p.validate().is_err());
        let edges = Photometric {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: -0.5,
            gamma: 1e-3,
            blur_sigma: MAX_BLUR_SIGMA,
            noise_std: 0.0,
            jpeg_quality: 1,
        };
        assert!(edges.validate().is_ok());
        assert!(with(Knob::Hue, 0.5).validate().is_ok());
    }

    #[test]
    fn brightness_below_one_darkens_and_above_brightens() {
        let img = test_image(20, 20);
        let dark = with(Knob::Brightness, 0.6).apply(&img, 0).unwrap();
        let light = with(Knob::Brightness, 1.4).apply(&img, 0).unwrap();
        assert!(img.as_raw().iter().zip(dark.as_raw()).all(|(a, b)| b <= a));
        assert!(mean(&dark) < mean(&img) && mean(&light) > mean(&img));
        // x·f in float32, rounded half to even as torch does (values checked against torch 2.11):
        // 255 · 0.5 = 127.5 → 128, 1 · 0.5 → 0, 5 · 0.5 → 2, 9 · 0.5 → 4, 11 · 0.5 → 6, and
        // 101/255 · 0.5 · 255 = 50.500004 in float32 → 51.
        let px = RgbImage::from_raw(2, 1, vec![255, 1, 5, 9, 11, 101]).unwrap();
        let half = with(Knob::Brightness, 0.5).apply(&px, 0).unwrap();
        assert_eq!(half.as_raw(), &[128, 0, 2, 4, 6, 51]);
    }

    #[test]
    fn contrast_pulls_towards_the_gray_mean() {
        let img = test_image(16, 12);
        let flat = with(Knob::Contrast, 0.0).apply(&img, 0).unwrap();
        let first = flat.get_pixel(0, 0).0;
        assert!(first.iter().all(|&v| v == first[0]));
        assert!(flat.pixels().all(|p| p.0 == first));
        let spread = |im: &RgbImage| {
            let m = mean(im);
            im.as_raw()
                .iter()
                .map(|&v| (f64::from(v) - m).abs())
                .sum::<f64>()
        };
        let low = with(Knob::Contrast, 0.5).apply(&img, 0).unwrap();
        let high = with(Knob::Contrast, 1.5).apply(&img, 0).unwrap();
        assert!(spread(&low) < spread(&img) && spread(&high) > spread(&img));
    }

    #[test]
    fn saturation_zero_gives_gray() {
        let img = test_image(13, 9);
        let gray = with(Knob::Saturation, 0.0).apply(&img, 0).unwrap();
        assert!(gray.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
        // Pure red: 0.2989 · 255 = 76.2 → 76.
        let red = RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 0]));
        let g = with(Knob::Saturation, 0.0).apply(&red, 0).unwrap();
        assert_eq!(g.get_pixel(0, 0).0, [76, 76, 76]);
    }

    #[test]
    fn hue_rotates_primaries_and_leaves_gray_alone() {
        let red = RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 0]));
        let rot = |v: f64, img: &RgbImage| with(Knob::Hue, v).apply(img, 0).unwrap();
        assert_eq!(rot(1.0 / 3.0 - 1e-9, &red).get_pixel(0, 0).0, [0, 255, 0]);
        assert_eq!(rot(-1.0 / 3.0, &red).get_pixel(0, 0).0, [0, 0, 255]);
        assert_eq!(rot(0.5, &red).get_pixel(0, 0).0, [0, 255, 255]);
        assert_eq!(rot(-0.5, &red).get_pixel(0, 0).0, [0, 255, 255]);
        let gray = RgbImage::from_pixel(2, 2, image::Rgb([90, 90, 90]));
        assert_eq!(rot(0.3, &gray), gray);
        // A full turn back and forth changes (almost) nothing.
        let img = test_image(10, 10);
        let there = rot(0.25, &img);
        let back = rot(-0.25, &there);
        let worst = img
            .as_raw()
            .iter()
            .zip(back.as_raw())
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        assert!(worst <= 1, "{worst}");
    }

    #[test]
    fn gamma_above_one_darkens_mid_tones_and_keeps_the_ends() {
        let img = RgbImage::from_fn(256, 1, |x, _| image::Rgb([x as u8; 3]));
        let g = with(Knob::Gamma, 2.0).apply(&img, 0).unwrap();
        assert_eq!(g.get_pixel(0, 0).0[0], 0);
        assert_eq!(g.get_pixel(255, 0).0[0], 255);
        assert_eq!(g.get_pixel(128, 0).0[0], 64); // (128/255)² · 255 = 64.25
        assert!((1..255).all(|x| g.get_pixel(x, 0).0[0] < x as u8));
        let l = with(Knob::Gamma, 0.5).apply(&img, 0).unwrap();
        // √(254/255) · 255 = 254.4998: the top values stay put.
        assert!((1..=250).all(|x| l.get_pixel(x, 0).0[0] > x as u8));
        assert!((0..=255).all(|x| l.get_pixel(x, 0).0[0] >= x as u8));
    }

    #[test]
    fn blur_lowers_high_frequency_energy_and_keeps_flat_images() {
        // Pseudo-random pixels: energy at every frequency, so each wider blur removes more.
        let checker = RgbImage::from_fn(24, 18, |x, y| {
            image::Rgb([((x * 73 + y * 151 + 7).wrapping_mul(2_654_435_761) >> 24) as u8; 3])
        });
        let energy = |im: &RgbImage| -> f64 {
            let mut e = 0.0;
            for y in 0..im.height() {
                for x in 1..im.width() {
                    let d =
                        f64::from(im.get_pixel(x, y).0[0]) - f64::from(im.get_pixel(x - 1, y).0[0]);
                    e += d * d;
                }
            }
            e
        };
        let mut last = energy(&checker);
        for sigma in [0.5, 1.0, 2.0] {
            let b = with(Knob::BlurSigma, sigma).apply(&checker, 0).unwrap();
            let e = energy(&b);
            assert!(e < last, "sigma {sigma}: {e} vs {last}");
            last = e;
        }
        // A constant image stays constant, even smaller than the kernel (folded reflection).
        for (w, h) in [(1, 1), (2, 3), (40, 2)] {
            let flat = RgbImage::from_pixel(w, h, image::Rgb([200, 13, 77]));
            assert_eq!(with(Knob::BlurSigma, 3.0).apply(&flat, 0).unwrap(), flat);
        }
    }

    #[test]
    fn reflect_mirrors_without_repeating_the_edge() {
        let idx: Vec<usize> = (-4..9).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, [2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(reflect(-7, 1), 0);
        assert_eq!(gaussian_kernel(1.0).len(), 7);
        assert_eq!(gaussian_kernel(0.3).len(), 3);
        assert!((gaussian_kernel(2.5).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn seeded_noise_is_reproducible_and_has_the_asked_spread() {
        let img = RgbImage::from_pixel(64, 64, image::Rgb([128; 3]));
        let p = with(Knob::NoiseStd, 0.05);
        let a = p.apply(&img, 42).unwrap();
        assert_eq!(a, p.apply(&img, 42).unwrap());
        assert_ne!(a, p.apply(&img, 43).unwrap());
        let diffs: Vec<f64> = a.as_raw().iter().map(|&v| f64::from(v) - 128.0).collect();
        let m = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let sd = (diffs.iter().map(|d| (d - m) * (d - m)).sum::<f64>() / diffs.len() as f64).sqrt();
        assert!(m.abs() < 0.5, "mean {m}");
        assert!((sd - 0.05 * 255.0).abs() < 0.5, "std {sd}");
        // Clipped, never wrapped.
        let white = RgbImage::from_pixel(16, 16, image::Rgb([255; 3]));
        let noisy = with(Knob::NoiseStd, 0.2).apply(&white, 1).unwrap();
        assert!(mean(&noisy) < 255.0 && mean(&noisy) > 200.0);
    }

    #[test]
    fn jpeg_degrades_with_falling_quality() {
        let img = test_image(40, 24);
        let err = |q: f64| {
            let out = with(Knob::JpegQuality, q).apply(&img, 0).unwrap();
            assert_eq!(out.dimensions(), img.dimensions());
            img.as_raw()
                .iter()
                .zip(out.as_raw())
                .map(|(&a, &b)| f64::from(a.abs_diff(b)))
                .sum::<f64>()
        };
        let (e95, e50, e10) = (err(95.0), err(50.0), err(10.0));
        assert!(0.0 < e95 && e95 < e50 && e50 < e10, "{e95} {e50} {e10}");
    }

    /// A table's 64 entries, read from its Debug text: mozjpeg keeps them private.
    fn entries(t: &mozjpeg::qtable::QTable) -> Vec<u32> {
        let text = format!("{t:?}");
        let (start, end) = (text.find('[').unwrap(), text.find(']').unwrap());
        text[start + 1..end]
            .split(", ")
            .map(|v| v.parse().unwrap())
            .collect()
    }

    #[test]
    fn quant_tables_are_libjpegs_baseline_tables_at_every_quality() {
        let basic = (
            entries(&mozjpeg::qtable::AnnexK_Luma),
            entries(&mozjpeg::qtable::AnnexK_Chroma),
        );
        assert_eq!(basic.0.len(), 64);
        for q in 1..=100u8 {
            let q32 = u32::from(q);
            let percent = if q32 < 50 { 5000 / q32 } else { 200 - 2 * q32 };
            let libjpeg = |table: &[u32]| -> Vec<u32> {
                table
                    .iter()
                    .map(|&t| ((t * percent + 50) / 100).clamp(1, 255))
                    .collect()
            };
            let (luma, chroma) = quant_tables(q);
            assert_eq!(entries(&luma), libjpeg(&basic.0), "luma, quality {q}");
            assert_eq!(entries(&chroma), libjpeg(&basic.1), "chroma, quality {q}");
        }
    }

    #[test]
    fn empty_images_pass_through() {
        let empty = RgbImage::new(0, 0);
        let p = Photometric {
            blur_sigma: 2.0,
            jpeg_quality: 50,
            ..Photometric::identity()
        };
        assert_eq!(p.apply(&empty, 0).unwrap(), empty);
    }
}
