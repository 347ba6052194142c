//! The analyses of issue 15 from the command line, on generated images whose answer is known:
//! the selective style gap, PAD, subset selection, transform search, sufficiency and explain.
//! The small seeded CNN (`tiny-cnn`) stands in for a real extractor.
mod common;

use common::{gapmeter, gapmeter_json, models_dir, scenes, stderr};
use gapmeter::imaging::Photometric;
use image::RgbImage;
use ndarray::Array2;
use ndarray_npy::WriteNpyExt;

fn num(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

fn dir_str(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn selective_style_gap_tells_a_photometric_change_from_a_content_change() {
    let tmp = tempfile::tempdir().unwrap();
    let source: Vec<RgbImage> = (0..96).map(scenes::blobs).collect();
    // Photometric: other scenes of the same kind, with a colour cast and a gamma.
    let styled: Vec<RgbImage> = (1000..1096)
        .map(|s| scenes::cast_and_gamma(&scenes::blobs(s), 1.5))
        .collect();
    // Content: stripes instead of blobs, at the blobs' colour statistics.
    let stripes: Vec<RgbImage> = (2000..2096).map(scenes::stripes).collect();
    let content = scenes::match_colour(&stripes, scenes::channel_stats(&source));
    let (s, st, ct) = (
        tmp.path().join("s"),
        tmp.path().join("styled"),
        tmp.path().join("content"),
    );
    scenes::write(&s, "s", &source);
    scenes::write(&st, "t", &styled);
    scenes::write(&ct, "c", &content);
    let run = |target: &std::path::Path| {
        gapmeter_json(&[
            "measure",
            "selective-style",
            dir_str(&s),
            dir_str(target),
            "-x",
            "tiny-cnn",
            "--format",
            "json",
            "--no-progress",
        ])
    };
    let style = run(&st);
    let content = run(&ct);
    // The figures, for the notes (`cargo test --test reduce -- --nocapture`).
    eprintln!("style change: {}", style["summary"]);
    eprintln!("content change: {}", content["summary"]);
    for v in [&style, &content] {
        assert_eq!(v["analysis"], "selective_style");
        let sensitive = v["result"]["mask"]["sensitive"].as_array().unwrap().len();
        let entries = num(v, "result.mask.entries") as usize;
        assert_eq!(entries, 16 * 15 / 2, "tiny-cnn's early map has 16 channels");
        assert!(
            sensitive > 0 && sensitive < entries,
            "{sensitive} of {entries}"
        );
    }
    // A style change grows the selective gap more, relative to source vs itself, than the
    // all-entry gap.
    let sel = num(&style, "result.relative.selective_style");
    let all = num(&style, "result.relative.all_entries");
    assert!(
        sel > all,
        "style change: selective {sel:.2}× vs all entries {all:.2}×"
    );
    // A content change moves the stable-entry content gap more than the selective style gap.
    let c_stable = num(&content, "result.relative.content_stable");
    let c_sel = num(&content, "result.relative.selective_style");
    assert!(
        c_stable > c_sel,
        "content change: stable {c_stable:.2}× vs selective {c_sel:.2}×"
    );
}

fn write_npy(path: &std::path::Path, a: &Array2<f64>) {
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

fn gaussian(n: usize, d: usize, shift: f64, seed: u64) -> Array2<f64> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_fn((n, d), |(_, j)| {
        // Box–Muller: standard normal draws.
        let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
        let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
        z + if j == 0 { shift } else { 0.0 }
    })
}

#[test]
fn pad_is_about_zero_on_halves_of_one_set_and_about_two_on_separable_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let one = gaussian(200, 16, 0.0, 1);
    let (a, b) = (
        one.slice(ndarray::s![..100, ..]).to_owned(),
        one.slice(ndarray::s![100.., ..]).to_owned(),
    );
    let far = gaussian(100, 16, 8.0, 2);
    for (name, m) in [("a", &a), ("b", &b), ("far", &far)] {
        write_npy(&tmp.path().join(format!("{name}.npy")), m);
    }
    let pad = |x: &str, y: &str| {
        gapmeter_json(&[
            "measure",
            "pad",
            dir_str(&tmp.path().join(x)),
            dir_str(&tmp.path().join(y)),
            "--format",
            "json",
        ])
    };
    let same = pad("a.npy", "b.npy");
    eprintln!("halves: {}", same["summary"]);
    let p = num(&same, "result.pad");
    assert!(p.abs() < 0.4, "halves of one set: PAD {p}");
    assert_eq!(same["result"]["folds"].as_array().unwrap().len(), 5);
    let low = num(&same, "result.interval.low");
    let high = num(&same, "result.interval.high");
    assert!(low <= p && p <= high);
    let apart = pad("a.npy", "far.npy");
    eprintln!("separable: {}", apart["summary"]);
    let p = num(&apart, "result.pad");
    assert!(p > 1.9, "separable sets: PAD {p}");
    assert!(apart["summary"].as_str().unwrap().contains("separable"));
}

#[test]
fn selection_beats_random_subsets_and_picks_in_domain_images() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool");
    let in_domain: Vec<RgbImage> = (0..40).map(scenes::blobs).collect();
    // Off-domain: other scenes (stripes) in another style (cast, gamma 2.2).
    let off_domain: Vec<RgbImage> = (500..540)
        .map(|s| scenes::cast_and_gamma(&scenes::stripes(s), 2.2))
        .collect();
    scenes::write(&pool, "in_", &in_domain);
    scenes::write(&pool, "off_", &off_domain);
    let target = tmp.path().join("target");
    scenes::write(
        &target,
        "t",
        &(3000..3040).map(scenes::blobs).collect::<Vec<_>>(),
    );
    let list = tmp.path().join("chosen.txt");
    for objective in ["mmd", "fid"] {
        let v = gapmeter_json(&[
            "reduce",
            "select",
            dir_str(&pool),
            dir_str(&target),
            "-k",
            "20",
            "--objective",
            objective,
            "-x",
            "tiny-cnn",
            "--list",
            dir_str(&list),
            "--format",
            "json",
            "--no-progress",
        ]);
        let r = &v["result"];
        eprintln!("{objective}: {}", v["summary"]);
        let chosen = r["chosen"].as_array().unwrap();
        assert_eq!(chosen.len(), 20);
        let in_count = chosen
            .iter()
            .filter(|c| c["name"].as_str().unwrap().contains("/in_"))
            .count();
        assert!(in_count >= 16, "{objective}: {in_count} of 20 in-domain");
        for metric in ["fid", "kid"] {
            let after = num(r, &format!("after.{metric}"));
            let low = num(r, &format!("random.{metric}.low"));
            assert!(
                after < low,
                "{objective}: {metric} {after} not below the random subsets' {low}"
            );
        }
        let lines = std::fs::read_to_string(&list).unwrap();
        assert_eq!(lines.lines().count(), 20);
    }
}

#[test]
fn transform_search_recovers_gamma_and_blur() {
    let tmp = tempfile::tempdir().unwrap();
    let source: Vec<RgbImage> = (0..48).map(scenes::blobs).collect();
    let truth = Photometric {
        gamma: 1.6,
        blur_sigma: 1.5,
        ..Photometric::identity()
    };
    // The target is the source with gamma 1.6 and a Gaussian blur.
    let target: Vec<RgbImage> = source
        .iter()
        .zip(0..)
        .map(|(img, i)| truth.apply(img, i).unwrap())
        .collect();
    let (s, t) = (tmp.path().join("s"), tmp.path().join("t"));
    scenes::write(&s, "s", &source);
    scenes::write(&t, "t", &target);
    let export = tmp.path().join("best.json");
    let v = gapmeter_json(&[
        "reduce",
        "transforms",
        dir_str(&s),
        dir_str(&t),
        "-x",
        "tiny-cnn",
        "--export",
        dir_str(&export),
        "--format",
        "json",
        "--no-progress",
    ]);
    let r = &v["result"];
    eprintln!(
        "transforms: {} ({} evaluations)",
        v["summary"], r["evaluations"]
    );
    let gamma = num(r, "best.gamma");
    let sigma = num(r, "best.blur_sigma");
    assert!(
        (gamma - 1.6).abs() <= 0.2,
        "gamma {gamma}, {}",
        v["summary"]
    );
    assert!(
        (sigma - 1.5).abs() <= 0.5,
        "blur sigma {sigma}, {}",
        v["summary"]
    );
    assert!(num(r, "after.fid") < num(r, "before.fid"));
    // What remains is within what sampling alone gives between halves of the source.
    assert_eq!(r["within_noise"], true, "{r:#}");
    assert!(num(r, "after_halves.mean") <= num(r, "source_vs_itself.high"));
    // Every knob reported alone, each with its torchvision call.
    assert_eq!(r["singles"].as_array().unwrap().len(), 8);
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    assert_eq!(exported["photometric"], r["best"]);
    assert!(exported["torchvision"].to_string().contains("adjust_gamma"));
}

#[test]
fn sufficiency_intervals_narrow_with_n_and_the_needed_n_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, t) = (tmp.path().join("s"), tmp.path().join("t"));
    scenes::write(&s, "s", &(0..60).map(scenes::blobs).collect::<Vec<_>>());
    scenes::write(
        &t,
        "t",
        &(0..120)
            .map(|i| scenes::cast_and_gamma(&scenes::blobs(9000 + i), 1.3))
            .collect::<Vec<_>>(),
    );
    let v = gapmeter_json(&[
        "reduce",
        "sufficiency",
        dir_str(&s),
        dir_str(&t),
        "-x",
        "tiny-cnn",
        "--within",
        "0.05",
        "--format",
        "json",
        "--no-progress",
    ]);
    let r = &v["result"];
    eprintln!("sufficiency: {}", v["summary"]);
    let rows = r["sizes"].as_array().unwrap();
    assert!(rows.len() >= 4);
    let widths: Vec<f64> = rows
        .iter()
        .map(|row| row["relative_half_width"].as_f64().unwrap())
        .collect();
    assert!(
        widths.first().unwrap() > widths.last().unwrap(),
        "{widths:?}"
    );
    assert!(num(r, "fit.b") > 0.0, "{r:#}");
    let needed = num(r, "n_for_precision");
    assert!(needed.is_finite() && needed > 0.0);
    assert_eq!(num(r, "target_size") as usize, 120);
    let summary = v["summary"].as_str().unwrap();
    assert!(summary.contains("120 target images"), "{summary}");
}

#[test]
fn analyses_refuse_bad_input_clearly() {
    let out = gapmeter(&[
        "reduce",
        "select",
        "examples/A",
        "examples/B",
        "-k",
        "24",
        "-x",
        "tiny-cnn",
        "--no-progress",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("smaller than the pool"),
        "{}",
        stderr(&out)
    );
    let out = gapmeter(&[
        "explain",
        "examples/A",
        "examples/B",
        "-x",
        "tiny-cnn",
        "--no-progress",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("text encoder"), "{}", stderr(&out));
    let _ = models_dir();
}

#[test]
fn explain_ranks_the_planted_direction_first_with_a_significant_test() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, t) = (tmp.path().join("day"), tmp.path().join("night"));
    scenes::write(&s, "d", &(0..40).map(scenes::blobs).collect::<Vec<_>>());
    let dark = Photometric {
        brightness: 0.45,
        ..Photometric::identity()
    };
    let night: Vec<RgbImage> = (0..40)
        .map(|i| dark.apply(&scenes::blobs(4000 + i), i).unwrap())
        .collect();
    scenes::write(&t, "n", &night);
    let models = scenes::clip_models(tmp.path(), &s, &t);
    let v = gapmeter_json(&[
        "explain",
        dir_str(&s),
        dir_str(&t),
        "-x",
        "tiny-clip",
        "--models-dir",
        dir_str(&models),
        "--prompt",
        "a photo of a cat|a photo of a dog",
        "--format",
        "json",
        "--no-progress",
    ]);
    eprintln!("explain: {}", v["summary"]);
    let dirs = v["result"]["directions"].as_array().unwrap();
    assert_eq!(
        dirs.len(),
        11 + 1,
        "every built-in direction and the user's"
    );
    let first = &dirs[0];
    assert_eq!(first["name"], "day → night", "{:#}", v["result"]);
    assert_eq!(first["significant"], true);
    // 999 permutations: the smallest p-value is 0.001, Holm over 12 directions 0.012.
    assert!(first["p_value"].as_f64().unwrap() <= 0.002);
    assert!(first["projection"].as_f64().unwrap() > 0.0);
    let share = first["share"].as_f64().unwrap();
    assert!(share > 0.2, "planted share {share}");
    // Unplanted directions are random in 128 dimensions: each explains far less.
    let second = dirs[1]["share"].as_f64().unwrap();
    assert!(second < share / 2.0, "{second} vs {share}");
    assert!(dirs
        .iter()
        .any(|d| d["name"] == "a photo of a cat → a photo of a dog"));
    assert!(v["summary"].as_str().unwrap().contains("day → night"));
}

#[test]
fn every_analysis_subcommand_has_its_help_and_flags() {
    for (cmd, flags) in [
        (
            &["measure", "selective-style"][..],
            &["--mask-images", "--clusters", "--extractor"][..],
        ),
        (&["measure", "pad"], &["--folds", "--c", "--no-standardize"]),
        (
            &["reduce", "select"],
            &["-k", "--objective", "--list", "--random-draws"],
        ),
        (
            &["reduce", "transforms"],
            &["--knobs", "--grid", "--rounds", "--export"],
        ),
        (
            &["reduce", "sufficiency"],
            &["--within", "--sizes", "--draws", "--precision"],
        ),
        (
            &["explain"],
            &["--prompt", "--no-builtin", "--permutations"],
        ),
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = gapmeter(&args);
        assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in flags {
            assert!(help.contains(flag), "{cmd:?} --help lacks {flag}");
        }
    }
}
