//! The extraction engine on real models and real images: replicas, the OOM split, a failing
//! replica, input order and per-file errors.
mod common;

use gapmeter::features::{
    DeviceSpec, Engine, Extractor, Injection, Precision, PrepareError, Registry, RunOptions,
    RunReport,
};
use gapmeter::imaging::Prepared;
use gapmeter::score::{extract_folder, load_one, ExtractOptions};

use common::{copy_dir, models_dir, root};

const MODEL: &str = "inception-v3-fid-untrained";

fn engine(id: &str, devices: &[DeviceSpec]) -> Engine {
    let manifest = Registry::new(models_dir()).get(id).unwrap();
    Engine::load(manifest, devices).unwrap()
}

/// The bundled examples, decoded and resized for `engine`'s model, in folder order.
fn prepared(engine: &Engine, n: usize) -> Vec<Prepared> {
    let m = engine.manifest();
    let (h, w) = m.input_size.height_width();
    let mut files: Vec<_> = std::fs::read_dir(root().join("examples/A"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .take(n)
        .map(|f| load_one(&std::fs::read(f).unwrap(), h, w, m.resize).unwrap())
        .collect()
}

/// Runs every image through `engine`; the features in input order, and the run's report.
fn features(engine: &Engine, images: &[Prepared], opts: &RunOptions) -> (Vec<Vec<f32>>, RunReport) {
    let tap = engine.manifest().feature_output().to_string();
    let mut rows = Vec::new();
    let mut next = 0;
    let report = engine
        .run(
            images.len(),
            opts,
            |i| Ok(images[i].clone()),
            |chunk| {
                assert_eq!(chunk.range.start, next, "chunks out of order");
                next = chunk.range.end;
                let f = chunk.outputs.as_ref().unwrap().rows(&tap)?;
                rows.extend(
                    f.rows()
                        .into_iter()
                        .map(|r| r.iter().map(|&v| v as f32).collect()),
                );
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(rows.len(), images.len());
    (rows, report)
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn two_cpu_replicas_share_the_batches_and_give_the_same_features_as_one() {
    let one = engine(MODEL, &[DeviceSpec::Cpu]);
    let two = engine(MODEL, &[DeviceSpec::Cpu, DeviceSpec::Cpu]);
    let images = prepared(&one, 16);
    let opts = RunOptions::new(2);
    let (a, ra) = features(&one, &images, &opts);
    let (b, rb) = features(&two, &images, &opts);
    assert_eq!(ra.batches_per_replica, [8]);
    assert_eq!(rb.batches_per_replica.iter().sum::<usize>(), 8);
    assert!(
        rb.batches_per_replica.iter().all(|&n| n > 0),
        "a replica ran nothing: {:?}",
        rb.batches_per_replica
    );
    let diff = max_abs_diff(&a, &b);
    assert!(diff <= 1e-6, "features differ by {diff}");
}

#[test]
fn out_of_memory_batches_are_halved_and_give_the_same_features() {
    let x = engine(MODEL, &[DeviceSpec::Cpu]);
    let images = prepared(&x, 12);
    let plain = RunOptions::new(6);
    let mut squeezed = plain.clone();
    // Batches of 6 fail, halves of 3 fail, then 1 + 2: every image still goes through.
    squeezed.inject = Injection {
        oom_above: Some(2),
        ..Injection::default()
    };
    let (a, ra) = features(&x, &images, &plain);
    let (b, rb) = features(&x, &images, &squeezed);
    assert_eq!(ra.oom_splits, 0);
    // Per batch of 6: one split into 3 + 3, each 3 split into 1 + 2.
    assert_eq!(rb.oom_splits, 2 * 3);
    let diff = max_abs_diff(&a, &b);
    assert!(diff <= 1e-6, "features differ by {diff}");
}

#[test]
fn a_failing_replica_hands_its_batch_to_the_others() {
    // The Inception's forward pass is slow enough that both replicas take a batch at once.
    let two = engine(MODEL, &[DeviceSpec::Cpu, DeviceSpec::Cpu]);
    let images = prepared(&two, 8);
    let plain = RunOptions::new(2);
    let mut broken = plain.clone();
    broken.inject.fail_replica = Some(0);
    let (a, _) = features(&two, &images, &plain);
    let (b, report) = features(&two, &images, &broken);
    assert_eq!(report.failed_replicas.len(), 1, "{report:?}");
    assert_eq!(report.batches_per_replica, [0, 4]);
    assert!(max_abs_diff(&a, &b) <= 1e-6);

    // With every replica failing, the run fails and says why.
    let one = engine("tiny-cnn", &[DeviceSpec::Cpu]);
    let mut dead = plain.clone();
    dead.inject.fail_replica = Some(0);
    let err = one
        .run(images.len(), &dead, |i| Ok(images[i].clone()), |_| Ok(()))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("every replica failed"),
        "{err:#}"
    );
}

#[test]
fn rows_come_back_in_folder_order_with_bad_files_reported_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    copy_dir(&root().join("examples/A"), &set);
    // Interleaved with the good files in folder order, across several batches.
    for bad in ["a002b.png", "a009b.jpg", "a010b.png", "a023b.png"] {
        std::fs::write(set.join(bad), b"not an image").unwrap();
    }
    let x = engine(MODEL, &[DeviceSpec::Cpu, DeviceSpec::Cpu]);
    let opts = ExtractOptions {
        batch_size: 4,
        ..ExtractOptions::default()
    };
    let got = extract_folder(&set, &x, &opts).unwrap();
    let skipped: Vec<&str> = got
        .skipped
        .iter()
        .map(|s| s.path.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        skipped,
        ["a002b.png", "a009b.jpg", "a010b.png", "a023b.png"]
    );

    // Serially, one image at a time, in folder order.
    let manifest = Registry::new(models_dir()).get(MODEL).unwrap();
    let serial = Extractor::load(manifest.clone(), DeviceSpec::Cpu).unwrap();
    let (h, w) = manifest.input_size.height_width();
    let mut files: Vec<_> = std::fs::read_dir(&set)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut expected_paths = Vec::new();
    let mut max_diff = 0.0f64;
    let got_rows = got.features.to_f64();
    for f in &files {
        let Ok(p) = load_one(&std::fs::read(f).unwrap(), h, w, manifest.resize) else {
            continue;
        };
        let row = serial
            .run(&[p])
            .unwrap()
            .rows(manifest.feature_output())
            .unwrap();
        let k = expected_paths.len();
        expected_paths.push(f.display().to_string());
        for (a, b) in row.row(0).iter().zip(got_rows.row(k)) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    assert_eq!(got.paths, expected_paths);
    assert_eq!(got.features.nrows(), 24);
    assert!(
        max_diff <= 1e-6,
        "features differ from serial ones by {max_diff}"
    );
}

#[test]
fn a_fatal_prepare_error_stops_the_run() {
    let x = engine("tiny-cnn", &[DeviceSpec::Cpu]);
    let images = prepared(&x, 8);
    let mut consumed = 0;
    let err = x
        .run(
            images.len(),
            &RunOptions::new(2),
            |i| {
                if i == 5 {
                    Err(PrepareError::Fatal(anyhow::anyhow!("blob store down")))
                } else {
                    Ok(images[i].clone())
                }
            },
            |chunk| {
                consumed += chunk.kept.len();
                Ok(())
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("blob store down"), "{err:#}");
    assert!(consumed <= 4, "chunks after the failure were consumed");
}

/// bfloat16 runs on the CPU too, so the reduced-precision path (conversion of weights and
/// inputs, float32 outputs, the float32 reference on the first batch) is exercised here.
#[test]
fn a_reduced_precision_measures_its_deviation_on_the_first_batch() {
    let manifest = Registry::new(models_dir()).get("tiny-cnn").unwrap();
    let full = Engine::load(manifest.clone(), &[DeviceSpec::Cpu]).unwrap();
    let bf16 = Engine::load_in(manifest, &[DeviceSpec::Cpu], Precision::Bf16).unwrap();
    assert_eq!(bf16.precision(), Precision::Bf16);
    let images = prepared(&full, 12);
    let opts = RunOptions::new(4);
    let (want, full_report) = features(&full, &images, &opts);
    assert!(full_report.precision_sample.is_none());
    let (got, report) = features(&bf16, &images, &opts);
    let sample = report
        .precision_sample
        .expect("the first batch is measured");
    assert_eq!(sample.precision, Precision::Bf16);
    assert_eq!(sample.reference.nrows(), 4);
    // The reference rows are the float32 features of the first batch, exactly.
    for (r, w) in sample.reference.rows().into_iter().zip(&want) {
        assert_eq!(r.to_vec(), *w);
    }
    for (r, g) in sample.reduced.rows().into_iter().zip(&got) {
        assert_eq!(r.to_vec(), *g);
    }
    // bfloat16 keeps 8 bits of mantissa: close to float32, but not equal.
    let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&got, &want);
    assert!(diff > 0.0, "bf16 gave the float32 features bit for bit");
    assert!(
        diff < 0.1 * scale,
        "bf16 deviates by {diff} (scale {scale})"
    );
    let warning = gapmeter::score::precision_warning(&sample);
    assert!(
        warning.contains("bf16") && warning.contains("FID between float32 and bf16"),
        "{warning}"
    );
}
