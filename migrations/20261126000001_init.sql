-- Teams, API keys, datasets and content-addressed images (docs/architecture.md). Image bytes live in the
-- blob store under their blake3 hash; this schema holds metadata only.

CREATE TABLE teams (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    team_id       uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name          text NOT NULL DEFAULT '',
    -- The public part of the token, used to find the row; the secret part is only hashed.
    prefix        text NOT NULL UNIQUE,
    secret_hash   bytea NOT NULL,
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    CHECK (scopes <@ ARRAY['read', 'write', 'admin']::text[])
);

CREATE TABLE datasets (
    id            uuid PRIMARY KEY,
    team_id       uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name          text NOT NULL,
    uri           text,
    status        text NOT NULL DEFAULT 'ready' CHECK (status IN ('ingesting', 'ready', 'failed')),
    error         text,
    image_count   integer NOT NULL DEFAULT 0,
    total_bytes   bigint NOT NULL DEFAULT 0,
    -- blake3 over the sorted image hashes; NULL while empty.
    content_hash  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_team_created ON datasets (team_id, created_at DESC, id DESC);

CREATE TABLE images (
    hash        bytea PRIMARY KEY CHECK (length(hash) = 32),
    bytes       bigint NOT NULL,
    width       integer NOT NULL,
    height      integer NOT NULL,
    format      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dataset_images (
    dataset_id     uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    image_hash     bytea NOT NULL REFERENCES images (hash),
    original_name  text NOT NULL,
    added_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_id, image_hash)
);
CREATE INDEX dataset_images_hash ON dataset_images (image_hash);
