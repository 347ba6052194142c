//! Content-addressed image bytes in an object store: a local directory by default, S3, GCS,
//! Azure or HTTP by URL.
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use object_store::{path::Path as ObjectPath, ObjectStore, PutPayload};

/// The blob store, keyed by blake3 hash.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl Blobs {
    /// Opens the store named by `url`: `file:///abs/dir` or `file://rel/dir` (created if missing),
    /// `s3://`, `gs://`, `az://`, `http(s)://` (credentials from the environment).
    pub fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, &BTreeMap::new())
    }

    /// Like [`Blobs::open`], with object_store `options` (`endpoint`, `region`, ...) that win
    /// over the environment's.
    pub fn open_with(url: &str, options: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        if let Some(path) = url.strip_prefix("file://") {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating blob directory {path}"))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(path)
                .with_context(|| format!("opening blob directory {path}"))?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: ObjectPath::default(),
                url: url.to_string(),
            });
        }
        let parsed = url::Url::parse(url).with_context(|| format!("storage url {url:?}"))?;
        if !matches!(
            parsed.scheme(),
            "s3" | "gs" | "az" | "abfs" | "abfss" | "http" | "https"
        ) {
            bail!("storage url {url:?}: expected file://, s3://, gs://, az:// or http(s)://");
        }
        let (store, prefix) = open_object_store(&parsed, options)
            .with_context(|| format!("opening storage {url}"))?;
        Ok(Self {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, hash: &[u8; 32]) -> ObjectPath {
        let hex = hex::encode(hash);
        let mut p = self.prefix.clone();
        for part in ["images", &hex[..2], &hex[2..4], &hex] {
            p = p.child(part);
        }
        p
    }

    pub async fn put(&self, hash: &[u8; 32], bytes: Bytes) -> anyhow::Result<()> {
        self.store
            .put(&self.key(hash), PutPayload::from(bytes))
            .await
            .context("writing blob")?;
        Ok(())
    }

    pub async fn get(&self, hash: &[u8; 32]) -> anyhow::Result<Bytes> {
        Ok(self
            .store
            .get(&self.key(hash))
            .await
            .context("reading blob")?
            .bytes()
            .await?)
    }

    pub async fn exists(&self, hash: &[u8; 32]) -> anyhow::Result<bool> {
        match self.store.head(&self.key(hash)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).context("checking blob"),
        }
    }

    /// Deletes a blob; a missing blob is not an error.
    pub async fn delete(&self, hash: &[u8; 32]) -> anyhow::Result<()> {
        match self.store.delete(&self.key(hash)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).context("deleting blob"),
        }
    }

    /// Every stored blob: its hash and when it was written (what garbage collection compares
    /// with the `images` table). Objects under the prefix that are not blobs are left out.
    pub async fn list(&self) -> anyhow::Result<Vec<([u8; 32], std::time::SystemTime)>> {
        use futures_util::StreamExt;
        let root = self.prefix.child("images");
        let mut listing = self.store.list(Some(&root));
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.context("listing blobs")?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(name, &mut hash).is_ok() {
                out.push((hash, std::time::SystemTime::from(meta.last_modified)));
            }
        }
        Ok(out)
    }

    /// Round-trips a small probe object: the readiness check.
    pub async fn probe(&self) -> anyhow::Result<()> {
        let key = self.prefix.child("readyz-probe");
        self.store.put(&key, PutPayload::from_static(b"ok")).await?;
        self.store.get(&key).await?.bytes().await?;
        Ok(())
    }
}

/// The object store a remote URL names and the path inside it. Options come from the
/// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), then from `options`, which win; an option the
/// provider does not know is an error rather than silently dropped (object_store ignores them).
pub fn open_object_store(
    url: &url::Url,
    options: &BTreeMap<String, String>,
) -> anyhow::Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    for key in options.keys() {
        let known = match url.scheme() {
            "s3" => key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok(),
            "gs" => key.parse::<object_store::gcp::GoogleConfigKey>().is_ok(),
            "az" | "abfs" | "abfss" => key.parse::<object_store::azure::AzureConfigKey>().is_ok(),
            _ => key.parse::<object_store::ClientConfigKey>().is_ok(),
        };
        if !known {
            bail!("unknown {} store option {key:?}", url.scheme());
        }
    }
    let env = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v));
    let all: Vec<(String, String)> = env
        .chain(options.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    let (store, prefix) = object_store::parse_url_opts(url, all)?;
    Ok((Arc::from(store), prefix))
}
