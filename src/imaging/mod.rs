//! Decoding and resizing exactly like the reference implementations (docs/design.md,
//! "Preprocessing").
//!
//! * Decoding yields RGB uint8: grayscale is replicated, alpha is dropped (as PIL's
//!   `convert("RGB")`), 16-bit samples keep their high byte (as Pillow does for 16-bit RGB; for
//!   16-bit grayscale Pillow clips to 255 instead, which we do not copy), EXIF orientation is not
//!   applied (PIL does not apply it either), animated formats give their first frame.
//! * [`ResizeMode::Clean`] is PIL's antialiased bicubic on float32 planes, as clean-fid;
//!   [`ResizeMode::LegacyPytorch`] is libtorch's bilinear interpolation on [0, 1] values, as
//!   pytorch-fid.

mod jpeg;
mod resize;
mod transforms;

use std::io::Cursor;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use resize::{pil_bicubic_resize, resize_plane_coefficients};
pub use transforms::{Knob, Photometric, MAX_BLUR_SIGMA};

/// How images are brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// PIL bicubic with antialiasing on float32, no re-quantisation (clean-fid).
    Clean,
    /// Bilinear, `align_corners=False`, no antialiasing, on [0, 1] floats (pytorch-fid).
    LegacyPytorch,
}

impl ResizeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeMode::Clean => "clean",
            ResizeMode::LegacyPytorch => "legacy-pytorch",
        }
    }
}

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a decodable image: {0}")]
    Decode(#[from] image::ImageError),
    #[error("{0}")]
    Jpeg(#[from] jpeg::JpegError),
    #[error("image is empty (zero width or height)")]
    Empty,
    #[error("resize failed: {0}")]
    Resize(#[from] tch::TchError),
    /// A photometric transform that cannot be applied (invalid parameters, a failed re-encode).
    #[error("photometric transform failed: {0}")]
    Transform(String),
}

/// An RGB image, 8 bits per channel, row-major interleaved.
pub type RgbImage = image::RgbImage;

/// Decodes JPEG, PNG, WebP, GIF (first frame), BMP or TIFF bytes to RGB uint8.
///
/// ```
/// let mut png = Vec::new();
/// image::RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30]))
///     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
///     .unwrap();
/// let img = gapmeter::imaging::decode_rgb(&png).unwrap();
/// assert_eq!((img.width(), img.height()), (3, 2));
/// assert_eq!(img.get_pixel(2, 1).0, [10, 20, 30]);
/// ```
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    if jpeg::is_jpeg(bytes) {
        match jpeg::decode(bytes) {
            Ok((w, h, pixels)) if w > 0 && h > 0 => {
                return RgbImage::from_raw(w, h, pixels).ok_or(ImageError::Empty);
            }
            Ok(_) => return Err(ImageError::Empty),
            // CMYK/YCCK: the image crate converts those.
            Err(jpeg::JpegError::Unsupported) => {}
            Err(e) => return Err(ImageError::Jpeg(e)),
        }
    }
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let img = reader.decode()?;
    if img.width() == 0 || img.height() == 0 {
        return Err(ImageError::Empty);
    }
    Ok(match img {
        // Pillow keeps the high byte of 16-bit samples; the image crate would round (v / 257),
        // which differs by one on about half of all values.
        image::DynamicImage::ImageRgb16(_)
        | image::DynamicImage::ImageRgba16(_)
        | image::DynamicImage::ImageLuma16(_)
        | image::DynamicImage::ImageLumaA16(_) => {
            let (w, h) = (img.width(), img.height());
            let high: Vec<u8> = img
                .to_rgb16()
                .into_raw()
                .into_iter()
                .map(|v| (v >> 8) as u8)
                .collect();
            RgbImage::from_raw(w, h, high).ok_or(ImageError::Empty)?
        }
        other => other.to_rgb8(),
    })
}

/// A JPEG of the image scaled down to fit `max_side` × `max_side` (aspect kept, never scaled
/// up), for looking at an image (a dashboard's gallery). Not the references' resize: nothing
/// measured goes through it.
///
/// ```
/// let mut png = Vec::new();
/// image::RgbImage::from_pixel(300, 100, image::Rgb([200, 20, 30]))
///     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
///     .unwrap();
/// let jpeg = gapmeter::imaging::thumbnail(&png, 96).unwrap();
/// let small = gapmeter::imaging::decode_rgb(&jpeg).unwrap();
/// assert_eq!((small.width(), small.height()), (96, 32));
/// ```
pub fn thumbnail(bytes: &[u8], max_side: u32) -> Result<Vec<u8>, ImageError> {
    let img = decode_rgb(bytes)?;
    let (w, h) = img.dimensions();
    let scale = (f64::from(max_side.max(1)) / f64::from(w.max(h))).min(1.0);
    let fit = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
    let small = if scale < 1.0 {
        image::imageops::resize(&img, fit(w), fit(h), image::imageops::FilterType::Triangle)
    } else {
        img
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&small)?;
    Ok(out)
}

/// A model-ready image: planar CHW float32 at the model's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// 3 × height × width values.
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
    /// The scale of `data`: 255.0 for [0, 255], 1.0 for [0, 1].
    pub scale: f32,
}

/// Resizes an RGB image to `height` × `width` as the reference for `mode` does.
pub fn prepare(
    img: &RgbImage,
    height: usize,
    width: usize,
    mode: ResizeMode,
) -> Result<Prepared, ImageError> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let plane = |c: usize, scale: f32| -> Vec<f32> {
        (0..w * h).map(|i| raw[i * 3 + c] as f32 / scale).collect()
    };
    match mode {
        ResizeMode::Clean => {
            let mut data = Vec::with_capacity(3 * height * width);
            for c in 0..3 {
                let resized = pil_bicubic_resize(&plane(c, 1.0), w, h, width, height);
                data.extend(resized.into_iter().map(|v| v.clamp(0.0, 255.0)));
            }
            Ok(Prepared {
                data,
                height,
                width,
                scale: 255.0,
            })
        }
        ResizeMode::LegacyPytorch => {
            // torchvision's to_tensor divides uint8 by 255 in float32, before interpolation.
            let mut planar = Vec::with_capacity(3 * w * h);
            for c in 0..3 {
                planar.extend(plane(c, 255.0));
            }
            let t = tch::Tensor::from_slice(&planar).f_view([1, 3, h as i64, w as i64])?;
            let data = if (h, w) == (height, width) {
                planar
            } else {
                let out =
                    t.f_upsample_bilinear2d([height as i64, width as i64], false, None, None)?;
                Vec::<f32>::try_from(&out.f_contiguous()?.f_view([-1])?)?
            };
            Ok(Prepared {
                data,
                height,
                width,
                scale: 1.0,
            })
        }
    }
}

/// Reads, decodes and prepares one image file.
pub fn load_prepared(
    path: &Path,
    height: usize,
    width: usize,
    mode: ResizeMode,
) -> Result<Prepared, ImageError> {
    let bytes = std::fs::read(path)?;
    prepare(&decode_rgb(&bytes)?, height, width, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: image::DynamicImage, fmt: image::ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), fmt).unwrap();
        out
    }

    #[test]
    fn grayscale_alpha_and_16_bit_become_rgb8() {
        let gray =
            image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(2, 2, image::Luma([77])));
        assert_eq!(
            decode_rgb(&encode(gray, image::ImageFormat::Png))
                .unwrap()
                .get_pixel(0, 0)
                .0,
            [77; 3]
        );
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            2,
            2,
            image::Rgba([1, 2, 3, 0]),
        ));
        // Alpha is dropped, not composited: PIL's convert("RGB") does the same.
        assert_eq!(
            decode_rgb(&encode(rgba, image::ImageFormat::Png))
                .unwrap()
                .get_pixel(1, 1)
                .0,
            [1, 2, 3]
        );
        let deep = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            2,
            2,
            image::Rgb([65535u16, 0, 32767]),
        ));
        assert_eq!(
            decode_rgb(&encode(deep, image::ImageFormat::Png))
                .unwrap()
                .get_pixel(0, 1)
                .0,
            [255, 0, 127]
        );
        let gray16 = image::DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
            1,
            1,
            image::Luma([0x80ffu16]),
        ));
        assert_eq!(
            decode_rgb(&encode(gray16, image::ImageFormat::Png))
                .unwrap()
                .get_pixel(0, 0)
                .0,
            [128; 3]
        );
    }

    #[test]
    fn jpeg_decodes_and_truncated_or_corrupt_jpeg_is_an_error() {
        let img = image::RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([(x * 15) as u8, (y * 20) as u8, 128])
        });
        let jpg = encode(
            image::DynamicImage::ImageRgb8(img),
            image::ImageFormat::Jpeg,
        );
        let decoded = decode_rgb(&jpg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (16, 12));
        assert!(matches!(
            decode_rgb(&jpg[..jpg.len() / 2]),
            Err(ImageError::Jpeg(jpeg::JpegError::Truncated))
        ));
        let mut corrupt = jpg.clone();
        // Keep the markers, destroy a table: libjpeg's fatal error must come back as an error.
        for b in corrupt[4..40].iter_mut() {
            *b = 0xFF;
        }
        assert!(decode_rgb(&corrupt).is_err());
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(matches!(
            decode_rgb(b"definitely not an image"),
            Err(ImageError::Io(_) | ImageError::Decode(_))
        ));
        let png = encode(
            image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8)),
            image::ImageFormat::Png,
        );
        assert!(decode_rgb(&png[..png.len() / 2]).is_err());
    }

    #[test]
    fn legacy_mode_is_unit_scale_and_identity_at_model_size() {
        let img = image::RgbImage::from_fn(4, 3, |x, y| {
            image::Rgb([(x * 60) as u8, (y * 80) as u8, 255])
        });
        let p = prepare(&img, 3, 4, ResizeMode::LegacyPytorch).unwrap();
        assert_eq!(p.scale, 1.0);
        assert_eq!(p.data[1], 60.0 / 255.0);
        assert_eq!(p.data[2 * 12], 1.0);
        let up = prepare(&img, 6, 8, ResizeMode::LegacyPytorch).unwrap();
        assert_eq!(up.data.len(), 3 * 48);
        assert!(up.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn clean_mode_keeps_constant_images_constant_and_clamps() {
        let img = image::RgbImage::from_pixel(37, 23, image::Rgb([200, 0, 255]));
        let p = prepare(&img, 299, 299, ResizeMode::Clean).unwrap();
        assert_eq!(p.scale, 255.0);
        let plane = 299 * 299;
        assert!(p.data[..plane].iter().all(|v| (v - 200.0).abs() < 1e-3));
        assert!(p.data[plane..2 * plane].iter().all(|v| *v == 0.0));
        assert!(p.data[2 * plane..]
            .iter()
            .all(|v| *v <= 255.0 && *v > 254.99));
    }
}
