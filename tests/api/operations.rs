//! Operating a shared instance: per-team quotas, per-key rate limits, retention, worker metrics.
use std::time::{Duration, Instant};

use gapmeter::store::{self, Blobs, RetentionPolicy, SweepReport};
use serde_json::{json, Value};
use sqlx::PgPool;

use super::helpers::{spawn_jobs, spawn_with, TestApp};
use super::jobs::{dataset_from, pngs, slow_job, submit, wait_for, worker_process_logging};

/// Checks a refusal: its status, problem type, the limit it names and `Retry-After`.
async fn refused(resp: reqwest::Response, status: u16, limit: &str, retry: bool) -> Value {
    assert_eq!(resp.status(), status);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "problem+json"
    );
    let problem: Value = resp.json().await.unwrap();
    let kind = if limit == "requests_per_second" {
        "/problems/rate-limited"
    } else {
        "/problems/quota-exceeded"
    };
    assert_eq!(problem["type"], kind, "{problem}");
    assert_eq!(problem["limit"], limit, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    let named = if limit == "requests_per_second" {
        "requests per second"
    } else {
        limit
    };
    assert!(detail.contains(named), "{problem}");
    assert_eq!(retry_after.is_some(), retry, "Retry-After: {retry_after:?}");
    if let Some(secs) = retry_after {
        assert!(secs >= 1, "{secs}");
    }
    problem
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Files under the blob directory (one per stored content).
fn blob_files(app: &TestApp) -> usize {
    walkdir::WalkDir::new(app.blobs.path())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && !e.path().ends_with("readyz-probe"))
        .count()
}

/// What the database and blob store hold, to show a refused request wrote nothing.
async fn holdings(app: &TestApp) -> (i64, i64, i64, i64, usize) {
    (
        count(&app.pool, "SELECT count(*) FROM datasets").await,
        count(&app.pool, "SELECT count(*) FROM dataset_images").await,
        count(&app.pool, "SELECT count(*) FROM images").await,
        count(&app.pool, "SELECT count(*) FROM jobs").await,
        blob_files(app),
    )
}

#[sqlx::test]
async fn each_quota_refuses_with_a_problem_naming_it_and_writes_nothing(pool: PgPool) {
    let app = spawn_jobs(
        pool,
        &[
            ("GAPMETER_QUOTAS__DATASETS", "2"),
            ("GAPMETER_QUOTAS__IMAGES", "5"),
            ("GAPMETER_QUOTAS__ACTIVE_JOBS", "1"),
        ],
        false,
    )
    .await;
    let (team, key) = app.team("lab").await;
    let a = dataset_from(&app, &key, "a", pngs("a", 4, 1)).await;
    let b = app.dataset(&key, "b").await;

    // Datasets: a third one is refused, with or without a URI (no ingest job either).
    let before = holdings(&app).await;
    let resp = app
        .post_json("/v1/datasets", &key, &json!({"name": "c"}))
        .await;
    refused(resp, 403, "datasets", false).await;
    let resp = app
        .post_json(
            "/v1/datasets",
            &key,
            &json!({"name": "d", "uri": "https://example.org/set.tar.gz"}),
        )
        .await;
    refused(resp, 403, "datasets", false).await;
    assert_eq!(holdings(&app).await, before);

    // Images: 4 held, 3 more would be 7 > 5. The whole upload is refused and taken back.
    let resp = app.upload(&key, &b, pngs("b", 3, 50)).await;
    refused(resp, 403, "images", false).await;
    assert_eq!(holdings(&app).await, before);
    let ds = app.get_json(&format!("/v1/datasets/{b}"), &key).await;
    assert_eq!(ds["image_count"], 0, "{ds}");
    // Re-uploading what a holds adds nothing, so it passes at the limit; one more file fits.
    let resp = app.upload(&key, &a, pngs("a", 4, 1)).await;
    assert_eq!(resp.status(), 200);
    let resp = app.upload(&key, &b, pngs("b", 1, 50)).await;
    assert_eq!(resp.status(), 200);

    // Bytes: an admin sets the team's own limits; the team reads them with its usage.
    let status = app.get_json("/v1/quotas", &key).await;
    assert_eq!(status["usage"]["images"], 5, "{status}");
    assert_eq!(status["usage"]["datasets"], 2);
    assert_eq!(status["limits"]["images"], 5);
    let used = status["usage"]["bytes"].as_u64().unwrap();
    assert!(used > 0);
    let put = |who: &str, body: Value| {
        app.client
            .put(app.url(&format!("/v1/teams/{team}/quotas")))
            .bearer_auth(who.to_string())
            .json(&body)
            .send()
    };
    let resp = put(&key, json!({"bytes": used})).await.unwrap();
    assert_eq!(resp.status(), 403, "only an admin sets quotas");
    let resp = put(&app.admin, json!({"bytes": used, "images": 100}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["limits"]["bytes"], used, "{status}");
    assert_eq!(status["limits"]["images"], 100);
    assert_eq!(status["limits"]["datasets"], 2, "the default still applies");
    assert_eq!(status["team"]["datasets"], Value::Null);
    let before = holdings(&app).await;
    let resp = app.upload(&key, &b, pngs("c", 1, 90)).await;
    refused(resp, 403, "bytes", false).await;
    assert_eq!(holdings(&app).await, before);
    let resp = put(&app.admin, json!({"bites": 1})).await.unwrap();
    assert_eq!(resp.status(), 422, "unknown fields are refused");

    // Active jobs: the worker is off, so the first job stays queued and the second must wait.
    let body = json!({"source": a, "target": b, "extractor": "tiny-cnn", "metrics": ["fid"]});
    let post = |idempotency: &'static str| {
        app.client
            .post(app.url("/v1/jobs"))
            .bearer_auth(&key)
            .header("Idempotency-Key", idempotency)
            .json(&body)
            .send()
    };
    assert_eq!(post("first").await.unwrap().status(), 202);
    let before = holdings(&app).await;
    refused(post("second").await.unwrap(), 429, "active_jobs", true).await;
    assert_eq!(holdings(&app).await, before);
    // Replaying the first job's key is not a new job.
    let replay = post("first").await.unwrap();
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    // Another team has limits of its own.
    let (_, other) = app.team("other").await;
    app.dataset(&other, "x").await;
    app.dataset(&other, "y").await;
}

#[sqlx::test]
async fn an_ingest_over_the_image_quota_fails_and_takes_back_its_files(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in pngs("f", 8, 3) {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let roots = format!("[\"{}\"]", dir.path().display());
    let app = spawn_jobs(
        pool,
        &[
            ("GAPMETER_INGEST__FILE_ROOTS", roots.as_str()),
            ("GAPMETER_QUOTAS__IMAGES", "5"),
        ],
        true,
    )
    .await;
    let (_, key) = app.team("lab").await;
    let uri = format!("file://{}", dir.path().display());
    let (status, ds, job) = app.ingest(&key, "big", &uri).await;
    assert_eq!(status, 202);
    let job = job.unwrap();
    assert_eq!(job["status"], "failed", "{job}");
    let detail = job["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("`images` quota is 5"), "{detail}");
    assert_eq!(ds["status"], "failed");
    assert_eq!(ds["image_count"], 0, "{ds}");
    assert_eq!(count(&app.pool, "SELECT count(*) FROM images").await, 0);
    assert_eq!(blob_files(&app), 0);
}

#[sqlx::test]
async fn the_rate_limit_answers_429_with_retry_after_per_key_and_writes_nothing(pool: PgPool) {
    let app = spawn_with(
        pool,
        &[
            ("GAPMETER_RATE_LIMIT__REQUESTS_PER_SECOND", "1"),
            ("GAPMETER_RATE_LIMIT__BURST", "4"),
        ],
    )
    .await;
    // Two teams: four admin requests, the admin key's whole burst.
    let (_, key) = app.team("lab").await;
    let (_, other) = app.team("other").await;
    for _ in 0..4 {
        assert_eq!(app.get("/v1/datasets", &key).await.status(), 200);
    }
    let resp = app
        .post_json("/v1/datasets", &key, &json!({"name": "late"}))
        .await;
    let retry = resp.headers()["retry-after"].to_str().unwrap().to_string();
    refused(resp, 429, "requests_per_second", true).await;
    assert_eq!(count(&app.pool, "SELECT count(*) FROM datasets").await, 0);
    // Keys do not share a bucket, and health checks are not limited.
    assert_eq!(app.get("/v1/datasets", &other).await.status(), 200);
    assert_eq!(app.get("/healthz", "").await.status(), 200);
    // After the wait it names, the key is served again.
    tokio::time::sleep(Duration::from_secs(retry.parse().unwrap())).await;
    let resp = app
        .post_json("/v1/datasets", &key, &json!({"name": "late"}))
        .await;
    assert_eq!(resp.status(), 201);
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the sample `name` (with its labels, as printed) in a text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<String> {
    let resp = client.get(url).send().await.ok()?;
    assert_eq!(resp.status(), 200);
    Some(resp.text().await.unwrap())
}

#[sqlx::test]
async fn a_worker_serves_metrics_while_it_runs_a_job(pool: PgPool) {
    let app = spawn_jobs(pool, &[], false).await;
    let (_, key) = app.team("lab").await;
    let (_, body) = slow_job(&app, &key, 24).await;
    let job = submit(&app, &key, &body).await;
    let id = job["id"].as_str().unwrap().to_string();

    // Queued, no worker yet: the API reports the queue's depth and its oldest job's age.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = scrape(&app.client, &app.url("/metrics")).await.unwrap();
    assert_eq!(sample(&api, "gapmeter_jobs{status=\"queued\"}"), Some(1.0));
    let age = sample(&api, "gapmeter_queue_oldest_queued_seconds").unwrap();
    assert!(age >= 0.2, "{age}");

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = tempfile::NamedTempFile::new().unwrap();
    let _worker = worker_process_logging(
        &app,
        &[
            ("GAPMETER_WORKER__METRICS_ADDR", addr.as_str()),
            ("GAPMETER_WORKER__BATCH_SIZE", "1"),
        ],
        Some(log.path()),
    );
    let url = format!("http://{addr}/metrics");
    // Mid-job: running, extracting on the CPU one image per batch.
    let deadline = Instant::now() + Duration::from_secs(120);
    let during = loop {
        if let Some(text) = scrape(&app.client, &url).await {
            let extracted = sample(&text, "gapmeter_worker_images_extracted_total").unwrap_or(0.0);
            if extracted > 0.0 && extracted < 24.0 {
                break text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no mid-job scrape: {}",
            std::fs::read_to_string(log.path()).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sample(&during, "gapmeter_worker_jobs_running"), Some(1.0));
    assert_eq!(
        sample(&during, "gapmeter_worker_device_info{device=\"cpu\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&during, "gapmeter_worker_batch_size{device=\"cpu\"}"),
        Some(1.0)
    );
    // A CPU worker has no GPU memory to report, and reports none rather than a zero.
    assert!(!during.contains("gapmeter_worker_gpu_memory_used_bytes{"));

    let done = wait_for(&app, &key, &id, "success", |j| j["status"] == "succeeded").await;
    let after = scrape(&app.client, &url).await.unwrap();
    assert_eq!(sample(&after, "gapmeter_worker_jobs_running"), Some(0.0));
    assert_eq!(
        sample(
            &after,
            "gapmeter_worker_jobs_total{kind=\"score\",outcome=\"succeeded\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "gapmeter_worker_images_extracted_total"),
        done["work"]["images_extracted"].as_f64()
    );
    for phase in ["resolving", "extracting", "metrics"] {
        let n = sample(
            &after,
            &format!("gapmeter_worker_job_phase_seconds_count{{phase=\"{phase}\"}}"),
        );
        assert_eq!(n, Some(1.0), "{phase}: {after}");
    }
    let health = app
        .client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let api = scrape(&app.client, &app.url("/metrics")).await.unwrap();
    assert_eq!(
        sample(&api, "gapmeter_jobs{status=\"succeeded\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&api, "gapmeter_queue_oldest_queued_seconds"),
        Some(0.0)
    );
}

#[sqlx::test]
async fn retention_removes_exactly_what_it_should_and_nothing_a_live_dataset_needs(pool: PgPool) {
    let app = spawn_jobs(pool, &[], true).await;
    let (team, key) = app.team("lab").await;
    let (other, _) = app.team("other").await;
    let a = dataset_from(&app, &key, "a", pngs("a", 12, 1)).await;
    let b = dataset_from(&app, &key, "b", pngs("b", 12, 60)).await;
    let body =
        json!({"source": a, "target": b, "extractor": "tiny-cnn", "metrics": ["fid", "kid"]});
    let first = submit(&app, &key, &body).await;
    let first = wait_for(&app, &key, first["id"].as_str().unwrap(), "done", |j| {
        j["status"] == "succeeded"
    })
    .await;
    // Two jobs answered from the result cache, to age: one past the limit, one not.
    let old = submit(&app, &key, &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let recent = submit(&app, &key, &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pool = &app.pool;
    let exec = |sql: String| async move {
        sqlx::query(&sql).execute(pool).await.unwrap();
    };
    exec(format!(
        "UPDATE jobs SET finished_at = now() - interval '40 days' WHERE id = '{old}'"
    ))
    .await;
    exec(format!(
        "UPDATE jobs SET finished_at = now() - interval '1 day' WHERE id = '{recent}'"
    ))
    .await;
    // A job still waiting (not before tomorrow) since long ago: never a finished job.
    let waiting = uuid::Uuid::new_v4();
    exec(format!(
        "INSERT INTO jobs (id, team_id, kind, spec, datasets, request_hash, max_attempts, created_at, run_at)
         VALUES ('{waiting}', '{team}', 'score', '{{}}', ARRAY['{a}'::uuid], 'w', 3,
                 now() - interval '40 days', now() + interval '1 day')"
    ))
    .await;

    let content: String = sqlx::query_scalar("SELECT content_hash FROM datasets WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&a).unwrap())
        .fetch_one(pool)
        .await
        .unwrap();
    // Results: the live one, aged; stale ones (content changed, dataset gone), aged; a stale
    // one too young to go.
    exec("UPDATE result_cache SET created_at = now() - interval '30 days'".into()).await;
    for (name, datasets, contents, age) in [
        (
            "stale",
            format!("ARRAY['{a}'::uuid]"),
            "ARRAY['old']",
            "30 days",
        ),
        (
            "gone",
            format!("ARRAY['{}'::uuid]", uuid::Uuid::new_v4()),
            "NULL",
            "30 days",
        ),
        (
            "young",
            format!("ARRAY['{a}'::uuid]"),
            "ARRAY['old']",
            "1 day",
        ),
    ] {
        exec(format!(
            "INSERT INTO result_cache (scope, key, datasets, content_hashes, result, created_at)
             VALUES ('{team}', '{name}', {datasets}, {contents}, '{{}}', now() - interval '{age}')"
        ))
        .await;
    }
    // Statistics: the live rows, aged; content nobody holds; a's content in a scope whose team
    // does not hold it; a's content in the shared scope (live).
    exec("UPDATE stats_cache SET created_at = now() - interval '30 days'".into()).await;
    let live_stats = count(pool, "SELECT count(*) FROM stats_cache").await;
    for (scope, hash) in [
        (team.as_str(), "old-content"),
        (other.as_str(), content.as_str()),
        ("00000000-0000-0000-0000-000000000000", content.as_str()),
    ] {
        exec(format!(
            "INSERT INTO stats_cache (scope, extractor, tap, content_hash, n, dim, mean, scatter, created_at)
             SELECT '{scope}', extractor, tap, '{hash}', n, dim, mean, scatter, now() - interval '30 days'
             FROM stats_cache LIMIT 1"
        ))
        .await;
    }
    // Features: three rows nobody read for ten days, beyond a budget the live rows fill.
    let live_rows = count(pool, "SELECT count(*) FROM feature_cache").await;
    assert!(live_rows >= 24, "{live_rows}");
    let budget = count(
        pool,
        "SELECT sum(octet_length(data))::bigint FROM feature_cache",
    )
    .await;
    for i in 0..3u8 {
        exec(format!(
            "INSERT INTO feature_cache (scope, extractor, tap, image_hash, dim, data, used_at)
             VALUES ('{team}', 'junk', 'x', decode('{}', 'hex'), 250, decode('{}', 'hex'),
                     now() - interval '10 days')",
            hex::encode([i; 32]),
            hex::encode([0u8; 1000])
        ))
        .await;
    }
    // A blob an interrupted upload left behind (bytes without an image row).
    let blobs = Blobs::open(&app.blob_url()).unwrap();
    let orphan = *blake3::hash(b"left behind").as_bytes();
    blobs
        .put(&orphan, bytes::Bytes::from_static(b"left behind"))
        .await
        .unwrap();
    let live_blobs = blob_files(&app) - 1;

    let policy = RetentionPolicy {
        finished_job_days: 30,
        unreferenced_cache_days: 7,
        feature_cache_bytes: budget as u64,
        orphan_blob_grace: Some(Duration::ZERO),
    };
    // One sweeper at a time: while another holds the lock, a sweep does nothing.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(store::SWEEP_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    assert_eq!(store::sweep(pool, &blobs, &policy).await.unwrap(), None);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(store::SWEEP_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    drop(holder);

    let report = store::sweep(pool, &blobs, &policy).await.unwrap().unwrap();
    assert_eq!(
        report,
        SweepReport {
            jobs: 1,
            results: 2,
            statistics: 2,
            feature_rows: 3,
            feature_bytes: 3000,
            blobs: 1,
        }
    );
    assert_eq!(
        app.get(&format!("/v1/jobs/{old}"), &key).await.status(),
        404
    );
    assert_eq!(
        count(
            pool,
            &format!("SELECT count(*) FROM job_events WHERE job_id = '{old}'")
        )
        .await,
        0
    );
    assert_eq!(
        app.get(&format!("/v1/jobs/{recent}"), &key).await.status(),
        200
    );
    assert_eq!(
        count(
            pool,
            &format!("SELECT count(*) FROM jobs WHERE id = '{waiting}'")
        )
        .await,
        1
    );
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM result_cache ORDER BY key")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&"young".to_string()));
    assert_eq!(
        count(pool, "SELECT count(*) FROM stats_cache").await,
        live_stats + 1,
        "the live rows and the shared row stay"
    );
    assert_eq!(
        count(pool, "SELECT count(*) FROM feature_cache").await,
        live_rows
    );
    assert!(!blobs.exists(&orphan).await.unwrap());
    assert_eq!(blob_files(&app), live_blobs);
    // A second sweep finds nothing more.
    assert_eq!(
        store::sweep(pool, &blobs, &policy).await.unwrap().unwrap(),
        SweepReport::default()
    );

    // Everything the live datasets need still answers: the cached result, and without it the
    // cached features.
    let again = submit(&app, &key, &body).await;
    assert_eq!(again["status"], "succeeded");
    assert_eq!(again["result"], first["result"]);
    exec("DELETE FROM result_cache".into()).await;
    let rerun = submit(&app, &key, &body).await;
    let rerun = wait_for(&app, &key, rerun["id"].as_str().unwrap(), "rerun", |j| {
        j["status"] == "succeeded"
    })
    .await;
    assert_eq!(rerun["work"]["images_extracted"], 0, "{rerun}");
    assert_eq!(
        rerun["result"]["metrics"]["fid"],
        first["result"]["metrics"]["fid"]
    );
}
