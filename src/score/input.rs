//! The sides of a score: an image folder, an `.npy` of features or an `.npz` of statistics.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ndarray::{Array, Array1, Array2, Dimension};
use ndarray_npy::{NpzWriter, ReadNpyExt, ViewElement, ViewNpyError, ViewNpyExt};
use std::borrow::Cow;
use std::io::{Read, Seek, Write};

use serde::{Deserialize, Serialize};

use super::extract::{extract_folder, ExtractOptions, Skipped};
use crate::features::Engine;
use crate::metrics::{FeatureStats, Features, Gaussian, StyleSet};

/// What an input path holds.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    Folder(PathBuf),
    Features(PathBuf),
    Statistics(PathBuf),
}

impl InputKind {
    pub fn detect(arg: &str) -> anyhow::Result<Self> {
        let path = PathBuf::from(arg);
        if path.is_dir() {
            return Ok(InputKind::Folder(path));
        }
        if !path.exists() {
            bail!("{arg}: no such file or folder");
        }
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("npy") => Ok(InputKind::Features(path)),
            Some("npz") => Ok(InputKind::Statistics(path)),
            _ => bail!("{arg}: expected an image folder, an .npy of features (N×d) or an .npz with mu and sigma"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            InputKind::Folder(_) => "images",
            InputKind::Features(_) => "features",
            InputKind::Statistics(_) => "statistics",
        }
    }
}

/// Where a set came from, recorded with every result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetProvenance {
    pub path: String,
    pub kind: Cow<'static, str>,
    /// blake3 over the sorted blake3 hashes of the images, or over the file's bytes for
    /// `.npy`/`.npz` inputs.
    pub content_hash: String,
    /// Samples used (None for statistics files, which do not record it).
    pub count: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// What metrics read from one set. Every field is optional: a statistics file has only the
/// Gaussian, a feature file has no logits or style maps.
#[derive(Debug, Clone, Default)]
pub struct SetData {
    pub features: Option<Features>,
    pub gaussian: Option<Gaussian>,
    pub logits: Option<Features>,
    pub style: Option<StyleSet>,
}

impl SetData {
    /// Number of samples, when known (statistics record it only when they were computed here).
    pub fn count(&self) -> Option<usize> {
        match (&self.features, &self.gaussian) {
            (Some(f), _) => Some(f.nrows()),
            (None, Some(g)) => g.n.map(|n| n as usize),
            (None, None) => None,
        }
    }

    /// Mean and covariance (from the features when there are any).
    pub fn gaussian(&self) -> anyhow::Result<Gaussian> {
        if let Some(f) = &self.features {
            return Ok(FeatureStats::from_features(f.view())?.gaussian());
        }
        self.gaussian
            .clone()
            .context("this set has neither features nor statistics")
    }

    /// The samples `idx` (with repetition allowed), for resampling. Statistics-only sets cannot be
    /// resampled.
    pub fn select(&self, idx: &[usize]) -> anyhow::Result<Self> {
        let rows = |f: &Features| f.select_rows(idx);
        let features = Some(rows(
            self.features
                .as_ref()
                .context("resampling needs per-sample features")?,
        ));
        Ok(Self {
            features,
            gaussian: None,
            logits: self.logits.as_ref().map(rows),
            style: self.style.as_ref().map(|s| s.select(idx)),
        })
    }
}

/// A set ready for metrics, with its provenance.
pub struct LoadedSet {
    pub provenance: SetProvenance,
    pub data: SetData,
    /// Per-row labels for per-image results: image paths, or `row N` for feature files.
    pub labels: Vec<String>,
    pub warnings: Vec<String>,
}

impl LoadedSet {
    pub fn load(
        role: &str,
        arg: &str,
        extractor: Option<&Engine>,
        opts: &ExtractOptions,
    ) -> anyhow::Result<Self> {
        let kind = InputKind::detect(arg)?;
        let mut warnings = Vec::new();
        let (data, content_hash, skipped, labels) = match &kind {
            InputKind::Folder(dir) => {
                let extractor = extractor.context("an image folder needs an extractor")?;
                let set = extract_folder(dir, extractor, opts)
                    .with_context(|| format!("{role} {arg}"))?;
                for s in &set.skipped {
                    warnings.push(format!("{role}: skipped {}: {}", s.path, s.reason));
                }
                warnings.extend(set.warnings.iter().map(|w| format!("{role}: {w}")));
                let data = SetData {
                    features: Some(set.features),
                    gaussian: None,
                    logits: set.logits,
                    style: set.style,
                };
                (data, set.content_hash, set.skipped, set.paths)
            }
            InputKind::Features(path) => {
                let (f, hash) = read_features_hashed(path)?;
                let labels = (0..f.nrows()).map(|i| format!("row {i}")).collect();
                let data = SetData {
                    features: Some(f),
                    ..SetData::default()
                };
                (data, hash, Vec::new(), labels)
            }
            InputKind::Statistics(path) => {
                let data = SetData {
                    gaussian: Some(read_statistics(path)?),
                    ..SetData::default()
                };
                (data, file_hash(path)?, Vec::new(), Vec::new())
            }
        };
        let count = data.count();
        if count == Some(0) {
            bail!("{role} {arg} is empty: no samples to score");
        }
        Ok(Self {
            provenance: SetProvenance {
                path: arg.to_string(),
                kind: kind.name().into(),
                content_hash,
                count,
                skipped,
            },
            data,
            labels,
            warnings,
        })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        match (&self.data.features, &self.data.gaussian) {
            (Some(f), _) => f.ncols(),
            (None, Some(g)) => g.mean.len(),
            (None, None) => 0,
        }
    }
}

/// True when `arg` names a folder of images (which needs an extractor).
pub fn is_image_folder(arg: &str) -> bool {
    matches!(InputKind::detect(arg), Ok(InputKind::Folder(_)))
}

/// True when `arg` names an `.npz` of statistics (FID only).
pub fn is_statistics(arg: &str) -> bool {
    matches!(InputKind::detect(arg), Ok(InputKind::Statistics(_)))
}

fn file_hash(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("blake3:{}", hasher.finalize().to_hex()))
}

/// An N×d float32 or float64 `.npy`, kept in its own precision.
pub fn read_features(path: &Path) -> anyhow::Result<Features> {
    Ok(read_features_hashed(path)?.0)
}

/// [`read_features`] and the file's content hash (as [`file_hash`] gives it), from one read of the
/// file: the dtype comes from the header, so the data is read once, straight into its own type.
fn read_features_hashed(path: &Path) -> anyhow::Result<(Features, String)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut reader = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
    };
    let expected = || {
        format!(
            "{}: expected a 2-D float32 or float64 array (N×d)",
            path.display()
        )
    };
    let header = read_npy_header(&mut reader)
        .with_context(|| format!("{}: not an .npy file", path.display()))?;
    let descr = npy_descr(&header).with_context(expected)?;
    let claimed = match descr.get(1..) {
        Some("f4") => npy_data_bytes::<f32>(&header),
        Some("f8") => npy_data_bytes::<f64>(&header),
        _ => bail!("{} (found dtype {descr})", expected()),
    }
    .with_context(expected)?;
    let held = file_len.saturating_sub(header.len() as u64);
    if claimed as u64 != held {
        bail!(
            "{}: the header describes {claimed} bytes of data, the file holds {held}",
            path.display()
        );
    }
    // The header bytes go back in front of the rest of the stream for ndarray-npy to parse.
    let replay = std::io::Cursor::new(header).chain(&mut reader);
    let features = match descr.get(1..) {
        Some("f4") => Features::F32(Array2::<f32>::read_npy(replay).with_context(expected)?),
        _ => Features::F64(Array2::<f64>::read_npy(replay).with_context(expected)?),
    };
    // ndarray-npy rejects trailing bytes, so the whole file has passed through the hasher.
    std::io::copy(&mut reader, &mut std::io::sink())
        .with_context(|| format!("reading {}", path.display()))?;
    if !features.view().all_finite() {
        bail!("{}: features contain NaN or infinity", path.display());
    }
    Ok((
        features,
        format!("blake3:{}", reader.hasher.finalize().to_hex()),
    ))
}

/// Feeds everything read through it to a blake3 hasher.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The magic string, version, length field and header dictionary of an `.npy`, as raw bytes.
fn read_npy_header(reader: &mut impl Read) -> anyhow::Result<Vec<u8>> {
    let mut bytes = vec![0u8; 10];
    reader.read_exact(&mut bytes)?;
    if bytes[..6] != b"\x93NUMPY"[..] {
        bail!("no .npy magic string");
    }
    // Version 1 has a 2-byte header length, versions 2 and 3 a 4-byte one.
    let len = match bytes[6] {
        1 => u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
        2 | 3 => {
            let mut more = [0u8; 2];
            reader.read_exact(&mut more)?;
            bytes.extend_from_slice(&more);
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
        }
        v => bail!(".npy format version {v} is not supported"),
    };
    let start = bytes.len();
    // Grown as bytes arrive: a length field is no size to allocate up front (up to 4 GiB).
    reader.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() != start + len {
        bail!("the header is truncated");
    }
    Ok(bytes)
}

/// How many bytes of data the `.npy` header `header` (as [`read_npy_header`] gives it) says follow
/// it, for elements of type `A`, as ndarray-npy reads the header; an error where ndarray-npy
/// would refuse the header or the dtype anyway.
///
/// ndarray-npy allocates the whole array from the header's shape before it reads any data: a few
/// bytes that claim a huge shape would abort the process on the failed allocation (found by
/// fuzzing, docs/reliability.md). Callers compare the claim with the bytes there are first. The
/// zero-copy view parses the header as the reader does and, shown the header alone, reports the
/// data bytes it lacks, which are all of them.
fn npy_data_bytes<A: ViewElement>(header: &[u8]) -> anyhow::Result<usize> {
    let probe = |header: &[u8]| match ndarray::ArrayViewD::<A>::view_npy(header) {
        // No data and none wanted (the alignment check follows the length check).
        Ok(_) | Err(ViewNpyError::MisalignedData) => Ok(Some(0)),
        Err(ViewNpyError::MissingBytes(n)) => Ok(Some(n)),
        Err(ViewNpyError::NonNativeEndian) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e)),
    };
    if let Some(n) = probe(header)? {
        return Ok(n);
    }
    // The view takes only the native byte order: ask again with the dictionary's byte order
    // flipped ('<' and '>' occur only inside its strings; the shape is integers).
    let preamble = if header.get(6) == Some(&1) { 10 } else { 12 };
    let mut flipped = header.to_vec();
    for b in flipped.iter_mut().skip(preamble) {
        *b = match *b {
            b'<' => b'>',
            b'>' => b'<',
            other => other,
        };
    }
    probe(&flipped)?.context("unsupported byte order")
}

/// The `descr` entry of an `.npy` header dictionary, e.g. `<f4`.
fn npy_descr(header: &[u8]) -> anyhow::Result<String> {
    let text = String::from_utf8_lossy(header);
    let after = text
        .split_once("'descr'")
        .map(|(_, rest)| rest)
        .context("the header has no 'descr'")?;
    let value = after
        .split('\'')
        .nth(1)
        .context("the header's 'descr' is not a string")?;
    Ok(value.to_string())
}

/// `mu` (d) and `sigma` (d×d) from a pytorch-fid / clean-fid `.npz`.
pub fn read_statistics(path: &Path) -> anyhow::Result<Gaussian> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_statistics_from(file, &path.display().to_string())
}

/// [`read_statistics`] from any reader (an upload); `what` names it in errors.
pub fn read_statistics_from<R: Read + Seek>(reader: R, what: &str) -> anyhow::Result<Gaussian> {
    let mut npz =
        zip::ZipArchive::new(reader).with_context(|| format!("{what}: not an .npz archive"))?;
    let ctx = |name: &str| format!("{what}: expected `{name}` as a float32/float64 array");
    let mu: Array1<f64> = npz_array(&mut npz, "mu").with_context(|| ctx("mu"))?;
    let sigma: Array2<f64> = npz_array(&mut npz, "sigma").with_context(|| ctx("sigma"))?;
    let d = mu.len();
    if sigma.dim() != (d, d) {
        bail!("{what}: sigma is {:?} but mu has {d} entries", sigma.dim());
    }
    let g = Gaussian {
        mean: mu.to_vec(),
        cov: sigma.as_standard_layout().iter().copied().collect(),
        n: None,
    };
    g.validate().with_context(|| what.to_string())?;
    Ok(g)
}

/// The array `name` (or `name.npy`, as ndarray-npy's `NpzReader::by_name` looks it up) of an
/// `.npz`, float64 or float32 (widened), once its header's shape is known to match the data the
/// member holds ([`npy_data_bytes`]).
fn npz_array<R: Read + Seek, D: Dimension>(
    npz: &mut zip::ZipArchive<R>,
    name: &str,
) -> anyhow::Result<Array<f64, D>> {
    let name = match npz.index_for_name(name) {
        Some(_) => name.to_string(),
        None => format!("{name}.npy"),
    };
    let mut bytes = Vec::new();
    npz.by_name(&name)?.read_to_end(&mut bytes)?;
    let header = read_npy_header(&mut bytes.as_slice())?;
    let held = bytes.len() - header.len();
    let fits = |claimed: anyhow::Result<usize>| matches!(claimed, Ok(n) if n == held);
    if fits(npy_data_bytes::<f64>(&header)) {
        return Ok(Array::<f64, D>::read_npy(bytes.as_slice())?);
    }
    if fits(npy_data_bytes::<f32>(&header)) {
        return Ok(Array::<f32, D>::read_npy(bytes.as_slice())?.mapv(f64::from));
    }
    bail!("not a float32 or float64 array whose header matches its data ({held} bytes)")
}

/// Writes `g` as pytorch-fid and clean-fid store statistics: an uncompressed `.npz` (what
/// `np.savez` writes) with `mu`, float64 of length d, and `sigma`, float64 d×d (the unbiased
/// covariance, `np.cov(features, rowvar=False)`). [`read_statistics`] reads it back exactly.
pub fn write_statistics<W: Write + Seek>(g: &Gaussian, out: W) -> anyhow::Result<()> {
    let d = g.validate()?;
    let mu = Array1::from(g.mean.clone());
    let sigma = Array2::from_shape_vec((d, d), g.cov.clone()).context("sigma's shape")?;
    let mut npz = NpzWriter::new(out);
    npz.add_array("mu", &mu).context("writing mu")?;
    npz.add_array("sigma", &sigma).context("writing sigma")?;
    npz.finish().context("finishing the .npz")?;
    Ok(())
}

/// [`write_statistics`] into memory, for an HTTP response.
pub fn statistics_npz(g: &Gaussian) -> anyhow::Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    write_statistics(g, &mut buf)?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_npy::WriteNpyExt;

    #[test]
    fn statistics_written_as_npz_read_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let features = Array2::from_shape_fn((7, 3), |(i, j)| (i * i) as f64 * 0.37 - j as f64);
        let g = FeatureStats::from_features(features.view())
            .unwrap()
            .gaussian();
        let path = dir.path().join("s.npz");
        write_statistics(&g, std::fs::File::create(&path).unwrap()).unwrap();
        let back = read_statistics(&path).unwrap();
        assert_eq!(back.mean, g.mean);
        assert_eq!(back.cov, g.cov);
        assert_eq!(statistics_npz(&g).unwrap(), std::fs::read(&path).unwrap());
        // A Gaussian whose covariance is not d×d is refused, not written.
        let bad = Gaussian {
            cov: vec![1.0; 4],
            ..g
        };
        assert!(statistics_npz(&bad).is_err());
    }

    fn write<T: ndarray_npy::WritableElement>(dir: &Path, name: &str, a: &Array2<T>) -> PathBuf {
        let path = dir.join(name);
        a.write_npy(std::fs::File::create(&path).unwrap()).unwrap();
        path
    }

    #[test]
    fn npy_features_keep_their_precision_and_hash_as_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = Array2::from_shape_fn((4, 3), |(i, j)| i as f32 * 0.5 - j as f32 / 3.0);
        let path = write(dir.path(), "a.npy", &a);
        let (f, hash) = read_features_hashed(&path).unwrap();
        assert_eq!(f, Features::F32(a.clone()));
        assert_eq!(hash, file_hash(&path).unwrap());
        let b = a.mapv(|v| f64::from(v) / 7.0);
        let path = write(dir.path(), "b.npy", &b);
        let (f, hash) = read_features_hashed(&path).unwrap();
        assert_eq!(f, Features::F64(b));
        assert_eq!(hash, file_hash(&path).unwrap());
        // Fortran order reads as the same matrix.
        let mut fortran = Array2::<f32>::zeros(ndarray::ShapeBuilder::f((4, 3)));
        fortran.assign(&a);
        let path = write(dir.path(), "c.npy", &fortran);
        assert_eq!(read_features(&path).unwrap(), Features::F32(a.clone()));
    }

    #[test]
    fn npy_features_that_are_not_finite_floats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Array2::<f32>::zeros((2, 2));
        a[[1, 1]] = f32::INFINITY;
        let err = read_features(&write(dir.path(), "inf.npy", &a)).unwrap_err();
        assert!(format!("{err:#}").contains("NaN or infinity"), "{err:#}");
        let ints = Array2::<i32>::zeros((2, 2));
        let err = read_features(&write(dir.path(), "int.npy", &ints)).unwrap_err();
        assert!(format!("{err:#}").contains("float32 or float64"), "{err:#}");
        let path = dir.path().join("junk.npy");
        std::fs::write(&path, b"not an array at all").unwrap();
        assert!(read_features(&path).is_err());
    }
}
