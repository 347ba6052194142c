//! The web dashboard at `/`: its assets, and a real browser (Debian's headless Chromium, driven
//! by playwright-core; tests/browser/run.sh installs both when missing) using it against this
//! service.
use sqlx::PgPool;

use super::helpers::{root, run_script, spawn, spawn_jobs};

#[sqlx::test]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_policy(pool: PgPool) {
    let app = spawn(pool).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        // Nothing remote: the only URL in the assets is the SVG namespace.
        let text = r
            .text()
            .await
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path} names a remote URL"
        );
    }
}

/// Signs in, uploads examples/A and examples/B through the file picker, runs a score job and a
/// matrix job from the forms, and checks the metric table, the style gap, the gallery's
/// thumbnails and the heatmap's cells against the API. Screenshots: target/browser-screenshots.
#[sqlx::test]
async fn a_browser_uploads_scores_and_reads_the_results(pool: PgPool) {
    let app = spawn_jobs(pool, &[], true).await;
    let (_, key) = app.team("browser").await;
    let shots = root().join("target/browser-screenshots");
    let shots_dir = shots.to_string_lossy().into_owned();
    let (ok, text) = run_script(
        &root().join("tests/browser/run.sh"),
        &[
            ("GAPMETER_URL", &app.base),
            ("GAPMETER_KEY", &key),
            ("SCREENSHOTS", &shots_dir),
        ],
    )
    .await;
    assert!(ok, "the browser test failed:\n{text}");
    assert!(text.contains("dashboard: ok"), "{text}");
    for shot in ["1-datasets.png", "2-score.png", "3-matrix.png"] {
        assert!(shots.join(shot).is_file(), "{shot}");
    }
}
