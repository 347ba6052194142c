//! One truth: a dataset is a multiset of files, as a folder is, so the service scores exactly
//! what `gapmeter score` scores on the same folder; URI datasets are filled by ingest jobs.
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

use super::helpers::{gapmeter_cli, png, root, spawn_jobs, spawn_with_root, tar_gz, zip, TestApp};

/// Writes `examples/<name>` plus byte-identical copies of some of its files (under other names
/// and in a subfolder, as scraped data has them) into `dir`; returns every (relative path,
/// bytes), in no particular order.
fn folder_with_copies(dir: &Path, name: &str, copies: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut originals: Vec<_> = std::fs::read_dir(root().join("examples").join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    originals.sort();
    for p in &originals {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        files.push((n, std::fs::read(p).unwrap()));
    }
    for (i, p) in originals.iter().step_by(3).take(copies).enumerate() {
        let ext = p.extension().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(p).unwrap();
        files.push((format!("copy_{i}.{ext}"), bytes.clone()));
        // `a/…` sorts before `a.png` in a folder walk, but after it as a plain string.
        files.push((format!("a/again_{i}.{ext}"), bytes));
    }
    for (rel, bytes) in &files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    files
}

async fn wait_job(app: &TestApp, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let job = app.get_json(&format!("/v1/jobs/{id}"), key).await;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits a job to `route`, waits for it, checks it succeeded and returns its result.
async fn job_result(app: &TestApp, key: &str, route: &str, body: Value) -> Value {
    let job: Value = app.post_json(route, key, &body).await.json().await.unwrap();
    let mut done = wait_job(app, key, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done["result"].take()
}

async fn upload_ok(app: &TestApp, key: &str, ds: &str, files: Vec<(String, Vec<u8>)>) -> Value {
    let resp = app.upload(key, ds, files).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[sqlx::test]
async fn a_folder_with_duplicate_files_scores_through_the_service_exactly_as_the_cli(pool: PgPool) {
    // Batch size 1 on both sides: the same image then meets the model in the same batch shape,
    // so its float32 features are the same bits (the worker extracts each content once).
    let app = spawn_jobs(pool, &[("GAPMETER_WORKER__BATCH_SIZE", "1")], true).await;
    let (_, key) = app.team("lab").await;
    let dirs = tempfile::tempdir().unwrap();
    let (src_dir, tgt_dir) = (dirs.path().join("src"), dirs.path().join("tgt"));
    let src = folder_with_copies(&src_dir, "A", 5);
    let tgt = folder_with_copies(&tgt_dir, "B", 4);

    // The source as plain multipart parts, the target as a .tar.gz, and the source once more
    // as a .zip: the same files give the same dataset, whatever the transport.
    let s = app.dataset(&key, "src").await;
    let up = upload_ok(&app, &key, &s, src.clone()).await;
    assert_eq!(up["duplicates"], 10, "{up}");
    assert_eq!(up["accepted"], 24);
    let t = app.dataset(&key, "tgt").await;
    let up = upload_ok(&app, &key, &t, vec![("tgt.tar.gz".into(), tar_gz(&tgt))]).await;
    assert_eq!(
        (up["accepted"].as_u64(), up["duplicates"].as_u64()),
        (Some(24), Some(8))
    );
    let z = app.dataset(&key, "src-zip").await;
    upload_ok(&app, &key, &z, vec![("src.zip".into(), zip(&src))]).await;

    let sd = app.get_json(&format!("/v1/datasets/{s}"), &key).await;
    let zd = app.get_json(&format!("/v1/datasets/{z}"), &key).await;
    assert_eq!(sd["image_count"], 34, "{sd}");
    assert_eq!(sd["unique_images"], 24);
    assert_eq!(zd["image_count"], 34);
    assert_eq!(sd["content_hash"], zd["content_hash"]);

    let cli: Value = serde_json::from_str(&gapmeter_cli(
        &root(),
        &[
            "score",
            src_dir.to_str().unwrap(),
            tgt_dir.to_str().unwrap(),
            "--extractor",
            "tiny-cnn",
            "--metrics",
            "fid,kid,prdc",
            "--top",
            "5",
            "--batch-size",
            "1",
            "--format",
            "json",
            "--no-progress",
        ],
    ))
    .unwrap();
    for source in [&s, &z] {
        let result = &job_result(
            &app,
            &key,
            "/v1/jobs",
            json!({"source": source, "target": t, "extractor": "tiny-cnn",
                   "metrics": ["fid", "kid", "prdc"], "top_k": 5}),
        )
        .await;
        // Bit for bit: the JSON numbers are the shortest representations of the same f64s.
        assert_eq!(cli["metrics"], result["metrics"]);
        for side in ["source", "target"] {
            assert_eq!(cli[side]["count"], result[side]["count"], "{side}");
            assert_eq!(
                cli[side]["content_hash"], result[side]["content_hash"],
                "{side}"
            );
        }
        assert_eq!(result["source"]["count"], 34);
        assert_eq!(result["target"]["count"], 32);
        let (ci, ji) = (
            cli["per_image"]["images"].as_array().unwrap(),
            result["per_image"]["images"].as_array().unwrap(),
        );
        for (c, j) in ci.iter().zip(ji) {
            assert_eq!(c["index"], j["index"]);
            assert_eq!(c["witness"], j["witness"]);
            assert!(c["path"]
                .as_str()
                .unwrap()
                .ends_with(j["path"].as_str().unwrap().rsplit(".zip/").next().unwrap()));
        }
    }
}

#[sqlx::test]
async fn members_are_keyed_by_path_so_retried_uploads_change_nothing(pool: PgPool) {
    let app = spawn_jobs(pool, &[], false).await;
    let (_, key) = app.team("lab").await;
    let ds = app.dataset(&key, "d").await;
    let files = vec![
        ("x.png".to_string(), png(16, 16, 1)),
        ("sub/x.png".to_string(), png(16, 16, 1)),
    ];
    let first = upload_ok(&app, &key, &ds, files.clone()).await;
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let before = app.get_json(&format!("/v1/datasets/{ds}"), &key).await;
    // The same request again (a client retrying after a timeout): nothing changes.
    let again = upload_ok(&app, &key, &ds, files).await;
    assert_eq!(again["unchanged"], 2, "{again}");
    assert_eq!(again["accepted"], 0);
    // Other bytes under a path the dataset holds: refused, and the member keeps its bytes.
    let clash = upload_ok(&app, &key, &ds, vec![("x.png".into(), png(16, 16, 2))]).await;
    assert_eq!(clash["rejected"], 1);
    assert!(clash["files"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("already holds other bytes"));
    // Files a folder walk skips are not members either.
    let skipped = upload_ok(
        &app,
        &key,
        &ds,
        vec![
            (".hidden.png".into(), png(8, 8, 3)),
            ("notes.txt".into(), png(8, 8, 4)),
        ],
    )
    .await;
    assert_eq!(skipped["rejected"], 2, "{skipped}");
    let after = app.get_json(&format!("/v1/datasets/{ds}"), &key).await;
    for field in [
        "image_count",
        "unique_images",
        "content_hash",
        "total_bytes",
    ] {
        assert_eq!(before[field], after[field], "{field}");
    }
    assert_eq!(after["image_count"], 2);
    assert_eq!(after["unique_images"], 1);
    let images = app
        .get_json(&format!("/v1/datasets/{ds}/images?limit=1"), &key)
        .await;
    assert_eq!(images["items"][0]["path"], "sub/x.png");
    let next = images["next_cursor"].as_str().unwrap();
    let rest = app
        .get_json(&format!("/v1/datasets/{ds}/images?cursor={next}"), &key)
        .await;
    assert_eq!(rest["items"][0]["path"], "x.png");
    assert!(rest["next_cursor"].is_null());
}

fn uri_dataset(app: &TestApp, key: &str, uri: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/v1/datasets"))
        .bearer_auth(key)
        .json(&json!({ "name": "from-uri", "uri": uri }))
}

#[sqlx::test]
async fn a_uri_dataset_is_filled_by_an_ingest_job(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    for (i, name) in ["b.png", "a.png", "sub/c.png", "notes.txt"]
        .iter()
        .enumerate()
    {
        let p = data.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, png(12, 12, (i % 2) as u8)).unwrap();
    }
    let app = spawn_with_root(pool, data.path(), true).await;
    let (_, key) = app.team("lab").await;
    let resp = uri_dataset(&app, &key, &format!("file://{}", data.path().display()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let ds: Value = resp.json().await.unwrap();
    assert_eq!(ds["status"], "ingesting");
    assert_eq!(
        location,
        format!("/v1/jobs/{}", ds["ingest_job"].as_str().unwrap())
    );
    let job = wait_job(&app, &key, ds["ingest_job"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "ingest");
    assert_eq!(job["result"]["accepted"], 2, "{job}");
    assert_eq!(job["result"]["duplicates"], 1);
    assert_eq!(job["result"]["rejected"], 1);
    assert_eq!(job["progress"]["counts"]["seen"], 4, "{job}");
    let ready = app
        .get_json(
            &format!("/v1/datasets/{}", ds["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["image_count"], 3);
    assert_eq!(ready["unique_images"], 2);
}

#[sqlx::test]
async fn an_unreachable_source_ends_failed_after_its_retries(pool: PgPool) {
    // A port nothing listens on: every attempt is refused, which is worth retrying.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_jobs(
        pool,
        &[("GAPMETER_INGEST__ALLOW_PRIVATE_ADDRESSES", "true")],
        true,
    )
    .await;
    let (_, key) = app.team("lab").await;
    let resp = uri_dataset(&app, &key, &format!("http://127.0.0.1:{port}/x.tar.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ds: Value = resp.json().await.unwrap();
    let id = ds["id"].as_str().unwrap();
    let job = wait_job(&app, &key, ds["ingest_job"].as_str().unwrap()).await;
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(job["attempts"], 3);
    assert_eq!(job["error"]["type"], "/problems/job-dead");
    assert_eq!(job["error"]["status"], 500);
    let failed = app.get_json(&format!("/v1/datasets/{id}"), &key).await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("attempt 3 of 3"),
        "{failed}"
    );
    // A failed dataset cannot be scored, and says why.
    let r = app
        .post_json(
            "/v1/jobs",
            &key,
            &json!({"source": id, "target": id, "extractor": "tiny-cnn"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("is failed"), "{p}");
}

#[sqlx::test]
async fn a_dataset_still_ingesting_cannot_be_scored_and_a_cancel_fails_it(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.png"), png(8, 8, 1)).unwrap();
    // No worker: the ingest job stays queued.
    let app = spawn_with_root(pool, data.path(), false).await;
    let (_, key) = app.team("lab").await;
    let uri = format!("file://{}", data.path().display());
    let ds: Value = app
        .post_json(
            "/v1/datasets",
            &key,
            &json!({"name": "from-uri", "uri": uri}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = ds["id"].as_str().unwrap();
    let other = app.dataset(&key, "other").await;
    upload_ok(&app, &key, &other, vec![("x.png".into(), png(8, 8, 2))]).await;
    for body in [
        json!({"source": id, "target": other, "extractor": "tiny-cnn"}),
        json!({"source": other, "target": id, "extractor": "tiny-cnn"}),
    ] {
        let r = app.post_json("/v1/jobs", &key, &body).await;
        assert_eq!(r.status(), 409);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["type"], "/problems/conflict");
        assert!(
            p["detail"].as_str().unwrap().contains("is ingesting"),
            "{p}"
        );
    }
    let r = app
        .upload(&key, id, vec![("y.png".into(), png(8, 8, 3))])
        .await;
    assert_eq!(r.status(), 409);
    let job = ds["ingest_job"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/v1/jobs/{job}"), &key).await.status(),
        202
    );
    let failed = app.get_json(&format!("/v1/datasets/{id}"), &key).await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("cancelled"),
        "{failed}"
    );
}

#[sqlx::test]
async fn a_dropped_request_leaves_nothing_stuck(pool: PgPool) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.png"), png(8, 8, 1)).unwrap();
    let app = spawn_with_root(pool, data.path(), true).await;
    let (_, key) = app.team("lab").await;
    let body =
        json!({"name": "dropped", "uri": format!("file://{}", data.path().display())}).to_string();
    let addr = app.base.trim_start_matches("http://").to_string();
    let head = |len: usize| {
        format!(
            "POST /v1/datasets HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // Half a body, then the client goes away: nothing is created.
    {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(head(body.len()).as_bytes()).unwrap();
        s.write_all(&body.as_bytes()[..body.len() / 2]).unwrap();
    }
    // A whole request whose client leaves before the answer: the dataset and its job exist
    // together (and the job finishes it) or neither does.
    {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(head(body.len()).as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
    }
    let start = Instant::now();
    loop {
        let list = app.get_json("/v1/datasets", &key).await;
        let items = list["items"].as_array().unwrap();
        assert!(items.len() <= 1, "{list}");
        let settled = items.iter().all(|d| d["status"] != "ingesting");
        if settled && start.elapsed() > Duration::from_secs(2) {
            if let Some(d) = items.first() {
                assert_eq!(d["status"], "ready", "{d}");
                assert_eq!(d["image_count"], 1);
            }
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "stuck: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn a_matrix_job_with_intervals_equals_gapmeter_matrix(pool: PgPool) {
    let app = spawn_jobs(pool, &[("GAPMETER_WORKER__BATCH_SIZE", "1")], true).await;
    let (_, key) = app.team("lab").await;
    let dirs = tempfile::tempdir().unwrap();
    let mixed = dirs.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    let (a, b) = (root().join("examples/A"), root().join("examples/B"));
    let mut sets = Vec::new();
    for (name, dir) in [("A", &a), ("B", &b)] {
        let files = super::helpers::folder(dir);
        for (f, bytes) in files.iter().take(12) {
            std::fs::write(mixed.join(format!("{name}_{f}")), bytes).unwrap();
        }
        let id = app.dataset(&key, name).await;
        upload_ok(&app, &key, &id, files).await;
        sets.push(id);
    }
    let id = app.dataset(&key, "mixed").await;
    upload_ok(&app, &key, &id, super::helpers::folder(&mixed)).await;
    sets.push(id);

    let cli: Value = serde_json::from_str(&gapmeter_cli(
        &root(),
        &[
            "matrix",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            mixed.to_str().unwrap(),
            "--extractor",
            "tiny-cnn",
            "--metrics",
            "kid",
            "--bootstrap",
            "10",
            "--batch-size",
            "1",
            "--format",
            "json",
            "--no-progress",
        ],
    ))
    .unwrap();
    let result = &job_result(
        &app,
        &key,
        "/v1/matrix",
        json!({"datasets": sets, "extractor": "tiny-cnn", "metrics": ["kid"],
               "bootstrap": {"resamples": 10}}),
    )
    .await;
    assert_eq!(cli["metrics"], result["metrics"]);
    assert_eq!(cli["intervals"], result["intervals"]);
    assert_eq!(cli["overlapping"], result["overlapping"]);
    let kid = result["intervals"]["kid"].as_array().unwrap();
    assert_eq!(kid.len(), 3);
    assert!(kid[0][0].is_null(), "no interval on the diagonal");
    assert!(kid[0][1]["method"].as_str().is_some(), "{}", kid[0][1]);
}
