//! What this instance lets a dataset URI name, decided before anything is created, so a refusal
//! is an immediate 403 rather than a failed job. Only what can be judged without reading the
//! source is checked here; the ingest job checks again where the files are read (a symlink out
//! of the roots, a hostname that resolves to a private address).
use std::net::IpAddr;

use super::uri::{check_uri, is_private, UriError};
use crate::config::IngestConfig;

/// Checks `uri`'s form (see [`check_uri`]) and this instance's rules for its scheme: `file://`
/// under the configured roots, `http(s)://` when allowed and not to a private or loopback
/// address literal, object stores when enabled.
pub fn check_allowed(uri: &str, cfg: &IngestConfig) -> Result<(), UriError> {
    check_uri(uri)?;
    let url =
        url::Url::parse(uri).map_err(|e| UriError::Invalid(format!("invalid URI {uri:?}: {e}")))?;
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|_| UriError::Invalid(format!("invalid file URI {url}")))?;
            if cfg.file_roots.is_empty() {
                return Err(UriError::Forbidden(
                    "file:// URIs are disabled on this instance (no ingest.file_roots)".into(),
                ));
            }
            // The URL parser has already resolved `.` and `..`; roots are compared as written and
            // as resolved, since a root may be given through a symlink.
            let under = cfg.file_roots.iter().any(|r| {
                path.starts_with(r) || std::fs::canonicalize(r).is_ok_and(|c| path.starts_with(c))
            });
            if !under {
                return Err(UriError::Forbidden(format!(
                    "{} is outside the allowed roots",
                    path.display()
                )));
            }
            Ok(())
        }
        "http" | "https" => {
            if !cfg.allow_http {
                return Err(UriError::Forbidden(
                    "http(s) URIs are disabled on this instance".into(),
                ));
            }
            let literal = match url.host() {
                Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                _ => None,
            };
            if let Some(ip) = literal.filter(|ip| !cfg.allow_private_addresses && is_private(*ip)) {
                return Err(UriError::Forbidden(format!(
                    "{ip} is a loopback or private address"
                )));
            }
            Ok(())
        }
        _ if !cfg.allow_object_store => Err(UriError::Forbidden(
            "object-store URIs are disabled on this instance (ingest.allow_object_store)".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(roots: &[&str]) -> IngestConfig {
        IngestConfig {
            file_roots: roots.iter().map(Into::into).collect(),
            allow_http: true,
            allow_object_store: false,
            allow_private_addresses: false,
        }
    }

    #[test]
    fn refusals_happen_before_anything_is_read() {
        let c = cfg(&["/data/sets"]);
        assert!(check_allowed("file:///data/sets/a", &c).is_ok());
        for uri in [
            "file:///data/other",
            "file:///data/sets/../other",
            "http://127.0.0.1/x.png",
            "http://10.0.0.1/x.png",
            "s3://bucket/prefix",
        ] {
            assert!(
                matches!(check_allowed(uri, &c), Err(UriError::Forbidden(_))),
                "{uri}"
            );
        }
        assert!(matches!(
            check_allowed("file:///data/sets/a", &cfg(&[])),
            Err(UriError::Forbidden(_))
        ));
        assert!(check_allowed("https://example.org/set.tar.gz", &c).is_ok());
        assert!(matches!(
            check_allowed("ftp://example.org/x", &c),
            Err(UriError::Invalid(_))
        ));
    }
}
