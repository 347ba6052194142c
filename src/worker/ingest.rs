//! One attempt at an ingest job: read everything the dataset's URI names into the dataset.
//! Files are members by path, so a retried attempt finds the files an earlier one stored
//! `unchanged` and adds only the rest. How the job ends (ready or failed) is written to the
//! dataset by the database in the same statement that ends the job.
use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::anyhow;
use serde_json::Value;
use sqlx::PgPool;

use super::{Control, JobError, WorkerOptions};
use crate::ingest::{ingest_uri, IngestCounters, Ingestor, UriError};
use crate::jobs::{IngestSpec, IngestWork};
use crate::store::{self, Blobs, Claimed, Progress};

/// How many rejections the job's work record lists by name.
const LISTED_REJECTIONS: usize = 20;

/// Runs the attempt; the result is the ingest summary (per-file outcomes).
pub(super) async fn run(
    pool: &PgPool,
    blobs: &Blobs,
    options: &WorkerOptions,
    job: &Claimed,
    control: &Arc<Control>,
) -> (Result<Value, JobError>, IngestWork) {
    let spec: IngestSpec = match serde_json::from_value(job.spec.clone()) {
        Ok(s) => s,
        Err(e) => {
            return (
                Err(JobError::Fatal(anyhow!("unreadable ingest spec: {e}"))),
                IngestWork::default(),
            )
        }
    };
    match store::get_dataset(pool, job.team, spec.dataset).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return (
                Err(JobError::Fatal(anyhow!(
                    "dataset {} no longer exists (it was deleted)",
                    spec.dataset
                ))),
                IngestWork::default(),
            )
        }
        Err(e) => return (Err(JobError::Retry(e.into())), IngestWork::default()),
    }
    let budget = match room_left(pool, job.team, options.quotas).await {
        Ok(b) => b,
        Err(e) => return (Err(JobError::Retry(e.into())), IngestWork::default()),
    };
    let mut ing = Ingestor::new(pool, blobs, &options.limits, spec.dataset)
        .with_interrupt(control.interrupt())
        .with_budget(budget);
    let counters = ing.counters();
    let reporter = tokio::spawn(report_while_running(
        pool.clone(),
        job.lease,
        counters.clone(),
        options.heartbeat,
        control.clone(),
    ));
    let result = ingest_uri(
        &mut ing,
        &spec.uri,
        &options.ingest,
        options.limits.request_bytes,
    )
    .await;
    reporter.abort();
    if let Err(UriError::OverQuota(over)) = &result {
        // A refused ingest leaves nothing: what this attempt added goes (earlier attempts' files
        // stay; they fitted when they came).
        if let Err(e) = store::remove_members(pool, blobs, spec.dataset, &ing.added_paths()).await {
            return (Err(JobError::Retry(e)), work_of(&ing));
        }
        let detail = format!("{over}; the files this ingest added were removed");
        return (Err(JobError::Fatal(anyhow!(detail))), work_of(&ing));
    }
    let work = work_of(&ing);
    // Whatever was stored stays stored and counted, whether or not the source failed midway.
    if let Err(e) = store::refresh_dataset(pool, spec.dataset).await {
        return (Err(JobError::Retry(e.into())), work);
    }
    let _ = store::report_progress(pool, job.lease, &progress(&counters)).await;
    let result = match result {
        Ok(()) => serde_json::to_value(&ing.summary).map_err(|e| JobError::Fatal(e.into())),
        Err(e) => Err(classify(e, control)),
    };
    (result, work)
}

/// The team's room under its quotas, as the ingest starts.
async fn room_left(
    pool: &PgPool,
    team: store::TeamId,
    defaults: store::Quotas,
) -> sqlx::Result<store::Remaining> {
    let mut conn = pool.acquire().await?;
    let quotas = store::team_quotas(&mut conn, team).await?.over(defaults);
    let usage = store::team_usage(&mut conn, team).await?;
    Ok(quotas.remaining(&usage))
}

/// Bad URIs and refusals cannot succeed on retry; an unreachable source or a failing store may.
fn classify(e: UriError, control: &Control) -> JobError {
    match e {
        UriError::Invalid(m) | UriError::Forbidden(m) => JobError::Fatal(anyhow!(m)),
        UriError::OverQuota(over) => JobError::Fatal(anyhow!(over.to_string())),
        UriError::Unreachable(m) => JobError::Retry(anyhow!(m)),
        UriError::Internal(e) => JobError::Retry(e),
        UriError::Interrupted => match control.check() {
            Err(stop) => stop,
            Ok(()) => JobError::Retry(anyhow!("ingest interrupted")),
        },
    }
}

fn progress(counters: &IngestCounters) -> Progress {
    let counts: BTreeMap<String, i64> = counters
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as i64))
        .collect();
    Progress {
        phase: "ingesting".into(),
        done: counts.get("seen").copied().unwrap_or(0),
        // How many files a source holds is known only at its end.
        total: 0,
        counts: Some(counts),
    }
}

/// Reports the tallies every `every` until aborted, when they changed.
async fn report_while_running(
    pool: PgPool,
    lease: store::Lease,
    counters: Arc<IngestCounters>,
    every: std::time::Duration,
    control: Arc<Control>,
) {
    let mut last = None;
    loop {
        tokio::time::sleep(every).await;
        let p = progress(&counters);
        if last.as_ref() == Some(&p) {
            continue;
        }
        match store::report_progress(&pool, lease, &p).await {
            Ok(()) => last = Some(p),
            Err(store::LeaseError::Lost(..)) => {
                control.raise(&control.lost);
                return;
            }
            Err(store::LeaseError::Db(e)) => tracing::warn!(error = %e, "progress report failed"),
        }
    }
}

fn work_of(ing: &Ingestor<'_>) -> IngestWork {
    let s = &ing.summary;
    IngestWork {
        files_seen: s.files.len() as u64,
        accepted: s.accepted,
        duplicates: s.duplicates,
        unchanged: s.unchanged,
        rejected: s.rejected,
        rejections: s
            .files
            .iter()
            .filter_map(|f| Some(format!("{}: {}", f.name, f.reason.as_deref()?)))
            .take(LISTED_REJECTIONS)
            .collect(),
    }
}
