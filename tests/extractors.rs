//! Bring-your-own TorchScript models and the exported reference extractors, through the binary.
//!
//! Models are written by Python (`$GAPMETER_PYTHON`, exported by scripts/with-libtorch.sh) exactly
//! as a user would write them; nothing is downloaded.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{gapmeter, gapmeter_json, root, stderr};
use sha2::{Digest, Sha256};

fn python() -> PathBuf {
    PathBuf::from(std::env::var_os("GAPMETER_PYTHON").expect(
        "GAPMETER_PYTHON is not set: run the tests through scripts/with-libtorch.sh (make test)",
    ))
}

fn run_python(py: &Path, args: &[&str]) {
    run_python_with(py, args, &[]);
}

fn run_python_with(py: &Path, args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(py)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}",
        py.display(),
        stderr(&out)
    );
}

/// A user's model: 32 × 32 input (its Linear layer fixes that), two outputs.
const USER_MODEL: &str = r#"
import sys, torch
from torch import nn

class Mine(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 15 * 15, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return h.mean((2, 3)), self.fc(h.flatten(1))

torch.manual_seed(0)
torch.jit.script(Mine().eval()).save(sys.argv[1])
"#;

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Writes the user model and returns (dir, model sha256).
fn user_model() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("make_mine.py");
    std::fs::write(&script, USER_MODEL).unwrap();
    let pt = dir.path().join("mine.pt");
    run_python(&python(), &[script.to_str().unwrap(), pt.to_str().unwrap()]);
    let sha = sha256_hex(&pt);
    (dir, sha)
}

fn write_manifest(dir: &Path, name: &str, sha: &str, input_size: u32, outputs: &str) -> PathBuf {
    let text = format!(
        r#"id = "my-net"
file = "mine.pt"
sha256 = "{sha}"
input_size = {input_size}
resize = "clean"
input_range = "0-1"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
outputs = {outputs}
"#
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_users_torchscript_model_with_a_hand_written_manifest_scores() {
    let (dir, sha) = user_model();
    let manifest = write_manifest(dir.path(), "mine.toml", &sha, 32, r#"["feat", "proj"]"#);
    let v = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "--extractor",
        manifest.to_str().unwrap(),
        "--format",
        "json",
        "--no-progress",
    ]);
    assert_eq!(v["extractor"]["id"], "my-net");
    assert_eq!(v["extractor"]["dim"], 8);
    assert_eq!(v["extractor"]["sha256"], sha.as_str());
    let fid = v["metrics"]["fid"]["value"].as_f64().unwrap();
    assert!(fid.is_finite() && fid > 0.0, "{fid}");
    // User models are trained unless the manifest says otherwise: no untrained warning.
    assert!(!v["warnings"].to_string().contains("untrained"));

    // `features` picks another output as the content features.
    let second = dir.path().join("proj.toml");
    let text = std::fs::read_to_string(&manifest).unwrap() + "features = \"proj\"\n";
    std::fs::write(&second, text).unwrap();
    let v = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "-x",
        second.to_str().unwrap(),
        "--format",
        "json",
        "--metrics",
        "fid",
    ]);
    assert_eq!(v["extractor"]["dim"], 4);
}

fn failing_score(manifest: &Path) -> String {
    let out = gapmeter(&[
        "score",
        "examples/A",
        "examples/B",
        "-x",
        manifest.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{} was accepted", manifest.display());
    stderr(&out)
}

#[test]
fn a_manifest_naming_more_outputs_than_the_model_returns_is_a_clear_error() {
    let (dir, sha) = user_model();
    let manifest = write_manifest(
        dir.path(),
        "three.toml",
        &sha,
        32,
        r#"["feat", "proj", "extra"]"#,
    );
    let err = failing_score(&manifest);
    assert!(
        err.contains("mine.pt")
            && err.contains("three.toml")
            && err.contains("returns 2 output(s)")
            && err.contains("names 3"),
        "{err}"
    );
}

#[test]
fn a_model_expecting_another_input_size_is_a_clear_error() {
    let (dir, sha) = user_model();
    let manifest = write_manifest(dir.path(), "big.toml", &sha, 48, r#"["feat", "proj"]"#);
    let err = failing_score(&manifest);
    assert!(
        err.contains("mine.pt")
            && err.contains("big.toml")
            && err.contains("2×3×48×48")
            && err.contains("input_size"),
        "{err}"
    );
}

#[test]
fn a_manifest_pointing_at_a_missing_model_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), "m.toml", &"a".repeat(64), 32, r#"["feat"]"#);
    let err = failing_score(&manifest);
    assert!(
        err.contains("mine.pt") && err.contains("cannot read"),
        "{err}"
    );
}

fn listed(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_gapmeter"))
        .args(["models", "list", "--json", "--models-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn shape_of(entry: &serde_json::Value, output: &str) -> Vec<i64> {
    entry["output_shapes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o[0] == output)
        .unwrap_or_else(|| panic!("no output {output} in {entry}"))[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
fn models_list_shows_dimensions_training_state_and_load_errors() {
    let (dir, sha) = user_model();
    write_manifest(dir.path(), "mine.toml", &sha, 32, r#"["feat", "proj"]"#);
    let bad = write_manifest(dir.path(), "bad.toml", &"0".repeat(64), 32, r#"["feat"]"#);
    std::fs::write(
        &bad,
        std::fs::read_to_string(&bad)
            .unwrap()
            .replace("my-net", "broken"),
    )
    .unwrap();
    let all = listed(dir.path());
    assert_eq!(all.len(), 2);
    let broken = all.iter().find(|m| m["id"] == "broken").unwrap();
    assert!(broken["error"]
        .as_str()
        .unwrap()
        .contains("sha256 mismatch"));
    let mine = all.iter().find(|m| m["id"] == "my-net").unwrap();
    assert_eq!(shape_of(mine, "feat"), [8]);
    assert_eq!(shape_of(mine, "proj"), [4]);
    assert_eq!(mine["feature_dim"], 8);
    assert_eq!(mine["trained"], true);

    let out = gapmeter(&["models", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("tiny-cnn") && table.contains("untrained") && table.contains("pool:128"),
        "{table}"
    );
}

/// scripts/export_models.py --untrained builds the reference architectures with seeded weights and
/// writes manifests gapmeter loads; the same code path exports the real weights.
///
/// With that model, `gapmeter score` must reproduce clean-fid's FID (clean manifest) and
/// pytorch-fid's (legacy manifest) on the generated sets of tests/fixtures/extractors, whose
/// reference values scripts/reference/make_extractor_fixtures.py computed with the packages
/// themselves. Two float64 exports and the full Inception on ~210 images per mode: about two
/// minutes on 2 cores.
#[test]
fn exported_untrained_inception_loads_and_reproduces_clean_fid_and_pytorch_fid() {
    let fixtures = root().join("tests/fixtures/extractors");
    let parity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("parity.json")).unwrap())
            .unwrap();
    let seed = parity["model"]["export"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip_while(|w| *w != "--seed")
        .nth(1)
        .unwrap()
        .to_string();
    // Exported twice: with this CPU's own kernels, and with PyTorch's portable ones on one
    // thread, as a machine without AVX would. Both must give the weights the references used.
    let dir = tempfile::tempdir().unwrap();
    let portable = tempfile::tempdir().unwrap();
    for (out, env) in [
        (dir.path(), &[][..]),
        (
            portable.path(),
            &[("ATEN_CPU_CAPABILITY", "default"), ("OMP_NUM_THREADS", "1")][..],
        ),
    ] {
        run_python_with(
            &python(),
            &[
                "scripts/export_models.py",
                "--untrained",
                "--seed",
                &seed,
                "--out",
                out.to_str().unwrap(),
                "inception-v3-fid",
            ],
            env,
        );
    }
    let all = listed(dir.path());
    let ids: Vec<&str> = all.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "inception-v3-fid-untrained",
            "inception-v3-fid-untrained-legacy"
        ]
    );
    for m in &all {
        assert_eq!(m["trained"], false);
        assert!(m["error"].is_null(), "{m}");
        assert_eq!(shape_of(m, "pool"), [2048]);
        assert_eq!(shape_of(m, "logits"), [1008]);
        assert_eq!(shape_of(m, "early"), [64, 73, 73]);
    }
    assert_eq!(all[0]["resize"], "clean");
    assert_eq!(all[0]["input_range"], "0-255");
    assert_eq!(all[1]["resize"], "legacy-pytorch");
    assert_eq!(all[1]["input_range"], "-1-1");
    // The file's own sha256 varies with debug info (the venv's source paths), so the weights are
    // compared by the hash of their values.
    let weights_sha256 = |dir: &Path| {
        let pt = dir.join("inception-v3-fid-untrained.pt");
        let out = Command::new(python())
            .args([
                "-c",
                "import sys, torch; sys.path.insert(0, 'scripts'); \
                 from gapmeter_models.export import weights_sha256; \
                 print(weights_sha256(torch.jit.load(sys.argv[1])))",
                pt.to_str().unwrap(),
            ])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let native = weights_sha256(dir.path());
    assert_eq!(
        native,
        weights_sha256(portable.path()),
        "the seeded weights depend on the CPU's kernels"
    );
    assert_eq!(
        native,
        parity["model"]["weights_sha256"].as_str().unwrap(),
        "the exported weights differ from those the reference FIDs were computed with; they are \
         meant to be the same on every CPU (gapmeter_models.export.seeded_untrained): did the \
         export code change without rerunning scripts/reference/make_extractor_fixtures.py?"
    );

    let (a, b) = (fixtures.join("a"), fixtures.join("b"));
    for (manifest, key) in [
        ("inception-v3-fid-untrained.toml", "clean_fid"),
        ("inception-v3-fid-untrained-legacy.toml", "pytorch_fid"),
    ] {
        let v = gapmeter_json(&[
            "score",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "-x",
            dir.path().join(manifest).to_str().unwrap(),
            "--metrics",
            "fid",
            "--format",
            "json",
            "--batch-size",
            "50",
        ]);
        assert_eq!(v["source"]["count"], parity["counts"]["a"]);
        assert_eq!(v["target"]["count"], parity["counts"]["b"]);
        let ours = v["metrics"]["fid"]["value"].as_f64().unwrap();
        let reference = parity[key].as_f64().unwrap();
        println!("{key}: gapmeter {ours}, reference {reference}");
        // Measured 1.7e-6 (clean) and 3.7e-6 (legacy); float32 kernels differ between CPUs (the
        // reference values may come from another machine) by about 1e-6 at these FIDs.
        common::assert_rel(ours, reference, 1e-5, key);
    }
}

/// CLIP and DINOv2 need open_clip_torch and timm, which only the reference venv carries
/// (scripts/reference/setup.sh, several GB from PyPI): ignored by `make test`, run by
/// `make test-reference`, and a failure when run without that venv.
#[test]
#[ignore = "needs the reference venv (open_clip, timm): make test-reference"]
fn exported_untrained_clip_and_dinov2_load() {
    let py = std::env::var_os("GAPMETER_REFERENCE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/gapmeter/venv-reference/bin/python")
        });
    let check = Command::new(&py)
        .args(["-c", "import open_clip, timm"])
        .output();
    let ok = check.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import open_clip and timm ({}): run `make test-reference`, which sets up the \
         reference venv (scripts/reference/setup.sh) and points GAPMETER_REFERENCE_PYTHON at it",
        py.display(),
        match &check {
            Ok(o) => stderr(o),
            Err(e) => e.to_string(),
        }
    );
    let dir = tempfile::tempdir().unwrap();
    run_python(
        &py,
        &[
            "scripts/export_models.py",
            "--untrained",
            "--seed",
            "2",
            "--out",
            dir.path().to_str().unwrap(),
            "clip-vit-b32",
            "dinov2-vitb14",
        ],
    );
    let all = listed(dir.path());
    assert_eq!(all.len(), 2, "{all:?}");
    let clip = &all[0];
    assert_eq!(clip["id"], "clip-vit-b32-untrained");
    assert!(clip["error"].is_null(), "{clip}");
    assert_eq!(shape_of(clip, "embedding"), [512]);
    let dino = &all[1];
    assert_eq!(dino["id"], "dinov2-vitb14-untrained");
    assert!(dino["error"].is_null(), "{dino}");
    assert_eq!(shape_of(dino, "cls"), [768]);

    // The embedding is L2-normalised, so any two sets score within the unit ball.
    let v = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "-x",
        dir.path()
            .join("clip-vit-b32-untrained.toml")
            .to_str()
            .unwrap(),
        "--format",
        "json",
        "--metrics",
        "fid",
    ]);
    assert_eq!(v["extractor"]["dim"], 512);
    let fid = v["metrics"]["fid"]["value"].as_f64().unwrap();
    assert!((0.0..4.0).contains(&fid), "{fid}");
}

#[test]
fn the_example_manifests_in_config_parse() {
    let dir = root().join("config/extractors");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            gapmeter::features::Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "{}", dir.display());
}

/// `seed_parameters` (scripts/gapmeter_models/export.py) computes PyTorch's default initialisation
/// exactly, so the seeded test models are the weights `torch.manual_seed(seed)` plus building the
/// model gives, on every CPU: this compares every parameter of the tiny CNN and the FID Inception
/// with PyTorch's own draws, which are the reference on AVX2 and AVX-512 CPUs (PyTorch's
/// portable kernels draw differently; docs/extractors.md).
#[test]
fn seeded_parameters_are_pytorchs_default_initialisation() {
    const SCRIPT: &str = r#"
import sys, torch
sys.path.insert(0, "scripts")
from gapmeter_models.export import seed_parameters
from gapmeter_models.inception_fid import FIDInceptionV3
from gapmeter_models.tiny import TinyCNN
print(torch.backends.cpu.get_cpu_capability())
for cls in (TinyCNN, FIDInceptionV3):
    torch.manual_seed(3)
    ref = cls()
    mine = cls()
    seed_parameters(mine, 3)
    pairs = zip(ref.state_dict().values(), mine.state_dict().values())
    print(cls.__name__, sum(int((a != b).sum()) for a, b in pairs))
"#;
    let out = Command::new(python())
        .args(["-c", SCRIPT])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let capability = lines.next().unwrap_or_default().to_string();
    assert_ne!(
        capability, "DEFAULT",
        "PyTorch runs its portable kernels here, whose own init is not the reference"
    );
    for line in lines {
        assert!(
            line.ends_with(" 0"),
            "values differing from PyTorch's init: {line}"
        );
    }
    assert!(
        text.contains("TinyCNN 0") && text.contains("FIDInceptionV3 0"),
        "{text}"
    );
}
