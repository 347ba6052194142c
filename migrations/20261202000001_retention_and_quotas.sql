-- Retention and quotas (docs/operations.md): what the sweeper needs to find old and unreferenced
-- rows cheaply, and per-team limits set by an admin.

-- When a cached feature row was last read: the byte budget evicts the least recently used.
-- Reads refresh it at most hourly, so hits do not turn into a write per row.
ALTER TABLE feature_cache ADD COLUMN used_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX feature_cache_used ON feature_cache (used_at);

-- The content hashes of the datasets a result scored, in `datasets` order: a result whose
-- datasets all still hold that content is live; others can never be looked up again. NULL on
-- rows cached before this column existed (they are judged by their datasets' existence).
ALTER TABLE result_cache ADD COLUMN content_hashes text[];

CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'dead');

-- A team's own limits; NULL falls back to the instance's [quotas] defaults, 0 = unlimited.
CREATE TABLE team_quotas (
    team_id      uuid PRIMARY KEY REFERENCES teams (id) ON DELETE CASCADE,
    datasets     bigint CHECK (datasets >= 0),
    images       bigint CHECK (images >= 0),
    bytes        bigint CHECK (bytes >= 0),
    active_jobs  bigint CHECK (active_jobs >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
