//! JPEG decoding with libjpeg-turbo's decoder (as vendored by mozjpeg), so that pixels are the ones
//! Pillow produces: the same integer IDCT (`JDCT_ISLOW`), the same "fancy" chroma upsampling and
//! YCbCr→RGB tables. The `image` crate's pure-Rust decoder differs by up to 3 levels.

/// Why libjpeg-turbo did not decode the data.
#[derive(Debug, thiserror::Error)]
pub enum JpegError {
    /// A colour space libjpeg cannot convert to RGB (CMYK / YCCK); the caller falls back.
    #[error("unsupported JPEG colour space")]
    Unsupported,
    #[error("truncated JPEG: no end-of-image marker")]
    Truncated,
    #[error("corrupt JPEG: {0}")]
    Corrupt(String),
    /// More decoded bytes than [`MAX_DECODED_BYTES`].
    #[error("JPEG of {0}×{1} pixels is over the {MAX_DECODED_BYTES}-byte decoding limit")]
    TooLarge(u32, u32),
}

/// The most bytes one decoded JPEG may take (RGB8): the `image` crate's default allocation
/// limit, under which every other format decodes, and Pillow's decompression-bomb error
/// (2 × 89,478,485 pixels). libjpeg allocates what the header says: without the check, 697 bytes
/// claiming 60,000 × 60,000 pixels asked for 10.8 GB (found by fuzzing, docs/reliability.md).
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// True when `bytes` start with a JPEG start-of-image marker.
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes JPEG bytes to interleaved RGB8: (width, height, pixels).
pub fn decode(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), JpegError> {
    // libjpeg only warns on missing data and fills the rest with grey; Pillow refuses such files
    // ("image file is truncated"), and so do we.
    if !bytes.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(JpegError::Truncated);
    }
    // libjpeg reports fatal errors by unwinding out of its error handler; keep that inside.
    let result = std::panic::catch_unwind(|| -> Result<(u32, u32, Vec<u8>), JpegError> {
        let d =
            mozjpeg::Decompress::new_mem(bytes).map_err(|e| JpegError::Corrupt(e.to_string()))?;
        match d.color_space() {
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK => {
                return Err(JpegError::Unsupported)
            }
            _ => {}
        }
        let (w, h) = (d.width() as u64, d.height() as u64);
        if w * h * 3 > MAX_DECODED_BYTES {
            return Err(JpegError::TooLarge(w as u32, h as u32));
        }
        let mut started = d.rgb().map_err(|e| JpegError::Corrupt(e.to_string()))?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started
            .read_scanlines()
            .map_err(|e| JpegError::Corrupt(e.to_string()))?;
        started
            .finish()
            .map_err(|e| JpegError::Corrupt(e.to_string()))?;
        Ok((w, h, pixels))
    });
    match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg error".to_string());
            Err(JpegError::Corrupt(msg))
        }
    }
}
