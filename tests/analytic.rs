//! Analytic properties every distance must have (docs/metrics.md): identical sets are at distance 0.
use gapmeter::metrics::{
    cmmd, fid_from_features, mmd, prdc, rng::LegacyRandomState, style_gap, Bandwidth, Estimator,
    MmdParams, PrdcParams, StyleSet,
};
use ndarray::Array2;

fn sample(n: usize, d: usize, seed: u32) -> Array2<f64> {
    let mut rng = LegacyRandomState::new(seed);
    Array2::from_shape_simple_fn((n, d), || rng.random_sample() * 3.0 - 1.0)
}

#[test]
fn identical_sets_are_at_distance_zero_for_every_distance() {
    for (n, d) in [(50, 8), (40, 64)] {
        let a = sample(n, d, 1);
        assert!(
            fid_from_features(a.view(), a.view()).unwrap().value.abs() < 1e-9,
            "FID n={n} d={d}"
        );
        let biased = MmdParams {
            bandwidth: Bandwidth::Median,
            estimator: Estimator::Biased,
            seed: 0,
        };
        assert!(
            mmd(a.view(), a.view(), &biased).unwrap().value.abs() < 1e-12,
            "MMD"
        );
        assert!(cmmd(a.view(), a.view()).unwrap().abs() < 1e-9, "CMMD");
        let r = prdc(a.view(), a.view(), &PrdcParams::default()).unwrap();
        assert_eq!((r.precision, r.recall, r.coverage), (1.0, 1.0, 1.0));
    }
    let maps = tch::Tensor::from_slice(&sample(6 * 4 * 25, 1, 2).into_raw_vec_and_offset().0)
        .view([6, 4, 5, 5]);
    let mut style = StyleSet::new(0);
    style.push_maps(&maps).unwrap();
    let g = style_gap(&style, &style).unwrap();
    assert!(
        g.coral.abs() < 1e-15 && g.log_euclidean.abs() < 1e-9 && g.bures_wasserstein.abs() < 1e-9,
        "{g:?}"
    );
}

#[test]
fn unbiased_mmd_of_two_samples_of_one_distribution_is_centred() {
    // The unbiased estimator's mean over independent sample pairs is 0; its spread shrinks as 1/N.
    let p = MmdParams {
        bandwidth: Bandwidth::Fixed(1.0),
        estimator: Estimator::Unbiased,
        seed: 0,
    };
    let values: Vec<f64> = (0..40)
        .map(|k| {
            mmd(
                sample(60, 3, 10 + 2 * k).view(),
                sample(60, 3, 11 + 2 * k).view(),
                &p,
            )
            .unwrap()
            .value
        })
        .collect();
    let mean = values.iter().sum::<f64>() / 40.0;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 39.0).sqrt();
    assert!(mean.abs() < 3.0 * sd / 40f64.sqrt(), "mean {mean}, sd {sd}");
}
