//! What an attempt reused and computed, recorded with the job: the proof that caches work.
use serde::{Deserialize, Serialize};

/// The work of a score or matrix attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// The whole result came from the result cache.
    pub result_cache_hit: bool,
    /// Datasets whose statistics came from the statistics cache.
    pub statistics_cache_hits: u64,
    /// Datasets whose statistics were their cached checkpoint merged with the images added since.
    pub statistics_merged: u64,
    /// Images whose outputs came from the feature cache.
    pub feature_cache_hits: u64,
    /// Images run through the model.
    pub images_extracted: u64,
    /// Images that could not be decoded (left out, with a warning).
    pub images_skipped: u64,
    /// Whether this attempt needed a model at all.
    pub model_loaded: bool,
}

/// The work of an ingest attempt: per-file outcomes, counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestWork {
    pub files_seen: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub unchanged: u64,
    pub rejected: u64,
    /// The first rejections, with their reasons (every file's outcome is in the result).
    pub rejections: Vec<String>,
}
