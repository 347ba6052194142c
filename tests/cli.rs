//! `gapmeter score` end to end: the binary, real files, real TorchScript models.
mod common;

use common::{
    assert_rel, copy_dir, gapmeter, gapmeter_json, reference, reference_json, root, stderr,
};

fn value(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

#[test]
fn help_and_version() {
    let out = gapmeter(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = gapmeter(&["score", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--extractor",
        "--metrics",
        "--format",
        "--batch-size",
        "--device",
        "--seed",
        "--kid-subsets",
        "--kid-subset-size",
        "--strict",
    ] {
        assert!(help.contains(flag), "score --help lacks {flag}");
    }
}

#[test]
fn examples_a_vs_b_with_the_default_inception() {
    // The default extractor (FID Inception; here its untrained twin) on the bundled examples.
    let v = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "--format",
        "json",
        "--no-progress",
    ]);
    let fid = value(&v, "metrics.fid.value");
    let kid = value(&v, "metrics.kid.mean");
    assert!(fid.is_finite() && fid > 0.0, "{fid}");
    assert!(kid.is_finite());
    assert!(value(&v, "metrics.kid.std").is_finite());
    assert_eq!(v["extractor"]["id"], "inception-v3-fid-untrained");
    assert_eq!(v["extractor"]["dim"], 2048);
    assert_eq!(v["source"]["count"], 24);
    assert_eq!(v["target"]["count"], 24);
    assert!(v["source"]["content_hash"]
        .as_str()
        .unwrap()
        .starts_with("blake3:"));
    assert_eq!(v["software"]["name"], "gapmeter");
    assert_eq!(v["parameters"]["kid"]["seed"], 2020);
    let warnings = v["warnings"].to_string();
    assert!(warnings.contains("untrained"), "{warnings}");
}

#[test]
fn a_set_against_itself_scores_zero() {
    let v = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/A",
        "--format",
        "json",
        "-x",
        "tiny-cnn",
    ]);
    let fid = value(&v, "metrics.fid.value");
    assert!(fid.abs() < 1e-6, "FID(A, A) = {fid}");
    assert_eq!(v["source"]["content_hash"], v["target"]["content_hash"]);
}

#[test]
fn domains_differ_more_than_halves_of_one_domain() {
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2) = (dir.path().join("a1"), dir.path().join("a2"));
    std::fs::create_dir_all(&a1).unwrap();
    std::fs::create_dir_all(&a2).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(root().join("examples/A"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        let to = if i % 2 == 0 { &a1 } else { &a2 };
        std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
    }
    // The FID Inception architecture (untrained) separates the two domains; the tiny CNN's
    // features are dominated by mean colour, which varies more within A than between A and B.
    let args = [
        "--format",
        "json",
        "-x",
        "inception-v3-fid-untrained",
        "--no-progress",
    ];
    let within = gapmeter_json(
        &[
            &["score", a1.to_str().unwrap(), a2.to_str().unwrap()],
            &args[..],
        ]
        .concat(),
    );
    let across =
        gapmeter_json(&[&["score", a1.to_str().unwrap(), "examples/B"], &args[..]].concat());
    let (fw, fa) = (
        value(&within, "metrics.fid.value"),
        value(&across, "metrics.fid.value"),
    );
    let (kw, ka) = (
        value(&within, "metrics.kid.mean"),
        value(&across, "metrics.kid.mean"),
    );
    assert!(fa > 1.5 * fw, "FID within A {fw}, A to B {fa}");
    assert!(ka > kw + 0.05, "KID within A {kw}, A to B {ka}");
}

#[test]
fn npy_features_match_pytorch_fid_and_torch_fidelity() {
    let r = reference_json();
    let (s, t) = (reference("source_1000.npy"), reference("target_1000.npy"));
    let v = gapmeter_json(&[
        "score",
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        "--metrics",
        "fid,kid",
        "--format",
        "json",
        "--kid-subsets",
        "1",
        "--kid-subset-size",
        "1000",
    ]);
    assert!(v["extractor"].is_null());
    assert_eq!(v["source"]["kind"], "features");
    assert_rel(
        value(&v, "metrics.kid.mean"),
        r["kid_full_subset"]["mean"].as_f64().unwrap(),
        1e-7,
        "KID via CLI",
    );

    let (s, t) = (reference("source.npy"), reference("target.npy"));
    let v = gapmeter_json(&[
        "score",
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_rel(
        value(&v, "metrics.fid.value"),
        r["fid"].as_f64().unwrap(),
        1e-6,
        "FID via CLI",
    );
    assert_rel(
        value(&v, "metrics.kid.mean"),
        r["kid_default"]["mean"].as_f64().unwrap(),
        1e-9,
        "KID default via CLI",
    );
}

#[test]
fn npz_statistics_give_fid_only() {
    let r = reference_json();
    let (s, t) = (reference("source_stats.npz"), reference("target_stats.npz"));
    let v = gapmeter_json(&[
        "score",
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_rel(
        value(&v, "metrics.fid.value"),
        r["fid"].as_f64().unwrap(),
        1e-6,
        "FID from .npz via CLI",
    );
    assert!(v["metrics"]["kid"].is_null());
    assert!(v["warnings"].to_string().contains("KID skipped"));
    // Asking for KID explicitly on statistics is an error, not a silent omission.
    let out = gapmeter(&[
        "score",
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        "--metrics",
        "kid",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("KID needs per-image features"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn strict_stops_at_the_first_bad_file_in_folder_order_with_two_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    copy_dir(&root().join("examples/A"), &set);
    // Two bad files in different batches, run on different replicas: the first in folder order
    // is the one reported.
    std::fs::write(set.join("a005b.png"), b"not a png").unwrap();
    std::fs::write(set.join("a020b.png"), b"not a png either").unwrap();
    let out = gapmeter(&[
        "score",
        set.to_str().unwrap(),
        "examples/B",
        "-x",
        "tiny-cnn",
        "--devices",
        "cpu,cpu",
        "--batch-size",
        "4",
        "--strict",
        "--no-progress",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("a005b.png") && err.contains("--strict"),
        "{err}"
    );
    assert!(!err.contains("a020b.png"), "{err}");
}

#[test]
fn unreadable_images_are_reported_and_skipped_or_fatal_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    copy_dir(&root().join("examples/A"), &set);
    std::fs::write(set.join("broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    std::fs::write(set.join("empty.jpg"), b"").unwrap();
    let v = gapmeter_json(&[
        "score",
        set.to_str().unwrap(),
        "examples/B",
        "--format",
        "json",
        "-x",
        "tiny-cnn",
    ]);
    assert_eq!(v["source"]["count"], 24);
    let skipped = v["source"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2);
    assert!(skipped
        .iter()
        .any(|s| s["path"].as_str().unwrap().ends_with("broken.png")));
    assert!(skipped
        .iter()
        .all(|s| !s["reason"].as_str().unwrap().is_empty()));

    let out = gapmeter(&[
        "score",
        set.to_str().unwrap(),
        "examples/B",
        "-x",
        "tiny-cnn",
        "--strict",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("broken.png") || stderr(&out).contains("empty.jpg"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn empty_and_missing_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "no images here").unwrap();
    let out = gapmeter(&[
        "score",
        empty.to_str().unwrap(),
        "examples/B",
        "-x",
        "tiny-cnn",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no images"), "{}", stderr(&out));

    let junk = dir.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("a.png"), b"nope").unwrap();
    let out = gapmeter(&[
        "score",
        junk.to_str().unwrap(),
        "examples/B",
        "-x",
        "tiny-cnn",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("could be read"), "{}", stderr(&out));

    let out = gapmeter(&["score", "does/not/exist", "examples/B"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does/not/exist"), "{}", stderr(&out));
}

#[test]
fn table_output_names_the_metrics() {
    let out = gapmeter(&[
        "score",
        "examples/A",
        "examples/B",
        "-x",
        "tiny-cnn",
        "--kid-subsets",
        "5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("FID") && table.contains("KID") && table.contains("tiny-cnn"),
        "{table}"
    );
}

#[test]
fn batch_size_does_not_change_the_result() {
    let one = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "--format",
        "json",
        "-x",
        "tiny-cnn",
        "--batch-size",
        "1",
        "--metrics",
        "fid",
    ]);
    let many = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "--format",
        "json",
        "-x",
        "tiny-cnn",
        "--batch-size",
        "17",
        "--metrics",
        "fid",
    ]);
    assert_rel(
        value(&one, "metrics.fid.value"),
        value(&many, "metrics.fid.value"),
        1e-4,
        "FID across batch sizes",
    );
}

#[test]
fn a_wrong_sha256_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let models = common::models_dir();
    std::fs::copy(models.join("tiny-cnn.pt"), dir.path().join("tiny-cnn.pt")).unwrap();
    let manifest = std::fs::read_to_string(models.join("tiny-cnn.toml")).unwrap();
    let line = manifest.lines().find(|l| l.starts_with("sha256")).unwrap();
    let bad = manifest.replace(line, &format!("sha256 = \"{}\"", "0".repeat(64)));
    let path = dir.path().join("tiny-cnn.toml");
    std::fs::write(&path, bad).unwrap();
    let out = gapmeter(&[
        "score",
        "examples/A",
        "examples/B",
        "-x",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("sha256 mismatch") && err.contains("tiny-cnn.pt"),
        "{err}"
    );
}

#[test]
fn every_metric_on_image_folders_with_outliers_bootstrap_and_infinity() {
    let v = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "--format",
        "json",
        "-x",
        "tiny-cnn",
        "--metrics",
        "fid,kid,is,mmd,cmmd,prdc,style",
        "--top",
        "3",
        "--bootstrap",
        "8",
        "--infinity",
        "--infinity-points",
        "4",
        "--kid-subsets",
        "4",
    ]);
    for name in [
        "fid",
        "kid",
        "is",
        "is_target",
        "mmd",
        "cmmd",
        "precision",
        "recall",
        "density",
        "coverage",
        "style_coral",
        "style_log_euclidean",
        "style_bures_wasserstein",
    ] {
        let m = &v["metrics"][name];
        let x = m["value"]
            .as_f64()
            .or(m["mean"].as_f64())
            .unwrap_or_else(|| panic!("{name} missing in {m}"));
        assert!(x.is_finite(), "{name} = {x}");
        // Only the U-statistics have a bootstrap interval; the others have none that covers.
        if matches!(name, "kid" | "mmd") {
            let (lo, hi) = (
                m["ci"]["low"].as_f64().unwrap(),
                m["ci"]["high"].as_f64().unwrap(),
            );
            assert!(lo <= x && x <= hi, "{name}: {x} outside [{lo}, {hi}]");
            assert_eq!(m["ci"]["resamples"], 8);
            assert_eq!(m["ci"]["target"], "population");
        } else {
            assert!(m.get("ci").is_none(), "{name} has an interval: {m}");
        }
    }
    for name in ["fid_infinity", "kid_infinity"] {
        assert!(value(&v, &format!("metrics.{name}.value")).is_finite());
        assert_eq!(
            v["metrics"][name]["fit"]["points"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
    }
    let images = v["per_image"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    let witness: Vec<f64> = images
        .iter()
        .map(|i| i["witness"].as_f64().unwrap())
        .collect();
    assert!(witness.windows(2).all(|w| w[0] <= w[1]), "{witness:?}");
    assert!(images
        .iter()
        .all(|i| i["path"].as_str().unwrap().starts_with("examples/A/")));
    assert!(images
        .iter()
        .all(|i| i["style_distance"].as_f64().unwrap() > 0.0));
    assert_eq!(v["parameters"]["prdc"]["k_pr"], 3);
}

#[test]
fn prdc_through_the_cli_matches_the_prdc_package() {
    let r = reference_json();
    let (s, t) = (reference("source.npy"), reference("target.npy"));
    let v = gapmeter_json(&[
        "score",
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        "--metrics",
        "prdc",
        "--format",
        "json",
    ]);
    for k in ["precision", "recall", "coverage"] {
        assert_eq!(
            value(&v, &format!("metrics.{k}.value")),
            r["prdc"][k].as_f64().unwrap(),
            "{k}"
        );
    }
}

#[test]
fn image_only_metrics_on_features_are_clear_errors() {
    let (s, t) = (reference("source.npy"), reference("target.npy"));
    for metric in ["is", "style"] {
        let out = gapmeter(&[
            "score",
            s.to_str().unwrap(),
            t.to_str().unwrap(),
            "--metrics",
            metric,
        ]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("image folder"), "{}", stderr(&out));
    }
}

#[test]
fn gap_matrix_is_symmetric_with_a_zero_diagonal() {
    let s = reference("source_1000.npy");
    let t = reference("target_1000.npy");
    let v = gapmeter_json(&[
        "matrix",
        "examples/A",
        "examples/B",
        "examples/A",
        "--format",
        "json",
        "-x",
        "tiny-cnn",
        "--metrics",
        "fid,kid,style",
    ]);
    assert_eq!(v["sets"].as_array().unwrap().len(), 3);
    for name in ["fid", "kid", "style_log_euclidean"] {
        let m: Vec<Vec<f64>> = serde_json::from_value(v["metrics"][name].clone()).unwrap();
        for (i, row) in m.iter().enumerate() {
            assert_eq!(row[i], 0.0);
            for (j, x) in row.iter().enumerate() {
                assert_eq!(*x, m[j][i], "{name}");
            }
        }
        assert!(m[0][1] > 0.0, "{name}");
        // A against its own copy: identical content, no gap. (KID's unbiased estimator is not 0
        // on identical sets, only small next to a real gap.)
        if name == "kid" {
            assert!(
                m[0][2].abs() < m[0][1],
                "{name}: {} vs {}",
                m[0][2],
                m[0][1]
            );
        } else {
            assert!(m[0][2].abs() < 1e-6, "{name}: {}", m[0][2]);
        }
    }
    let out = gapmeter(&[
        "matrix",
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        "--metrics",
        "prdc",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not symmetric"), "{}", stderr(&out));
}

#[test]
fn extract_writes_the_features_score_uses() {
    // `gapmeter extract` runs the engine `score` runs: scoring the two .npy files it writes gives
    // the very numbers scoring the folders gives, and the rows follow folder order.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    let paths = dir.path().join("a.txt");
    for (set, out, extra) in [
        ("examples/A", &a, vec!["--paths", paths.to_str().unwrap()]),
        ("examples/B", &b, vec![]),
    ] {
        let mut args = vec!["extract", set, "-o", out.to_str().unwrap(), "--no-progress"];
        args.extend(extra);
        let out = gapmeter(&args);
        assert!(out.status.success(), "extract failed: {}", stderr(&out));
    }
    let listed = std::fs::read_to_string(&paths).unwrap();
    let listed: Vec<&str> = listed.lines().collect();
    assert_eq!(listed.len(), 24);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "rows follow folder order");
    assert!(listed[0].starts_with("examples/A/"), "{}", listed[0]);

    let from_folders = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "--metrics",
        "fid,kid",
        "--format",
        "json",
        "--no-progress",
    ]);
    let from_npy = gapmeter_json(&[
        "score",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--metrics",
        "fid,kid",
        "--format",
        "json",
    ]);
    for key in ["metrics.fid.value", "metrics.kid.mean", "metrics.kid.std"] {
        assert_eq!(value(&from_folders, key), value(&from_npy, key), "{key}");
    }
}

#[test]
fn reduced_precision_and_the_metrics_device_are_reported_or_refused() {
    // bf16 runs on the CPU: the result says it is not float32 and what that changed, measured.
    let v = gapmeter_json(&[
        "score",
        "examples/A",
        "examples/B",
        "--extractor",
        "tiny-cnn",
        "--metrics",
        "fid",
        "--precision",
        "bf16",
        "--format",
        "json",
        "--no-progress",
    ]);
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("source: features computed in bf16")
            && warnings.contains("target: features computed in bf16")
            && warnings.contains("FID between float32 and bf16 features"),
        "{warnings}"
    );
    assert!(value(&v, "metrics.fid.value").is_finite());
    assert_eq!(v["extractor"]["precision"], "bf16");

    let out = gapmeter(&["score", "examples/A", "examples/B", "--precision", "fp8"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("expected fp32, fp16 or bf16"),
        "{}",
        stderr(&out)
    );

    // A metrics device that does not exist fails before any work, naming it.
    let (s, t) = (reference("source.npy"), reference("target.npy"));
    let out = gapmeter(&[
        "score",
        s.to_str().unwrap(),
        t.to_str().unwrap(),
        "--metrics-device",
        "cuda:99",
        "--no-progress",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cuda:99") && err.contains("CUDA device(s)"),
        "{err}"
    );
}

/// `gapmeter stats export` of an `.npy` writes the `mu` and `sigma` numpy computes for the same
/// features (the reference `.npz` of scripts/reference/make_metric_fixtures.py), and `score`
/// on two exported files gives pytorch-fid's FID; a missing source is an error and writes nothing.
#[test]
fn stats_export_of_features_matches_numpys_statistics_and_pytorch_fids_fid() {
    let dir = tempfile::tempdir().unwrap();
    for side in ["source", "target"] {
        let out = dir.path().join(format!("{side}.npz"));
        let run = gapmeter(&[
            "stats",
            "export",
            reference(&format!("{side}.npy")).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        let ours = gapmeter::score::read_statistics(&out).unwrap();
        let numpy =
            gapmeter::score::read_statistics(&reference(&format!("{side}_stats.npz"))).unwrap();
        let worst = ours
            .mean
            .iter()
            .zip(&numpy.mean)
            .chain(ours.cov.iter().zip(&numpy.cov))
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0f64, f64::max);
        assert!(worst <= 1e-10, "{side}: differs from numpy by {worst:e}");
    }
    let v = gapmeter_json(&[
        "score",
        dir.path().join("source.npz").to_str().unwrap(),
        dir.path().join("target.npz").to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_rel(
        value(&v, "metrics.fid.value"),
        reference_json()["fid"].as_f64().unwrap(),
        1e-6,
        "FID of exported statistics",
    );
    let missing = dir.path().join("missing.npz");
    let out = gapmeter(&[
        "stats",
        "export",
        "no/such/folder",
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!missing.exists());
}
