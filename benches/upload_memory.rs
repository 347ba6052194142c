//! Streams a ~500 MB multipart upload (a tar of 500 distinct 1 MB BMP images, generated on the
//! fly so the client holds almost nothing) into a server running in this process, and prints the
//! peak resident memory before and after. Not a test: run with `make bench-upload`.
//!
//! Needs PostgreSQL (DATABASE_URL, default the local server); uses a throwaway database.
use std::time::Instant;

use futures_util::stream;
use gapmeter::app::Application;
use gapmeter::config::Config;
use sqlx::Connection;

const IMAGES: usize = 500;
const SIDE: u32 = 591; // 591×591×3 + headers ≈ 1 MB per BMP

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

fn bmp(seed: usize) -> Vec<u8> {
    let img = image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
        image::Rgb([(x as usize ^ seed) as u8, y as u8, (seed % 251) as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Bmp)
        .expect("encode bmp");
    out
}

/// One tar member (header + data + padding), built when the stream asks for it.
fn tar_member(i: usize) -> Vec<u8> {
    let data = bmp(i);
    let mut header = tar::Header::new_ustar();
    header.set_path(format!("img{i:04}.bmp")).expect("path");
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = format!("gapmeter_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await?;
    let mut url = url::Url::parse(&base)?;
    url.set_path(&db);

    let blobs = tempfile::tempdir()?;
    let storage = format!("file://{}", blobs.path().display());
    let config = Config::from_overrides([
        ("GAPMETER_SERVER__BIND", "127.0.0.1:0"),
        ("GAPMETER_STORAGE__URL", storage.as_str()),
        ("GAPMETER_AUTH__ADMIN_KEY", "bench-admin"),
        ("DATABASE_URL", url.as_str()),
    ])?;
    let app = Application::build(config, std::path::PathBuf::from("/nonexistent")).await?;
    let port = app.port();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let api = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let team: serde_json::Value = client
        .post(api("/v1/teams"))
        .bearer_auth("bench-admin")
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let key: serde_json::Value = client
        .post(api(&format!(
            "/v1/teams/{}/keys",
            team["id"].as_str().unwrap_or_default()
        )))
        .bearer_auth("bench-admin")
        .json(&serde_json::json!({}))
        .send()
        .await?
        .json()
        .await?;
    let key = key["token"].as_str().unwrap_or_default().to_string();
    let ds: serde_json::Value = client
        .post(api("/v1/datasets"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "big"}))
        .send()
        .await?
        .json()
        .await?;

    let before = peak_rss_mb();
    let total: u64 = (0..IMAGES).map(|i| tar_member(i).len() as u64).sum::<u64>() + 1024;
    let body = stream::iter((0..=IMAGES).map(|i| {
        let chunk = if i < IMAGES {
            tar_member(i)
        } else {
            vec![0u8; 1024]
        };
        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk))
    }));
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(body), total)
            .file_name("big.tar");
    let form = reqwest::multipart::Form::new().part("file", part);
    let t = Instant::now();
    let resp: serde_json::Value = client
        .post(api(&format!(
            "/v1/datasets/{}/images",
            ds["id"].as_str().unwrap_or_default()
        )))
        .bearer_auth(&key)
        .multipart(form)
        .send()
        .await?
        .json()
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let after = peak_rss_mb();
    println!(
        "upload of {:.0} MB ({} images in one tar part): {:.1} s, {:.0} MB/s; accepted {}, rejected {}",
        total as f64 / 1e6,
        IMAGES,
        secs,
        total as f64 / 1e6 / secs,
        resp["accepted"],
        resp["rejected"]
    );
    println!("peak RSS of the process: {before:.0} MB before the upload, {after:.0} MB after (growth {:.0} MB)", after - before);

    drop(client);
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}
