-- The job queue and the content-addressed caches (docs/architecture.md, "Jobs").

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    team_id           uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('score', 'matrix')),
    -- The normalised request (every default filled in): what the worker runs.
    spec              jsonb NOT NULL,
    -- Every dataset the job reads, for filtering and for refusing to delete them mid-job.
    datasets          uuid[] NOT NULL,
    idempotency_key   text,
    -- blake3 of the normalised request: a replayed key with another body is refused.
    request_hash      text NOT NULL,
    -- queued → running → succeeded | failed (fatal) | cancelled | dead (retries exhausted).
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'dead')),
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL CHECK (max_attempts >= 1),
    -- Not claimable before this (backoff after a failed attempt).
    run_at            timestamptz NOT NULL DEFAULT now(),
    -- Incremented on every claim; a worker's writes name the value it claimed with, so a worker
    -- whose lease expired (and whose job someone else now holds) cannot write.
    fence             bigint NOT NULL DEFAULT 0,
    locked_by         text,
    locked_until      timestamptz,
    cancel_requested  boolean NOT NULL DEFAULT false,
    progress_phase    text NOT NULL DEFAULT 'queued',
    progress_done     bigint NOT NULL DEFAULT 0,
    progress_total    bigint NOT NULL DEFAULT 0,
    -- Cache hits and extraction counts of the attempt that finished.
    work              jsonb,
    result            jsonb,
    -- Problem details (RFC 9457) of a failed, dead or cancelled job.
    error             jsonb,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    claimed_at        timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (team_id, idempotency_key)
);
CREATE INDEX jobs_claimable ON jobs (team_id, run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_running ON jobs (locked_until) WHERE status = 'running';
CREATE INDEX jobs_team_created ON jobs (team_id, id DESC);
CREATE INDEX jobs_datasets ON jobs USING gin (datasets);

-- When each team was last served: the claim goes to the team served longest ago, so one team's
-- backlog cannot starve another team's single job.
CREATE TABLE job_team_turns (
    team_id          uuid PRIMARY KEY REFERENCES teams (id) ON DELETE CASCADE,
    last_claimed_at  timestamptz NOT NULL
);

-- What happened to a job, in order: claims, phases, progress, retries and the final state. The
-- SSE stream replays it.
CREATE TABLE job_events (
    job_id  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     bigserial,
    at      timestamptz NOT NULL DEFAULT now(),
    kind    text NOT NULL,
    data    jsonb NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Caches. `scope` is the owning team, or the nil uuid when the instance shares caches across
-- teams (off by default: a hit would reveal that another team holds the same images).

-- One image's output of one extractor tap, float32 little-endian (the model's own precision).
CREATE TABLE feature_cache (
    scope       uuid NOT NULL,
    extractor   text NOT NULL,
    tap         text NOT NULL,
    image_hash  bytea NOT NULL CHECK (length(image_hash) = 32),
    dim         integer NOT NULL,
    data        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, extractor, tap, image_hash)
);

-- Sufficient statistics (n, mean, centred scatter; float64) of a dataset's content.
CREATE TABLE stats_cache (
    scope         uuid NOT NULL,
    extractor     text NOT NULL,
    tap           text NOT NULL,
    content_hash  text NOT NULL,
    n             bigint NOT NULL,
    dim           integer NOT NULL,
    mean          bytea NOT NULL,
    scatter       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, extractor, tap, content_hash)
);

-- The latest statistics of each dataset with the images they cover (sorted 32-byte hashes,
-- concatenated): when images are added, only the new ones are read or extracted and merged in.
CREATE TABLE stats_checkpoints (
    scope       uuid NOT NULL,
    dataset_id  uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    extractor   text NOT NULL,
    tap         text NOT NULL,
    images      bytea NOT NULL,
    n           bigint NOT NULL,
    dim         integer NOT NULL,
    mean        bytea NOT NULL,
    scatter     bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, dataset_id, extractor, tap)
);

-- Finished results by request: datasets (id and content), extractor, metrics and parameters.
CREATE TABLE result_cache (
    scope       uuid NOT NULL,
    key         text NOT NULL,
    -- The datasets it scores: deleting one deletes its results.
    datasets    uuid[] NOT NULL,
    result      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX result_cache_datasets ON result_cache USING gin (datasets);
