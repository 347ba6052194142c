//! The fuzz targets' inputs as ordinary tests (docs/reliability.md, "Fuzzing"): every crash the
//! fuzzer found, committed under tests/fixtures/fuzz/<target>/, goes through the same entry point
//! (`gapmeter::fuzzing`) and must come back as an answer, not a panic; and the committed seed
//! corpora (fuzz/corpus/<target>/) are accepted, which shows each target reaches the code it is
//! meant to fuzz.
use std::path::{Path, PathBuf};

use gapmeter::fuzzing;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of one directory, sorted (empty when it does not exist).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let seeds: Vec<_> = files(&root().join("fuzz/corpus").join(target))
        .into_iter()
        .filter(|(name, _)| name.starts_with("seed-"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds for {target}");
    seeds
}

fn crash(target: &str, name: &str) -> Vec<u8> {
    let path = root().join("tests/fixtures/fuzz").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every committed crash input of every target, through its target's entry point: none may
/// panic (a new input dropped into tests/fixtures/fuzz/<target>/ is covered without a new test).
#[test]
fn every_committed_crash_input_is_answered() {
    for target in [
        "decode_image",
        "walk_archive",
        "parse_manifest",
        "read_npy_npz",
        "multipart_upload",
    ] {
        for (name, data) in files(&root().join("tests/fixtures/fuzz").join(target)) {
            eprintln!("{target}/{name}");
            match target {
                "decode_image" => drop(fuzzing::decode_image(&data)),
                "walk_archive" => drop(fuzzing::walk_archive_bytes(&data)),
                "parse_manifest" => drop(fuzzing::parse_manifest(&data)),
                "read_npy_npz" => drop(fuzzing::read_npy_npz(&data)),
                _ => drop(fuzzing::multipart_upload(&data)),
            }
        }
    }
}

#[test]
fn image_seeds_decode() {
    for (name, data) in seeds("decode_image") {
        let format = fuzzing::decode_image(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ext = name.rsplit('.').next().unwrap();
        let expected = match ext {
            "jpg" => "jpeg",
            "tif" => "tiff",
            other => other,
        };
        assert_eq!(format, expected, "{name}");
    }
}

#[test]
fn archive_seeds_walk_to_their_members() {
    for (name, data) in seeds("walk_archive") {
        let (verdicts, result) = fuzzing::walk_archive_bytes(&data)
            .unwrap_or_else(|| panic!("{name}: not recognised as an archive"));
        assert_eq!(result, Ok(()), "{name}");
        let formats: Vec<_> = verdicts
            .iter()
            .map(|(member, v)| (member.rsplit('/').next().unwrap(), v.as_deref().ok()))
            .collect();
        assert_eq!(
            formats,
            [
                ("a.png", Some("png")),
                ("b.jpg", Some("jpeg")),
                ("notes.txt", None),
                ("link.png", None)
            ],
            "{name}: {verdicts:?}"
        );
    }
}

#[test]
fn manifest_seeds_parse() {
    for (name, data) in seeds("parse_manifest") {
        fuzzing::parse_manifest(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn npy_and_npz_seeds_read() {
    for (name, data) in seeds("read_npy_npz") {
        let (npy, npz) = fuzzing::read_npy_npz(&data);
        if name.ends_with(".npy") {
            assert_eq!(npy, Ok(()), "{name}");
        } else {
            assert_eq!(npz, Ok(()), "{name}");
        }
    }
}

#[test]
fn multipart_seeds_reach_the_image_checks() {
    // Each part's name and format (None: rejected), for seed `i`.
    let summary = |i: usize| -> Vec<(String, Option<String>)> {
        let verdicts = fuzzing::multipart_upload(&seeds("multipart_upload")[i].1).unwrap();
        verdicts
            .into_iter()
            .map(|(name, v)| (name, v.ok()))
            .collect()
    };
    let named = |parts: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
        parts
            .iter()
            .map(|(n, f)| (n.to_string(), f.map(str::to_string)))
            .collect()
    };
    assert_eq!(
        summary(1),
        named(&[
            ("a.png", Some("png")),
            ("dir/b.jpg", Some("jpeg")),
            ("../up.png", None)
        ])
    );
    assert_eq!(
        summary(0),
        named(&[
            ("set.tar/imgs/a.png", Some("png")),
            ("set.tar/imgs/link.png", None),
            ("set.zip/imgs/c.gif", Some("gif")),
            ("set.zip/imgs/link.png", None)
        ])
    );
    // No boundary: refused as the handler refuses it.
    assert!(fuzzing::multipart_upload(b"text/plain\r\nhello").is_err());
}

// Findings, one test each (docs/reliability.md, "Fuzzing", lists them).

/// read_npy_npz, found by the fuzzer: a version-2 `.npy` header whose length field says ~4 GiB
/// made the reader allocate that much before reading it (libFuzzer: out-of-memory,
/// malloc(4280025216)); 267 bytes were enough.
#[test]
fn npy_header_length_field_is_not_an_allocation_size() {
    let data = crash("read_npy_npz", "npy-header-length-4gib");
    let (npy, npz) = fuzzing::read_npy_npz(&data);
    let npy = npy.unwrap_err();
    assert!(
        npy.contains("not an .npy file") && npy.contains("truncated"),
        "{npy}"
    );
    assert!(npz.is_err());
}

/// read_npy_npz, the same kind of finding one step further: ndarray-npy allocates the array the
/// header's shape describes before reading any data, so 144 bytes claiming 100,000 × 1,000,000
/// float32 asked for 400 GB (AddressSanitizer: out of memory in alloc_zeroed; without the fuzzer,
/// a failed allocation aborts the process).
#[test]
fn npy_shape_is_checked_against_the_file_before_allocating() {
    let path = root().join("tests/fixtures/fuzz/read_npy_npz/npy-shape-claims-400-gb");
    let err = format!("{:#}", gapmeter::score::read_features(&path).unwrap_err());
    assert!(
        err.contains("the header describes 400000000000 bytes of data, the file holds 16"),
        "{err}"
    );
    let (npy, _) = fuzzing::read_npy_npz(&std::fs::read(&path).unwrap());
    assert!(npy.is_err());
}

/// read_npy_npz: the same through an `.npz` (the statistics upload, `PUT
/// /v1/datasets/{id}/statistics`): a 476-byte archive whose `mu` claims 10^12 float64 aborted
/// the service's process on the failed 8 TB allocation.
#[test]
fn npz_member_shape_is_checked_against_its_data_before_allocating() {
    let data = crash("read_npy_npz", "npz-mu-claims-8-tb");
    let err =
        gapmeter::score::read_statistics_from(std::io::Cursor::new(&data), "upload").unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("expected `mu` as a float32/float64 array"),
        "{err}"
    );
    assert!(err.contains("header matches its data (8 bytes)"), "{err}");
}

/// decode_image: libjpeg allocates the image its header describes, so a 697-byte JPEG claiming
/// 60,000 × 60,000 pixels made `decode_rgb` (what `gapmeter score` and the worker run on every
/// file) ask for 10.8 GB (libFuzzer: out-of-memory, malloc(10800000000)). The service's upload
/// check refused it by its pixel limit first; the CLI had no such check. Every other format was
/// already held to the `image` crate's 512 MiB allocation limit; JPEG now is too.
#[test]
fn jpeg_header_dimensions_are_held_to_the_decoding_limit() {
    let data = crash("decode_image", "jpeg-claims-60000x60000");
    let err = gapmeter::imaging::decode_rgb(&data)
        .unwrap_err()
        .to_string();
    assert!(err.contains("60000×60000 pixels is over the"), "{err}");
    let err = fuzzing::decode_image(&data).unwrap_err();
    assert!(err.contains("over the 89478485-pixel limit"), "{err}");
}
