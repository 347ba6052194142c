//! One extraction engine per extractor, with a replica on each of the worker's devices: the
//! default extractors loaded at startup, others on first use. Concurrent jobs share the replicas
//! batch by batch (each replica is locked for one forward pass, not for a job).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::features::{
    DeviceSpec, Devices, Engine, Manifest, Precision, Registry, DEFAULT_EXTRACTORS,
};

/// The models a worker has loaded.
pub struct Models {
    devices: Vec<DeviceSpec>,
    loaded: Mutex<HashMap<String, Arc<Engine>>>,
}

impl Models {
    /// Checks that every device exists (the error names the first that does not); loads nothing.
    pub fn open(devices: &Devices) -> anyhow::Result<Self> {
        Ok(Self {
            devices: devices.resolve()?,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The devices replicas run on.
    pub fn devices(&self) -> &[DeviceSpec] {
        &self.devices
    }

    /// Loads every default extractor installed in `registry` on every device, so a broken model
    /// or device shows before the worker claims a job. Returns the ids loaded.
    pub fn preload(&self, registry: &Registry) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        for id in DEFAULT_EXTRACTORS {
            // Not installed here: jobs naming it go to a worker that has it.
            let Ok(manifest) = registry.get(id) else {
                continue;
            };
            self.get(&manifest, Precision::Fp32)?;
            ids.push(id.to_string());
        }
        Ok(ids)
    }

    /// The engine of `manifest` at `precision` (by [`Manifest::features_key`]), loading it if
    /// needed.
    pub fn get(&self, manifest: &Manifest, precision: Precision) -> anyhow::Result<Arc<Engine>> {
        let key = manifest.features_key(precision);
        // Held while loading, so two jobs needing the same model load it once.
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| anyhow::anyhow!("model registry lock poisoned"))?;
        if let Some(m) = loaded.get(&key) {
            return Ok(m.clone());
        }
        let engine = Engine::load_in(manifest.clone(), &self.devices, precision)
            .with_context(|| format!("loading extractor {}", manifest.id))?;
        let engine = Arc::new(engine);
        loaded.insert(key, engine.clone());
        Ok(engine)
    }
}
