//! Where extractors are found: a models directory of `<id>.toml` manifests next to their models.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::Manifest;

/// `$GAPMETER_MODELS_DIR`, else `~/.cache/gapmeter/models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GAPMETER_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("gapmeter").join("models")
}

/// The manifests in one directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every readable manifest, sorted by id, plus the errors of those that are not.
    pub fn list(&self) -> (Vec<Manifest>, Vec<String>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (found, errors);
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for p in paths {
            match Manifest::load(&p) {
                Ok(m) => found.push(m),
                Err(e) => errors.push(e.to_string()),
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        (found, errors)
    }

    /// The manifest with this id.
    pub fn get(&self, id: &str) -> anyhow::Result<Manifest> {
        let direct = self.dir.join(format!("{id}.toml"));
        if direct.is_file() {
            let m = Manifest::load(&direct)?;
            if m.id == id {
                return Ok(m);
            }
        }
        let (mut all, _) = self.list();
        if let Some(i) = all.iter().position(|m| m.id == id) {
            return Ok(all.swap_remove(i));
        }
        let ids: Vec<_> = all.iter().map(|m| m.id.as_str()).collect();
        bail!(
            "no extractor {id:?} in {} (available: {}); `make models` writes the test extractors, \
             scripts/export_models.py the real ones",
            self.dir.display(),
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
        )
    }
}

/// Tried in order when no extractor is named: pytorch-fid's FID Inception if exported, else its
/// untrained, seeded test twin (results made with it say so).
pub const DEFAULT_EXTRACTORS: &[&str] = &["inception-v3-fid", "inception-v3-fid-untrained"];

/// What a caller may name an extractor by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// A registered id or a manifest path (the CLI's `--extractor`).
    IdOrPath,
    /// A registered id only: a request to the service must not make it read arbitrary files.
    IdOnly,
}

/// The one extractor resolver: `requested` by id (or path, with [`Naming::IdOrPath`]), else the
/// first of [`DEFAULT_EXTRACTORS`] that is installed.
pub fn resolve_extractor(
    requested: Option<&str>,
    registry: &Registry,
    naming: Naming,
) -> anyhow::Result<Manifest> {
    match (requested, naming) {
        (Some(arg), Naming::IdOrPath) => {
            let path = Path::new(arg);
            if arg.ends_with(".toml") || path.is_file() {
                return Manifest::load(path)
                    .with_context(|| format!("loading extractor manifest {arg}"));
            }
            registry.get(arg)
        }
        (Some(id), Naming::IdOnly) => {
            let ok = !id.is_empty()
                && id.len() <= 100
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                && !id.starts_with('.');
            if !ok {
                bail!("{id:?} is not an extractor id");
            }
            registry.get(id)
        }
        (None, _) => match DEFAULT_EXTRACTORS
            .iter()
            .find_map(|id| registry.get(id).ok())
        {
            Some(m) => Ok(m),
            None => bail!(
                "no default extractor ({}) is installed in {}: run `make models` (test models) or \
                 scripts/export_models.py, or name one",
                DEFAULT_EXTRACTORS.join(", "),
                registry.dir().display()
            ),
        },
    }
}
