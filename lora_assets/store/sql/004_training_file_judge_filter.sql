-- Upgrade for databases created before training files could leave out conversations by their
-- Claude-judge score (training_files.min_judge_score, next to min_quality).
-- Written by hand; a no-op on a database created from a 001_schema.sql that has the column.

ALTER TABLE training_files ADD COLUMN IF NOT EXISTS min_judge_score FLOAT;
