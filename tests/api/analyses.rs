//! The analyses as service jobs (`POST /v1/analyses`): each one's result equals the CLI's on
//! the same files, and bad requests are refused with problem details before a job exists.
use std::path::Path;

use serde_json::{json, Value};
use sqlx::PgPool;

use super::helpers::{gapmeter_cli, spawn_jobs, spawn_with_models, TestApp};
use super::jobs::wait_for;

#[path = "../common/scenes.rs"]
mod scenes;

async fn dataset(app: &TestApp, key: &str, name: &str, files: Vec<(String, Vec<u8>)>) -> String {
    let id = app.dataset(key, name).await;
    let resp = app.upload(key, &id, files).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    id
}

async fn run(app: &TestApp, key: &str, body: &Value) -> Value {
    let resp = app.post_json("/v1/analyses", key, body).await;
    let status = resp.status();
    let job: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = wait_for(app, key, &id, "the analysis", |j| {
        ["succeeded", "failed", "cancelled"].contains(&j["status"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done
}

fn cli(dir: &Path, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-x", "tiny-cnn", "--format", "json", "--no-progress"]);
    serde_json::from_str(&gapmeter_cli(dir, &all)).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12),
        "{what}: cli {a} vs job {b}"
    );
}

fn base(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

#[sqlx::test]
async fn every_analysis_runs_as_a_job_and_equals_the_cli(pool: PgPool) {
    let app = spawn_jobs(pool, &[], true).await;
    let (_, key) = app.team("lab").await;
    let tmp = tempfile::tempdir().unwrap();

    let pool_imgs: Vec<_> = (0..16)
        .map(scenes::blobs)
        .chain((500..516).map(scenes::stripes))
        .collect();
    let target_imgs: Vec<_> = (3000..3024).map(scenes::blobs).collect();
    let pool_files = scenes::png_files("p", &pool_imgs);
    let target_files = scenes::png_files("t", &target_imgs);
    for (dir, files) in [("pool", &pool_files), ("target", &target_files)] {
        std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        for (name, bytes) in files {
            std::fs::write(tmp.path().join(dir).join(name), bytes).unwrap();
        }
    }
    let p = dataset(&app, &key, "pool", pool_files).await;
    let t = dataset(&app, &key, "target", target_files).await;
    let request = |analysis: Value| json!({"source": p, "target": t, "extractor": "tiny-cnn", "analysis": analysis});

    // Subset selection.
    let job = run(&app, &key, &request(json!({"select": {"k": 8}}))).await;
    let r = &job["result"];
    assert_eq!(r["analysis"], "select");
    assert_eq!(r["source"]["path"], format!("/v1/datasets/{p}"));
    let c = cli(
        tmp.path(),
        &["reduce", "select", "pool", "target", "-k", "8"],
    );
    let names = |v: &Value| -> Vec<String> {
        v["result"]["chosen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| base(c["name"].as_str().unwrap()).to_string())
            .collect()
    };
    assert_eq!(names(&c), names(r));
    for path in ["after", "before"] {
        for m in ["fid", "kid"] {
            close(
                c["result"][path][m].as_f64().unwrap(),
                r["result"][path][m].as_f64().unwrap(),
                &format!("select {path}.{m}"),
            );
        }
    }
    assert_eq!(c["source"]["content_hash"], r["source"]["content_hash"]);

    // PAD.
    let job = run(&app, &key, &request(json!({"pad": {}}))).await;
    let c = cli(tmp.path(), &["measure", "pad", "pool", "target"]);
    close(
        c["result"]["pad"].as_f64().unwrap(),
        job["result"]["result"]["pad"].as_f64().unwrap(),
        "pad",
    );

    // Sufficiency.
    let job = run(&app, &key, &request(json!({"sufficiency": {"draws": 10}}))).await;
    let c = cli(
        tmp.path(),
        &["reduce", "sufficiency", "pool", "target", "--draws", "10"],
    );
    close(
        c["result"]["value"].as_f64().unwrap(),
        job["result"]["result"]["value"].as_f64().unwrap(),
        "sufficiency value",
    );
    assert_eq!(c["result"]["sizes"], job["result"]["result"]["sizes"]);

    // Transform search (pixels: the same seeded samples are read from the blob store).
    let job = run(
        &app,
        &key,
        &request(json!({"transforms": {"knobs": ["gamma", "blur_sigma"], "grid": 5, "rounds": 1, "baseline_splits": 5}})),
    )
    .await;
    let c = cli(
        tmp.path(),
        &[
            "reduce",
            "transforms",
            "pool",
            "target",
            "--knobs",
            "gamma,blur_sigma",
            "--grid",
            "5",
            "--rounds",
            "1",
        ],
    );
    // The CLI's default baseline splits differ; the search itself must agree exactly.
    assert_eq!(c["result"]["best"], job["result"]["result"]["best"]);
    close(
        c["result"]["after"]["fid"].as_f64().unwrap(),
        job["result"]["result"]["after"]["fid"].as_f64().unwrap(),
        "transforms after.fid",
    );
    assert!(job["work"]["model_loaded"] == true);

    // The selective style gap.
    let job = run(
        &app,
        &key,
        &request(json!({"selective_style": {"mask_images": 8, "baseline_splits": 5}})),
    )
    .await;
    let c = cli(
        tmp.path(),
        &[
            "measure",
            "selective-style",
            "pool",
            "target",
            "--mask-images",
            "8",
            "--baseline-splits",
            "5",
        ],
    );
    assert_eq!(
        c["result"]["mask"]["sensitive"],
        job["result"]["result"]["mask"]["sensitive"]
    );
    close(
        c["result"]["gaps"]["selective_style"].as_f64().unwrap(),
        job["result"]["result"]["gaps"]["selective_style"]
            .as_f64()
            .unwrap(),
        "selective style gap",
    );

    // Asked again: answered from the result cache, without a worker.
    let resp = app
        .post_json("/v1/analyses", &key, &request(json!({"select": {"k": 8}})))
        .await;
    assert_eq!(resp.status(), 202);
    let again: Value = resp.json().await.unwrap();
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["work"]["result_cache_hit"], true);
}

#[sqlx::test]
async fn bad_analysis_requests_are_refused_before_a_job_exists(pool: PgPool) {
    let app = spawn_jobs(pool, &[], false).await;
    let (_, key) = app.team("lab").await;
    let files = scenes::png_files("a", &(0..6).map(scenes::blobs).collect::<Vec<_>>());
    let a = dataset(&app, &key, "a", files).await;
    let cases = [
        (json!({"select": {}}), "k must be at least 2"),
        (json!({"explain": {}}), "text encoder"),
        (json!({"pad": {"folds": 1}}), "folds"),
        (json!({"transforms": {"knobs": ["sharpness"]}}), "sharpness"),
        (json!({"nonsense": {}}), "nonsense"),
    ];
    for (analysis, needle) in cases {
        let resp = app
            .post_json(
                "/v1/analyses",
                &key,
                &json!({"source": a, "target": a, "extractor": "tiny-cnn", "analysis": analysis}),
            )
            .await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert!(
            status == 422 || status == 400,
            "{analysis}: {status} {body}"
        );
        assert!(body.to_string().contains(needle), "{analysis}: {body}");
    }
    let jobs = app.get_json("/v1/jobs", &key).await;
    assert_eq!(jobs["items"].as_array().unwrap().len(), 0, "{jobs}");
}

#[sqlx::test]
async fn explain_runs_as_a_job_with_a_text_encoder_and_equals_the_cli(pool: PgPool) {
    let tmp = tempfile::tempdir().unwrap();
    let day: Vec<_> = (0..24).map(scenes::blobs).collect();
    let dark = gapmeter::imaging::Photometric {
        brightness: 0.45,
        ..gapmeter::imaging::Photometric::identity()
    };
    let night: Vec<_> = (0..24)
        .map(|i| dark.apply(&scenes::blobs(4000 + i), i).unwrap())
        .collect();
    let (s, t) = (tmp.path().join("day"), tmp.path().join("night"));
    scenes::write(&s, "d", &day);
    scenes::write(&t, "n", &night);
    let models = scenes::clip_models(tmp.path(), &s, &t);
    let app = spawn_with_models(pool, models.clone()).await;
    let (_, key) = app.team("lab").await;
    let a = dataset(&app, &key, "day", scenes::png_files("d", &day)).await;
    let b = dataset(&app, &key, "night", scenes::png_files("n", &night)).await;
    let body = json!({"source": a, "target": b, "extractor": "tiny-clip",
        "analysis": {"explain": {"prompts": [["a photo of a cat", "a photo of a dog"]], "bootstrap": 50, "permutations": 199}}});
    let job = run(&app, &key, &body).await;
    let r = &job["result"];
    assert_eq!(r["analysis"], "explain");
    assert_eq!(r["result"]["directions"][0]["name"], "day → night", "{r:#}");
    let out = gapmeter_cli(
        tmp.path(),
        &[
            "explain",
            "day",
            "night",
            "-x",
            "tiny-clip",
            "--models-dir",
            models.to_str().unwrap(),
            "--prompt",
            "a photo of a cat|a photo of a dog",
            "--bootstrap",
            "50",
            "--permutations",
            "199",
            "--format",
            "json",
            "--no-progress",
        ],
    );
    let c: Value = serde_json::from_str(&out).unwrap();
    let (cd, jd) = (&c["result"]["directions"], &r["result"]["directions"]);
    assert_eq!(cd.as_array().unwrap().len(), jd.as_array().unwrap().len());
    for (x, y) in cd.as_array().unwrap().iter().zip(jd.as_array().unwrap()) {
        assert_eq!(x["name"], y["name"]);
        close(
            x["share"].as_f64().unwrap(),
            y["share"].as_f64().unwrap(),
            "share",
        );
        assert_eq!(x["p_value"], y["p_value"]);
    }
}

#[sqlx::test]
async fn cancelling_stops_a_long_transform_search_between_evaluations(pool: PgPool) {
    let app = spawn_jobs(pool, &[], true).await;
    let (_, key) = app.team("lab").await;
    let imgs: Vec<_> = (0..24).map(scenes::blobs).collect();
    let a = dataset(&app, &key, "a", scenes::png_files("a", &imgs)).await;
    // Thousands of evaluations: far longer than the test waits.
    let body = json!({"source": a, "target": a, "extractor": "tiny-cnn",
        "analysis": {"transforms": {"grid": 41, "rounds": 10, "min_gain": 0.0}}});
    let resp = app.post_json("/v1/analyses", &key, &body).await;
    assert_eq!(resp.status(), 202);
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    wait_for(&app, &key, &id, "the analysis to start", |j| {
        j["progress"]["phase"] == "analysing"
    })
    .await;
    let asked = std::time::Instant::now();
    assert_eq!(
        app.delete(&format!("/v1/jobs/{id}"), &key).await.status(),
        202
    );
    let done = wait_for(&app, &key, &id, "the cancel", |j| {
        j["status"] != "running" && j["status"] != "queued"
    })
    .await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["result"].is_null());
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(30),
        "a cancel waited for the search to end"
    );
}
