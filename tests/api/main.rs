//! The HTTP API end to end: a real server on a random port, a real PostgreSQL database per test.
mod analyses;
mod client;
mod dashboard;
mod helpers;
mod jobs;
mod operations;
mod s3;
mod truth;
mod upgrade;

use helpers::{folder, png, root, spawn, spawn_jobs, spawn_with, spawn_with_root, tar_gz, zip};
use serde_json::{json, Value};
use sqlx::PgPool;

fn count(v: &Value, outcome: &str) -> usize {
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["outcome"] == outcome)
        .count()
}

#[sqlx::test]
async fn uploads_as_multipart_tar_gz_and_zip_count_every_file_and_reject_bad_files(pool: PgPool) {
    let app = spawn_with(pool, &[("GAPMETER_LIMITS__IMAGE_PIXELS", "40000")]).await;
    let (_, key) = app.team("vision").await;
    let ds = app.dataset(&key, "renders").await;
    let a = folder(&root().join("examples/A"));
    let b = folder(&root().join("examples/B"));

    // A folder as plain multipart parts, plus three bad files among them.
    let mut files = a.clone();
    files.push(("corrupt.png".into(), {
        let mut p = png(32, 32, 1);
        p.truncate(p.len() - 40);
        p
    }));
    files.push(("notes.txt".into(), b"not an image".to_vec()));
    files.push(("huge.png".into(), png(300, 300, 2)));
    let resp = app.upload(&key, &ds, files).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["accepted"], 24, "{v:#}");
    assert_eq!(v["rejected"], 3);
    let reason = |name: &str| -> String {
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        reason("corrupt.png").contains("corrupt"),
        "{}",
        reason("corrupt.png")
    );
    assert!(
        reason("notes.txt").contains("not an image"),
        "{}",
        reason("notes.txt")
    );
    assert!(
        reason("huge.png").contains("pixel limit"),
        "{}",
        reason("huge.png")
    );

    // B as a tar.gz, then A and B again in a zip: new members (new paths) whose bytes the
    // dataset already holds, reported as duplicates and counted like any file.
    let v: Value = app
        .upload(&key, &ds, vec![("b.tar.gz".into(), tar_gz(&b))])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(24), Some(0)),
        "{v:#}"
    );
    assert!(v["files"][0]["name"]
        .as_str()
        .unwrap()
        .starts_with("b.tar.gz/imgs/"));
    let both: Vec<_> = a.iter().chain(&b).cloned().collect();
    let v: Value = app
        .upload(&key, &ds, vec![("both.zip".into(), zip(&both))])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (count(&v, "accepted"), count(&v, "duplicate")),
        (0, 48),
        "{v:#}"
    );
    assert_eq!(v["dataset"]["image_count"], 96);

    // The dataset summary, and a content hash equal to `gapmeter score`'s for a folder holding
    // the same files (each content twice).
    let d: Value = app.get_json(&format!("/v1/datasets/{ds}"), &key).await;
    assert_eq!(d["image_count"], 96);
    assert_eq!(d["unique_images"], 48);
    let formats: Vec<(String, i64)> = d["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["format"].as_str().unwrap().to_string(),
                f["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        formats,
        vec![("jpeg".into(), 32), ("png".into(), 32), ("webp".into(), 32)]
    );
    let hashes: Vec<[u8; 32]> = both
        .iter()
        .chain(&both)
        .map(|(_, b)| gapmeter::content::image_hash(b))
        .collect();
    assert_eq!(
        d["content_hash"].as_str().unwrap(),
        gapmeter::content::dataset_hash(hashes)
    );

    // Files page through by path.
    let p1: Value = app
        .get_json(&format!("/v1/datasets/{ds}/images?limit=60"), &key)
        .await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 60);
    let cursor: String =
        url::form_urlencoded::byte_serialize(p1["next_cursor"].as_str().unwrap().as_bytes())
            .collect();
    let p2: Value = app
        .get_json(
            &format!("/v1/datasets/{ds}/images?limit=60&cursor={cursor}"),
            &key,
        )
        .await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 36);
    assert!(p2["next_cursor"].is_null());
}

#[sqlx::test]
async fn deleting_a_dataset_collects_blobs_no_other_dataset_uses(pool: PgPool) {
    let app = spawn(pool).await;
    let (_, key) = app.team("t").await;
    let (one, two) = (
        app.dataset(&key, "one").await,
        app.dataset(&key, "two").await,
    );
    app.upload(
        &key,
        &one,
        vec![
            ("a.png".into(), png(8, 8, 1)),
            ("b.png".into(), png(8, 8, 2)),
        ],
    )
    .await;
    app.upload(&key, &two, vec![("a.png".into(), png(8, 8, 1))])
        .await;
    let blobs = || {
        walkdir::WalkDir::new(app.blobs.path())
            .into_iter()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .contains("/images/")
                    && e.as_ref().unwrap().file_type().is_file()
            })
            .count()
    };
    assert_eq!(blobs(), 2);
    let r = app.delete(&format!("/v1/datasets/{one}"), &key).await;
    assert_eq!(r.status(), 204);
    assert_eq!(blobs(), 1);
    let r = app.delete(&format!("/v1/datasets/{two}"), &key).await;
    assert_eq!(r.status(), 204);
    assert_eq!(blobs(), 0);
    let r = app.get(&format!("/v1/datasets/{two}"), &key).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "/problems/not-found");
    assert_eq!(p["status"], 404);
}

#[sqlx::test]
async fn every_route_needs_a_valid_key_and_hides_other_teams_data(pool: PgPool) {
    let app = spawn(pool).await;
    let (team, key) = app.team("owner").await;
    let (_, other) = app.team("other").await;
    let ds = app.dataset(&key, "private").await;
    // A key, revoked.
    let revoked: Value = app
        .post_json(&format!("/v1/teams/{team}/keys"), &app.admin, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let r = app
        .client
        .delete(app.url(&format!("/v1/keys/{}", revoked["id"].as_str().unwrap())))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let revoked = revoked["token"].as_str().unwrap().to_string();

    // (method, path, id-bearing: another team's key must get 404)
    let routes: Vec<(&str, String, bool)> = vec![
        ("POST", "/v1/datasets".into(), false),
        ("GET", "/v1/datasets".into(), false),
        ("GET", format!("/v1/datasets/{ds}"), true),
        ("GET", format!("/v1/datasets/{ds}/images"), true),
        ("POST", format!("/v1/datasets/{ds}/images"), true),
        (
            "GET",
            format!("/v1/datasets/{ds}/thumbnail?path=x.png"),
            true,
        ),
        ("GET", format!("/v1/datasets/{ds}/statistics"), true),
        ("PUT", format!("/v1/datasets/{ds}/statistics"), true),
        ("DELETE", format!("/v1/datasets/{ds}"), true),
        ("POST", "/v1/teams".into(), false),
        ("POST", format!("/v1/teams/{team}/keys"), false),
        (
            "DELETE",
            format!("/v1/keys/{}", uuid::Uuid::new_v4()),
            false,
        ),
    ];
    let send = |method: &str, path: &str, token: Option<&str>| {
        let url = app.url(path);
        let mut req = match method {
            "GET" => app.client.get(url),
            "DELETE" => app.client.delete(url),
            "PUT" => app.client.put(url).body(b"not looked at".to_vec()),
            _ => app.client.post(url),
        };
        if path.ends_with("/images") && method == "POST" {
            req = req.multipart(reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(png(4, 4, 9)).file_name("x.png"),
            ));
        } else if method == "POST" {
            req = req.json(&json!({ "name": "n" }));
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for (method, path, id_bearing) in &routes {
        for token in [
            None,
            Some(revoked.as_str()),
            Some("gm_nonexistent_secret"),
            Some("garbage"),
        ] {
            let r = send(method, path, token).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
        if *id_bearing {
            let r = send(method, path, Some(&other)).await.unwrap();
            assert_eq!(r.status(), 404, "{method} {path} with another team's key");
        }
    }
    // Team keys are not admin keys.
    let r = send("POST", "/v1/teams", Some(&key)).await.unwrap();
    assert_eq!(r.status(), 403);
    // The owner still sees the dataset: nothing above touched it.
    let r = send("GET", &format!("/v1/datasets/{ds}"), Some(&key))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[sqlx::test]
async fn health_readiness_metrics_and_request_ids(pool: PgPool) {
    let app = spawn(pool).await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let r: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ready", "{r}");
    let (_, key) = app.team("m").await;
    let ds = app.dataset(&key, "d").await;
    app.upload(
        &key,
        &ds,
        vec![
            ("a.png".into(), png(8, 8, 3)),
            ("x.txt".into(), b"x".to_vec()),
        ],
    )
    .await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("gapmeter_http_requests_total{method=\"POST\",route=\"/v1/datasets/{id}/images\",status=\"200\"} 1"), "{text}");
    assert!(
        text.contains("gapmeter_upload_files_total{outcome=\"accepted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gapmeter_upload_files_total{outcome=\"rejected\"} 1"),
        "{text}"
    );
    assert!(text.contains("gapmeter_http_request_duration_seconds_bucket"));
}

#[sqlx::test]
async fn file_uris_only_under_allowed_roots_and_never_through_symlinks(pool: PgPool) {
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(allowed.path().join("a.png"), png(8, 8, 1)).unwrap();
    std::fs::write(outside.path().join("secret.png"), png(8, 8, 2)).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.png"),
        allowed.path().join("link.png"),
    )
    .unwrap();
    let app = spawn_with_root(pool, allowed.path(), true).await;
    let (_, key) = app.team("t").await;

    let (status, v, job) = app
        .ingest(
            &key,
            "from-uri",
            &format!("file://{}", allowed.path().display()),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(v["image_count"], 1, "{v:#}");
    assert_eq!(v["status"], "ready");
    let job = job.unwrap();
    let link = job["result"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "link.png")
        .unwrap()
        .clone();
    assert_eq!(link["outcome"], "rejected");

    // Refused before anything is created: outside the roots (also by `..`), loopback HTTP (no
    // reaching the instance's own network), object stores unless configured (their SDKs would
    // probe instance metadata).
    for uri in [
        format!("file://{}", outside.path().display()),
        format!(
            "file://{}/../{}",
            allowed.path().display(),
            outside.path().file_name().unwrap().to_string_lossy()
        ),
        "http://127.0.0.1:9/x.png".into(),
        "s3://bucket/prefix".into(),
    ] {
        let (status, p, _) = app.ingest(&key, "refused", &uri).await;
        assert_eq!(status, 403, "{uri}: {p}");
    }
    // A symlink under the roots that points out is only found where the files are read: the job
    // refuses it, and the dataset says why.
    let (status, v, job) = app
        .ingest(
            &key,
            "through-link",
            &format!("file://{}/link.png", allowed.path().display()),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(job.unwrap()["status"], "failed");
    assert_eq!(v["status"], "failed");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("outside the allowed roots"),
        "{v}"
    );
    for bad in ["ftp://example/x", "file:///tmp/\u{0}x", ""] {
        let (status, _, _) = app.ingest(&key, "bad", bad).await;
        assert_eq!(status, 422, "{bad:?}");
    }
    let list: Value = app.get_json("/v1/datasets", &key).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

#[sqlx::test]
async fn archive_limits_stop_bombs(pool: PgPool) {
    let app = spawn_with(
        pool,
        &[
            ("GAPMETER_LIMITS__ARCHIVE_ENTRIES", "5"),
            ("GAPMETER_LIMITS__FILES_PER_REQUEST", "100"),
        ],
    )
    .await;
    let (_, key) = app.team("t").await;
    let ds = app.dataset(&key, "d").await;
    let many: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("{i}.png"), png(6, 6, i as u8)))
        .collect();
    let v: Value = app
        .upload(&key, &ds, vec![("many.zip".into(), zip(&many))])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["accepted"], 5, "{v:#}");
    let last = v["files"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("more than 5 members"),
        "{last}"
    );
}

#[test]
fn committed_openapi_spec_is_current() {
    let committed =
        std::fs::read_to_string(root().join("openapi/openapi.json")).unwrap_or_default();
    let current = gapmeter::api::openapi_json();
    assert!(
        committed.trim() == current.trim(),
        "openapi/openapi.json is stale: run `gapmeter openapi > openapi/openapi.json`"
    );
}

#[sqlx::test]
async fn http_uris_fetch_an_image_or_an_archive(pool: PgPool) {
    // A tiny file server on loopback; the instance is told loopback is fine for this test only.
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("{i}.png"), png(5, 5, 40 + i as u8)))
        .collect();
    let archive = tar_gz(&files);
    let single = png(7, 7, 99);
    let server = axum::Router::new()
        .route(
            "/set.tar.gz",
            axum::routing::get(move || async move { archive.clone() }),
        )
        .route(
            "/one.png",
            axum::routing::get(move || async move { single.clone() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, server).await.unwrap() });

    let app = spawn_jobs(
        pool,
        &[("GAPMETER_INGEST__ALLOW_PRIVATE_ADDRESSES", "true")],
        true,
    )
    .await;
    let (_, key) = app.team("t").await;
    for (path, count) in [("set.tar.gz", 3), ("one.png", 1)] {
        let (status, v, _) = app
            .ingest(&key, path, &format!("http://127.0.0.1:{port}/{path}"))
            .await;
        assert_eq!(status, 202);
        assert_eq!(v["status"], "ready", "{v:#}");
        assert_eq!(v["image_count"], count, "{v:#}");
    }
    // A source that answers 404: retried, then the dataset is `failed` with the reason.
    let (status, v, job) = app
        .ingest(
            &key,
            "missing",
            &format!("http://127.0.0.1:{port}/nope.png"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(job.unwrap()["status"], "dead");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["image_count"], 0);
    assert!(v["error"].as_str().unwrap().contains("404"), "{v}");
}

/// A file server on the IPv6 loopback that counts the requests it answers.
async fn ipv6_loopback_server(
    body: Vec<u8>,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let server = axum::Router::new().route(
        "/x.png",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("binding [::1]:0 (this test needs IPv6 on the loopback interface)");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, server).await.unwrap() });
    (port, hits)
}

#[sqlx::test]
async fn ipv6_loopback_uri_is_forbidden_at_request_time(pool: PgPool) {
    // The address is reachable (a server listens there), so a 403 means it was refused, not that
    // it failed to connect; and the server sees no request.
    let (port, hits) = ipv6_loopback_server(png(7, 7, 3)).await;
    let app = spawn(pool).await;
    let (_, key) = app.team("t").await;
    for host in [
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:0:0:1]",
        "[fe80::1]",
        "[fd12:3456::1]",
    ] {
        let uri = format!("http://{host}:{port}/x.png");
        let r = app
            .post_json("/v1/datasets", &key, &json!({ "name": "v6", "uri": uri }))
            .await;
        assert_eq!(r.status(), 403, "{uri}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{uri}"
        );
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["type"], "/problems/forbidden", "{uri}: {p:#}");
        assert!(
            !p["detail"].as_str().unwrap().contains("cannot resolve"),
            "{uri}: {p:#}"
        );
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let list: Value = app.get_json("/v1/datasets", &key).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list:#}");
}

#[sqlx::test]
async fn ipv6_loopback_uri_is_fetched_when_private_addresses_are_allowed(pool: PgPool) {
    let (port, hits) = ipv6_loopback_server(png(7, 7, 4)).await;
    let app = spawn_jobs(
        pool,
        &[("GAPMETER_INGEST__ALLOW_PRIVATE_ADDRESSES", "true")],
        true,
    )
    .await;
    let (_, key) = app.team("t").await;
    let (status, v, _) = app
        .ingest(&key, "v6", &format!("http://[::1]:{port}/x.png"))
        .await;
    assert_eq!(status, 202);
    assert_eq!(v["status"], "ready", "{v:#}");
    assert_eq!(v["image_count"], 1, "{v:#}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[sqlx::test]
async fn thumbnails_are_small_jpegs_of_a_teams_own_files(pool: PgPool) {
    let app = spawn(pool).await;
    let (_, key) = app.team("owner").await;
    let (_, other) = app.team("other").await;
    let ds = app.dataset(&key, "d").await;
    let wide = {
        let img = image::RgbImage::from_fn(300, 120, |x, y| image::Rgb([x as u8, y as u8, 90]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let r = app
        .upload(
            &key,
            &ds,
            vec![
                ("dir/wide image.png".into(), wide),
                ("tiny.png".into(), png(20, 10, 7)),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    let path = |p: &str, size: &str| {
        let p: String = url::form_urlencoded::byte_serialize(p.as_bytes()).collect();
        format!("/v1/datasets/{ds}/thumbnail?path={p}{size}")
    };
    let r = app.get(&path("dir/wide image.png", "&size=60"), &key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert!(r.headers().contains_key("etag"));
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (60, 24));
    // Never scaled up; 128 by default.
    let r = app.get(&path("tiny.png", ""), &key).await;
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (20, 10));
    // Another team, a path the dataset does not hold, a size out of range.
    assert_eq!(app.get(&path("tiny.png", ""), &other).await.status(), 404);
    assert_eq!(app.get(&path("missing.png", ""), &key).await.status(), 404);
    assert_eq!(
        app.get(&path("tiny.png", "&size=0"), &key).await.status(),
        422
    );
    assert_eq!(
        app.get(&format!("/v1/datasets/{ds}/thumbnail"), &key)
            .await
            .status(),
        422
    );
}
