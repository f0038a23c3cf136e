-- training_files.storage_bucket was never written (the blob store's bucket is a setting, not
-- per-file data): dropped. Written by hand; a no-op on a database created from a 001_schema.sql
-- regenerated without the column.

ALTER TABLE training_files DROP COLUMN IF EXISTS storage_bucket;
