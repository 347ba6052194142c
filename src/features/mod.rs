//! Feature extractors: TorchScript models described by a manifest (docs/extractors.md), loaded
//! once per device, run on batches of prepared images.

mod device;
mod engine;
mod extractor;
mod manifest;
mod registry;
mod text;

pub use device::{DeviceSpec, Devices};
pub use engine::{
    BatchSize, Chunk, Engine, Injection, PrecisionSample, PrepareError, RunOptions, RunReport,
    AUTO_BATCH_CPU, AUTO_BATCH_CUDA,
};
pub use extractor::{ExtractedBatch, Extractor, Precision};
pub use manifest::{InputRange, InputSize, Manifest, ManifestError, TextEncoderSpec};
pub use registry::{default_models_dir, resolve_extractor, Naming, Registry, DEFAULT_EXTRACTORS};
pub use text::{ClipTokenizer, TextEncoder, CONTEXT_LENGTH};
