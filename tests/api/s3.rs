//! Object storage for real: the blob store and a dataset URI in an S3-compatible server (moto's
//! server mode, from PyPI, through `scripts/s3-server.sh`) that the test starts itself.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

use super::helpers::{root, spawn_jobs, TestApp};
use super::jobs::{dataset_from, folders, pngs, submit, tiny_score, wait_for};

/// A moto server on a free loopback port, stopped when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
    http: reqwest::Client,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    async fn start() -> Self {
        let script = root().join("scripts/s3-server.sh");
        // The first run installs moto into its cached venv: done before the clock starts.
        let install = tokio::process::Command::new("bash")
            .arg(&script)
            .arg("--python")
            .output()
            .await
            .unwrap();
        assert!(
            install.status.success(),
            "{}",
            String::from_utf8_lossy(&install.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("bash")
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.http.get(&server.endpoint).send().await.is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// The options gapmeter needs to reach it (moto accepts any credentials).
    fn options(&self) -> String {
        format!(
            r#"{{ endpoint = "{}", allow_http = "true", region = "us-east-1", access_key_id = "test", secret_access_key = "test" }}"#,
            self.endpoint
        )
    }

    async fn create_bucket(&self, bucket: &str) {
        let resp = self
            .http
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    async fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let resp = self
            .http
            .put(format!("{}/{bucket}/{key}", self.endpoint))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    /// Every key under `prefix` (the server's own listing, not gapmeter's).
    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = self
            .http
            .get(format!(
                "{}/{bucket}?list-type=2&prefix={prefix}",
                self.endpoint
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!xml.contains("<IsTruncated>true"), "more than one page");
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

/// Where gapmeter keeps a content's bytes under `blobs/`.
fn blob_key(bytes: &[u8]) -> String {
    let hex = blake3::hash(bytes).to_hex().to_string();
    format!("blobs/images/{}/{}/{hex}", &hex[..2], &hex[2..4])
}

fn local_files(app: &TestApp) -> usize {
    walkdir::WalkDir::new(app.blobs.path())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count()
}

#[sqlx::test]
async fn uploads_scoring_deletion_and_garbage_collection_go_through_s3(pool: PgPool) {
    let s3 = S3Server::start().await;
    s3.create_bucket("gapmeter").await;
    s3.create_bucket("datasets").await;
    let options = s3.options();
    let app = spawn_jobs(
        pool,
        &[
            ("GAPMETER_STORAGE__URL", "s3://gapmeter/blobs"),
            ("GAPMETER_STORAGE__OPTIONS", options.as_str()),
            ("GAPMETER_INGEST__ALLOW_OBJECT_STORE", "true"),
            ("GAPMETER_INGEST__OBJECT_STORE_OPTIONS", options.as_str()),
        ],
        true,
    )
    .await;
    let ready = app.get_json("/readyz", "").await;
    assert_eq!(ready["blob_store"], "ok", "{ready}");
    let (_, key) = app.team("lab").await;

    // One dataset uploaded, one ingested from an s3:// URI.
    let a_files = pngs("a", 10, 1);
    let b_files = pngs("b", 10, 70);
    let a = dataset_from(&app, &key, "a", a_files.clone()).await;
    for (name, bytes) in &b_files {
        s3.put("datasets", &format!("sets/b/{name}"), bytes).await;
    }
    let (status, ds, job) = app.ingest(&key, "b", "s3://datasets/sets/b").await;
    assert_eq!(status, 202, "{ds}");
    assert_eq!(job.unwrap()["status"], "succeeded");
    assert_eq!(ds["image_count"], 10, "{ds}");
    let b = ds["id"].as_str().unwrap().to_string();

    // The bytes live in the bucket, one object per content, and nowhere on local disk.
    let mut expected: Vec<String> = a_files
        .iter()
        .chain(&b_files)
        .map(|(_, bytes)| blob_key(bytes))
        .collect();
    expected.sort();
    let mut stored = s3.keys("gapmeter", "blobs/images/").await;
    stored.sort();
    assert_eq!(stored, expected);
    assert_eq!(local_files(&app), 0);

    // Scoring reads them back from S3 and equals the CLI on the same files.
    let body = json!({"source": a, "target": b, "extractor": "tiny-cnn", "metrics": ["fid"]});
    let job = submit(&app, &key, &body).await;
    let done = wait_for(&app, &key, job["id"].as_str().unwrap(), "done", |j| {
        !matches!(j["status"].as_str(), Some("queued" | "running"))
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let dir = folders(&[("a", &a_files), ("b", &b_files)]);
    let fid = |v: &Value| v["metrics"]["fid"]["value"].as_f64().unwrap();
    let cli = tiny_score(dir.path(), "a", "b");
    assert!(
        (fid(&cli) - fid(&done["result"])).abs() <= 1e-12 * fid(&cli).abs(),
        "{cli} vs {done}"
    );
    // Thumbnails read the bucket too; members of an ingested prefix are named below it.
    for (ds, path) in [(&a, "a000.png"), (&b, "b000.png")] {
        let thumb = app
            .get(&format!("/v1/datasets/{ds}/thumbnail?path={path}"), &key)
            .await;
        assert_eq!(thumb.status(), 200, "{path}");
    }

    // Deleting a dataset deletes the objects only it held.
    assert_eq!(
        app.delete(&format!("/v1/datasets/{a}"), &key)
            .await
            .status(),
        204
    );
    let mut left = s3.keys("gapmeter", "blobs/images/").await;
    left.sort();
    let mut b_keys: Vec<String> = b_files.iter().map(|(_, b)| blob_key(b)).collect();
    b_keys.sort();
    assert_eq!(left, b_keys);

    // Garbage collection through S3: an object no image row names (an upload that died between
    // writing and committing) is swept by `gapmeter sweep`; live objects stay.
    let orphan = b"bytes of an upload that never committed";
    s3.put("gapmeter", &blob_key(orphan), orphan).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gapmeter"))
        .arg("sweep")
        .env("DATABASE_URL", app.database_url())
        .env("GAPMETER_STORAGE__URL", "s3://gapmeter/blobs")
        .env("GAPMETER_STORAGE__OPTIONS", &options)
        .env("GAPMETER_RETENTION__ORPHAN_BLOB_GRACE_SECS", "0")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["blobs"], 1, "{report}");
    let mut after = s3.keys("gapmeter", "blobs/images/").await;
    after.sort();
    assert_eq!(after, b_keys);
    // And the dataset that is left still scores.
    let again = submit(
        &app,
        &key,
        &json!({"source": b, "target": b, "extractor": "tiny-cnn", "metrics": ["fid"]}),
    )
    .await;
    let again = wait_for(&app, &key, again["id"].as_str().unwrap(), "done", |j| {
        !matches!(j["status"].as_str(), Some("queued" | "running"))
    })
    .await;
    assert_eq!(again["status"], "succeeded", "{again}");
}
