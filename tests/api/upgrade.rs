//! Upgrades: a database the previous release populated migrates to the current schema with
//! nothing lost, and what it cached still answers.
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::helpers::{root, spawn_jobs};
use super::jobs::{dataset_from, pngs, submit, wait_for};

/// The newest migration of the previous release: its schema is what an upgrade starts from.
/// Move it forward when a release ships.
const PREVIOUS_RELEASE: i64 = 20261201000001;

/// Every table, parents before children.
const TABLES: &[&str] = &[
    "teams",
    "api_keys",
    "datasets",
    "images",
    "dataset_images",
    "dataset_statistics",
    "jobs",
    "job_team_turns",
    "job_events",
    "feature_cache",
    "stats_cache",
    "stats_checkpoints",
    "result_cache",
];

/// The previous release's migrations, as files of their own.
fn previous_migrations() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root().join("migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version <= PREVIOUS_RELEASE {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

async fn exists(pool: &PgPool, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_database_of_the_previous_release_upgrades_with_nothing_lost(old: PgPool) {
    // Real work, done by the service in a database of its own: the rows to carry over.
    let source = format!("gapmeter_upgrade_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {source}"))
        .execute(&old)
        .await
        .unwrap();
    let src = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(old.connect_options().as_ref().clone().database(&source))
        .await
        .unwrap();
    let app = spawn_jobs(src.clone(), &[], true).await;
    let (_, key) = app.team("lab").await;
    let a = dataset_from(&app, &key, "a", pngs("a", 12, 1)).await;
    let b = dataset_from(&app, &key, "b", pngs("b", 12, 60)).await;
    let body =
        json!({"source": a, "target": b, "extractor": "tiny-cnn", "metrics": ["fid", "kid"]});
    let job = submit(&app, &key, &body).await;
    let job_id = job["id"].as_str().unwrap().to_string();
    let done = wait_for(&app, &key, &job_id, "done", |j| j["status"] == "succeeded").await;
    let mut rows = Vec::new();
    for table in TABLES {
        let data: Value = sqlx::query_scalar(&format!(
            "SELECT coalesce(json_agg(t), '[]'::json) FROM {table} t"
        ))
        .fetch_one(&src)
        .await
        .unwrap();
        rows.push((*table, data));
    }
    let counts: Vec<usize> = rows
        .iter()
        .map(|(_, r)| r.as_array().unwrap().len())
        .collect();
    assert!(
        counts.iter().filter(|n| **n > 0).count() >= 10,
        "{counts:?}"
    );

    // The previous release's schema, holding those rows as it stored them: columns it did not
    // have are dropped (jsonb_populate_recordset reads only the table's own columns).
    let migrations = previous_migrations();
    sqlx::migrate::Migrator::new(migrations.path())
        .await
        .unwrap()
        .run(&old)
        .await
        .unwrap();
    assert!(!exists(&old, "team_quotas").await, "the previous schema");
    for (table, data) in &rows {
        sqlx::query(&format!(
            "INSERT INTO {table} OVERRIDING SYSTEM VALUE
             SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)"
        ))
        .bind(data)
        .execute(&old)
        .await
        .unwrap();
    }
    // Generated numbers continue after the copied ones, as they would have in place.
    sqlx::query("SELECT setval(pg_get_serial_sequence('job_events', 'seq'), (SELECT max(seq) FROM job_events))")
        .execute(&old)
        .await
        .unwrap();
    let next: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) + 1 FROM dataset_images")
        .fetch_one(&old)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER TABLE dataset_images ALTER COLUMN position RESTART WITH {next}"
    ))
    .execute(&old)
    .await
    .unwrap();

    // The upgrade: the current binary's migrations, as every process applies them at start.
    gapmeter::store::migrate(&old).await.unwrap();
    assert!(exists(&old, "team_quotas").await);
    for (table, data) in &rows {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&old)
            .await
            .unwrap();
        assert_eq!(n as usize, data.as_array().unwrap().len(), "{table}");
    }
    let unrecorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM result_cache WHERE content_hashes IS NULL")
            .fetch_one(&old)
            .await
            .unwrap();
    assert_eq!(unrecorded, 1, "old results have no recorded contents");

    // The upgraded database serves all of it, with the same key and the same blobs.
    let blob_url = app.blob_url();
    let up = spawn_jobs(
        old.clone(),
        &[("GAPMETER_STORAGE__URL", blob_url.as_str())],
        true,
    )
    .await;
    for ds in [&a, &b] {
        let before = app.get_json(&format!("/v1/datasets/{ds}"), &key).await;
        let after = up.get_json(&format!("/v1/datasets/{ds}"), &key).await;
        assert_eq!(after, before);
    }
    let job = up.get_json(&format!("/v1/jobs/{job_id}"), &key).await;
    assert_eq!(job["result"], done["result"]);
    // The cached result answers the same request at once.
    let again = submit(&up, &key, &body).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["work"]["result_cache_hit"], true);
    assert_eq!(again["result"], done["result"]);
    // Cached statistics and features answer new requests without the model.
    let fid = up
        .get(
            &format!("/v1/datasets/{a}/statistics?extractor=tiny-cnn"),
            &key,
        )
        .await;
    assert_eq!(fid.status(), 200);
    let reversed = submit(
        &up,
        &key,
        &json!({"source": b, "target": a, "extractor": "tiny-cnn", "metrics": ["kid"]}),
    )
    .await;
    let reversed = wait_for(&up, &key, reversed["id"].as_str().unwrap(), "kid", |j| {
        j["status"] == "succeeded"
    })
    .await;
    assert_eq!(reversed["work"]["images_extracted"], 0, "{reversed}");
    assert_eq!(reversed["work"]["feature_cache_hits"], 24);
    // Retention keeps an old result while its datasets exist, contents unrecorded or not.
    sqlx::query("UPDATE result_cache SET created_at = now() - interval '30 days'")
        .execute(&old)
        .await
        .unwrap();
    let blobs = gapmeter::store::Blobs::open(&blob_url).unwrap();
    let policy = gapmeter::store::RetentionPolicy {
        finished_job_days: 30,
        unreferenced_cache_days: 7,
        feature_cache_bytes: 0,
        orphan_blob_grace: None,
    };
    let report = gapmeter::store::sweep(&old, &blobs, &policy)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.results, 0, "{report:?}");
    // New files land after the old ones, and only they are extracted.
    let resp = up.upload(&key, &a, pngs("new", 3, 200)).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let grown = submit(&up, &key, &body).await;
    let grown = wait_for(&up, &key, grown["id"].as_str().unwrap(), "grown", |j| {
        j["status"] == "succeeded"
    })
    .await;
    assert_eq!(grown["work"]["images_extracted"], 3, "{grown}");
    assert_eq!(grown["result"]["source"]["count"], 15);

    src.close().await;
    sqlx::query(&format!("DROP DATABASE {source} WITH (FORCE)"))
        .execute(&old)
        .await
        .unwrap();
}
