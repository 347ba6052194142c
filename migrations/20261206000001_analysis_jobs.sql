-- The analyses of `crate::reduce` run as jobs of their own kinds (issue 15).
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN (
    'score', 'matrix', 'ingest',
    'selective_style', 'pad', 'select', 'transforms', 'sufficiency', 'explain'));
