//! `gapmeter client`: the service from the command line — upload a folder as a dataset, start a
//! score or a gap matrix, follow it with a progress bar (SSE) and print the result exactly as
//! `gapmeter score` / `gapmeter matrix` would.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::score::Format;
use crate::ingest::list_images;
use crate::score::{MatrixReport, MetricName, Report};

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the service.
    #[arg(long, env = "GAPMETER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (`gm_...`).
    #[arg(long, env = "GAPMETER_KEY", hide_env_values = true)]
    pub key: String,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Upload every image under FOLDER (recursively) as a new dataset, or into --dataset.
    Upload {
        /// Name of the new dataset.
        name: String,
        folder: PathBuf,
        /// Add to this existing dataset (id or name) instead of creating one.
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// The team's datasets.
    Datasets {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Score SOURCE against TARGET (dataset ids or names) as a job, and wait for it.
    Score {
        source: String,
        target: String,
        #[command(flatten)]
        job: JobArgs,
        /// List the K most out-of-domain source images.
        #[arg(long)]
        top: Option<usize>,
        /// Percentile bootstrap intervals from this many resamples.
        #[arg(long)]
        bootstrap: Option<usize>,
        /// FID∞ / KID∞ from this many sample sizes.
        #[arg(long)]
        infinity_points: Option<usize>,
    },
    /// Pairwise gap table of two or more datasets as a job, and wait for it.
    Matrix {
        #[arg(required = true, num_args = 2..)]
        datasets: Vec<String>,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Show a job (and wait for it with --wait).
    Job {
        id: String,
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// The team's jobs, newest first.
    Jobs {
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled, dead).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a job.
    Cancel { id: String },
    /// Download a dataset's FID statistics as an .npz (`mu`, `sigma`: pytorch-fid / clean-fid
    /// format). They exist once a job with FID has read the whole dataset with that extractor.
    Stats {
        /// Dataset id or name.
        dataset: String,
        /// Extractor id [default: the service's default].
        #[arg(long, short = 'x')]
        extractor: Option<String>,
        /// The .npz to write.
        #[arg(long, short = 'o')]
        output: std::path::PathBuf,
    },
    /// Register reference statistics (an .npz with mu and sigma, e.g. a benchmark's published
    /// file) as a new statistics dataset: a FID source or target for jobs with that extractor.
    RegisterStats {
        /// Name of the new dataset.
        name: String,
        /// The .npz (pytorch-fid / clean-fid format).
        file: std::path::PathBuf,
        /// The extractor the statistics were computed with.
        #[arg(long, short = 'x')]
        extractor: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

/// Options of a submitted job.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Extractor id (see `GET /v1/extractors`) [default: the service's default].
    #[arg(long, short = 'x')]
    pub extractor: Option<String>,
    /// Metrics, comma-separated [default: fid,kid].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub metrics: Option<Vec<MetricName>>,
    /// Seed of every random draw.
    #[arg(long)]
    pub seed: Option<u32>,
    /// Metric parameters as JSON, e.g. '{"kid": {"subsets": 50}}' (merged over --seed).
    #[arg(long)]
    pub parameters: Option<String>,
    /// Makes a retried submission return the same job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Print the job and return without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// Files per upload request (the service's default limit is far higher; smaller requests fail
/// and retry cheaper).
const FILES_PER_REQUEST: usize = 256;
const BYTES_PER_REQUEST: u64 = 512 << 20;

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the service at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("{status}: {detail}")
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .send(self.http.get(self.url(path)))
            .await?
            .json()
            .await?)
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        let mut req = self.http.post(self.url(path)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Ok(self.send(req).await?.json().await?)
    }

    /// A dataset id from an id or a unique name.
    async fn dataset_id(&self, arg: &str) -> anyhow::Result<String> {
        if uuid::Uuid::parse_str(arg).is_ok() {
            return Ok(arg.to_string());
        }
        let mut matches = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/datasets?limit=500&cursor={c}"),
                None => "/v1/datasets?limit=500".to_string(),
            };
            let page = self.get(&path).await?;
            for d in page["items"].as_array().into_iter().flatten() {
                if d["name"] == arg {
                    matches.push(d["id"].as_str().unwrap_or_default().to_string());
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => bail!("no dataset named {arg:?} (ids and names are accepted)"),
            n => bail!("{n} datasets are named {arg:?}: use an id"),
        }
    }
}

pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let client = Client {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?,
        base: args.url,
        key: args.key,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.command {
            ClientCommand::Upload {
                name,
                folder,
                dataset,
                format,
            } => upload(&client, &name, &folder, dataset.as_deref(), format).await,
            ClientCommand::Datasets { format } => datasets(&client, format).await,
            ClientCommand::Stats {
                dataset,
                extractor,
                output,
            } => statistics(&client, &dataset, extractor.as_deref(), &output).await,
            ClientCommand::RegisterStats {
                name,
                file,
                extractor,
                format,
            } => register_statistics(&client, &name, &file, &extractor, format).await,
            ClientCommand::Score {
                source,
                target,
                job,
                top,
                bootstrap,
                infinity_points,
            } => {
                let mut body = job_body(&job)?;
                body["source"] = json!(client.dataset_id(&source).await?);
                body["target"] = json!(client.dataset_id(&target).await?);
                if let Some(k) = top {
                    body["top_k"] = json!(k);
                }
                if let Some(r) = bootstrap {
                    body["bootstrap"] = json!({"resamples": r});
                }
                if let Some(p) = infinity_points {
                    body["infinity_points"] = json!(p);
                }
                submit(&client, "/v1/jobs", &body, &job).await
            }
            ClientCommand::Matrix { datasets, job } => {
                let mut body = job_body(&job)?;
                let mut ids = Vec::new();
                for d in &datasets {
                    ids.push(client.dataset_id(d).await?);
                }
                body["datasets"] = json!(ids);
                submit(&client, "/v1/matrix", &body, &job).await
            }
            ClientCommand::Job { id, wait, format } => {
                let job = if wait {
                    follow(&client, &id, true).await?
                } else {
                    client.get(&format!("/v1/jobs/{id}")).await?
                };
                print_job(&job, format)
            }
            ClientCommand::Jobs { status, limit } => {
                let mut path = format!("/v1/jobs?limit={}", limit.clamp(1, 500));
                if let Some(s) = status {
                    path.push_str(&format!("&status={s}"));
                }
                let page = client.get(&path).await?;
                println!(
                    "{:<38} {:<7} {:<10} {:>9}  created",
                    "id", "kind", "status", "progress"
                );
                for j in page["items"].as_array().into_iter().flatten() {
                    println!(
                        "{:<38} {:<7} {:<10} {:>9}  {}",
                        j["id"].as_str().unwrap_or(""),
                        j["kind"].as_str().unwrap_or(""),
                        j["status"].as_str().unwrap_or(""),
                        format!("{}/{}", j["progress"]["done"], j["progress"]["total"]),
                        j["created_at"].as_str().unwrap_or("")
                    );
                }
                Ok(())
            }
            ClientCommand::Cancel { id } => {
                let job = client
                    .send(client.http.delete(client.url(&format!("/v1/jobs/{id}"))))
                    .await?
                    .json::<Value>()
                    .await?;
                eprintln!(
                    "job {id}: {}{}",
                    job["status"].as_str().unwrap_or("?"),
                    if job["cancel_requested"] == true && job["status"] == "running" {
                        " (stops at its next batch)"
                    } else {
                        ""
                    }
                );
                Ok(())
            }
        }
    })
}

fn job_body(job: &JobArgs) -> anyhow::Result<Value> {
    let mut body = json!({});
    if let Some(x) = &job.extractor {
        body["extractor"] = json!(x);
    }
    if let Some(m) = &job.metrics {
        body["metrics"] = json!(m);
    }
    let mut params = match &job.parameters {
        Some(p) => {
            serde_json::from_str::<Value>(p).context("--parameters must be a JSON object")?
        }
        None => json!({}),
    };
    if !params.is_object() {
        bail!("--parameters must be a JSON object");
    }
    if let Some(seed) = job.seed {
        params["seed"] = json!(seed);
    }
    body["parameters"] = params;
    Ok(body)
}

async fn submit(client: &Client, path: &str, body: &Value, job: &JobArgs) -> anyhow::Result<()> {
    let headers: Vec<(&str, &str)> = job
        .idempotency_key
        .as_deref()
        .map(|k| ("Idempotency-Key", k))
        .into_iter()
        .collect();
    let created = client.post(path, body, &headers).await?;
    let id = created["id"]
        .as_str()
        .context("no job id in the response")?;
    if job.no_wait {
        println!("{}", serde_json::to_string_pretty(&created)?);
        return Ok(());
    }
    eprintln!("job {id} {}", created["status"].as_str().unwrap_or(""));
    let done = follow(client, id, !job.no_progress).await?;
    print_job(&done, job.format)
}

async fn register_statistics(
    client: &Client,
    name: &str,
    file: &Path,
    extractor: &str,
    format: Format,
) -> anyhow::Result<()> {
    // Checked here first, so a wrong file does not leave an empty dataset behind.
    crate::score::read_statistics(file)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let ds = client
        .post("/v1/datasets", &json!({ "name": name }), &[])
        .await?;
    let id = ds["id"]
        .as_str()
        .context("the service returned no dataset id")?;
    let req = client
        .http
        .put(client.url(&format!("/v1/datasets/{id}/statistics")))
        .query(&[("extractor", extractor)])
        .header("content-type", "application/octet-stream")
        .body(bytes);
    let registered: Value = match client.send(req).await {
        Ok(resp) => resp.json().await?,
        Err(e) => {
            // Nothing half made: the empty dataset goes again.
            let _ = client
                .send(
                    client
                        .http
                        .delete(client.url(&format!("/v1/datasets/{id}"))),
                )
                .await;
            return Err(e);
        }
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&registered)?),
        Format::Table => println!(
            "{}  {}  statistics for {}",
            registered["id"].as_str().unwrap_or_default(),
            name,
            registered["statistics"]
        ),
    }
    Ok(())
}

async fn statistics(
    client: &Client,
    dataset: &str,
    extractor: Option<&str>,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    let id = client.dataset_id(dataset).await?;
    let mut req = client
        .http
        .get(client.url(&format!("/v1/datasets/{id}/statistics")));
    if let Some(x) = extractor {
        req = req.query(&[("extractor", x)]);
    }
    let resp = client.send(req).await?;
    let samples = resp
        .headers()
        .get("gapmeter-samples")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let bytes = resp.bytes().await.context("reading the statistics")?;
    // Checked before writing: the file must be one `gapmeter score` and numpy can read.
    let tmp = output.with_extension("npz.part");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = crate::score::read_statistics(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context("the service sent statistics that do not read back"));
    }
    std::fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "{dataset}: statistics of {samples} images -> {}",
        output.display()
    );
    Ok(())
}

/// Follows the job's event stream to its end (reconnecting with `Last-Event-ID` if the stream
/// drops), drawing progress on stderr; returns the finished job.
async fn follow(client: &Client, id: &str, progress: bool) -> anyhow::Result<Value> {
    let bar = if progress {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let mut req = client
            .http
            .get(client.url(&format!("/v1/jobs/{id}/events")));
        if let Some(l) = &last_id {
            req = req.header("Last-Event-ID", l.as_str());
        }
        let resp = match client.send(req).await {
            Ok(r) => r,
            Err(e) if failures < 5 => {
                failures += 1;
                tracing::warn!(error = %e, "event stream failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut events = std::pin::pin!(job_events(resp.bytes_stream()));
        while let Some(event) = events.next().await {
            if let Some(seq) = event.id {
                last_id = Some(seq);
            }
            let Some(value) = event.data else { continue };
            match event.kind.as_str() {
                "end" => {
                    bar.finish_and_clear();
                    return Ok(value);
                }
                "progress" => {
                    let p = &value["data"];
                    bar.set_message(p["phase"].as_str().unwrap_or("").to_string());
                    bar.set_length(p["total"].as_u64().unwrap_or(0));
                    bar.set_position(p["done"].as_u64().unwrap_or(0));
                }
                "retry" | "lease_expired" => {
                    bar.println(format!("job {id}: {}: {}", event.kind, value["data"]));
                }
                "claimed" => bar.set_message("claimed"),
                _ => {}
            }
        }
        // The stream dropped before `end`: resume after the last event seen.
        failures += 1;
        if failures > 5 {
            bail!("the event stream of job {id} keeps dropping");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One server-sent event of a job's event stream.
#[derive(Debug, PartialEq)]
struct JobEvent {
    /// The `event:` field (`progress`, `end`, ...).
    kind: String,
    /// The last `id:` seen so far on this connection, which is what `Last-Event-ID` resumes from.
    id: Option<String>,
    /// The `data:` field as JSON; `None` when it is not JSON (e.g. an `error` event's text).
    data: Option<Value>,
}

/// The events of an SSE byte stream, parsed by `eventsource-stream` (which reassembles UTF-8
/// characters and lines split across chunks). The stream ends at the body's end or at its first
/// transport or encoding error, after which the caller reconnects with `Last-Event-ID`.
fn job_events<S, B, E>(body: S) -> impl futures_util::Stream<Item = JobEvent>
where
    S: futures_util::Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    use eventsource_stream::Eventsource;
    body.eventsource()
        .take_while(|event| std::future::ready(event.is_ok()))
        .filter_map(|event| {
            std::future::ready(event.ok().map(|e| JobEvent {
                data: serde_json::from_str(&e.data).ok(),
                id: Some(e.id).filter(|id| !id.is_empty()),
                kind: e.event,
            }))
        })
}

fn print_job(job: &Value, format: Format) -> anyhow::Result<()> {
    let status = job["status"].as_str().unwrap_or("");
    match status {
        "succeeded" => {
            let result = &job["result"];
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(result)?),
                Format::Table if job["kind"] == "matrix" => {
                    let r: MatrixReport = serde_json::from_value(result.clone())?;
                    print!("{}", r.to_table());
                }
                Format::Table => {
                    let r: Report = serde_json::from_value(result.clone())?;
                    print!("{}", r.to_table());
                }
            }
            let work = job["work"].to_string();
            tracing::info!(work, "job work");
            Ok(())
        }
        "failed" | "dead" | "cancelled" => bail!(
            "job {} {status}: {}",
            job["id"].as_str().unwrap_or(""),
            job["error"]["detail"].as_str().unwrap_or("no detail")
        ),
        _ => {
            println!("{}", serde_json::to_string_pretty(job)?);
            Ok(())
        }
    }
}

async fn datasets(client: &Client, format: Format) -> anyhow::Result<()> {
    let page = client.get("/v1/datasets?limit=500").await?;
    if matches!(format, Format::Json) {
        println!("{}", serde_json::to_string_pretty(&page["items"])?);
        return Ok(());
    }
    println!(
        "{:<38} {:<24} {:>7} {:<10} content",
        "id", "name", "images", "status"
    );
    for d in page["items"].as_array().into_iter().flatten() {
        println!(
            "{:<38} {:<24} {:>7} {:<10} {}",
            d["id"].as_str().unwrap_or(""),
            d["name"].as_str().unwrap_or(""),
            d["image_count"],
            d["status"].as_str().unwrap_or(""),
            d["content_hash"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// Uploads in requests of at most [`FILES_PER_REQUEST`] files / [`BYTES_PER_REQUEST`] bytes,
/// each file streamed from disk under its path relative to `folder` (so the service orders the
/// images as `gapmeter score` orders the folder).
async fn upload(
    client: &Client,
    name: &str,
    folder: &Path,
    existing: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    let files = list_images(folder)?;
    if files.is_empty() {
        bail!("no images under {}", folder.display());
    }
    let id = match existing {
        Some(d) => client.dataset_id(d).await?,
        None => {
            let ds = client
                .post("/v1/datasets", &json!({"name": name}), &[])
                .await?;
            ds["id"].as_str().context("no dataset id")?.to_string()
        }
    };
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(files.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let (mut accepted, mut duplicates, mut unchanged, mut rejected) =
        (0u64, 0u64, 0u64, Vec::new());
    let mut start = 0;
    while start < files.len() {
        let mut form = reqwest::multipart::Form::new();
        let (mut n, mut bytes) = (0, 0u64);
        while start + n < files.len() && n < FILES_PER_REQUEST {
            let path = &files[start + n];
            let len = tokio::fs::metadata(path).await?.len();
            if n > 0 && bytes + len > BYTES_PER_REQUEST {
                break;
            }
            let rel = path
                .strip_prefix(folder)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::from(file), len)
                .file_name(rel);
            form = form.part("file", part);
            bytes += len;
            n += 1;
        }
        let resp: Value = client
            .send(
                client
                    .http
                    .post(client.url(&format!("/v1/datasets/{id}/images")))
                    .multipart(form),
            )
            .await?
            .json()
            .await?;
        accepted += resp["accepted"].as_u64().unwrap_or(0);
        duplicates += resp["duplicates"].as_u64().unwrap_or(0);
        unchanged += resp["unchanged"].as_u64().unwrap_or(0);
        for f in resp["files"].as_array().into_iter().flatten() {
            if f["outcome"] == "rejected" {
                rejected.push(format!(
                    "{}: {}",
                    f["name"].as_str().unwrap_or("?"),
                    f["reason"].as_str().unwrap_or("")
                ));
            }
        }
        start += n;
        bar.set_position(start as u64);
    }
    bar.finish_and_clear();
    let dataset = client.get(&format!("/v1/datasets/{id}")).await?;
    for r in &rejected {
        eprintln!("rejected {r}");
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&dataset)?),
        Format::Table => {
            eprintln!(
                "dataset {:?}: {accepted} accepted, {duplicates} duplicates (kept: a folder counts them), \
                 {unchanged} unchanged, {} rejected; {} files ({} distinct), {}",
                dataset["name"].as_str().unwrap_or(""),
                rejected.len(),
                dataset["image_count"],
                dataset["unique_images"],
                dataset["content_hash"].as_str().unwrap_or("-")
            );
            println!("{id}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects the events of a body delivered in the given chunks.
    async fn events_of(chunks: Vec<Vec<u8>>) -> Vec<JobEvent> {
        let body = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
        );
        job_events(body).collect().await
    }

    #[tokio::test]
    async fn multibyte_characters_split_across_chunks_are_kept() {
        let text = "event: retry\nid: 7\ndata: {\"data\":{\"error\":\"caf\u{e9} \u{221e}\"}}\n\n";
        let bytes = text.as_bytes();
        // Split inside "é" (2 bytes) and inside "∞" (3 bytes).
        let e = text.find('\u{e9}').unwrap() + 1;
        let inf = text.find('\u{221e}').unwrap() + 2;
        let events = events_of(vec![
            bytes[..e].to_vec(),
            bytes[e..inf].to_vec(),
            bytes[inf..].to_vec(),
        ])
        .await;
        assert_eq!(
            events,
            vec![JobEvent {
                kind: "retry".into(),
                id: Some("7".into()),
                data: Some(json!({ "data": { "error": "caf\u{e9} \u{221e}" } })),
            }]
        );
    }

    #[tokio::test]
    async fn events_keep_the_last_id_for_resuming() {
        // Byte by byte, CRLF line ends, an event without an id (the last id stands) and a non-JSON
        // `error` event.
        let text = "id: 1\r\nevent: progress\r\ndata: {\"data\":{\"done\":1}}\r\n\r\n\
                    event: error\r\ndata: lease lost\r\n\r\n\
                    id: 2\r\nevent: end\r\ndata: {\"status\":\"succeeded\"}\r\n\r\n";
        let events = events_of(text.bytes().map(|b| vec![b]).collect()).await;
        let seen: Vec<(&str, Option<&str>, bool)> = events
            .iter()
            .map(|e| (e.kind.as_str(), e.id.as_deref(), e.data.is_some()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("progress", Some("1"), true),
                ("error", Some("1"), false),
                ("end", Some("2"), true)
            ]
        );
        assert_eq!(events[2].data, Some(json!({ "status": "succeeded" })));
    }

    #[tokio::test]
    async fn a_transport_error_ends_the_events() {
        let body = futures_util::stream::iter(vec![
            Ok(bytes::Bytes::from_static(
                b"id: 3\nevent: claimed\ndata: {}\n\n",
            )),
            Err(std::io::Error::other("connection reset")),
            Ok(bytes::Bytes::from_static(
                b"id: 4\nevent: end\ndata: {}\n\n",
            )),
        ]);
        let events: Vec<JobEvent> = job_events(body).collect().await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id.as_deref(), Some("3"));
    }
}
