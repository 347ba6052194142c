//! Spawns the service on a random port against a fresh database (one per test, from
//! `#[sqlx::test]`) and a fresh blob directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gapmeter::app::Application;
use gapmeter::config::Config;
use serde_json::{json, Value};
use sqlx::PgPool;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub admin: String,
    pub blobs: tempfile::TempDir,
}

pub async fn spawn(pool: PgPool) -> TestApp {
    spawn_with(pool, &[]).await
}

pub async fn spawn_with(pool: PgPool, extra: &[(&str, &str)]) -> TestApp {
    spawn_app(pool, extra, PathBuf::from("/nonexistent-models"), false).await
}

/// Queue timing for tests: quick polls, short leases, short backoff.
pub const FAST_QUEUE: &[(&str, &str)] = &[
    ("GAPMETER_QUEUE__POLL_MS", "100"),
    ("GAPMETER_QUEUE__HEARTBEAT_MS", "200"),
    ("GAPMETER_QUEUE__LEASE_MS", "5000"),
    ("GAPMETER_QUEUE__BACKOFF_BASE_MS", "50"),
    ("GAPMETER_QUEUE__BACKOFF_MAX_MS", "200"),
    ("GAPMETER_WORKER__BATCH_SIZE", "8"),
];

/// The service with the test extractors (`make models`) and, when `worker`, an in-process worker.
pub async fn spawn_jobs(pool: PgPool, extra: &[(&str, &str)], worker: bool) -> TestApp {
    let mut all: Vec<(&str, &str)> = FAST_QUEUE.to_vec();
    all.extend_from_slice(extra);
    spawn_app(pool, &all, gapmeter::features::default_models_dir(), worker).await
}

/// As [`spawn_jobs`] with a worker, reading extractors from `models` instead of the default
/// models directory.
pub async fn spawn_with_models(pool: PgPool, models: PathBuf) -> TestApp {
    spawn_app(pool, FAST_QUEUE, models, true).await
}

/// As [`spawn_jobs`], with `file://` dataset URIs allowed under `root`.
pub async fn spawn_with_root(pool: PgPool, root: &Path, worker: bool) -> TestApp {
    let roots = format!("[\"{}\"]", root.display());
    spawn_jobs(
        pool,
        &[("GAPMETER_INGEST__FILE_ROOTS", roots.as_str())],
        worker,
    )
    .await
}

async fn spawn_app(pool: PgPool, extra: &[(&str, &str)], models: PathBuf, worker: bool) -> TestApp {
    let blobs = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", blobs.path().display());
    let admin = format!("admin-{}", uuid::Uuid::new_v4());
    let mut overrides = vec![
        ("GAPMETER_SERVER__BIND", "127.0.0.1:0"),
        ("GAPMETER_STORAGE__URL", storage.as_str()),
        ("GAPMETER_AUTH__ADMIN_KEY", admin.as_str()),
    ];
    overrides.extend_from_slice(extra);
    let config = Config::from_overrides(overrides).unwrap();
    let app = Application::with_pool(config, pool.clone(), models)
        .await
        .unwrap();
    if worker {
        let w = app.worker().unwrap();
        tokio::spawn(w.run(std::future::pending::<()>()));
    }
    let port = app.port();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::new(),
        pool,
        admin,
        blobs,
    }
}

impl TestApp {
    /// A URL of this test's database, for worker processes.
    pub fn database_url(&self) -> String {
        let o = self.pool.connect_options();
        format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap()
        )
    }

    pub fn blob_url(&self) -> String {
        format!("file://{}", self.blobs.path().display())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// GET and parse the JSON body (whatever the status).
    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        self.get(path, key).await.json().await.unwrap()
    }

    pub async fn delete(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A new team and a read/write key for it.
    pub async fn team(&self, name: &str) -> (String, String) {
        let team: Value = self
            .post_json("/v1/teams", &self.admin, &json!({ "name": name }))
            .await
            .json()
            .await
            .unwrap();
        let id = team["id"].as_str().unwrap().to_string();
        let key: Value = self
            .post_json(
                &format!("/v1/teams/{id}/keys"),
                &self.admin,
                &json!({ "name": "test" }),
            )
            .await
            .json()
            .await
            .unwrap();
        (id, key["token"].as_str().unwrap().to_string())
    }

    pub async fn dataset(&self, key: &str, name: &str) -> String {
        let resp = self
            .post_json("/v1/datasets", key, &json!({ "name": name }))
            .await;
        assert_eq!(resp.status(), 201);
        resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a dataset from `uri` and, when the request is accepted (202), waits for its ingest
    /// job to end. Returns the status, the dataset as it is now (or the problem) and the job.
    pub async fn ingest(&self, key: &str, name: &str, uri: &str) -> (u16, Value, Option<Value>) {
        let resp = self
            .post_json("/v1/datasets", key, &json!({ "name": name, "uri": uri }))
            .await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if status != 202 {
            return (status, body, None);
        }
        let job_path = format!("/v1/jobs/{}", body["ingest_job"].as_str().unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let job = loop {
            let job = self.get_json(&job_path, key).await;
            if !matches!(job["status"].as_str(), Some("queued" | "running")) {
                break job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ingest did not end: {job}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let ds = self
            .get_json(
                &format!("/v1/datasets/{}", body["id"].as_str().unwrap()),
                key,
            )
            .await;
        (status, ds, Some(job))
    }

    /// Uploads named byte blobs as one multipart request.
    pub async fn upload(
        &self,
        key: &str,
        dataset: &str,
        files: Vec<(String, Vec<u8>)>,
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        }
        self.client
            .post(self.url(&format!("/v1/datasets/{dataset}/images")))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }
}

/// Runs the `gapmeter` binary (not the service) in `dir`; returns its stdout, failing on a
/// non-zero exit.
pub fn gapmeter_cli(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gapmeter"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (file name, bytes) of every file in a folder, sorted.
pub fn folder(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

pub fn tar_gz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(enc);
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("imgs/{name}"), bytes.as_slice())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

pub fn zip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed, (x % 256) as u8, (y % 256) as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A Python with pytorch-fid 0.3.0 and numpy: the small reference venv of
/// `scripts/bench/setup.sh` (over the libtorch venv's torch; `make test` runs the tests through
/// scripts/with-libtorch.sh, which it needs).
pub fn reference_python() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/bench/setup.sh"))
        .output()
        .expect("running scripts/bench/setup.sh");
    assert!(
        out.status.success(),
        "scripts/bench/setup.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// pytorch-fid's `calculate_frechet_distance` on two `.npz` files, after checking they hold what
/// pytorch-fid writes: float64 `mu` (d) and `sigma` (d×d).
pub fn pytorch_fid_of_npz(a: &Path, b: &Path) -> f64 {
    const SCRIPT: &str = r#"
import sys, numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance
s = []
for path in sys.argv[1:]:
    with np.load(path) as f:
        assert sorted(f.files) == ['mu', 'sigma'], f.files
        mu, sigma = f['mu'], f['sigma']
    assert mu.dtype == np.float64 and sigma.dtype == np.float64, (mu.dtype, sigma.dtype)
    assert mu.ndim == 1 and sigma.shape == (mu.shape[0], mu.shape[0]), (mu.shape, sigma.shape)
    s += [mu, sigma]
print(repr(float(calculate_frechet_distance(*s))))
"#;
    let out = std::process::Command::new(reference_python())
        .args(["-c", SCRIPT])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pytorch-fid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Runs `bash script` with `env`, without blocking the runtime the service runs on; returns
/// whether it succeeded and its stdout and stderr (printed too, for the test's log).
pub async fn run_script(script: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    (out.status.success(), text)
}
