//! Getting images in: folders on the local file system (CLI), uploads and archives (service),
//! dataset URIs.

mod folder;
mod policy;
mod upload;
mod uri;

pub use folder::{list_images, IMAGE_EXTENSIONS};
pub use policy::check_allowed;
pub use upload::{
    archive_kind, looks_like_archive, normalise_path, not_scored, verify_image, ArchiveKind,
    FileOutcome, IngestCounters, IngestError, IngestSummary, Ingestor, Outcome,
};
pub use uri::{check_uri, ingest_uri, UriError};
