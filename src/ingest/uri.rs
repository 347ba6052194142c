//! Dataset URIs: `file://` under admin-allowlisted roots, `http(s)://` to an image or archive,
//! `s3://`, `gs://`, `az://` prefixes through object_store.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use std::io::Write;

use super::upload::{archive_kind, IngestError, Ingestor};
use crate::config::IngestConfig;

#[derive(Debug, thiserror::Error)]
pub enum UriError {
    /// Malformed or unsupported URI.
    #[error("{0}")]
    Invalid(String),
    /// The URI is well-formed but not allowed by this instance's configuration.
    #[error("{0}")]
    Forbidden(String),
    /// The source could not be read (missing file, HTTP error, ...).
    #[error("{0}")]
    Unreachable(String),
    /// The ingest was told to stop (its job was cancelled or released).
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<IngestError> for UriError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Interrupted => UriError::Interrupted,
            IngestError::Store(e) => UriError::Internal(e),
        }
    }
}

/// Checks a dataset URI's form before anything is created: a parseable URL of a supported scheme,
/// without control characters.
pub fn check_uri(uri: &str) -> Result<(), UriError> {
    if uri.chars().any(char::is_control) {
        return Err(UriError::Invalid(
            "the URI must not contain control characters".into(),
        ));
    }
    let url =
        url::Url::parse(uri).map_err(|e| UriError::Invalid(format!("invalid URI {uri:?}: {e}")))?;
    match url.scheme() {
        "file" | "http" | "https" | "s3" | "gs" | "az" | "abfs" | "abfss" => Ok(()),
        other => Err(UriError::Invalid(format!(
            "unsupported URI scheme {other:?}: use file, http(s), s3, gs or az"
        ))),
    }
}

/// Ingests everything a dataset URI names into the ingestor's dataset.
pub async fn ingest_uri(
    ing: &mut Ingestor<'_>,
    uri: &str,
    cfg: &IngestConfig,
    request_bytes: u64,
) -> Result<(), UriError> {
    let url =
        url::Url::parse(uri).map_err(|e| UriError::Invalid(format!("invalid URI {uri:?}: {e}")))?;
    match url.scheme() {
        "file" => ingest_file_uri(ing, &url, cfg).await,
        "http" | "https" => ingest_http(ing, &url, cfg, request_bytes).await,
        "s3" | "gs" | "az" | "abfs" | "abfss" => {
            if !cfg.allow_object_store {
                return Err(UriError::Forbidden(
                    "object-store URIs are disabled on this instance (ingest.allow_object_store)"
                        .into(),
                ));
            }
            ingest_object_store(ing, &url, request_bytes).await
        }
        other => Err(UriError::Invalid(format!(
            "unsupported URI scheme {other:?}: use file, http(s), s3, gs or az"
        ))),
    }
}

fn under_roots(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|r| path.starts_with(r))
}

async fn ingest_file_uri(
    ing: &mut Ingestor<'_>,
    url: &url::Url,
    cfg: &IngestConfig,
) -> Result<(), UriError> {
    let roots: Vec<PathBuf> = cfg
        .file_roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    if roots.is_empty() {
        return Err(UriError::Forbidden(
            "file:// URIs are disabled on this instance (no ingest.file_roots)".into(),
        ));
    }
    let path = url
        .to_file_path()
        .map_err(|_| UriError::Invalid(format!("invalid file URI {url}")))?;
    // Canonicalising resolves `..` and symlinks, so the check is on where the data really is.
    let real = std::fs::canonicalize(&path)
        .map_err(|e| UriError::Unreachable(format!("{}: {e}", path.display())))?;
    if !under_roots(&real, &roots) {
        return Err(UriError::Forbidden(format!(
            "{} is outside the allowed roots",
            path.display()
        )));
    }
    if real.is_file() {
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(ing.add_file(&name, &real).await?);
    }
    let mut entries: Vec<PathBuf> = Vec::new();
    for entry in walkdir::WalkDir::new(&real)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| UriError::Unreachable(e.to_string()))?;
        if entry.file_type().is_dir() {
            continue;
        }
        entries.push(entry.into_path());
    }
    for p in entries {
        let name = p.strip_prefix(&real).unwrap_or(&p).display().to_string();
        match std::fs::canonicalize(&p) {
            Ok(target) if under_roots(&target, &roots) && target.is_file() => {
                ing.add_file(&name, &target).await?
            }
            Ok(_) => {
                if ing.admit(&name) {
                    ing.reject(
                        &name,
                        "symlink to a location outside the allowed roots, or not a regular file",
                    );
                }
            }
            Err(e) => {
                if ing.admit(&name) {
                    ing.reject(&name, format!("cannot read: {e}"));
                }
            }
        }
    }
    Ok(())
}

pub(super) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

async fn ingest_http(
    ing: &mut Ingestor<'_>,
    url: &url::Url,
    cfg: &IngestConfig,
    request_bytes: u64,
) -> Result<(), UriError> {
    if !cfg.allow_http {
        return Err(UriError::Forbidden(
            "http(s) URIs are disabled on this instance".into(),
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| UriError::Invalid(format!("{url}: no host")))?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| UriError::Unreachable(format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(UriError::Unreachable(format!(
            "{host} resolves to no address"
        )));
    }
    if !cfg.allow_private_addresses && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(UriError::Forbidden(format!(
            "{host} resolves to a loopback or private address"
        )));
    }
    // Connect to the address that was checked, not to whatever a second lookup returns; no
    // redirects, which could lead anywhere.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addrs[0])
        .build()
        .map_err(|e| UriError::Internal(e.into()))?;
    let resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| UriError::Unreachable(format!("fetching {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(UriError::Unreachable(format!(
            "fetching {url}: HTTP {}",
            resp.status()
        )));
    }
    let mut tmp = tempfile::NamedTempFile::new().map_err(|e| UriError::Internal(e.into()))?;
    let mut written = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| UriError::Unreachable(format!("fetching {url}: {e}")))?;
        written += chunk.len() as u64;
        if written > request_bytes {
            return Err(UriError::Invalid(format!(
                "{url} is larger than the {request_bytes}-byte request limit"
            )));
        }
        tmp.write_all(&chunk)
            .map_err(|e| UriError::Internal(e.into()))?;
    }
    let name = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|s| !s.is_empty())
        .unwrap_or("download")
        .to_string();
    Ok(ing.add_file(&name, tmp.path()).await?)
}

async fn ingest_object_store(
    ing: &mut Ingestor<'_>,
    url: &url::Url,
    request_bytes: u64,
) -> Result<(), UriError> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let (store, prefix) = object_store::parse_url_opts(url, env)
        .map_err(|e| UriError::Invalid(format!("{url}: {e}")))?;
    let mut listing = store.list(Some(&prefix));
    let mut objects = Vec::new();
    while let Some(meta) = listing.next().await {
        objects.push(meta.map_err(|e| UriError::Unreachable(format!("listing {url}: {e}")))?);
    }
    objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    for meta in objects {
        let name = meta.location.to_string();
        if meta.size > request_bytes {
            if ing.admit(&name) {
                ing.reject(
                    &name,
                    format!("object is larger than the {request_bytes}-byte request limit"),
                );
            }
            continue;
        }
        let bytes: Bytes = store
            .get(&meta.location)
            .await
            .map_err(|e| UriError::Unreachable(format!("reading {name}: {e}")))?
            .bytes()
            .await
            .map_err(|e| UriError::Unreachable(format!("reading {name}: {e}")))?;
        if archive_kind(&bytes[..bytes.len().min(512)]).is_some() {
            let mut tmp =
                tempfile::NamedTempFile::new().map_err(|e| UriError::Internal(e.into()))?;
            tmp.write_all(&bytes)
                .map_err(|e| UriError::Internal(e.into()))?;
            ing.add_file(&name, tmp.path()).await?;
        } else {
            ing.add_image(&name, bytes).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860::8888"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
