//! Getting images in: folders on the local file system (CLI), uploads and archives (service),
//! dataset URIs.

mod folder;
mod upload;
mod uri;

pub use folder::{list_images, IMAGE_EXTENSIONS};
pub use upload::{
    archive_kind, looks_like_archive, normalise_path, not_scored, verify_image, ArchiveKind,
    FileOutcome, IngestCounters, IngestError, IngestSummary, Ingestor, Outcome,
};
// The pure archive walk and path check of an upload, for the fuzz targets (src/fuzzing.rs).
#[doc(hidden)]
pub use upload::{member_path, walk_archive, Member};
pub use uri::{check_uri, check_uri_allowed, ingest_uri, UriError};
