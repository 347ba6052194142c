-- A dataset holds images (the default) or only registered FID statistics: the `mu`/`sigma`
-- of a `.npz` such as a benchmark's published reference statistics, one per extractor. A
-- statistics dataset never gets images, and an image dataset never gets registered statistics.
ALTER TABLE datasets ADD COLUMN kind text NOT NULL DEFAULT 'images'
    CHECK (kind IN ('images', 'statistics'));

CREATE TABLE dataset_statistics (
    dataset_id  uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    -- The extractor id the statistics were computed with (what a job's `extractor` names).
    extractor   text NOT NULL,
    dim         integer NOT NULL CHECK (dim > 0),
    -- Little-endian float64: d means, then the d×d covariance row by row.
    mean        bytea NOT NULL,
    covariance  bytea NOT NULL,
    -- sha256 of the uploaded file, for provenance.
    sha256      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_id, extractor)
);
