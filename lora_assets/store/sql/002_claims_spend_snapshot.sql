-- Upgrade for databases created before claims, paid-request accounting and batch snapshots.
-- Written by hand; a no-op on a database created from the current 001_schema.sql.

ALTER TABLE batch_jobs ADD COLUMN IF NOT EXISTS scaffolding_snapshot JSONB;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'provider_batches' AND column_name = 'provider_batch_id') THEN
        ALTER TABLE provider_batches ADD COLUMN provider_batch_id VARCHAR(64) UNIQUE;
        -- Rows written before 002 are keyed by the provider's id.
        UPDATE provider_batches SET provider_batch_id = id;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS leases (
	key VARCHAR(80) NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (key)
);

CREATE INDEX IF NOT EXISTS ix_leases_run ON leases (run_id);

CREATE TABLE IF NOT EXISTS paid_requests (
	id VARCHAR(80) NOT NULL, 
	batch_job_id VARCHAR(36), 
	item_id VARCHAR(80) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	cost_usd FLOAT DEFAULT '0' NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(batch_job_id) REFERENCES batch_jobs (id) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS ix_paid_requests_batch ON paid_requests (batch_job_id, outcome);
