//! Per-team limits and what a team uses against them. Checks run inside the writer's
//! transaction under a per-team advisory lock, so two requests of one team cannot both pass a
//! check that only one of them fits.
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use super::ids::TeamId;

/// Limits of one team; `0` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quotas {
    /// Datasets the team holds.
    pub datasets: u64,
    /// Files stored in the team's datasets.
    pub images: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Jobs queued or running at once.
    pub active_jobs: u64,
}

/// A team's own limits as an admin set them; `None` falls back to the instance default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    pub datasets: Option<u64>,
    pub images: Option<u64>,
    pub bytes: Option<u64>,
    pub active_jobs: Option<u64>,
}

impl QuotaOverrides {
    /// The limits in force: each override, else the default.
    pub fn over(self, defaults: Quotas) -> Quotas {
        Quotas {
            datasets: self.datasets.unwrap_or(defaults.datasets),
            images: self.images.unwrap_or(defaults.images),
            bytes: self.bytes.unwrap_or(defaults.bytes),
            active_jobs: self.active_jobs.unwrap_or(defaults.active_jobs),
        }
    }
}

/// What a team holds and runs now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub datasets: u64,
    pub images: u64,
    pub bytes: u64,
    pub active_jobs: u64,
}

/// The limit a request would go over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Datasets,
    Images,
    Bytes,
    ActiveJobs,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Datasets => "datasets",
            Limit::Images => "images",
            Limit::Bytes => "bytes",
            Limit::ActiveJobs => "active_jobs",
        }
    }
}

/// A check that failed: which limit, its value, and what the team would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverQuota {
    pub limit: Limit,
    pub quota: u64,
    pub would_use: u64,
}

impl std::fmt::Display for OverQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the team's `{}` quota is {}; this request would bring it to {}",
            self.limit.as_str(),
            self.quota,
            self.would_use
        )
    }
}

impl Quotas {
    /// The first limit that adding `adding` to `usage` goes over, if any. Only the limits the
    /// request adds to are judged: a team an admin put over its byte quota can still start a
    /// job. Pure, so every rule is unit-tested.
    pub fn check(&self, usage: &Usage, adding: &Usage) -> Option<OverQuota> {
        [
            (
                Limit::Datasets,
                self.datasets,
                usage.datasets,
                adding.datasets,
            ),
            (Limit::Images, self.images, usage.images, adding.images),
            (Limit::Bytes, self.bytes, usage.bytes, adding.bytes),
            (
                Limit::ActiveJobs,
                self.active_jobs,
                usage.active_jobs,
                adding.active_jobs,
            ),
        ]
        .into_iter()
        .map(|(limit, quota, used, add)| (limit, quota, used.saturating_add(add), add))
        .find(|(_, quota, total, add)| *quota > 0 && *add > 0 && total > quota)
        .map(|(limit, quota, would_use, _)| OverQuota {
            limit,
            quota,
            would_use,
        })
    }

    /// What is left of each limit after `usage` (`None` = unlimited).
    pub fn remaining(&self, usage: &Usage) -> Remaining {
        let left = |quota: u64, used: u64| (quota > 0).then(|| quota.saturating_sub(used));
        Remaining {
            images: left(self.images, usage.images),
            bytes: left(self.bytes, usage.bytes),
            quotas: *self,
            usage: *usage,
        }
    }
}

/// Room left for files, measured when an upload or ingest starts; the ingest spends it file by
/// file and stops at the first file that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub images: Option<u64>,
    pub bytes: Option<u64>,
    quotas: Quotas,
    usage: Usage,
}

impl Remaining {
    /// Spends one file of `bytes`; the limit it would go over otherwise.
    pub fn spend(&mut self, bytes: u64) -> Result<(), OverQuota> {
        let adding = Usage {
            images: 1,
            bytes,
            ..Usage::default()
        };
        if let Some(over) = self.quotas.check(&self.usage, &adding) {
            return Err(over);
        }
        self.usage.images += 1;
        self.usage.bytes += bytes;
        self.images = self.images.map(|r| r - 1);
        self.bytes = self.bytes.map(|r| r - bytes);
        Ok(())
    }
}

/// Checks that `adding` fits the team's limits (its own, else `defaults`), under the team's
/// lock for the rest of the caller's transaction: the caller's write then cannot race another
/// request of the team past a limit.
pub async fn check_quota(
    conn: &mut PgConnection,
    team: TeamId,
    defaults: Quotas,
    adding: Usage,
) -> sqlx::Result<Result<(), OverQuota>> {
    lock_team(&mut *conn, team).await?;
    let quotas = team_quotas(&mut *conn, team).await?.over(defaults);
    let usage = team_usage(&mut *conn, team).await?;
    Ok(match quotas.check(&usage, &adding) {
        Some(over) => Err(over),
        None => Ok(()),
    })
}

/// Serialises the quota checks of one team until the caller's transaction ends.
pub async fn lock_team(conn: &mut PgConnection, team: TeamId) -> sqlx::Result<()> {
    // Namespaced so it never collides with the per-hash locks (which use the hash's first bytes).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('team-quota:' || $1::text, 0))")
        .bind(team)
        .execute(conn)
        .await?;
    Ok(())
}

/// The team's own limits (all `None` when an admin set none).
pub async fn team_quotas(conn: &mut PgConnection, team: TeamId) -> sqlx::Result<QuotaOverrides> {
    let row: Option<[Option<i64>; 4]> =
        sqlx::query_as::<_, (Option<i64>, Option<i64>, Option<i64>, Option<i64>)>(
            "SELECT datasets, images, bytes, active_jobs FROM team_quotas WHERE team_id = $1",
        )
        .bind(team)
        .fetch_optional(conn)
        .await?
        .map(|(d, i, b, j)| [d, i, b, j]);
    let u = |v: Option<i64>| v.map(|v| v.max(0) as u64);
    Ok(row
        .map(|[d, i, b, j]| QuotaOverrides {
            datasets: u(d),
            images: u(i),
            bytes: u(b),
            active_jobs: u(j),
        })
        .unwrap_or_default())
}

/// Replaces a team's own limits. False when there is no such team.
pub async fn set_team_quotas(
    pool: &PgPool,
    team: TeamId,
    quotas: QuotaOverrides,
) -> sqlx::Result<bool> {
    let i = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
    let done = sqlx::query(
        "INSERT INTO team_quotas (team_id, datasets, images, bytes, active_jobs)
         SELECT id, $2, $3, $4, $5 FROM teams WHERE id = $1
         ON CONFLICT (team_id) DO UPDATE SET datasets = excluded.datasets,
             images = excluded.images, bytes = excluded.bytes,
             active_jobs = excluded.active_jobs, updated_at = now()",
    )
    .bind(team)
    .bind(i(quotas.datasets))
    .bind(i(quotas.images))
    .bind(i(quotas.bytes))
    .bind(i(quotas.active_jobs))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What the team holds (as its datasets count it: files and their bytes, duplicates included)
/// and runs.
pub async fn team_usage(conn: &mut PgConnection, team: TeamId) -> sqlx::Result<Usage> {
    let (datasets, images, bytes, active): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM datasets WHERE team_id = $1),
                (SELECT coalesce(sum(image_count), 0)::bigint FROM datasets WHERE team_id = $1),
                (SELECT coalesce(sum(total_bytes), 0)::bigint FROM datasets WHERE team_id = $1),
                (SELECT count(*) FROM jobs WHERE team_id = $1 AND status IN ('queued', 'running'))",
    )
    .bind(team)
    .fetch_one(conn)
    .await?;
    let u = |v: i64| v.max(0) as u64;
    Ok(Usage {
        datasets: u(datasets),
        images: u(images),
        bytes: u(bytes),
        active_jobs: u(active),
    })
}

/// Checks, after the fact, that what a request `added` (already committed and counted) keeps
/// the team within its limits. Run after the writes are counted, under the team's lock, it sees
/// every other request of the team that counted before it: of two concurrent uploads that only
/// fit one at a time, the later check fails.
pub async fn recheck_quota(
    conn: &mut PgConnection,
    team: TeamId,
    defaults: Quotas,
    added: Usage,
) -> sqlx::Result<Result<(), OverQuota>> {
    lock_team(&mut *conn, team).await?;
    let quotas = team_quotas(&mut *conn, team).await?.over(defaults);
    let usage = team_usage(&mut *conn, team).await?;
    let before = Usage {
        datasets: usage.datasets.saturating_sub(added.datasets),
        images: usage.images.saturating_sub(added.images),
        bytes: usage.bytes.saturating_sub(added.bytes),
        active_jobs: usage.active_jobs.saturating_sub(added.active_jobs),
    };
    Ok(match quotas.check(&before, &added) {
        Some(over) => Err(over),
        None => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_unlimited_and_the_first_limit_over_is_named() {
        let q = Quotas {
            datasets: 2,
            images: 0,
            bytes: 100,
            active_jobs: 1,
        };
        let used = Usage {
            datasets: 1,
            images: 1_000_000,
            bytes: 90,
            active_jobs: 0,
        };
        let one = |f: fn(&mut Usage)| {
            let mut u = Usage::default();
            f(&mut u);
            u
        };
        assert_eq!(
            q.check(&used, &one(|u| u.datasets = 1)),
            None,
            "reaching a limit is allowed"
        );
        assert_eq!(
            q.check(&used, &one(|u| u.images = 5)),
            None,
            "0 = unlimited"
        );
        assert_eq!(
            q.check(&used, &one(|u| u.bytes = 11)),
            Some(OverQuota {
                limit: Limit::Bytes,
                quota: 100,
                would_use: 101
            })
        );
        assert_eq!(
            q.check(&used, &one(|u| u.active_jobs = 2)).unwrap().limit,
            Limit::ActiveJobs
        );
        // Already over bytes (an admin lowered the quota): a job still starts.
        let over = Usage { bytes: 500, ..used };
        assert_eq!(q.check(&over, &one(|u| u.active_jobs = 1)), None);
        let mut left = q.remaining(&used);
        assert_eq!((left.images, left.bytes), (None, Some(10)));
        left.spend(6).unwrap();
        assert_eq!(left.spend(5).unwrap_err().limit, Limit::Bytes);
        left.spend(4).unwrap();
        assert_eq!(left.bytes, Some(0));
        let o = QuotaOverrides {
            bytes: Some(0),
            ..Default::default()
        };
        assert_eq!(o.over(q).bytes, 0);
        assert_eq!(o.over(q).datasets, 2);
    }
}
