//! `make soak`: the service on its bad days, measured. Real binaries (`gapmeter serve`,
//! `gapmeter worker`) against a private PostgreSQL cluster this program starts itself (initdb and
//! pg_ctl on a free port, so stopping it never touches the machine's server), loopback only,
//! bounded in time and requests. Scenarios, each printing its figures:
//!
//! - `kills`: workers share a queue of FID jobs on the seeded Inception; a random worker gets
//!   SIGKILL at a random moment and a fresh one takes its place, N times. Counts jobs lost,
//!   completed twice, and with a result other than the same job run undisturbed (by another
//!   team, whose caches are its own), and the time until each killed job is claimed again.
//! - `db-restart`: PostgreSQL stops mid-job and starts again after a random 5-20 s. Meanwhile
//!   `/readyz`, a write and a read are probed every 250 ms: each must answer 503, never a 500
//!   or a hang. Every job must finish with the undisturbed result.
//! - `storage`: the blob directory is a small tmpfs. It fills mid-upload (507 expected), then is
//!   made read-only (503 expected); no image row may name a missing blob, and the next upload
//!   after recovery succeeds.
//! - `load`: 50 pollers, 20 event streams and 5 uploaders for S seconds while the in-process
//!   worker extracts: p50/p99 per route, errors, 5xx, and the server's peak RSS.
//!
//! - `shutdown`: SIGTERM to a serving process with an in-process worker during uploads and a
//!   running job: in-flight uploads complete (every answered file is a member) or leave nothing,
//!   the job goes back to the queue without using an attempt, and a new server finishes it.
//!
//! `cargo bench --profile dev --bench soak -- [--kill-trials N] [--db-restarts N]
//! [--downtime MIN-MAX] [--storage-faults N] [--load-seconds S] [--shutdowns N] [--seed N]`; a count of 0 skips the
//! scenario. Exits non-zero when a scenario breaks its promise. Needs root for the tmpfs (the
//! storage scenario) and PostgreSQL's server binaries (Debian's postgresql package).
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::Mutex;

struct Args {
    kill_trials: usize,
    db_restarts: usize,
    downtime: (u64, u64),
    storage_faults: usize,
    load_seconds: u64,
    shutdowns: usize,
    seed: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        kill_trials: 100,
        db_restarts: 1,
        downtime: (5, 20),
        storage_faults: 1,
        load_seconds: 60,
        shutdowns: 3,
        seed: 7,
    };
    let mut it = std::env::args().skip(1).filter(|s| s != "--bench");
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--kill-trials" => a.kill_trials = value()?.parse()?,
            "--db-restarts" => a.db_restarts = value()?.parse()?,
            "--downtime" => {
                let v = value()?;
                let (lo, hi) = v.split_once('-').context("--downtime MIN-MAX")?;
                a.downtime = (lo.parse()?, hi.parse()?);
            }
            "--storage-faults" => a.storage_faults = value()?.parse()?,
            "--load-seconds" => a.load_seconds = value()?.parse()?,
            "--shutdowns" => a.shutdowns = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// A child process killed (SIGKILL) when dropped, or when this program dies however it dies.
struct Proc(Child);

/// `gapmeter` with its children's death tied to this process's (PR_SET_PDEATHSIG): an
/// interrupted soak leaves no server or worker behind.
fn gapmeter_command() -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gapmeter"));
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, sig);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A private PostgreSQL cluster in a temporary directory, on its own port.
struct Cluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL's server binaries (Debian's postgresql package)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .context("no initdb under /usr/lib/postgresql")?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        // The server refuses to run as root: the cluster belongs to `postgres` then.
        if unsafe { libc::geteuid() } == 0 {
            run(Command::new("chown").arg("postgres").arg(dir.path()))?;
        }
        let port = free_port()?;
        let c = Self {
            _dir: dir,
            data,
            bin,
            port,
        };
        run(c
            .pg("initdb")
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(&c.data))?;
        c.up()?;
        Ok(c)
    }

    fn pg(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn up(&self) -> anyhow::Result<()> {
        let sock = self.data.parent().context("cluster dir")?;
        run(self.pg("pg_ctl").arg("-D").arg(&self.data).args([
            "-w",
            "-l",
            &sock.join("postgres.log").display().to_string(),
            "-o",
            &format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                self.port,
                sock.display()
            ),
            "start",
        ]))
    }

    fn down(&self) -> anyhow::Result<()> {
        run(self
            .pg("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "fast", "stop"]))
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The service on the cluster: an API process, workers, an HTTP client and a team.
struct Stack {
    cluster: Cluster,
    db: PgPool,
    env: Vec<(String, String)>,
    api: Proc,
    base: String,
    http: reqwest::Client,
    admin: String,
    workers: Vec<Proc>,
}

impl Stack {
    /// `in_process`: the API runs a worker too. `blobs` is the blob directory.
    async fn start(blobs: &Path, in_process: bool, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let cluster = Cluster::start()?;
        let admin = format!("soak-{}", uuid::Uuid::new_v4().simple());
        let port = free_port()?;
        let models = gapmeter::features::default_models_dir();
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", cluster.url("postgres")),
            (
                "GAPMETER_STORAGE__URL",
                format!("file://{}", blobs.display()),
            ),
            ("GAPMETER_AUTH__ADMIN_KEY", admin.clone()),
            ("GAPMETER_SERVER__BIND", format!("127.0.0.1:{port}")),
            ("GAPMETER_MODELS_DIR", models.display().to_string()),
            // Short leases so a killed worker's job moves on in seconds; many attempts, since a
            // job may be hit by several kills in a row (a soak, not a poison-job test).
            ("GAPMETER_QUEUE__LEASE_MS", "2000".into()),
            ("GAPMETER_QUEUE__HEARTBEAT_MS", "300".into()),
            ("GAPMETER_QUEUE__POLL_MS", "200".into()),
            ("GAPMETER_QUEUE__BACKOFF_BASE_MS", "200".into()),
            ("GAPMETER_QUEUE__BACKOFF_MAX_MS", "1000".into()),
            ("GAPMETER_QUEUE__MAX_ATTEMPTS", "20".into()),
            ("GAPMETER_WORKER__BATCH_SIZE", "4".into()),
            ("GAPMETER_RETENTION__SWEEP_INTERVAL_SECS", "0".into()),
            ("GAPMETER_LOG", "gapmeter=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let db = PgPoolOptions::new()
            .max_connections(4)
            .connect(&cluster.url("postgres"))
            .await?;
        gapmeter::store::migrate(&db).await?;
        let mut cmd = gapmeter_command();
        cmd.arg("serve");
        if !in_process {
            cmd.arg("--no-worker");
        }
        let api = Proc(
            cmd.envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?,
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.get(format!("{base}/healthz")).send().await.is_err() {
            ensure!(Instant::now() < deadline, "the API did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            cluster,
            db,
            env,
            api,
            base,
            http,
            admin,
            workers: Vec::new(),
        })
    }

    fn spawn_worker(&self) -> anyhow::Result<Proc> {
        Ok(Proc(
            gapmeter_command()
                .arg("worker")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ))
    }

    async fn team(&self, name: &str) -> anyhow::Result<String> {
        let team: Value = self
            .http
            .post(format!("{}/v1/teams", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({ "name": name }))
            .send()
            .await?
            .json()
            .await?;
        let id = team["id"].as_str().context("team id")?;
        let key: Value = self
            .http
            .post(format!("{}/v1/teams/{id}/keys", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({ "name": "soak" }))
            .send()
            .await?
            .json()
            .await?;
        Ok(key["token"].as_str().context("token")?.to_string())
    }

    async fn dataset(
        &self,
        key: &str,
        name: &str,
        files: &[(String, Vec<u8>)],
    ) -> anyhow::Result<String> {
        let id = self.create_dataset(key, name).await?;
        let resp = self.upload(key, &id, files).await?;
        ensure!(resp.status() == 200, "upload: {}", resp.status());
        Ok(id)
    }

    async fn create_dataset(&self, key: &str, name: &str) -> anyhow::Result<String> {
        let ds: Value = self
            .http
            .post(format!("{}/v1/datasets", self.base))
            .bearer_auth(key)
            .json(&json!({ "name": name }))
            .send()
            .await?
            .json()
            .await?;
        Ok(ds["id"]
            .as_str()
            .with_context(|| format!("dataset: {ds}"))?
            .to_string())
    }

    async fn upload(
        &self,
        key: &str,
        id: &str,
        files: &[(String, Vec<u8>)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone()),
            );
        }
        Ok(self
            .http
            .post(format!("{}/v1/datasets/{id}/images", self.base))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await?)
    }

    async fn submit(&self, key: &str, body: &Value) -> anyhow::Result<String> {
        let resp = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let job: Value = resp.json().await?;
        ensure!(status == 202, "submit: {status} {job}");
        Ok(job["id"].as_str().context("job id")?.to_string())
    }

    async fn job(&self, key: &str, id: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/v1/jobs/{id}", self.base))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits until every job is terminal; returns them by id.
    async fn wait_all(
        &self,
        key: &str,
        ids: &[String],
        limit: Duration,
    ) -> anyhow::Result<HashMap<String, Value>> {
        let deadline = Instant::now() + limit;
        let mut done = HashMap::new();
        while done.len() < ids.len() {
            let pending: Vec<&String> = ids.iter().filter(|id| !done.contains_key(*id)).collect();
            for id in pending {
                if let Ok(job) = self.job(key, id).await {
                    if !matches!(job["status"].as_str(), Some("queued" | "running")) {
                        done.insert(id.clone(), job);
                    }
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(done)
    }
}

/// A job's two sets of files.
type Pair = (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>);

/// `n` distinct PNGs of random pixels (seeded), `side`×`side`.
fn pngs(rng: &mut StdRng, prefix: &str, n: usize, side: u32) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let img = image::RgbImage::from_fn(side, side, |_, _| {
                image::Rgb([rng.gen(), rng.gen(), rng.gen()])
            });
            let mut bytes = Vec::new();
            img.write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encoding a PNG in memory");
            (format!("{prefix}{i:03}.png"), bytes)
        })
        .collect()
}

fn quantiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "n={} min={:.2} p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        v.len(),
        v[0],
        q(0.5),
        q(0.9),
        q(0.99),
        v[v.len() - 1]
    )
}

/// The body of one FID job on the seeded Inception.
fn fid(source: &str, target: &str) -> Value {
    json!({"source": source, "target": target, "extractor": "inception-v3-fid-untrained", "metrics": ["fid"]})
}

/// Runs `pairs` of files as jobs of a team of their own, undisturbed, with two workers; the
/// metrics of each, in order.
async fn undisturbed(stack: &mut Stack, pairs: &[Pair]) -> anyhow::Result<Vec<Value>> {
    let key = stack
        .team(&format!("baseline-{}", uuid::Uuid::new_v4().simple()))
        .await?;
    let mut ids = Vec::new();
    for (i, (a, b)) in pairs.iter().enumerate() {
        let s = stack.dataset(&key, &format!("s{i}"), a).await?;
        let t = stack.dataset(&key, &format!("t{i}"), b).await?;
        ids.push(stack.submit(&key, &fid(&s, &t)).await?);
    }
    let workers = [stack.spawn_worker()?, stack.spawn_worker()?];
    let done = stack
        .wait_all(&key, &ids, Duration::from_secs(1800))
        .await?;
    drop(workers);
    ids.iter()
        .map(|id| {
            let job = done.get(id).context("a baseline job did not finish")?;
            ensure!(job["status"] == "succeeded", "baseline job: {job}");
            Ok(job["result"]["metrics"].clone())
        })
        .collect()
}

/// Jobs of `ids` that did not succeed, and those whose metrics differ from the same pairs run
/// undisturbed (after the chaos workers are stopped).
async fn lost_and_wrong(
    stack: &mut Stack,
    ids: &[String],
    done: &HashMap<String, Value>,
    pairs: &[Pair],
) -> anyhow::Result<(usize, usize)> {
    let lost = ids
        .iter()
        .filter(|id| done.get(*id).is_none_or(|j| j["status"] != "succeeded"))
        .count();
    stack.workers.clear();
    let baseline = undisturbed(stack, pairs).await?;
    let wrong = ids
        .iter()
        .zip(&baseline)
        .filter(|(id, base)| {
            done.get(*id)
                .is_none_or(|j| &j["result"]["metrics"] != *base)
        })
        .count();
    Ok((lost, wrong))
}

/// Figures of one scenario; `failures` are broken promises.
#[derive(Default)]
struct Findings {
    lines: Vec<String>,
    failures: Vec<String>,
}

impl Findings {
    fn say(&mut self, line: String) {
        println!("  {line}");
        self.lines.push(line);
    }
    fn check(&mut self, ok: bool, what: String) {
        if !ok {
            println!("  FAILED: {what}");
            self.failures.push(what);
        }
    }
}

async fn kills(trials: usize, rng: &mut StdRng) -> anyhow::Result<Findings> {
    println!("== worker kills: {trials} trials");
    let mut f = Findings::default();
    let blobs = tempfile::tempdir()?;
    let mut stack = Stack::start(blobs.path(), false, &[]).await?;
    let key = stack.team("chaos").await?;
    const WORKERS: usize = 3;
    const KILLS_PER_JOB: i32 = 4;
    for _ in 0..WORKERS {
        let w = stack.spawn_worker()?;
        stack.workers.push(w);
    }
    let mut pairs = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    // (kill time on the database's clock, the job the killed worker held)
    let mut killed: Vec<(f64, Option<String>)> = Vec::new();
    let started = Instant::now();
    while killed.len() < trials {
        // Keep every worker busy: a job is 2×6 images not seen before (no cache hit).
        let outstanding: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(&stack.db)
                .await?;
        for _ in outstanding..(WORKERS as i64 + 1) {
            let n = pairs.len();
            let pair = (pngs(rng, "a", 6, 40), pngs(rng, "b", 6, 40));
            let s = stack.dataset(&key, &format!("s{n}"), &pair.0).await?;
            let t = stack.dataset(&key, &format!("t{n}"), &pair.1).await?;
            ids.push(stack.submit(&key, &fid(&s, &t)).await?);
            pairs.push(pair);
        }
        // Deaths spread out enough for work to move between them: a worker that dies every
        // second on every job is a broken host, not a soak.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..6000))).await;
        // A random worker among those running a job now: a kill of a worker still loading its
        // models tests nothing but process startup.
        // At most KILLS_PER_JOB deaths per job: random deaths rarely strike one job again and
        // again, and a job that keeps killing its workers should end `dead` (max_attempts).
        let holders: Vec<(String, i32)> = sqlx::query_as(
            "SELECT id::text, split_part(locked_by, ':', 2)::int FROM jobs
             WHERE status = 'running' AND locked_by IS NOT NULL AND attempts <= $1",
        )
        .bind(KILLS_PER_JOB)
        .fetch_all(&stack.db)
        .await?;
        let busy: Vec<(usize, String)> = stack
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                holders
                    .iter()
                    .find(|(_, pid)| *pid as u32 == w.pid())
                    .map(|(job, _)| (i, job.clone()))
            })
            .collect();
        if busy.is_empty() {
            continue;
        }
        let (victim, held) = busy[rng.gen_range(0..busy.len())].clone();
        stack.workers[victim].signal(libc::SIGKILL);
        let at: f64 = sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
            .fetch_one(&stack.db)
            .await?;
        killed.push((at, Some(held)));
        stack.workers[victim] = stack.spawn_worker()?;
    }
    let done = stack
        .wait_all(&key, &ids, Duration::from_secs(1800))
        .await?;
    let chaos_secs = started.elapsed().as_secs_f64();
    // Recovery: from the kill to the job's return to the queue (its lease expired and was
    // reaped), and to its next claim by another worker.
    let (mut requeued, mut recovery) = (Vec::new(), Vec::new());
    for (at, job) in killed
        .iter()
        .filter_map(|(at, job)| Some((at, job.as_ref()?)))
    {
        let mut next = Vec::new();
        for kind in ["lease_expired", "claimed"] {
            let t: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM min(at))::float8 FROM job_events
                 WHERE job_id = $1::uuid AND kind = $2 AND extract(epoch FROM at) > $3",
            )
            .bind(job)
            .bind(kind)
            .bind(at)
            .fetch_one(&stack.db)
            .await?;
            next.push(t);
        }
        match (next[0], next[1]) {
            (Some(q), Some(c)) => {
                requeued.push(q - at);
                recovery.push(c - at);
            }
            _ => f.check(
                false,
                format!("job {job} was not requeued and claimed again after its worker died"),
            ),
        }
    }
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM job_events WHERE kind = 'succeeded'
         GROUP BY job_id HAVING count(*) > 1) t",
    )
    .fetch_one(&stack.db)
    .await?;
    let attempts: Vec<f64> = done
        .values()
        .filter_map(|j| j["attempts"].as_f64())
        .collect();
    let (lost, wrong) = lost_and_wrong(&mut stack, &ids, &done, &pairs).await?;
    let with_job = killed.iter().filter(|k| k.1.is_some()).count();
    f.say(format!(
        "{} kills ({with_job} while the worker held a job) over {} jobs in {chaos_secs:.0} s",
        killed.len(),
        ids.len()
    ));
    f.say(format!(
        "lost {lost}, completed twice {twice}, wrong results {wrong}"
    ));
    f.say(format!(
        "kill → lease expired, job requeued, s: {}",
        quantiles(requeued)
    ));
    f.say(format!(
        "kill → job claimed again, s: {}",
        quantiles(recovery)
    ));
    f.say(format!("attempts per job: {}", quantiles(attempts)));
    f.check(lost == 0, format!("{lost} jobs lost"));
    f.check(twice == 0, format!("{twice} jobs completed twice"));
    f.check(
        wrong == 0,
        format!("{wrong} results differ from the undisturbed run"),
    );
    Ok(f)
}

/// What each probe saw while the database was away.
#[derive(Default)]
struct Probes {
    statuses: BTreeMap<String, BTreeMap<u16, usize>>,
    errors: BTreeMap<String, usize>,
    slowest: f64,
}

async fn db_restart(
    restarts: usize,
    downtime: (u64, u64),
    rng: &mut StdRng,
) -> anyhow::Result<Findings> {
    println!(
        "== database restarts: {restarts}, down {}-{} s",
        downtime.0, downtime.1
    );
    let mut f = Findings::default();
    let blobs = tempfile::tempdir()?;
    let mut stack = Stack::start(blobs.path(), false, &[]).await?;
    let key = stack.team("chaos").await?;
    for _ in 0..2 {
        let w = stack.spawn_worker()?;
        stack.workers.push(w);
    }
    let mut pairs = Vec::new();
    let mut ids = Vec::new();
    let mut windows = Vec::new();
    let mut all = Probes::default();
    for r in 0..restarts {
        for i in 0..3 {
            let pair = (pngs(rng, "a", 10, 40), pngs(rng, "b", 10, 40));
            let s = stack.dataset(&key, &format!("s{r}-{i}"), &pair.0).await?;
            let t = stack.dataset(&key, &format!("t{r}-{i}"), &pair.1).await?;
            ids.push(stack.submit(&key, &fid(&s, &t)).await?);
            pairs.push(pair);
        }
        // Mid-job: wait for a job to be extracting.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let running: i64 =
                sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'running'")
                    .fetch_one(&stack.db)
                    .await?;
            if running > 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let probes = Arc::new(Mutex::new(Probes::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // One prober per route, each on its own clock, so a slow answer on one does not thin
        // out the samples of the others.
        let mut probers = Vec::new();
        for route in ["GET /readyz", "GET /v1/jobs/{id}", "POST /v1/datasets"] {
            let (http, base, key, job) = (
                stack.http.clone(),
                stack.base.clone(),
                key.clone(),
                ids[ids.len() - 1].clone(),
            );
            let (probes, stop) = (probes.clone(), stop.clone());
            probers.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let req = match route {
                        "GET /readyz" => http.get(format!("{base}/readyz")),
                        "GET /v1/jobs/{id}" => {
                            http.get(format!("{base}/v1/jobs/{job}")).bearer_auth(&key)
                        }
                        _ => http
                            .post(format!("{base}/v1/datasets"))
                            .bearer_auth(&key)
                            .json(&json!({"name": format!("probe-{n}-{}", uuid::Uuid::new_v4().simple())})),
                    };
                    let t = Instant::now();
                    let res = req.timeout(Duration::from_secs(15)).send().await;
                    let secs = t.elapsed().as_secs_f64();
                    let mut p = probes.lock().await;
                    p.slowest = p.slowest.max(secs);
                    match res {
                        Ok(r) => {
                            *p.statuses
                                .entry(route.into())
                                .or_default()
                                .entry(r.status().as_u16())
                                .or_default() += 1
                        }
                        Err(e) => {
                            *p.errors
                                .entry(format!(
                                    "{route}: {}",
                                    if e.is_timeout() { "timeout" } else { "error" }
                                ))
                                .or_default() += 1
                        }
                    }
                    drop(p);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }));
        }
        let down_for = rng.gen_range(downtime.0..=downtime.1);
        let stopped = Instant::now();
        stack.cluster.down()?;
        tokio::time::sleep(Duration::from_secs(down_for)).await;
        stack.cluster.up()?;
        // Unavailable until /readyz answers 200 again.
        loop {
            let ok = stack
                .http
                .get(format!("{}/readyz", stack.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            ensure!(
                stopped.elapsed() < Duration::from_secs(300),
                "not ready after the restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        windows.push(stopped.elapsed().as_secs_f64());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for p in probers {
            p.await?;
        }
        let p = Arc::try_unwrap(probes)
            .map_err(|_| anyhow::anyhow!("probes still shared"))?
            .into_inner();
        for (route, counts) in p.statuses {
            for (status, n) in counts {
                *all.statuses
                    .entry(route.clone())
                    .or_default()
                    .entry(status)
                    .or_default() += n;
            }
        }
        for (what, n) in p.errors {
            *all.errors.entry(what).or_default() += n;
        }
        all.slowest = all.slowest.max(p.slowest);
        f.say(format!(
            "restart {}: down {down_for} s, unavailable {:.1} s",
            r + 1,
            windows[r]
        ));
    }
    // Every job finishes, with the undisturbed result.
    let done = stack.wait_all(&key, &ids, Duration::from_secs(900)).await?;
    let (lost, wrong) = lost_and_wrong(&mut stack, &ids, &done, &pairs).await?;
    let fives: usize = all
        .statuses
        .values()
        .flat_map(|c| c.iter())
        .filter(|(s, _)| **s >= 500 && **s != 503)
        .map(|(_, n)| n)
        .sum();
    let transport: usize = all.errors.values().sum();
    f.say(format!("probes while away: {:?}", all.statuses));
    f.say(format!(
        "probe errors (timeouts, resets): {:?}; slowest answer {:.2} s",
        all.errors, all.slowest
    ));
    f.say(format!(
        "jobs {}: lost {lost}, wrong results {wrong}; longest unavailable window {:.1} s",
        ids.len(),
        windows.iter().cloned().fold(0.0, f64::max)
    ));
    f.check(lost == 0, format!("{lost} jobs lost"));
    f.check(wrong == 0, format!("{wrong} wrong results"));
    f.check(
        fives == 0,
        format!("{fives} answers were 5xx other than 503"),
    );
    f.check(
        transport == 0,
        format!("{transport} probes hung or lost their connection"),
    );
    Ok(f)
}

/// A tmpfs mounted for the blob store, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(bytes: u64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir.path()))
        .context("mounting a tmpfs (the storage scenario needs root)")?;
        Ok(Self(dir))
    }
    /// Bytes in use on the file system.
    fn used(&self) -> anyhow::Result<u64> {
        let path = std::ffi::CString::new(self.0.path().as_os_str().as_encoded_bytes())?;
        // SAFETY: statvfs fills the zeroed struct for a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        ensure!(
            unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0,
            "statvfs"
        );
        Ok((st.f_blocks - st.f_bfree) * st.f_frsize)
    }

    fn remount(&self, opts: &str) -> anyhow::Result<()> {
        run(Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(self.0.path()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

async fn problem_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["type"].as_str().unwrap_or("").to_string())
}

/// Image rows whose blob is missing from the directory.
async fn orphan_rows(db: &PgPool, blobs: &Path) -> anyhow::Result<usize> {
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM images")
        .fetch_all(db)
        .await?;
    Ok(hashes
        .iter()
        .filter(|h| {
            let hex = hex::encode(h);
            !blobs
                .join("images")
                .join(&hex[..2])
                .join(&hex[2..4])
                .join(&hex)
                .exists()
        })
        .count())
}

async fn storage(faults: usize, rng: &mut StdRng) -> anyhow::Result<Findings> {
    println!("== storage faults: {faults} rounds (disk full, then read-only)");
    let mut f = Findings::default();
    let fs = Tmpfs::mount(4 << 20)?;
    let stack = Stack::start(fs.0.path(), false, &[]).await?;
    let key = stack.team("lab").await?;
    for round in 0..faults {
        let ds = stack
            .dataset(&key, &format!("fill{round}"), &pngs(rng, "seed", 2, 32))
            .await?;
        // ~8 MB of incompressible PNGs into 4 MB.
        let resp = stack.upload(&key, &ds, &pngs(rng, "big", 16, 512)).await?;
        let (status, kind) = problem_of(resp).await;
        f.say(format!("round {}: disk full → {status} {kind}", round + 1));
        f.check(
            status == 507 && kind == "/problems/insufficient-storage",
            format!("full disk answered {status} {kind}"),
        );
        let orphans = orphan_rows(&stack.db, fs.0.path()).await?;
        f.check(
            orphans == 0,
            format!("{orphans} image rows without their blob after the full disk"),
        );
        fs.remount("size=64m")?;
        let resp = stack.upload(&key, &ds, &pngs(rng, "after", 4, 64)).await?;
        f.check(
            resp.status() == 200,
            format!("upload after freeing space: {}", resp.status()),
        );

        fs.remount("ro")?;
        let resp = stack.upload(&key, &ds, &pngs(rng, "ro", 3, 64)).await?;
        let (status, kind) = problem_of(resp).await;
        f.say(format!("round {}: read-only → {status} {kind}", round + 1));
        f.check(
            status == 503 && kind == "/problems/storage-unavailable",
            format!("read-only store answered {status} {kind}"),
        );
        fs.remount("rw")?;
        let resp = stack.upload(&key, &ds, &pngs(rng, "rw", 3, 64)).await?;
        f.check(
            resp.status() == 200,
            format!("upload after recovery: {}", resp.status()),
        );
        let orphans = orphan_rows(&stack.db, fs.0.path()).await?;
        f.say(format!(
            "round {}: image rows without a blob: {orphans}",
            round + 1
        ));
        f.check(orphans == 0, format!("{orphans} orphan rows"));
        // The next round fills again: 4 MiB beyond what is held now.
        fs.remount(&format!("size={}", fs.used()? + (4 << 20)))?;
    }
    Ok(f)
}

async fn load(seconds: u64, rng: &mut StdRng) -> anyhow::Result<Findings> {
    println!(
        "== load: 50 pollers, 20 event streams, 5 uploaders for {seconds} s, in-process worker"
    );
    let mut f = Findings::default();
    let blobs = tempfile::tempdir()?;
    let stack = Stack::start(blobs.path(), true, &[("GAPMETER_WORKER__BATCH_SIZE", "8")]).await?;
    let key = stack.team("lab").await?;
    // Enough Inception work to keep the worker extracting throughout.
    let mut jobs = Vec::new();
    for i in 0..4 {
        let s = stack
            .dataset(&key, &format!("s{i}"), &pngs(rng, "a", 60, 64))
            .await?;
        let t = stack
            .dataset(&key, &format!("t{i}"), &pngs(rng, "b", 60, 64))
            .await?;
        jobs.push(stack.submit(&key, &fid(&s, &t)).await?);
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let samples: Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>> = Arc::default();
    let failures: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    let record = |route: &'static str,
                  samples: Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>,
                  failures: Arc<Mutex<BTreeMap<String, usize>>>| {
        move |t: Instant, res: Result<u16, String>| {
            let (samples, failures) = (samples.clone(), failures.clone());
            async move {
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match res {
                    Ok(s) if s < 400 => samples.lock().await.entry(route).or_default().push(ms),
                    Ok(s) => {
                        *failures
                            .lock()
                            .await
                            .entry(format!("{route} {s}"))
                            .or_default() += 1
                    }
                    Err(e) => {
                        *failures
                            .lock()
                            .await
                            .entry(format!("{route} {e}"))
                            .or_default() += 1
                    }
                }
            }
        }
    };
    for i in 0..50 {
        let (http, base, key, job) = (
            stack.http.clone(),
            stack.base.clone(),
            key.clone(),
            jobs[i % jobs.len()].clone(),
        );
        let rec = record("GET /v1/jobs/{id}", samples.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let t = Instant::now();
                let res = http
                    .get(format!("{base}/v1/jobs/{job}"))
                    .bearer_auth(&key)
                    .send()
                    .await;
                rec(
                    t,
                    res.map(|r| r.status().as_u16()).map_err(|e| e.to_string()),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for i in 0..20 {
        let (http, base, key, job) = (
            stack.http.clone(),
            stack.base.clone(),
            key.clone(),
            jobs[i % jobs.len()].clone(),
        );
        let rec = record(
            "GET /v1/jobs/{id}/events (first byte)",
            samples.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let t = Instant::now();
                let res = http
                    .get(format!("{base}/v1/jobs/{job}/events"))
                    .bearer_auth(&key)
                    .timeout(Duration::from_secs(seconds + 30))
                    .send()
                    .await;
                match res {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let mut body = r.bytes_stream();
                        let first = body.next().await;
                        rec(
                            t,
                            match first {
                                Some(Ok(_)) => Ok(status),
                                Some(Err(e)) => Err(e.to_string()),
                                None => Ok(status),
                            },
                        )
                        .await;
                        // Hold the stream open until the end of the run or of the job.
                        while Instant::now() < until {
                            match tokio::time::timeout(Duration::from_millis(500), body.next())
                                .await
                            {
                                Ok(Some(Ok(_))) | Err(_) => {}
                                Ok(_) => break,
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => rec(t, Err(e.to_string())).await,
                }
            }
        }));
    }
    for u in 0..5 {
        let (http, base, key) = (stack.http.clone(), stack.base.clone(), key.clone());
        let rec = record(
            "POST /v1/datasets/{id}/images (8 files)",
            samples.clone(),
            failures.clone(),
        );
        let ds: Value = stack
            .http
            .post(format!("{}/v1/datasets", stack.base))
            .bearer_auth(&key)
            .json(&json!({"name": format!("up{u}")}))
            .send()
            .await?
            .json()
            .await?;
        let ds = ds["id"].as_str().context("dataset")?.to_string();
        let mut own = StdRng::seed_from_u64(rng.gen());
        tasks.push(tokio::spawn(async move {
            let mut round = 0;
            while Instant::now() < until {
                round += 1;
                let mut form = reqwest::multipart::Form::new();
                for (name, bytes) in pngs(&mut own, &format!("u{u}r{round}-"), 8, 48) {
                    form = form.part(
                        "file",
                        reqwest::multipart::Part::bytes(bytes).file_name(name),
                    );
                }
                let t = Instant::now();
                let res = http
                    .post(format!("{base}/v1/datasets/{ds}/images"))
                    .bearer_auth(&key)
                    .multipart(form)
                    .send()
                    .await;
                rec(
                    t,
                    res.map(|r| r.status().as_u16()).map_err(|e| e.to_string()),
                )
                .await;
            }
        }));
    }
    // The server's peak resident memory, read from the kernel during and after the run.
    let pid = stack.api.pid();
    for t in tasks {
        t.await?;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    let extracting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('running', 'succeeded')")
            .fetch_one(&stack.db)
            .await?;
    for (route, ms) in samples.lock().await.iter() {
        f.say(format!("{route}, ms: {}", quantiles(ms.clone())));
    }
    let failed = failures.lock().await.clone();
    let fives: usize = failed
        .iter()
        .filter(|(k, _)| k.split(' ').any(|w| w.len() == 3 && w.starts_with('5')))
        .map(|(_, n)| n)
        .sum();
    f.say(format!("errors: {failed:?}"));
    f.say(format!(
        "server peak RSS {:.0} MiB; jobs started or done by the in-process worker: {extracting}",
        peak_kb / 1024.0
    ));
    f.check(fives == 0, format!("{fives} 5xx answers"));
    f.check(
        failed.is_empty(),
        format!("{} failed requests", failed.values().sum::<usize>()),
    );
    f.check(
        extracting > 0,
        "the worker never ran during the load".into(),
    );
    Ok(f)
}

async fn shutdown(rounds: usize, rng: &mut StdRng) -> anyhow::Result<Findings> {
    println!("== shutdown under load: {rounds} rounds of SIGTERM during uploads and a job");
    let mut f = Findings::default();
    let blobs = tempfile::tempdir()?;
    let mut stack = Stack::start(blobs.path(), true, &[]).await?;
    let key = stack.team("lab").await?;
    for round in 0..rounds {
        let s = stack
            .dataset(&key, &format!("s{round}"), &pngs(rng, "a", 40, 64))
            .await?;
        let t = stack
            .dataset(&key, &format!("t{round}"), &pngs(rng, "b", 40, 64))
            .await?;
        let job = stack.submit(&key, &fid(&s, &t)).await?;
        // The job is extracting when the signal comes.
        let deadline = Instant::now() + Duration::from_secs(120);
        while stack.job(&key, &job).await?["progress"]["phase"] != "extracting" {
            ensure!(
                Instant::now() < deadline,
                "the job never started extracting"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Three uploaders, each into a dataset of its own, until the server goes away.
        let mut uploads = Vec::new();
        for u in 0..3 {
            let ds = stack
                .create_dataset(&key, &format!("up{round}-{u}"))
                .await?;
            let (http, base, key) = (stack.http.clone(), stack.base.clone(), key.clone());
            let mut own = StdRng::seed_from_u64(rng.gen());
            uploads.push(tokio::spawn(async move {
                // (files sent, files the server answered for) of each request that got an answer.
                let mut answered = 0usize;
                let mut refused = 0usize;
                loop {
                    let mut form = reqwest::multipart::Form::new();
                    for (name, bytes) in pngs(&mut own, &format!("f{answered}-"), 6, 128) {
                        form = form.part(
                            "file",
                            reqwest::multipart::Part::bytes(bytes).file_name(name),
                        );
                    }
                    match http
                        .post(format!("{base}/v1/datasets/{ds}/images"))
                        .bearer_auth(&key)
                        .multipart(form)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => answered += 6,
                        Ok(r) => return (ds, answered, refused, Some(r.status().as_u16())),
                        Err(_) => {
                            refused += 1;
                            if refused > 3 {
                                return (ds, answered, refused, None);
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
        let signalled = Instant::now();
        stack.api.signal(libc::SIGTERM);
        let status = loop {
            if let Some(status) = stack.api.0.try_wait()? {
                break status;
            }
            ensure!(
                signalled.elapsed() < Duration::from_secs(120),
                "the server did not stop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stop_secs = signalled.elapsed().as_secs_f64();
        f.check(
            status.success(),
            format!("the server did not exit cleanly: {status}"),
        );
        // In-flight uploads completed (every answered file is a member) or left nothing.
        let mut errors = 0;
        for u in uploads {
            let (ds, answered, _, bad) = u.await?;
            if let Some(code) = bad {
                f.check(
                    false,
                    format!("an upload was answered {code} during shutdown"),
                );
                errors += 1;
            }
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM dataset_images WHERE dataset_id = $1::uuid",
            )
            .bind(&ds)
            .fetch_one(&stack.db)
            .await?;
            f.check(
                held as usize == answered,
                format!("dataset {ds}: {held} members, {answered} files answered"),
            );
        }
        // The job went back to the queue without using an attempt.
        let (status, attempts): (String, i32) =
            sqlx::query_as("SELECT status, attempts FROM jobs WHERE id = $1::uuid")
                .bind(&job)
                .fetch_one(&stack.db)
                .await?;
        f.say(format!(
            "round {}: stopped in {stop_secs:.1} s; job {status} with {attempts} attempts used; upload errors {errors}",
            round + 1
        ));
        f.check(
            status == "queued" && attempts == 0,
            format!("job after SIGTERM: {status}, {attempts} attempts"),
        );
        // A new server picks it up and finishes it.
        let mut cmd = gapmeter_command();
        stack.api = Proc(
            cmd.arg("serve")
                .envs(stack.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while stack
            .http
            .get(format!("{}/healthz", stack.base))
            .send()
            .await
            .is_err()
        {
            ensure!(Instant::now() < deadline, "the API did not restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let done = stack
            .wait_all(&key, std::slice::from_ref(&job), Duration::from_secs(600))
            .await?;
        let ok = done.get(&job).is_some_and(|j| j["status"] == "succeeded");
        f.check(ok, format!("job {job} did not finish after the restart"));
    }
    Ok(f)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    let mut failures = Vec::new();
    let started = Instant::now();
    if a.kill_trials > 0 {
        failures.extend(kills(a.kill_trials, &mut rng).await?.failures);
    }
    if a.db_restarts > 0 {
        failures.extend(
            db_restart(a.db_restarts, a.downtime, &mut rng)
                .await?
                .failures,
        );
    }
    if a.storage_faults > 0 {
        failures.extend(storage(a.storage_faults, &mut rng).await?.failures);
    }
    if a.load_seconds > 0 {
        failures.extend(load(a.load_seconds, &mut rng).await?.failures);
    }
    if a.shutdowns > 0 {
        failures.extend(shutdown(a.shutdowns, &mut rng).await?.failures);
    }
    println!("soak: {:.0} s in all", started.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("broken promises: {failures:?}");
    }
    println!("soak: every promise kept");
    Ok(())
}
