//! Intervals end to end: what `gapmeter score --bootstrap --infinity` and a gap matrix report, on
//! small Gaussian feature files with fixed seeds.
mod common;

use std::path::Path;

use common::{gapmeter, gapmeter_json};
use gapmeter::features::{BatchSize, DeviceSpec, Registry};
use gapmeter::metrics::BootstrapParams;
use gapmeter::score::{
    matrix_sets, ExtractOptions, LoadedSet, MetricName, MetricParams, ScoreOptions,
};
use ndarray::Array2;
use rand::{Rng, SeedableRng};

fn gaussian(n: usize, d: usize, shift: f64, sd: f64, seed: u64) -> Array2<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array2::from_shape_fn((n, d), |_| {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        shift + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    })
}

fn write(dir: &Path, name: &str, x: &Array2<f64>) -> String {
    let path = dir.join(name);
    ndarray_npy::write_npy(&path, x).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn score_reports_what_each_interval_is_and_which_metrics_have_none() {
    let dir = tempfile::tempdir().unwrap();
    // d = 8, N = 200: FID∞ gets an interval (N ≥ 1.25·(d+1)).
    let a = write(dir.path(), "a.npy", &gaussian(200, 8, 0.0, 1.0, 1));
    let b = write(dir.path(), "b.npy", &gaussian(200, 8, 0.4, 1.3, 2));
    let v = gapmeter_json(&[
        "score",
        &a,
        &b,
        "--metrics",
        "fid,kid,mmd,prdc",
        "--bootstrap",
        "30",
        "--infinity",
        "--infinity-points",
        "4",
        "--kid-subsets",
        "5",
        "--format",
        "json",
    ]);
    let m = &v["metrics"];
    for name in ["kid", "mmd"] {
        let ci = &m[name]["ci"];
        let point = m[name]["value"]
            .as_f64()
            .or(m[name]["mean"].as_f64())
            .unwrap();
        let (lo, hi) = (ci["low"].as_f64().unwrap(), ci["high"].as_f64().unwrap());
        assert!(
            lo < point && point < hi,
            "{name}: {point} outside [{lo}, {hi}]"
        );
        assert_eq!(ci["target"], "population", "{name}");
        assert_eq!(ci["resamples"], 30, "{name}");
        assert!(ci["method"].as_str().unwrap().contains("own copy"), "{ci}");
        assert!(m[name]["standard_error"].as_f64().unwrap() > 0.0, "{name}");
    }
    let fi = &m["fid_infinity"];
    let (lo, hi) = (
        fi["ci"]["low"].as_f64().unwrap(),
        fi["ci"]["high"].as_f64().unwrap(),
    );
    let point = fi["value"].as_f64().unwrap();
    assert!(
        lo < point && point < hi,
        "FID∞ {point} outside [{lo}, {hi}]"
    );
    assert_eq!(fi["ci"]["target"], "population");
    assert!(fi["ci"].get("resamples").is_none(), "{fi}");
    for name in ["fid", "precision", "kid_infinity"] {
        assert!(
            m[name].get("ci").is_none(),
            "{name} has an interval: {}",
            m[name]
        );
    }
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("FID has no interval")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("no interval for prdc")),
        "{warnings:?}"
    );

    // The table prints the interval beside the value and names its method.
    let out = gapmeter(&[
        "score",
        &a,
        &b,
        "--metrics",
        "kid",
        "--bootstrap",
        "10",
        "--kid-subsets",
        "2",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    let kid_line = table.lines().find(|l| l.starts_with("KID")).unwrap();
    assert!(
        kid_line.contains('[') && kid_line.ends_with("(1)"),
        "{table}"
    );
    assert!(
        table.contains("(1) normal, standard error the larger of"),
        "{table}"
    );
}

#[test]
fn fid_infinity_has_no_interval_below_the_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.npy", &gaussian(40, 48, 0.0, 1.0, 3));
    let b = write(dir.path(), "b.npy", &gaussian(40, 48, 0.2, 1.0, 4));
    let v = gapmeter_json(&[
        "score",
        &a,
        &b,
        "--metrics",
        "fid",
        "--bootstrap",
        "5",
        "--infinity",
        "--format",
        "json",
    ]);
    assert!(v["metrics"]["fid_infinity"]["value"].as_f64().is_some());
    assert!(v["metrics"]["fid_infinity"].get("ci").is_none());
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("FID∞ has no interval")),
        "{}",
        v["warnings"]
    );
}

#[test]
fn a_matrix_flags_gaps_it_cannot_order() {
    let dir = tempfile::tempdir().unwrap();
    // Sets 2 and 3 come from one distribution, set 1 from another: from set 1, the gaps to 2 and
    // 3 cannot be ordered; from set 2, set 3 is clearly closer than set 1.
    let paths = [
        write(dir.path(), "a.npy", &gaussian(80, 6, 1.0, 1.0, 5)),
        write(dir.path(), "b.npy", &gaussian(80, 6, 0.0, 1.0, 6)),
        write(dir.path(), "c.npy", &gaussian(80, 6, 0.0, 1.0, 7)),
    ];
    let extract = ExtractOptions {
        batch_size: 8,
        run: None,
        strict: true,
        progress: false,
        logits: false,
        style: false,
    };
    let sets: Vec<LoadedSet> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| LoadedSet::load(&format!("set {}", i + 1), p, None, &extract).unwrap())
        .collect();
    let opts = ScoreOptions {
        extractor: None,
        metrics: None,
        params: MetricParams::default(),
        batch_size: BatchSize::Fixed(8),
        devices: DeviceSpec::Cpu.into(),
        metrics_device: None,
        precision: Default::default(),
        strict: true,
        registry: Registry::new(dir.path().to_path_buf()),
        progress: false,
        bootstrap: Some(BootstrapParams {
            resamples: 20,
            level: 0.95,
            seed: 1,
        }),
        infinity_points: None,
        top: None,
        interrupt: None,
    };
    let chosen = [MetricName::Kid];
    let report = matrix_sets(&sets, None, &chosen, &opts, Vec::new()).unwrap();
    let cis = &report.intervals["kid"];
    assert!(cis[0][0].is_none() && cis[0][1].is_some() && cis[1][0] == cis[0][1]);
    let pairs: Vec<[[usize; 2]; 2]> = report.overlapping.iter().map(|o| o.pairs).collect();
    assert!(pairs.contains(&[[0, 1], [0, 2]]), "{pairs:?}");
    assert!(!pairs.contains(&[[1, 0], [1, 2]]), "{pairs:?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("overlapping")),
        "{:?}",
        report.warnings
    );
    assert!(report.to_table().contains("not resolved"));
}
