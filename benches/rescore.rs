//! Latency of scoring through HTTP against a service running in this process (with its in-process
//! worker), on the bundled examples/A vs examples/B:
//! 1. a cold job (extraction and metrics), once;
//! 2. re-scoring the cached pair: `POST /v1/jobs` answered from the result cache, 200 requests;
//! 3. `GET /v1/jobs/{id}` of a finished job, 200 requests;
//! 4. new parameters on cached features: POST, then follow `/events` to the end (worker path, no
//!    model), 20 jobs.
//!
//! Not a test: run with `make bench-jobs`. Needs PostgreSQL (DATABASE_URL, default the local
//! server); uses a throwaway database. GAPMETER_BENCH_EXTRACTOR picks the extractor (default
//! tiny-cnn; inception-v3-fid-untrained makes the cold job slow, the cached paths not).
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use gapmeter::app::Application;
use gapmeter::config::Config;
use serde_json::{json, Value};
use sqlx::Connection;

struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Reads `/events` until `end`; returns the finished job.
    async fn follow(&self, id: &str) -> anyhow::Result<Value> {
        let resp = self
            .client
            .get(format!("{}/v1/jobs/{id}/events", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?
            .error_for_status()?;
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            if let Some(at) = buf.find("event: end\ndata: ") {
                let rest = &buf[at + "event: end\ndata: ".len()..];
                if let Some(end) = rest.find('\n') {
                    return Ok(serde_json::from_str(&rest[..end])?);
                }
            }
        }
        bail!("event stream ended without `end`")
    }
}

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times[i].as_secs_f64() * 1000.0
    };
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / times.len() as f64 * 1000.0;
    println!(
        "{label:<58} n={:<4} p50 {:>8.2} ms  p99 {:>8.2} ms  mean {:>8.2} ms  max {:>8.2} ms",
        times.len(),
        pct(0.5),
        pct(0.99),
        mean,
        pct(1.0)
    );
}

fn folder(dir: &std::path::Path) -> anyhow::Result<reqwest::multipart::Form> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let mut form = reqwest::multipart::Form::new();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(&p)?).file_name(name),
        );
    }
    Ok(form)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = format!("gapmeter_bench_jobs_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await?;
    let result = run(&base, &db).await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result
}

async fn run(base: &str, db: &str) -> anyhow::Result<()> {
    let mut url = url::Url::parse(base)?;
    url.set_path(db);
    let blobs = tempfile::tempdir()?;
    let storage = format!("file://{}", blobs.path().display());
    let config = Config::from_overrides([
        ("GAPMETER_SERVER__BIND", "127.0.0.1:0"),
        ("GAPMETER_STORAGE__URL", storage.as_str()),
        ("GAPMETER_AUTH__ADMIN_KEY", "bench-admin"),
        ("DATABASE_URL", url.as_str()),
    ])?;
    let app = Application::build(config, gapmeter::features::default_models_dir()).await?;
    let port = app.port();
    tokio::spawn(app.worker()?.run(std::future::pending::<()>()));
    tokio::spawn(app.run_until_stopped());
    let mut api = Api {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
        key: "bench-admin".into(),
    };
    let team = api.post("/v1/teams", &json!({"name": "bench"})).await?;
    let team = team["id"].as_str().context("team id")?;
    let key = api
        .post(&format!("/v1/teams/{team}/keys"), &json!({}))
        .await?;
    api.key = key["token"].as_str().context("token")?.to_string();

    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut ids = Vec::new();
    for name in ["A", "B"] {
        let ds = api.post("/v1/datasets", &json!({"name": name})).await?;
        let id = ds["id"].as_str().context("dataset id")?.to_string();
        api.client
            .post(format!("{}/v1/datasets/{id}/images", api.base))
            .bearer_auth(&api.key)
            .multipart(folder(&root.join("examples").join(name))?)
            .send()
            .await?
            .error_for_status()?;
        ids.push(id);
    }
    let extractor = std::env::var("GAPMETER_BENCH_EXTRACTOR").unwrap_or_else(|_| "tiny-cnn".into());
    let request = json!({"source": ids[0], "target": ids[1], "extractor": extractor, "metrics": ["fid", "kid"]});
    println!("rescore bench: examples/A (24 images) vs examples/B (24 images), extractor {extractor}, metrics fid+kid");

    let t = Instant::now();
    let job = api.post("/v1/jobs", &request).await?;
    let done = api.follow(job["id"].as_str().context("job id")?).await?;
    if done["status"] != "succeeded" {
        bail!("cold job did not succeed: {done}");
    }
    summary(
        "cold job (extract + metrics), POST → SSE end",
        vec![t.elapsed()],
    );

    let mut rescore = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let job = api.post("/v1/jobs", &request).await?;
        rescore.push(t.elapsed());
        if job["status"] != "succeeded" || job["work"]["result_cache_hit"] != true {
            bail!("re-score was not answered from the cache: {job}");
        }
    }
    summary(
        "re-score cached pair: POST /v1/jobs → finished result",
        rescore,
    );

    let id = done["id"].as_str().context("job id")?;
    let mut gets = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let job = api.get(&format!("/v1/jobs/{id}")).await?;
        gets.push(t.elapsed());
        if job["result"].is_null() {
            bail!("no result: {job}");
        }
    }
    summary("GET /v1/jobs/{id} (finished, with result)", gets);

    let mut fresh = Vec::new();
    for seed in 0..20 {
        let mut r = request.clone();
        r["parameters"] = json!({"seed": 1000 + seed});
        let t = Instant::now();
        let job = api.post("/v1/jobs", &r).await?;
        let done = api.follow(job["id"].as_str().context("job id")?).await?;
        fresh.push(t.elapsed());
        if done["status"] != "succeeded" || done["work"]["images_extracted"] != 0 {
            bail!("expected a worker run on cached features: {done}");
        }
    }
    summary("new parameters on cached features: POST → SSE end", fresh);
    Ok(())
}
