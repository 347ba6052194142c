//! Dataset URIs: `file://` under admin-allowlisted roots, `http(s)://` to an image or archive,
//! `s3://`, `gs://`, `az://` prefixes through object_store.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// A file took the team over a quota (see [`IngestError::OverQuota`]).
    #[error("{0}")]
    OverQuota(crate::store::OverQuota),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<IngestError> for UriError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Interrupted => UriError::Interrupted,
            IngestError::Store(e) => UriError::Internal(e),
            IngestError::OverQuota(over) => UriError::OverQuota(over),
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

/// Checks a dataset URI against this instance's policy as well as its form, without touching the
/// network or the file system, so that a request can be refused before anything is created: the
/// scheme must be enabled, a `file://` path must lie under the configured roots as written (the
/// URL parser has already resolved `.` and `..`), and an http(s) URI whose host is an IP literal
/// must not name a loopback, private, link-local or otherwise internal address (unless
/// `ingest.allow_private_addresses`). What needs the source itself is checked where it is read
/// ([`ingest_uri`]): symlinks out of the roots, host names that resolve to internal addresses.
pub fn check_uri_allowed(uri: &str, cfg: &IngestConfig) -> Result<url::Url, UriError> {
    check_uri(uri)?;
    let url =
        url::Url::parse(uri).map_err(|e| UriError::Invalid(format!("invalid URI {uri:?}: {e}")))?;
    match url.scheme() {
        "file" if cfg.file_roots.is_empty() => Err(UriError::Forbidden(
            "file:// URIs are disabled on this instance (no ingest.file_roots)".into(),
        )),
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|_| UriError::Invalid(format!("invalid file URI {url}")))?;
            // Roots as written and as resolved: a root may be configured through a symlink.
            let under = cfg.file_roots.iter().any(|r| {
                path.starts_with(r) || std::fs::canonicalize(r).is_ok_and(|c| path.starts_with(c))
            });
            if !under {
                return Err(UriError::Forbidden(format!(
                    "{} is outside the allowed roots",
                    path.display()
                )));
            }
            Ok(url)
        }
        "http" | "https" => {
            if !cfg.allow_http {
                return Err(UriError::Forbidden(
                    "http(s) URIs are disabled on this instance".into(),
                ));
            }
            if let Some(ip) = literal_ip(&url)? {
                if !cfg.allow_private_addresses && is_private(ip) {
                    return Err(UriError::Forbidden(format!(
                        "{ip} is a loopback, private or otherwise internal address"
                    )));
                }
            }
            Ok(url)
        }
        "s3" | "gs" | "az" | "abfs" | "abfss" if !cfg.allow_object_store => {
            Err(UriError::Forbidden(
                "object-store URIs are disabled on this instance (ingest.allow_object_store)"
                    .into(),
            ))
        }
        _ => Ok(url),
    }
}

/// The address an http(s) URL's host names when it is an IP literal; `None` for a host name.
/// Taken from the parsed host, not from `host_str()`, which keeps an IPv6 literal's brackets
/// (a resolver given `[::1]` fails).
fn literal_ip(url: &url::Url) -> Result<Option<IpAddr>, UriError> {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => Ok(Some(IpAddr::V4(v4))),
        Some(url::Host::Ipv6(v6)) => Ok(Some(IpAddr::V6(v6))),
        Some(url::Host::Domain(_)) => Ok(None),
        None => Err(UriError::Invalid(format!("{url}: no host"))),
    }
}

/// Ingests everything a dataset URI names into the ingestor's dataset.
pub async fn ingest_uri(
    ing: &mut Ingestor<'_>,
    uri: &str,
    cfg: &IngestConfig,
    request_bytes: u64,
) -> Result<(), UriError> {
    // The same policy a request is checked against, again here: a job may run on a worker whose
    // configuration differs from the API server's that accepted the URI.
    let url = check_uri_allowed(uri, cfg)?;
    match url.scheme() {
        "file" => ingest_file_uri(ing, &url, cfg).await,
        "http" | "https" => ingest_http(ing, &url, cfg, request_bytes).await,
        "s3" | "gs" | "az" | "abfs" | "abfss" => {
            ingest_object_store(ing, &url, &cfg.object_store_options, request_bytes).await
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

/// Whether an address must not be fetched from (unless `ingest.allow_private_addresses`): anything
/// that is not a public unicast address, and IPv6 addresses that embed such an IPv4 address.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        // 100.64.0.0/10, carrier-grade NAT.
        || o[0] == 100 && (o[1] & 0xc0) == 64
        // 0.0.0.0/8, "this network": Linux connects 0.x.y.z to the local host.
        || o[0] == 0
        // 240.0.0.0/4, reserved.
        || o[0] >= 240
}

fn is_private_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    if v6.is_loopback() || v6.is_unspecified() {
        return true;
    }
    // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 (deprecated) site-local, ff00::/8
    // multicast.
    if (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0] & 0xff00) == 0xff00
    {
        return true;
    }
    // 64:ff9b:1::/48, NAT64 for local use (RFC 8215): its translator is inside the network.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return true;
    }
    // Addresses that carry an IPv4 address get to it (through the host's own stack, a NAT64
    // translator or a 6to4 relay), so they are refused when that IPv4 address would be.
    embedded_ipv4(v6).is_some_and(is_private_v4)
}

/// The IPv4 address an IPv6 address stands for, in the forms that reach it: IPv4-mapped
/// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated), IPv4-translated
/// `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::/48`.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0, 0, _, _]
        | [0, 0, 0, 0, 0xffff, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

async fn ingest_http(
    ing: &mut Ingestor<'_>,
    url: &url::Url,
    cfg: &IngestConfig,
    request_bytes: u64,
) -> Result<(), UriError> {
    // An IP literal is the address itself (`check_uri_allowed` refused an internal one up front);
    // a host name is resolved here, once.
    let port = url.port_or_known_default().unwrap_or(80);
    let host = url
        .host_str()
        .ok_or_else(|| UriError::Invalid(format!("{url}: no host")))?
        .to_string();
    let literal = literal_ip(url)?;
    let addrs: Vec<std::net::SocketAddr> = match literal {
        Some(ip) => vec![std::net::SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| UriError::Unreachable(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    let Some(first) = addrs.first().copied() else {
        return Err(UriError::Unreachable(format!(
            "{host} resolves to no address"
        )));
    };
    // Checked again at connect time, for literals too, so this function is safe on its own.
    if !cfg.allow_private_addresses && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(UriError::Forbidden(format!(
            "{host} is or resolves to a loopback, private or otherwise internal address"
        )));
    }
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if literal.is_none() {
        // Connect to the address that was checked, not to whatever a second lookup returns.
        builder = builder.resolve(&host, first);
    }
    // No redirects, which could lead anywhere.
    let client = builder.build().map_err(|e| UriError::Internal(e.into()))?;
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
    options: &std::collections::BTreeMap<String, String>,
    request_bytes: u64,
) -> Result<(), UriError> {
    let (store, prefix) = crate::store::open_object_store(url, options)
        .map_err(|e| UriError::Invalid(format!("{url}: {e:#}")))?;
    let mut listing = store.list(Some(&prefix));
    let mut objects = Vec::new();
    while let Some(meta) = listing.next().await {
        objects.push(meta.map_err(|e| UriError::Unreachable(format!("listing {url}: {e}")))?);
    }
    objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    for meta in objects {
        let name = relative_name(&meta.location, &prefix);
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

/// An object's member path: its key below the URI's prefix, as a folder's files are named below
/// the folder (a URI naming one object gives its file name).
fn relative_name(location: &object_store::path::Path, prefix: &object_store::path::Path) -> String {
    let below: Vec<String> = location
        .prefix_match(prefix)
        .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
        .unwrap_or_default();
    if below.is_empty() {
        location
            .filename()
            .map_or_else(|| location.to_string(), str::to_string)
    } else {
        below.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_relative_to_the_uri_prefix() {
        use object_store::path::Path as P;
        let prefix = P::from("sets/b");
        assert_eq!(relative_name(&P::from("sets/b/x.png"), &prefix), "x.png");
        assert_eq!(
            relative_name(&P::from("sets/b/sub/y.png"), &prefix),
            "sub/y.png"
        );
        assert_eq!(
            relative_name(&P::from("sets/b"), &P::from("sets/b")),
            "b",
            "a URI naming one object"
        );
        assert_eq!(relative_name(&P::from("a/z.png"), &P::from("")), "a/z.png");
    }

    fn policy(roots: &[&str]) -> IngestConfig {
        IngestConfig {
            file_roots: roots.iter().map(Into::into).collect(),
            allow_http: true,
            allow_object_store: false,
            allow_private_addresses: false,
            object_store_options: Default::default(),
        }
    }

    #[test]
    fn file_roots_and_switches_are_judged_before_anything_is_read() {
        let c = policy(&["/data/sets"]);
        assert!(check_uri_allowed("file:///data/sets/a", &c).is_ok());
        for uri in [
            "file:///data/other",
            "file:///data/sets/../other",
            "http://10.0.0.1/x.png",
            "s3://bucket/prefix",
        ] {
            assert!(
                matches!(check_uri_allowed(uri, &c), Err(UriError::Forbidden(_))),
                "{uri}"
            );
        }
        assert!(matches!(
            check_uri_allowed("file:///data/sets/a", &policy(&[])),
            Err(UriError::Forbidden(_))
        ));
        assert!(check_uri_allowed("https://example.org/set.tar.gz", &c).is_ok());
    }

    fn cfg(allow_private_addresses: bool) -> IngestConfig {
        IngestConfig {
            file_roots: Vec::new(),
            allow_http: true,
            allow_object_store: false,
            allow_private_addresses,
            object_store_options: Default::default(),
        }
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::ffff:0:192.168.1.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::8.8.8.8",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2001:4860::8888",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ipv6_literals_are_parsed_without_brackets() {
        let url = url::Url::parse("http://[2606:4700:4700::1111]:8443/x.png").unwrap();
        assert_eq!(
            literal_ip(&url).unwrap(),
            Some("2606:4700:4700::1111".parse::<IpAddr>().unwrap())
        );
        let url = url::Url::parse("http://127.0.0.1/x.png").unwrap();
        assert_eq!(
            literal_ip(&url).unwrap(),
            Some("127.0.0.1".parse::<IpAddr>().unwrap())
        );
        let url = url::Url::parse("https://example.org/x.png").unwrap();
        assert_eq!(literal_ip(&url).unwrap(), None);
    }

    #[test]
    fn public_ipv6_literal_passes_the_address_check() {
        // The check only: nothing is fetched.
        for uri in [
            "http://[2606:4700:4700::1111]/x.png",
            "https://[2606:4700:4700::1111]:8443/set.tar.gz",
            "http://[2001:4860:4860::8888]/x.png",
        ] {
            let url = check_uri_allowed(uri, &cfg(false)).unwrap();
            assert!(matches!(url.host(), Some(url::Host::Ipv6(_))), "{uri}");
        }
    }

    #[test]
    fn internal_ip_literals_are_forbidden_before_any_fetch() {
        for uri in [
            "http://[::1]:8080/x.png",
            "http://[::]/x.png",
            "http://[::ffff:127.0.0.1]/x.png",
            "http://[::ffff:7f00:1]/x.png",
            "http://[::ffff:10.1.2.3]/x.png",
            "http://[::ffff:169.254.169.254]/latest/meta-data",
            "http://[fe80::1]/x.png",
            "http://[fd12:3456::1]/x.png",
            "http://[fc00::1]/x.png",
            "http://[ff02::1]/x.png",
            "http://[64:ff9b::127.0.0.1]/x.png",
            "https://[2002:a00:1::1]/x.png",
            "http://127.0.0.1:9/x.png",
            "http://0x7f.1/x.png",
            "http://0/x.png",
            "http://169.254.169.254/latest/meta-data",
        ] {
            match check_uri_allowed(uri, &cfg(false)) {
                Err(UriError::Forbidden(m)) => {
                    assert!(m.contains("internal address"), "{uri}: {m}")
                }
                other => panic!("{uri}: expected Forbidden, got {other:?}"),
            }
            // The knob that lets tests (and trusted instances) reach loopback covers IPv6 too.
            assert!(check_uri_allowed(uri, &cfg(true)).is_ok(), "{uri}");
        }
    }

    #[test]
    fn disabled_schemes_are_forbidden_up_front() {
        let no_http = IngestConfig {
            allow_http: false,
            ..cfg(true)
        };
        assert!(matches!(
            check_uri_allowed("http://[2606:4700:4700::1111]/x.png", &no_http),
            Err(UriError::Forbidden(_))
        ));
        assert!(matches!(
            check_uri_allowed("s3://bucket/prefix", &cfg(true)),
            Err(UriError::Forbidden(_))
        ));
        assert!(matches!(
            check_uri_allowed("file:///data", &cfg(true)),
            Err(UriError::Forbidden(_))
        ));
        assert!(matches!(
            check_uri_allowed("ftp://example.org/x", &cfg(true)),
            Err(UriError::Invalid(_))
        ));
    }
}
