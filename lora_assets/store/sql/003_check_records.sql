-- Upgrade for databases created before stages recorded their checks' findings per conversation
-- and training-file versions recorded the run that built them.
-- Written by hand; a no-op on a database created from the current 001_schema.sql.

ALTER TABLE conversations ADD COLUMN IF NOT EXISTS parse_checks JSONB;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS enrichment_checks JSONB;
ALTER TABLE training_file_versions ADD COLUMN IF NOT EXISTS built_by_run VARCHAR(64);
