//! `gapmeter client` against a running service: the README walkthrough without curl.
use serde_json::Value;
use sqlx::PgPool;

use super::helpers::{gapmeter_cli, root, run_script, spawn_jobs, TestApp};

/// Runs `gapmeter client ...` without blocking the test's runtime (the service runs on it).
async fn client(app: &TestApp, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gapmeter"))
        .arg("client")
        .args(["--url", &app.base, "--key", key])
        .args(args)
        .current_dir(root())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn cli(args: &[&str]) -> String {
    gapmeter_cli(&root(), args)
}

#[sqlx::test]
async fn the_client_uploads_folders_scores_and_prints_what_the_cli_prints(pool: PgPool) {
    let app = spawn_jobs(pool, &[], true).await;
    let (_, key) = app.team("lab").await;
    for (name, dir) in [("A", "examples/A"), ("B", "examples/B")] {
        let (ok, out, err) = client(&app, &key, &["upload", name, dir]).await;
        assert!(ok, "{err}");
        assert!(uuid::Uuid::parse_str(out.trim()).is_ok(), "{out}");
        assert!(err.contains("24 accepted"), "{err}");
    }
    let (ok, out, _) = client(&app, &key, &["datasets"]).await;
    assert!(ok && out.contains(" A ") && out.contains(" B "), "{out}");

    // JSON: the same document as `gapmeter score --format json` on the folders.
    let (ok, out, err) = client(
        &app,
        &key,
        &[
            "score",
            "A",
            "B",
            "-x",
            "tiny-cnn",
            "--metrics",
            "fid,kid",
            "--format",
            "json",
            "--no-progress",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let remote: Value = serde_json::from_str(&out).unwrap();
    let local: Value = serde_json::from_str(&cli(&[
        "score",
        "examples/A",
        "examples/B",
        "-x",
        "tiny-cnn",
        "--metrics",
        "fid,kid",
        "--format",
        "json",
        "--no-progress",
    ]))
    .unwrap();
    assert_eq!(remote["metrics"], local["metrics"]);
    assert_eq!(remote["warnings"], local["warnings"]);
    assert_eq!(
        remote["source"]["content_hash"],
        local["source"]["content_hash"]
    );

    // Table: the same table below the provenance lines (which name datasets, not folders).
    let (ok, table, err) = client(
        &app,
        &key,
        &["score", "A", "B", "-x", "tiny-cnn", "--metrics", "fid,kid"],
    )
    .await;
    assert!(ok, "{err}");
    let local = cli(&[
        "score",
        "examples/A",
        "examples/B",
        "-x",
        "tiny-cnn",
        "--metrics",
        "fid,kid",
        "--no-progress",
    ]);
    let tail = |t: &str| t[t.find("\nmetric").unwrap()..].to_string();
    assert_eq!(tail(&table), tail(&local));

    let (ok, out, err) = client(
        &app,
        &key,
        &[
            "matrix",
            "A",
            "B",
            "-x",
            "tiny-cnn",
            "--metrics",
            "fid",
            "--no-progress",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("[2]"), "{out}");
    let (ok, out, _) = client(&app, &key, &["jobs", "--status", "succeeded"]).await;
    assert!(ok);
    assert_eq!(
        out.lines().filter(|l| l.contains("succeeded")).count(),
        3,
        "{out}"
    );

    // Errors are messages and a failing exit status.
    let (ok, _, err) = client(&app, &key, &["score", "A", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("no dataset named \"nope\""), "{err}");
    let (ok, _, err) = client(&app, "gm_bad_key", &["datasets"]).await;
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
    let (ok, _, err) = client(
        &app,
        &key,
        &[
            "score",
            "A",
            "B",
            "-x",
            "tiny-cnn",
            "--metrics",
            "kid",
            "--parameters",
            "{\"kid\": {\"subsets\": 0}}",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("subsets"), "{err}");
}

/// The Python client (`clients/python`, installed with pip into a cached venv by its test.sh)
/// passes its pytest suite against this service: upload, score by name, matrix to a DataFrame,
/// statistics, errors as problems, and the request fields of openapi/openapi.json.
#[sqlx::test]
async fn the_python_client_passes_its_tests_against_a_live_server(pool: PgPool) {
    let app = spawn_jobs(pool, &[], true).await;
    let (team, key) = app.team("notebook").await;
    // The team's own dataset limit, which test_quotas fills (and empties again).
    let resp = app
        .client
        .put(app.url(&format!("/v1/teams/{team}/quotas")))
        .bearer_auth(&app.admin)
        .json(&serde_json::json!({"datasets": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (ok, text) = run_script(
        &root().join("clients/python/test.sh"),
        &[("GAPMETER_URL", &app.base), ("GAPMETER_KEY", &key)],
    )
    .await;
    assert!(ok, "pytest failed:\n{text}");
    assert!(text.contains(" passed"), "{text}");
    assert!(!text.contains("skipped"), "{text}");
}
