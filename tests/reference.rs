//! gapmeter's metrics against the reference packages, on committed fixtures. Reference values come
//! from scripts/reference/make_metric_fixtures.py (pytorch-fid, torch-fidelity).
mod common;

use common::{assert_rel, reference, reference_json};
use gapmeter::metrics::{
    fid_from_features, fid_from_gaussians, kid, rng::LegacyRandomState, KidParams,
};
use gapmeter::score::{read_features, read_statistics};
use ndarray::Array2;

#[test]
fn fid_matches_pytorch_fid() {
    let r = reference_json();
    let s = read_features(&reference("source.npy")).unwrap();
    let t = read_features(&reference("target.npy")).unwrap();
    let fid = fid_from_features(s.view(), t.view()).unwrap();
    assert_rel(
        fid.value,
        r["fid"].as_f64().unwrap(),
        1e-6,
        "FID from features",
    );
}

#[test]
fn fid_from_npz_statistics_matches_pytorch_fid() {
    let r = reference_json();
    let s = read_statistics(&reference("source_stats.npz")).unwrap();
    let t = read_statistics(&reference("target_stats.npz")).unwrap();
    let fid = fid_from_gaussians(&s, &t).unwrap();
    assert_rel(fid.value, r["fid"].as_f64().unwrap(), 1e-6, "FID from .npz");
}

/// Regenerates the 2048-d fixture features from numpy's legacy stream, as the script does.
fn legacy_features(seed: u32, n: usize, d: usize, kind: &str) -> Array2<f64> {
    let mut rng = LegacyRandomState::new(seed);
    let u = Array2::from_shape_simple_fn((n, d), || rng.random_sample());
    match kind {
        "banded" => Array2::from_shape_fn((n, d), |(i, j)| u[[i, j]] + 0.5 * u[[i, (j + 1) % d]]),
        _ => u.mapv(|x| 1.2 * x * x + 0.1),
    }
}

#[test]
fn fid_2048_dims_matches_pytorch_fid() {
    let r = &reference_json()["fid_2048"];
    let side = |k: &str| {
        let v = &r[k];
        legacy_features(
            v["seed"].as_u64().unwrap() as u32,
            v["n"].as_u64().unwrap() as usize,
            2048,
            v["kind"].as_str().unwrap(),
        )
    };
    let fid = fid_from_features(side("source").view(), side("target").view()).unwrap();
    assert_rel(
        fid.value,
        r["value"].as_f64().unwrap(),
        1e-6,
        "FID at d = 2048",
    );
}

#[test]
fn kid_one_full_subset_matches_torch_fidelity() {
    let r = &reference_json()["kid_full_subset"];
    let s = read_features(&reference("source_1000.npy")).unwrap();
    let t = read_features(&reference("target_1000.npy")).unwrap();
    let params = KidParams {
        subsets: 1,
        subset_size: 1000,
        ..KidParams::default()
    };
    let k = kid(s.view(), t.view(), &params).unwrap();
    assert_rel(
        k.mean,
        r["mean"].as_f64().unwrap(),
        1e-7,
        "KID, one full subset",
    );
}

#[test]
fn kid_default_subsets_match_torch_fidelity() {
    let r = &reference_json()["kid_default"];
    let s = read_features(&reference("source.npy")).unwrap();
    let t = read_features(&reference("target.npy")).unwrap();
    let k = kid(s.view(), t.view(), &KidParams::default()).unwrap();
    let (mean, std) = (r["mean"].as_f64().unwrap(), r["std"].as_f64().unwrap());
    // The statistical promise: within 3 standard errors of the reference mean.
    let se = std / (k.subsets as f64).sqrt();
    assert!(
        (k.mean - mean).abs() <= 3.0 * se,
        "{} vs {mean} ± {se}",
        k.mean
    );
    // And, since the subsets are drawn from numpy's very stream, the same numbers.
    assert_rel(k.mean, mean, 1e-9, "KID mean, 100 subsets, seed 2020");
    assert_rel(k.std, std, 1e-7, "KID std, 100 subsets, seed 2020");
}

#[test]
fn inception_score_matches_torch_fidelity() {
    use gapmeter::metrics::{inception_score, IsParams};
    let r = reference_json();
    let logits = read_features(&reference("logits.npy")).unwrap();
    for (key, shuffle_seed) in [("is_no_shuffle", None), ("is_shuffle_2020", Some(2020))] {
        let is = inception_score(
            logits.view(),
            &IsParams {
                splits: 10,
                shuffle_seed,
            },
        )
        .unwrap();
        assert_rel(is.mean, r[key]["mean"].as_f64().unwrap(), 1e-6, key);
        assert_rel(is.std, r[key]["std"].as_f64().unwrap(), 1e-6, key);
    }
}

#[test]
fn prdc_matches_the_prdc_package_exactly() {
    use gapmeter::metrics::{prdc, PrdcParams};
    let r = reference_json();
    let s = read_features(&reference("source.npy")).unwrap();
    let t = read_features(&reference("target.npy")).unwrap();
    for (key, fake, real) in [("prdc", &s, &t), ("prdc_swapped", &t, &s)] {
        let got = prdc(fake.view(), real.view(), &PrdcParams::default()).unwrap();
        let want = &r[key];
        assert_eq!(
            got.precision,
            want["precision"].as_f64().unwrap(),
            "{key} precision"
        );
        assert_eq!(got.recall, want["recall"].as_f64().unwrap(), "{key} recall");
        assert_eq!(
            got.coverage,
            want["coverage"].as_f64().unwrap(),
            "{key} coverage"
        );
        // Density is a count divided by k·N: the same count gives the same number to the last bit
        // or one rounding step away, depending on the order of the division.
        assert_rel(
            got.density,
            want["density"].as_f64().unwrap(),
            1e-15,
            "density",
        );
    }
}

#[test]
fn cmmd_and_rbf_mmd_match_the_published_formulas() {
    use gapmeter::metrics::{cmmd, mmd, Bandwidth, Estimator, MmdParams};
    let r = reference_json();
    let s = read_features(&reference("source.npy")).unwrap();
    let t = read_features(&reference("target.npy")).unwrap();
    assert_rel(
        cmmd(s.view(), t.view()).unwrap(),
        r["cmmd"].as_f64().unwrap(),
        1e-6,
        "CMMD",
    );
    for (key, estimator) in [
        ("biased", Estimator::Biased),
        ("unbiased", Estimator::Unbiased),
    ] {
        let p = MmdParams {
            bandwidth: Bandwidth::Fixed(4.0),
            estimator,
            seed: 0,
        };
        let got = mmd(s.view(), t.view(), &p).unwrap().value;
        assert_rel(got, r["mmd_sigma_4"][key].as_f64().unwrap(), 1e-9, key);
    }
}
