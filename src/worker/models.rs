//! One model instance per extractor on the worker's device, loaded on first use and shared by
//! the worker's concurrent jobs (a job answered from caches never loads one).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::features::{DeviceSpec, Extractor, Manifest};

/// The models a worker has loaded.
pub struct Models {
    device: DeviceSpec,
    loaded: Mutex<HashMap<String, Arc<Mutex<Extractor>>>>,
}

impl Models {
    pub fn new(device: DeviceSpec) -> Self {
        Self {
            device,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    pub fn device(&self) -> DeviceSpec {
        self.device
    }

    /// The loaded model of `manifest` (by [`Manifest::cache_key`]), loading it if needed.
    pub fn get(&self, manifest: &Manifest) -> anyhow::Result<Arc<Mutex<Extractor>>> {
        let key = manifest.cache_key();
        // Held while loading, so two jobs needing the same model load it once.
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| anyhow::anyhow!("model registry lock poisoned"))?;
        if let Some(m) = loaded.get(&key) {
            return Ok(m.clone());
        }
        let model = Extractor::load(manifest.clone(), self.device)
            .with_context(|| format!("loading extractor {}", manifest.id))?;
        let model = Arc::new(Mutex::new(model));
        loaded.insert(key, model.clone());
        Ok(model)
    }
}
