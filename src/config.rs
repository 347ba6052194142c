//! Service configuration: `config/gapmeter.toml` (or `--config`), overridden by
//! `GAPMETER_<SECTION>__<KEY>` environment variables and `DATABASE_URL`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub limits: Limits,
    pub ingest: IngestConfig,
    pub auth: AuthConfig,
    pub queue: QueueConfig,
    pub worker: WorkerSettings,
    pub cache: CacheConfig,
    pub retention: RetentionConfig,
    pub quotas: QuotaConfig,
    pub rate_limit: RateLimitConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: String,
    pub request_timeout_secs: u64,
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub url: String,
    /// object_store options (`endpoint`, `region`, `allow_http`, ...) for a remote store.
    pub options: BTreeMap<String, String>,
}

/// Upload limits; every one is enforced while streaming, before anything is stored.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub request_bytes: u64,
    pub files_per_request: u64,
    pub image_bytes: u64,
    pub image_pixels: u64,
    pub archive_entries: u64,
    pub archive_uncompressed_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub file_roots: Vec<PathBuf>,
    pub allow_http: bool,
    pub allow_object_store: bool,
    pub allow_private_addresses: bool,
    /// object_store options for s3://, gs:// and az:// dataset URIs.
    pub object_store_options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub admin_key: String,
}

/// The job queue's timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    pub poll_ms: u64,
    pub max_attempts: i32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

/// A worker's resources (`gapmeter worker` flags override them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub in_process: bool,
    /// `cpu`, `cuda:0,cuda:1`, `all`...: one model replica per device.
    #[serde(default)]
    pub devices: Option<String>,
    /// One device (the older spelling of `devices`); wins when set.
    #[serde(default)]
    pub device: Option<String>,
    pub concurrency: usize,
    /// `auto` or images per forward pass.
    pub batch_size: Setting,
    /// Where `gapmeter worker` serves `/metrics` and `/healthz`; empty = nowhere.
    pub metrics_addr: String,
}

impl WorkerSettings {
    /// The devices as written: `device` if set, else `devices`, else the CPU.
    pub fn devices(&self) -> &str {
        self.device
            .as_deref()
            .or(self.devices.as_deref())
            .unwrap_or("cpu")
    }
}

/// A setting written as a number or as a word (`batch_size = 32` or `"auto"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Setting {
    Number(u64),
    Word(String),
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Number(n) => write!(f, "{n}"),
            Setting::Word(w) => write!(f, "{w}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub share_across_teams: bool,
}

/// What the sweeper deletes, and how often it runs (`0` turns a rule off).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub sweep_interval_secs: u64,
    pub finished_job_days: u32,
    pub unreferenced_cache_days: u32,
    pub feature_cache_bytes: u64,
    pub orphan_blob_grace_secs: u64,
}

/// Default per-team limits (`0` = unlimited); a team's own row overrides them.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub datasets: u64,
    pub images: u64,
    pub bytes: u64,
    pub active_jobs: u64,
}

/// Requests per second per API key (a token bucket of `burst`); `0` = unlimited.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: u64,
    pub burst: u32,
}

/// The defaults, as shipped in `config/gapmeter.toml` (compiled in, so a binary without the file
/// still starts).
pub const DEFAULT_TOML: &str = include_str!("../config/gapmeter.toml");

impl Config {
    /// Defaults, then `path` if given, then the environment.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut value: toml::Table = toml::from_str(DEFAULT_TOML).context("built-in config")?;
        if let Some(p) = path {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            let file: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing config {}", p.display()))?;
            merge(&mut value, file);
        }
        apply_env(&mut value, std::env::vars())?;
        let config: Config = value.try_into().context("invalid configuration")?;
        Ok(config)
    }

    /// Like [`Config::load`] but from defaults and explicit overrides only (tests).
    pub fn from_overrides<'a>(
        overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> anyhow::Result<Self> {
        let mut value: toml::Table = toml::from_str(DEFAULT_TOML).context("built-in config")?;
        apply_env(
            &mut value,
            overrides
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        Ok(value.try_into()?)
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `GAPMETER_SECTION__KEY=value`; the value is read as TOML when it parses (numbers, booleans,
/// arrays), else as a string. `DATABASE_URL` sets `database.url`.
/// Keys the defaults leave unset that the environment may still set.
const OPTIONAL_KEYS: &[(&str, &str)] = &[("worker", "device")];

fn apply_env(
    value: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, raw) in vars {
        let (section, key) = if name == "DATABASE_URL" {
            ("database".to_string(), "url".to_string())
        } else if let Some(rest) = name.strip_prefix("GAPMETER_") {
            match rest.split_once("__") {
                Some((s, k)) => (s.to_ascii_lowercase(), k.to_ascii_lowercase()),
                None => continue,
            }
        } else {
            continue;
        };
        let Some(toml::Value::Table(table)) = value.get_mut(&section) else {
            bail!("{name}: no configuration section [{section}]");
        };
        if !table.contains_key(&key) && !OPTIONAL_KEYS.contains(&(section.as_str(), key.as_str())) {
            bail!("{name}: no key `{key}` in [{section}]");
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        table.insert(key, parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_env_overrides_apply() {
        let c = Config::from_overrides([
            ("GAPMETER_SERVER__BIND", "0.0.0.0:9000"),
            ("GAPMETER_LIMITS__IMAGE_BYTES", "1024"),
            ("GAPMETER_INGEST__FILE_ROOTS", "[\"/data\"]"),
            ("DATABASE_URL", "postgres://x@y/z"),
            ("GAPMETER_AUTH__ADMIN_KEY", "secret-key"),
            ("UNRELATED", "1"),
        ])
        .unwrap();
        assert_eq!(c.server.bind, "0.0.0.0:9000");
        assert_eq!(c.limits.image_bytes, 1024);
        assert_eq!(c.ingest.file_roots, vec![PathBuf::from("/data")]);
        assert_eq!(c.database.url, "postgres://x@y/z");
        assert_eq!(c.auth.admin_key, "secret-key");
        assert_eq!(c.limits.image_pixels, 89_478_485);
        assert!(c.storage.options.is_empty());
    }

    #[test]
    fn object_store_options_and_new_sections_come_from_the_environment() {
        let c = Config::from_overrides([
            (
                "GAPMETER_STORAGE__OPTIONS",
                r#"{ endpoint = "http://s3:9000", allow_http = "true" }"#,
            ),
            ("GAPMETER_QUOTAS__ACTIVE_JOBS", "4"),
            ("GAPMETER_RATE_LIMIT__REQUESTS_PER_SECOND", "20"),
            ("GAPMETER_WORKER__METRICS_ADDR", "0.0.0.0:9091"),
            ("GAPMETER_RETENTION__FEATURE_CACHE_BYTES", "1000000"),
        ])
        .unwrap();
        assert_eq!(c.storage.options["endpoint"], "http://s3:9000");
        assert_eq!(c.storage.options["allow_http"], "true");
        assert_eq!(c.quotas.active_jobs, 4);
        assert_eq!(c.quotas.datasets, 0);
        assert_eq!(c.rate_limit.requests_per_second, 20);
        assert_eq!(c.worker.metrics_addr, "0.0.0.0:9091");
        assert_eq!(c.retention.feature_cache_bytes, 1_000_000);
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_overrides([("GAPMETER_SERVER__PORTT", "1")]).is_err());
        assert!(Config::from_overrides([("GAPMETER_NOPE__X", "1")]).is_err());
    }
}
