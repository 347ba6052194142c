-- Datasets are multisets of files, as a folder is: every accepted file is a member under its
-- path in the upload or archive; blobs stay one per content. URI ingestion runs as a job.

-- Members are keyed by path. Older rows were keyed by content, so two of them can share a name:
-- the later ones get their hash appended to stay distinct.
ALTER TABLE dataset_images RENAME COLUMN original_name TO path;
ALTER TABLE dataset_images DROP CONSTRAINT dataset_images_pkey;
UPDATE dataset_images d SET path = d.path || '#' || encode(d.image_hash, 'hex')
 WHERE EXISTS (SELECT 1 FROM dataset_images o
                WHERE o.dataset_id = d.dataset_id AND o.path = d.path AND o.image_hash < d.image_hash);
ALTER TABLE dataset_images ADD PRIMARY KEY (dataset_id, path);
-- The order files were accepted in (scoring reads members in folder order, by path).
ALTER TABLE dataset_images ADD COLUMN position bigint GENERATED ALWAYS AS IDENTITY;

-- image_count counts files; unique_images counts distinct contents.
ALTER TABLE datasets ADD COLUMN unique_images integer NOT NULL DEFAULT 0;
UPDATE datasets SET unique_images = image_count;
-- The job that ingests the dataset's URI, if any.
ALTER TABLE datasets ADD COLUMN ingest_job uuid;

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('score', 'matrix', 'ingest'));
-- Counters a phase reports besides done/total (an ingest's files accepted and rejected).
ALTER TABLE jobs ADD COLUMN progress_counts jsonb;

-- Failures are stored as what happened ({kind, detail}); the API renders them as problem
-- details. Older rows held problem documents.
UPDATE jobs SET error = jsonb_build_object(
    'kind', CASE error->>'type' WHEN '/problems/cancelled' THEN 'cancelled'
                               WHEN '/problems/job-dead' THEN 'dead' ELSE 'failed' END,
    'detail', coalesce(error->>'detail', ''))
 WHERE error IS NOT NULL;

-- An ingest job's end decides its dataset's status, in the same statement whichever path ends
-- it (a worker's finish, a cancel, the reaper), so a dataset is never left `ingesting`.
CREATE FUNCTION ingest_job_ended() RETURNS trigger AS $$
BEGIN
    IF NEW.kind = 'ingest' AND NEW.status IS DISTINCT FROM OLD.status THEN
        IF NEW.status = 'succeeded' THEN
            UPDATE datasets SET status = 'ready', error = NULL, updated_at = now()
             WHERE id = NEW.datasets[1];
        ELSIF NEW.status IN ('failed', 'dead', 'cancelled') THEN
            UPDATE datasets SET status = 'failed', updated_at = now(),
                   error = coalesce(NEW.error->>'detail', NEW.status)
             WHERE id = NEW.datasets[1];
        END IF;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_ingest_ended AFTER UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION ingest_job_ended();
