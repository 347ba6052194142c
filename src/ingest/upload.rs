//! Ingesting files into a dataset: verify each image, store its bytes once per content, make it
//! the dataset's member under its path, and record a per-file outcome. Archives (tar, tar.gz, zip) are read member by member on a blocking thread
//! and handed over through a small bounded channel, so memory holds at most a few images at once.
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use sqlx::PgPool;

use crate::config::Limits;
use crate::store::{self, AddOutcome, Blobs, DatasetId, ImageMeta};

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A new member.
    Accepted,
    /// A new member whose bytes the dataset already holds under another path (scored like any
    /// other file, as a folder holding both copies would be).
    Duplicate,
    /// The path already holds these bytes (a retried upload): nothing changed.
    Unchanged,
    /// Not a member: `reason` says why.
    Rejected,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileOutcome {
    /// Path in the upload, `archive.tar.gz/inner/path.png` for archive members: the member's
    /// key in the dataset.
    pub name: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// blake3 of the bytes, hex (accepted, duplicate and unchanged files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// Counts and per-file outcomes of one ingest.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct IngestSummary {
    /// New members with new content for the dataset.
    pub accepted: u64,
    /// New members whose bytes the dataset already held under another path.
    pub duplicates: u64,
    /// Files whose path already held the same bytes.
    pub unchanged: u64,
    pub rejected: u64,
    pub files: Vec<FileOutcome>,
}

/// Live tallies of an ingest, readable from another task while it runs (a job's progress).
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub seen: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub unchanged: AtomicU64,
    pub rejected: AtomicU64,
}

impl IngestCounters {
    /// (name, value) pairs, for progress reports.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("seen", get(&self.seen)),
            ("accepted", get(&self.accepted)),
            ("duplicates", get(&self.duplicates)),
            ("unchanged", get(&self.unchanged)),
            ("rejected", get(&self.rejected)),
        ]
    }
}

/// Why an ingest stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The interrupt flag was raised (a cancelled or released job).
    #[error("interrupted")]
    Interrupted,
    /// The database or the blob store failed.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
    /// The file just added took the team over a quota. The caller takes back what this ingest
    /// added ([`Ingestor::added_paths`]), so a refused ingest leaves nothing behind.
    #[error("{0}")]
    OverQuota(store::OverQuota),
}

/// A path as a folder would hold it: `/`-separated, without empty or `.` components. `None`
/// for a path that climbs out (`..`) or names nothing.
pub fn normalise_path(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Why `gapmeter score` would not read a file at `path` in a folder (hidden, or not an image
/// extension), if it would not; the service leaves out the same files so both score the same.
pub fn not_scored(path: &str) -> Option<&'static str> {
    if path.split('/').any(|c| c.starts_with('.')) {
        return Some("hidden file or folder (name starts with '.'), which gapmeter score skips");
    }
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let is_image = ext.is_some_and(|e| crate::ingest::IMAGE_EXTENSIONS.contains(&e.as_str()));
    (!is_image).then_some(
        "not an image file name (jpg, jpeg, png, webp, gif, bmp, tif, tiff), which gapmeter score skips",
    )
}

/// The member path a file uploaded as `name` gets ([`normalise_path`]), or why it is not taken
/// (no path, or a file `gapmeter score` would skip: [`not_scored`]).
pub fn member_path(name: &str) -> Result<String, &'static str> {
    let Some(path) = normalise_path(name) else {
        return Err("not a file path (empty, or climbs out with '..')");
    };
    if let Some(why) = not_scored(&path) {
        return Err(why);
    }
    Ok(path)
}

/// The formats gapmeter scores.
const FORMATS: &[(image::ImageFormat, &str)] = &[
    (image::ImageFormat::Jpeg, "jpeg"),
    (image::ImageFormat::Png, "png"),
    (image::ImageFormat::WebP, "webp"),
    (image::ImageFormat::Gif, "gif"),
    (image::ImageFormat::Bmp, "bmp"),
    (image::ImageFormat::Tiff, "tiff"),
];

/// Checks that `bytes` are a supported image within the limits: header first (format, size,
/// pixel count, before any pixel is decoded), then a full decode so corrupt data is caught now
/// rather than at scoring time.
pub fn verify_image(bytes: &[u8], limits: &Limits) -> Result<(String, u32, u32), String> {
    if bytes.len() as u64 > limits.image_bytes {
        return Err(format!(
            "file is {} bytes, over the {}-byte image limit",
            bytes.len(),
            limits.image_bytes
        ));
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let Some(format) = reader.format() else {
        return Err("not an image (unrecognised format)".into());
    };
    let Some(name) = FORMATS.iter().find(|(f, _)| *f == format).map(|(_, n)| *n) else {
        return Err(format!("unsupported image format {format:?}"));
    };
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("corrupt {name} header: {e}"))?;
    let pixels = w as u64 * h as u64;
    if pixels == 0 {
        return Err("image has no pixels".into());
    }
    if pixels > limits.image_pixels {
        return Err(format!(
            "{w}×{h} = {pixels} pixels, over the {}-pixel limit",
            limits.image_pixels
        ));
    }
    crate::imaging::decode_rgb(bytes).map_err(|e| format!("corrupt {name}: {e}"))?;
    Ok((name.to_string(), w, h))
}

/// The archive kind of a file, by its first bytes (names can lie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    TarGz,
    Zip,
}

pub fn archive_kind(head: &[u8]) -> Option<ArchiveKind> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(ArchiveKind::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveKind::TarGz)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(ArchiveKind::Tar)
    } else {
        None
    }
}

/// True when a file name says archive (used to pick the size limit while streaming).
pub fn looks_like_archive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [".tar", ".tar.gz", ".tgz", ".zip"]
        .iter()
        .any(|e| n.ends_with(e))
}

/// One archive member as [`walk_archive`] hands it over.
#[derive(Debug)]
pub enum Member {
    /// A regular file within the limits: its path in the archive and its bytes.
    File(String, Vec<u8>),
    /// A member that is not taken: its path and why.
    Rejected(String, String),
}

/// Stores verified images into one dataset and keeps the tally.
pub struct Ingestor<'a> {
    pool: &'a PgPool,
    blobs: &'a Blobs,
    limits: &'a Limits,
    dataset: DatasetId,
    files: u64,
    interrupt: Option<Arc<AtomicBool>>,
    counters: Arc<IngestCounters>,
    /// Room left under the team's quotas; `None` = not checked.
    budget: Option<store::Remaining>,
    /// Files and bytes this ingest made members.
    added: store::Usage,
    pub summary: IngestSummary,
}

impl<'a> Ingestor<'a> {
    pub fn new(pool: &'a PgPool, blobs: &'a Blobs, limits: &'a Limits, dataset: DatasetId) -> Self {
        Self {
            pool,
            blobs,
            limits,
            dataset,
            files: 0,
            interrupt: None,
            counters: Arc::default(),
            budget: None,
            added: store::Usage::default(),
            summary: IngestSummary::default(),
        }
    }

    /// Stops the ingest at the first file that does not fit `budget` (the team's quotas).
    pub fn with_budget(mut self, budget: store::Remaining) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Files and bytes this ingest made members (what it adds to the team's usage).
    pub fn added(&self) -> store::Usage {
        self.added
    }

    /// The paths this ingest made members (accepted or duplicate): what a refused ingest takes
    /// back.
    pub fn added_paths(&self) -> Vec<String> {
        self.summary
            .files
            .iter()
            .filter(|f| matches!(f.outcome, Outcome::Accepted | Outcome::Duplicate))
            .map(|f| f.name.clone())
            .collect()
    }

    /// Stops the ingest at the next file once `flag` is raised.
    pub fn with_interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// Live tallies, for another task to report.
    pub fn counters(&self) -> Arc<IngestCounters> {
        self.counters.clone()
    }

    fn check_interrupt(&self) -> Result<(), IngestError> {
        if self
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(IngestError::Interrupted);
        }
        Ok(())
    }

    fn record(&mut self, outcome: FileOutcome) {
        let (total, counter) = match outcome.outcome {
            Outcome::Accepted => (&mut self.summary.accepted, &self.counters.accepted),
            Outcome::Duplicate => (&mut self.summary.duplicates, &self.counters.duplicates),
            Outcome::Unchanged => (&mut self.summary.unchanged, &self.counters.unchanged),
            Outcome::Rejected => (&mut self.summary.rejected, &self.counters.rejected),
        };
        *total += 1;
        counter.fetch_add(1, Ordering::Relaxed);
        self.counters.seen.fetch_add(1, Ordering::Relaxed);
        self.summary.files.push(outcome);
    }

    /// Records a rejection.
    pub fn reject(&mut self, name: &str, reason: impl Into<String>) {
        self.record(FileOutcome {
            name: name.to_string(),
            outcome: Outcome::Rejected,
            reason: Some(reason.into()),
            hash: None,
        });
    }

    /// Counts a file against the per-request limit; false (and a rejection) once it is exceeded.
    pub fn admit(&mut self, name: &str) -> bool {
        self.files += 1;
        if self.files > self.limits.files_per_request {
            self.reject(
                name,
                format!(
                    "over the limit of {} files per request",
                    self.limits.files_per_request
                ),
            );
            return false;
        }
        true
    }

    /// Verifies one image file and makes it the member at `name`. Errors are infrastructure
    /// failures (database, blob store) or an interrupt; a bad file is a rejection, not an error.
    pub async fn add_image(&mut self, name: &str, bytes: Bytes) -> Result<(), IngestError> {
        self.check_interrupt()?;
        if !self.admit(name) {
            return Ok(());
        }
        let path = match member_path(name) {
            Ok(path) => path,
            Err(why) => {
                self.reject(name, why);
                return Ok(());
            }
        };
        let limits = self.limits.clone();
        let checked = {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || verify_image(&bytes, &limits))
                .await
                .map_err(anyhow::Error::from)?
        };
        let (format, width, height) = match checked {
            Ok(v) => v,
            Err(reason) => {
                self.reject(name, reason);
                return Ok(());
            }
        };
        let meta = ImageMeta {
            hash: crate::content::image_hash(&bytes),
            bytes: bytes.len() as i64,
            width: width as i32,
            height: height as i32,
            format,
        };
        let added =
            store::add_member(self.pool, self.blobs, self.dataset, &path, &meta, bytes).await?;
        let (outcome, reason) = match added {
            AddOutcome::Added => (Outcome::Accepted, None),
            AddOutcome::Duplicate => (Outcome::Duplicate, None),
            AddOutcome::Unchanged => (Outcome::Unchanged, None),
            AddOutcome::StatisticsOnly => (
                Outcome::Rejected,
                Some("the dataset holds registered statistics, not images".to_string()),
            ),
            AddOutcome::Conflict { existing } => (
                Outcome::Rejected,
                Some(format!(
                    "the dataset already holds other bytes at {path:?} (blake3 {}); delete the dataset or upload under another path",
                    hex::encode(existing)
                )),
            ),
        };
        let added = matches!(outcome, Outcome::Accepted | Outcome::Duplicate);
        self.record(FileOutcome {
            name: path,
            outcome,
            reason,
            hash: Some(hex::encode(meta.hash)),
        });
        // Judged after the member exists: whether a file adds anything (or only re-uploads what
        // the path holds) is known only then, and a refusal takes every addition back anyway.
        if added {
            self.added.images += 1;
            self.added.bytes += meta.bytes.max(0) as u64;
        }
        if let (true, Some(budget)) = (added, self.budget.as_mut()) {
            budget
                .spend(meta.bytes.max(0) as u64)
                .map_err(IngestError::OverQuota)?;
        }
        Ok(())
    }

    /// Ingests a file already on disk: an archive (by content) or a single image.
    pub async fn add_file(&mut self, name: &str, path: &Path) -> Result<(), IngestError> {
        let mut head = vec![0u8; 512];
        let n = {
            let mut f = std::fs::File::open(path).map_err(anyhow::Error::from)?;
            read_up_to(&mut f, &mut head).map_err(anyhow::Error::from)?
        };
        head.truncate(n);
        if let Some(kind) = archive_kind(&head) {
            return self.add_archive(name, path, kind).await;
        }
        let len = std::fs::metadata(path).map_err(anyhow::Error::from)?.len();
        if len > self.limits.image_bytes {
            if self.admit(name) {
                self.reject(
                    name,
                    format!(
                        "file is {len} bytes, over the {}-byte image limit",
                        self.limits.image_bytes
                    ),
                );
            }
            return Ok(());
        }
        let bytes = Bytes::from(tokio::fs::read(path).await.map_err(anyhow::Error::from)?);
        self.add_image(name, bytes).await
    }

    /// Reads an archive's members on a blocking thread and ingests them one by one.
    pub async fn add_archive(
        &mut self,
        name: &str,
        path: &Path,
        kind: ArchiveKind,
    ) -> Result<(), IngestError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Member>(2);
        let limits = self.limits.clone();
        let path = path.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || read_archive(&path, kind, &limits, &tx));
        while let Some(member) = rx.recv().await {
            match member {
                Member::File(inner, bytes) => {
                    self.add_image(&format!("{name}/{inner}"), Bytes::from(bytes))
                        .await?
                }
                Member::Rejected(inner, reason) => {
                    let full = format!("{name}/{inner}");
                    if self.admit(&full) {
                        self.reject(&full, reason);
                    }
                }
            }
        }
        if let Err(reason) = reader.await.map_err(anyhow::Error::from)? {
            self.reject(name, reason);
        }
        Ok(())
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Sends each regular member (within the limits) to `tx`; the error is why the archive as a
/// whole stopped being read.
fn read_archive(
    path: &Path,
    kind: ArchiveKind,
    limits: &Limits,
    tx: &tokio::sync::mpsc::Sender<Member>,
) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open archive: {e}"))?;
    let send = |m: Member| {
        tx.blocking_send(m)
            .map_err(|_| "ingest stopped".to_string())
    };
    walk_archive(file, kind, limits, &send)
}

/// Walks the archive in `reader` (of `kind`, as [`archive_kind`] tells it) within the archive
/// limits, handing each file member (or its rejection) to `send`, in archive order; an error from
/// `send` stops the walk. The error is why the archive as a whole stopped being read. No I/O but
/// `reader`: the ingest reads files through it, the fuzzer (`fuzz/`) reads bytes.
pub fn walk_archive<R: Read + std::io::Seek>(
    reader: R,
    kind: ArchiveKind,
    limits: &Limits,
    send: &dyn Fn(Member) -> Result<(), String>,
) -> Result<(), String> {
    let mut budget = Budget {
        entries: 0,
        bytes: 0,
        limits,
    };
    match kind {
        ArchiveKind::Tar => read_tar(tar::Archive::new(reader), &mut budget, send),
        ArchiveKind::TarGz => read_tar(
            tar::Archive::new(flate2::read::GzDecoder::new(reader)),
            &mut budget,
            send,
        ),
        ArchiveKind::Zip => {
            let mut zip =
                zip::ZipArchive::new(reader).map_err(|e| format!("corrupt zip archive: {e}"))?;
            for i in 0..zip.len() {
                let mut entry = zip
                    .by_index(i)
                    .map_err(|e| format!("corrupt zip archive: {e}"))?;
                let name = entry.name().to_string();
                if entry.is_dir() {
                    continue;
                }
                let irregular = entry.is_symlink().then_some("not a regular file (symlink)");
                budget.member(name, irregular, &mut entry, send)?;
            }
            Ok(())
        }
    }
}

fn read_tar<R: Read>(
    mut archive: tar::Archive<R>,
    budget: &mut Budget,
    send: &dyn Fn(Member) -> Result<(), String>,
) -> Result<(), String> {
    let entries = archive
        .entries()
        .map_err(|e| format!("corrupt tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("corrupt tar archive: {e}"))?;
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "<unnamed>".into());
        let kind = entry.header().entry_type();
        if kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
        {
            continue;
        }
        let irregular = (!kind.is_file()).then_some("not a regular file (link or device)");
        budget.member(name, irregular, &mut entry, send)?;
    }
    Ok(())
}

/// Archive-wide limits: member count and uncompressed bytes (zip bombs stop here, whatever the
/// headers claim: sizes are counted as bytes come out of the decompressor).
struct Budget<'a> {
    entries: u64,
    bytes: u64,
    limits: &'a Limits,
}

impl Budget<'_> {
    /// Counts one member and sends it on, or its rejection when it is not a regular file or
    /// over the image limit.
    fn member(
        &mut self,
        name: String,
        irregular: Option<&str>,
        r: &mut impl Read,
        send: &dyn Fn(Member) -> Result<(), String>,
    ) -> Result<(), String> {
        self.entry()?;
        if let Some(why) = irregular {
            return send(Member::Rejected(name, why.into()));
        }
        match self.read(r)? {
            Ok(bytes) => send(Member::File(name, bytes)),
            Err(reason) => send(Member::Rejected(name, reason)),
        }
    }

    fn entry(&mut self) -> Result<(), String> {
        self.entries += 1;
        if self.entries > self.limits.archive_entries {
            return Err(format!(
                "archive has more than {} members; the rest was not read",
                self.limits.archive_entries
            ));
        }
        Ok(())
    }

    /// Outer error: stop the archive. Inner error: reject this member.
    fn read(&mut self, r: &mut impl Read) -> Result<Result<Vec<u8>, String>, String> {
        let cap = self.limits.image_bytes;
        let mut buf = Vec::new();
        let n = r
            .take(cap + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("corrupt archive data: {e}"))? as u64;
        self.bytes += n;
        if self.bytes > self.limits.archive_uncompressed_bytes {
            return Err(format!(
                "archive expands to more than {} bytes; the rest was not read",
                self.limits.archive_uncompressed_bytes
            ));
        }
        if n > cap {
            // Drain without keeping, still counting against the archive budget.
            let rest = std::io::copy(
                &mut r.take(self.limits.archive_uncompressed_bytes),
                &mut std::io::sink(),
            )
            .map_err(|e| format!("corrupt archive data: {e}"))?;
            self.bytes += rest;
            if self.bytes > self.limits.archive_uncompressed_bytes {
                return Err(format!(
                    "archive expands to more than {} bytes; the rest was not read",
                    self.limits.archive_uncompressed_bytes
                ));
            }
            return Ok(Err(format!("member is over the {cap}-byte image limit")));
        }
        Ok(Ok(buf))
    }
}
