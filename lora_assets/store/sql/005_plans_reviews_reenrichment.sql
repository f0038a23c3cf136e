-- Upgrade for databases created before batches had slugs and cost estimates, conversations had a
-- human review and recorded their enrichment version.
-- Written by hand; a no-op on a database created from the current 001_schema.sql.

ALTER TABLE batch_jobs ADD COLUMN IF NOT EXISTS slug VARCHAR(80);
CREATE UNIQUE INDEX IF NOT EXISTS batch_jobs_slug_key ON batch_jobs (slug);
ALTER TABLE batch_jobs ADD COLUMN IF NOT EXISTS estimate JSONB;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS review_decision VARCHAR(16);
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS reviewer_notes TEXT;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS reviewed_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS enrichment_version VARCHAR(32);
