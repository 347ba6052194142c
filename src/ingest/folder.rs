use std::path::{Path, PathBuf};

use anyhow::Context;

/// File extensions treated as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Image files under `root`, recursively, in a stable (sorted) order. Hidden files and folders
/// (names starting with '.') are skipped; symlinks are followed.
pub fn list_images(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let is_image = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_images_recursively_sorted_skipping_hidden_and_others() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(p.join(".cache")).unwrap();
        for f in [
            "b.PNG",
            "a.jpg",
            "sub/c.webp",
            "sub/deeper/d.tiff",
            "notes.txt",
            ".hidden.png",
            ".cache/e.png",
        ] {
            std::fs::write(p.join(f), b"x").unwrap();
        }
        let names: Vec<_> = list_images(p)
            .unwrap()
            .iter()
            .map(|x| x.strip_prefix(p).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tiff"]);
    }
}
