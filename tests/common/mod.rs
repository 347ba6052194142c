//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reference fixtures written by scripts/reference/make_metric_fixtures.py.
pub fn reference(name: &str) -> PathBuf {
    root().join("tests/fixtures/reference").join(name)
}

pub fn reference_json() -> serde_json::Value {
    let text = std::fs::read_to_string(reference("metrics.json"))
        .expect("tests/fixtures/reference/metrics.json");
    serde_json::from_str(&text).unwrap()
}

/// The directory holding the generated test extractors (`make models` writes them).
pub fn models_dir() -> PathBuf {
    let dir = gapmeter::features::default_models_dir();
    assert!(
        dir.join("tiny-cnn.toml").is_file(),
        "test extractors missing in {}: run `make models` (or `make test`, which does it)",
        dir.display()
    );
    dir
}

/// Runs the gapmeter binary with the test models directory.
pub fn gapmeter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gapmeter"))
        .args(args)
        .env("GAPMETER_MODELS_DIR", models_dir())
        .current_dir(root())
        .output()
        .expect("running gapmeter")
}

/// Runs gapmeter, asserts success and parses stdout as JSON.
pub fn gapmeter_json(args: &[&str]) -> serde_json::Value {
    let out = gapmeter(args);
    assert!(
        out.status.success(),
        "gapmeter {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_rel(actual: f64, expected: f64, tol: f64, what: &str) {
    let rel = ((actual - expected) / expected).abs();
    assert!(
        rel <= tol,
        "{what}: {actual} vs reference {expected} (relative error {rel:.3e} > {tol:e})"
    );
}

/// Copies a folder's files (not recursive) into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}
pub mod scenes;
