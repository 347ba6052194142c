//! Feature extractors: TorchScript models described by a manifest (docs/extractors.md), loaded
//! once per device, run on batches of prepared images.

mod device;
mod extractor;
mod manifest;
mod registry;

pub use device::DeviceSpec;
pub use extractor::{ExtractedBatch, Extractor};
pub use manifest::{InputRange, InputSize, Manifest, ManifestError};
pub use registry::{default_models_dir, resolve_extractor, Naming, Registry, DEFAULT_EXTRACTORS};
