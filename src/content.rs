//! Content addressing: an image is named by the blake3 hash of its bytes, and a dataset by the
//! hash of its multiset of images. `gapmeter score` on a folder, the service's datasets and the
//! caches all use these two functions, so the same files always give the same names.

/// The blake3 hash of one file's bytes.
pub fn image_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// `blake3:<hex>` over the sorted 32-byte hashes of every file of a set. Duplicate files count
/// once each, as a folder holds them; the order the files were read in does not matter.
///
/// ```
/// use gapmeter::content::{dataset_hash, image_hash};
/// let (a, b) = (image_hash(b"a"), image_hash(b"b"));
/// assert_eq!(dataset_hash([a, b]), dataset_hash([b, a]));
/// assert_ne!(dataset_hash([a, b]), dataset_hash([a, b, b]));
/// ```
pub fn dataset_hash(hashes: impl IntoIterator<Item = [u8; 32]>) -> String {
    let mut sorted: Vec<[u8; 32]> = hashes.into_iter().collect();
    sorted.sort_unstable();
    let mut h = blake3::Hasher::new();
    for x in &sorted {
        h.update(x);
    }
    format!("blake3:{}", h.finalize().to_hex())
}

/// Orders paths as `gapmeter score` lists a folder: depth first, entries of a folder by name
/// (bytewise). That is a comparison component by component, which differs from comparing whole
/// strings: `a/x.png` comes before `a.png` because the folder `a` sorts before the file `a.png`.
///
/// ```
/// use gapmeter::content::folder_order;
/// let mut p = vec!["a.png", "a/x.png", "B.png"];
/// p.sort_by(|x, y| folder_order(x, y));
/// assert_eq!(p, ["B.png", "a/x.png", "a.png"]);
/// ```
pub fn folder_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/')
        .map(str::as_bytes)
        .cmp(b.split('/').map(str::as_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_order_is_walkdirs_order() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "a.png",
            "a/x.png",
            "a b/y.png",
            "a-b.png",
            "Z.png",
            "a/b/c.png",
            "ä.png",
        ];
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let listed: Vec<String> = crate::ingest::list_images(dir.path())
            .unwrap()
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let mut sorted: Vec<&str> = files.to_vec();
        sorted.sort_by(|x, y| folder_order(x, y));
        assert_eq!(listed, sorted);
    }
}
