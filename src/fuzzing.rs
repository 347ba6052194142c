//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`) and of their regression tests
//! (`tests/fuzz_regressions.rs`): each takes the fuzzer's bytes and runs them through the code
//! the service and the CLI run on untrusted bytes, with the limits of `config/gapmeter.toml`.
//! Not an API. docs/reliability.md, "Fuzzing", says what each one covers.
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::Limits;
use crate::ingest::{
    archive_kind, looks_like_archive, member_path, verify_image, walk_archive, Member,
};

/// The `[limits]` of the shipped `config/gapmeter.toml`, which the service runs with unless told
/// otherwise. The service reads them the same way (`Config::load`); an error here is an error
/// in the shipped file, reported as every input's outcome rather than a crash of the harness.
pub fn limits() -> Result<&'static Limits, String> {
    static LIMITS: OnceLock<Result<Limits, String>> = OnceLock::new();
    LIMITS
        .get_or_init(|| {
            crate::config::Config::from_overrides(std::iter::empty::<(&str, &str)>())
                .map(|c| c.limits)
                .map_err(|e| format!("config/gapmeter.toml: {e:#}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// What became of one file (an upload part or an archive member), as the ingest decides it
/// before anything is stored: the format (`Ok`) or the rejection's reason.
pub type Verdict = (String, Result<String, String>);

/// Image decoding: [`verify_image`] (the service's check of every uploaded file: header, pixel
/// limit, full decode) and [`crate::imaging::decode_rgb`] alone (what `gapmeter score` and the
/// worker run on a file), each format through the decoder production uses.
pub fn decode_image(data: &[u8]) -> Result<String, String> {
    let verdict = verify_image(data, limits()?).map(|(format, _, _)| format);
    let decoded = crate::imaging::decode_rgb(data);
    if let (Ok(format), Err(e)) = (&verdict, &decoded) {
        // verify_image decodes with decode_rgb: one cannot pass where the other fails.
        panic!("verify_image accepted a {format} that decode_rgb refuses: {e}");
    }
    verdict
}

/// Archive walking: the bytes as an uploaded file, when [`archive_kind`] calls them an archive
/// (tar, tar.gz, zip), walked by [`walk_archive`] within the limits, each member checked as the
/// ingest checks it ([`member_path`], then [`verify_image`]). `None`: not an archive.
pub fn walk_archive_bytes(data: &[u8]) -> Option<(Vec<Verdict>, Result<(), String>)> {
    let kind = archive_kind(&data[..data.len().min(512)])?;
    let limits = match limits() {
        Ok(l) => l,
        Err(e) => return Some((Vec::new(), Err(e))),
    };
    let verdicts = std::cell::RefCell::new(Vec::new());
    let result = walk_archive(Cursor::new(data), kind, limits, &|member| {
        let verdict = match member {
            Member::File(inner, bytes) => check_file(&format!("upload.tar/{inner}"), &bytes),
            Member::Rejected(inner, reason) => (inner, Err(reason)),
        };
        verdicts.borrow_mut().push(verdict);
        Ok(())
    });
    Some((verdicts.into_inner(), result))
}

/// [`crate::ingest::Ingestor::add_image`] up to the store: the member path, then the image.
fn check_file(name: &str, bytes: &[u8]) -> Verdict {
    let verdict = match member_path(name) {
        Err(why) => Err(why.to_string()),
        Ok(_) => limits().and_then(|l| verify_image(bytes, l).map(|(format, _, _)| format)),
    };
    (name.to_string(), verdict)
}

/// [`crate::ingest::Ingestor::add_file`] on bytes in memory: an archive by content, else one
/// image within the image-byte limit.
fn check_upload(name: &str, bytes: &[u8], out: &mut Vec<Verdict>) {
    let limits = match limits() {
        Ok(l) => l,
        Err(e) => return out.push((name.to_string(), Err(e))),
    };
    if let Some(kind) = archive_kind(&bytes[..bytes.len().min(512)]) {
        let verdicts = std::cell::RefCell::new(Vec::new());
        let result = walk_archive(Cursor::new(bytes), kind, limits, &|member| {
            let verdict = match member {
                Member::File(inner, bytes) => check_file(&format!("{name}/{inner}"), &bytes),
                Member::Rejected(inner, reason) => (format!("{name}/{inner}"), Err(reason)),
            };
            verdicts.borrow_mut().push(verdict);
            Ok(())
        });
        out.extend(verdicts.into_inner());
        if let Err(reason) = result {
            out.push((name.to_string(), Err(reason)));
        }
        return;
    }
    if bytes.len() as u64 > limits.image_bytes {
        out.push((name.to_string(), Err("over the image limit".into())));
        return;
    }
    out.push(check_file(name, bytes));
}

/// The multipart upload (`POST /v1/datasets/{id}/images`) without its database: `data` is the
/// request's `Content-Type` value, a CRLF, then the body. The body goes through axum's own
/// [`axum::extract::Multipart`] extractor (multer underneath), part by part as the handler reads
/// them: parts without a file name are drained and skipped, a part over its cap (the request
/// limit for archive names, the image limit otherwise) is rejected, every other part goes
/// through the ingest's checks ([`check_upload`]). `Err`: the request is refused (no boundary,
/// malformed body).
pub fn multipart_upload(data: &[u8]) -> Result<Vec<Verdict>, String> {
    use axum::extract::FromRequest;
    let split = data
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..split]).into_owned();
    let body = data.get(split + 2..).unwrap_or_default().to_vec();
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/datasets/0/images")
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .map_err(|e| format!("not a request: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let limits = limits()?;
        let mut form = axum::extract::Multipart::from_request(request, &())
            .await
            .map_err(|e| format!("rejected: {e}"))?;
        let mut out = Vec::new();
        let malformed = |e: axum::extract::multipart::MultipartError| format!("malformed: {e}");
        while let Some(mut field) = form.next_field().await.map_err(malformed)? {
            let Some(name) = field.file_name().map(str::to_string) else {
                while field.chunk().await.map_err(malformed)?.is_some() {}
                continue;
            };
            let cap = if looks_like_archive(&name) {
                limits.request_bytes
            } else {
                limits.image_bytes
            };
            let mut spool = Vec::new();
            let mut too_large = false;
            while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                if (spool.len() + chunk.len()) as u64 > cap {
                    too_large = true;
                    continue;
                }
                spool.write_all(&chunk).map_err(|e| e.to_string())?;
            }
            if too_large {
                out.push((name, Err(format!("part is over the {cap}-byte limit"))));
                continue;
            }
            check_upload(&name, &spool, &mut out);
        }
        Ok(out)
    })
}

/// `.npy` features as `gapmeter score` reads them ([`crate::score::read_features`], from a file:
/// that is its only entry) and `.npz` statistics as the service reads an upload
/// ([`crate::score::read_statistics_from`]); both on every input.
pub fn read_npy_npz(data: &[u8]) -> (Result<(), String>, Result<(), String>) {
    thread_local! {
        // An unnamed file (in memory where /dev/shm is a tmpfs), opened by its /proc path.
        static SCRATCH: Option<std::fs::File> = {
            let shm = Path::new("/dev/shm");
            let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
            tempfile::tempfile_in(dir).ok()
        };
    }
    let npy = SCRATCH.with(|file| {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let file = file.as_ref().ok_or("no scratch file for the .npy input")?;
        file.set_len(0)
            .and_then(|()| file.write_all_at(data, 0))
            .map_err(|e| format!("scratch file: {e}"))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        crate::score::read_features(&path)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    });
    let npz = crate::score::read_statistics_from(Cursor::new(data), "fuzz input")
        .map(|_| ())
        .map_err(|e| format!("{e:#}"));
    (npy, npz)
}

/// Manifest parsing: [`crate::features::Manifest::parse`] on the text, and when it is valid,
/// what the service derives from it (cache keys, the feature output, the model path).
pub fn parse_manifest(data: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let m = crate::features::Manifest::parse(text, Path::new("/models/fuzz.toml"))
        .map_err(|e| e.to_string())?;
    let _ = m.model_path();
    let _ = m.feature_output();
    let _ = m.features_key(crate::features::Precision::default());
    Ok(m.cache_key())
}
