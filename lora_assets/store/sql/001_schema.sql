-- Generated from lora_assets/store/tables.py by `lora-assets sql`. Do not edit by hand.

CREATE TABLE IF NOT EXISTS batch_jobs (
	id VARCHAR(36) NOT NULL, 
	name TEXT NOT NULL, 
	slug VARCHAR(80), 
	status VARCHAR(16) DEFAULT 'queued' NOT NULL, 
	tier VARCHAR(16) NOT NULL, 
	model TEXT NOT NULL, 
	mode VARCHAR(16) DEFAULT 'messages' NOT NULL, 
	selection JSONB NOT NULL, 
	total_items INTEGER DEFAULT '0' NOT NULL, 
	created_by VARCHAR(36) NOT NULL, 
	error TEXT, 
	scaffolding_snapshot JSONB, 
	estimate JSONB, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (slug)
);

CREATE TABLE IF NOT EXISTS consultant_profiles (
	id VARCHAR(36) NOT NULL, 
	profile JSONB NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE IF NOT EXISTS emotional_arcs (
	id VARCHAR(36) NOT NULL, 
	arc_key VARCHAR(64) NOT NULL, 
	name TEXT NOT NULL, 
	starting_emotion TEXT NOT NULL, 
	ending_emotion TEXT NOT NULL, 
	description TEXT NOT NULL, 
	key_moments JSONB NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (arc_key)
);

CREATE TABLE IF NOT EXISTS leases (
	key VARCHAR(80) NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (key)
);

CREATE INDEX IF NOT EXISTS ix_leases_run ON leases (run_id);

CREATE TABLE IF NOT EXISTS personas (
	id VARCHAR(36) NOT NULL, 
	persona_key VARCHAR(64) NOT NULL, 
	name TEXT NOT NULL, 
	archetype TEXT NOT NULL, 
	demographics JSONB NOT NULL, 
	financial_background JSONB NOT NULL, 
	communication_style TEXT NOT NULL, 
	emotional_baseline TEXT NOT NULL, 
	core_values JSONB NOT NULL, 
	typical_concerns JSONB NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (persona_key)
);

CREATE TABLE IF NOT EXISTS prompt_templates (
	id VARCHAR(36) NOT NULL, 
	template_key VARCHAR(64) NOT NULL, 
	name TEXT NOT NULL, 
	tier VARCHAR(16) NOT NULL, 
	body TEXT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (template_key)
);

CREATE TABLE IF NOT EXISTS schema_migrations (
	version VARCHAR(64) NOT NULL, 
	applied_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (version)
);

CREATE TABLE IF NOT EXISTS training_files (
	id VARCHAR(36) NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	description TEXT, 
	status VARCHAR(16) DEFAULT 'active' NOT NULL, 
	min_quality FLOAT, 
	min_judge_score FLOAT, 
	current_version INTEGER DEFAULT '0' NOT NULL, 
	json_file_path TEXT, 
	jsonl_file_path TEXT, 
	conversation_count INTEGER DEFAULT '0' NOT NULL, 
	total_training_pairs INTEGER DEFAULT '0' NOT NULL, 
	json_file_size BIGINT, 
	jsonl_file_size BIGINT, 
	avg_quality_score NUMERIC(4, 2), 
	min_quality_score NUMERIC(4, 2), 
	max_quality_score NUMERIC(4, 2), 
	human_reviewed_count INTEGER DEFAULT '0' NOT NULL, 
	scaffolding_distribution JSONB, 
	created_by VARCHAR(36) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS training_topics (
	id VARCHAR(36) NOT NULL, 
	topic_key VARCHAR(64) NOT NULL, 
	name TEXT NOT NULL, 
	category TEXT NOT NULL, 
	description TEXT NOT NULL, 
	complexity VARCHAR(16) NOT NULL, 
	key_concepts JSONB NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (topic_key)
);

CREATE TABLE IF NOT EXISTS batch_items (
	id VARCHAR(36) NOT NULL, 
	batch_job_id VARCHAR(36) NOT NULL, 
	position INTEGER NOT NULL, 
	persona_id VARCHAR(36) NOT NULL, 
	emotional_arc_id VARCHAR(36) NOT NULL, 
	training_topic_id VARCHAR(36) NOT NULL, 
	prompt_template_id VARCHAR(36) NOT NULL, 
	tier VARCHAR(16) NOT NULL, 
	status VARCHAR(16) DEFAULT 'pending' NOT NULL, 
	attempts INTEGER DEFAULT '0' NOT NULL, 
	error TEXT, 
	conversation_id VARCHAR(36), 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_batch_items_position UNIQUE (batch_job_id, position), 
	FOREIGN KEY(batch_job_id) REFERENCES batch_jobs (id) ON DELETE CASCADE, 
	FOREIGN KEY(persona_id) REFERENCES personas (id), 
	FOREIGN KEY(emotional_arc_id) REFERENCES emotional_arcs (id), 
	FOREIGN KEY(training_topic_id) REFERENCES training_topics (id), 
	FOREIGN KEY(prompt_template_id) REFERENCES prompt_templates (id)
);

CREATE INDEX IF NOT EXISTS ix_batch_items_job_status ON batch_items (batch_job_id, status);

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

CREATE TABLE IF NOT EXISTS provider_batches (
	id VARCHAR(64) NOT NULL, 
	batch_job_id VARCHAR(36) NOT NULL, 
	status VARCHAR(16) DEFAULT 'in_progress' NOT NULL, 
	item_ids JSONB NOT NULL, 
	provider_batch_id VARCHAR(64), 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(batch_job_id) REFERENCES batch_jobs (id) ON DELETE CASCADE, 
	UNIQUE (provider_batch_id)
);

CREATE TABLE IF NOT EXISTS training_file_versions (
	id VARCHAR(36) NOT NULL, 
	training_file_id VARCHAR(36) NOT NULL, 
	version INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	json_file_path TEXT, 
	jsonl_file_path TEXT, 
	conversation_count INTEGER DEFAULT '0' NOT NULL, 
	total_training_pairs INTEGER DEFAULT '0' NOT NULL, 
	json_file_size BIGINT, 
	jsonl_file_size BIGINT, 
	avg_quality_score NUMERIC(4, 2), 
	min_quality_score NUMERIC(4, 2), 
	max_quality_score NUMERIC(4, 2), 
	human_reviewed_count INTEGER DEFAULT '0' NOT NULL, 
	scaffolding_distribution JSONB, 
	outputs JSONB, 
	stats JSONB, 
	conversation_ids JSONB, 
	split JSONB, 
	built_by_run VARCHAR(64), 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_training_file_version UNIQUE (training_file_id, version), 
	FOREIGN KEY(training_file_id) REFERENCES training_files (id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS conversations (
	id VARCHAR(36) NOT NULL, 
	batch_job_id VARCHAR(36), 
	batch_item_id VARCHAR(36), 
	user_id VARCHAR(36) NOT NULL, 
	persona_id VARCHAR(36), 
	emotional_arc_id VARCHAR(36), 
	training_topic_id VARCHAR(36), 
	prompt_template_id VARCHAR(36), 
	tier VARCHAR(16), 
	scaffolding_snapshot JSONB, 
	model TEXT, 
	generator VARCHAR(16), 
	stop_reason VARCHAR(32), 
	request_id TEXT, 
	input_tokens INTEGER DEFAULT '0' NOT NULL, 
	output_tokens INTEGER DEFAULT '0' NOT NULL, 
	cache_creation_input_tokens INTEGER DEFAULT '0' NOT NULL, 
	cache_read_input_tokens INTEGER DEFAULT '0' NOT NULL, 
	cost_usd FLOAT DEFAULT '0' NOT NULL, 
	raw_response_path TEXT, 
	file_path TEXT, 
	parse_status VARCHAR(16) DEFAULT 'pending' NOT NULL, 
	parse_error TEXT, 
	enriched_file_path TEXT, 
	enrichment_status VARCHAR(32) DEFAULT 'not_started' NOT NULL, 
	enrichment_error TEXT, 
	turn_count INTEGER, 
	training_pair_count INTEGER, 
	quality_score FLOAT, 
	judge_scores JSONB, 
	human_reviewed BOOLEAN DEFAULT false NOT NULL, 
	review_decision VARCHAR(16), 
	reviewer_notes TEXT, 
	reviewed_at TIMESTAMP WITH TIME ZONE, 
	enrichment_version VARCHAR(32), 
	parse_checks JSONB, 
	enrichment_checks JSONB, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(batch_job_id) REFERENCES batch_jobs (id), 
	UNIQUE (batch_item_id), 
	FOREIGN KEY(batch_item_id) REFERENCES batch_items (id), 
	FOREIGN KEY(persona_id) REFERENCES personas (id), 
	FOREIGN KEY(emotional_arc_id) REFERENCES emotional_arcs (id), 
	FOREIGN KEY(training_topic_id) REFERENCES training_topics (id), 
	FOREIGN KEY(prompt_template_id) REFERENCES prompt_templates (id)
);

CREATE INDEX IF NOT EXISTS ix_conversations_batch ON conversations (batch_job_id);

CREATE INDEX IF NOT EXISTS ix_conversations_scaffolding ON conversations (persona_id, emotional_arc_id, training_topic_id);

CREATE TABLE IF NOT EXISTS training_file_conversations (
	id VARCHAR(36) NOT NULL, 
	training_file_id VARCHAR(36) NOT NULL, 
	conversation_id VARCHAR(36) NOT NULL, 
	added_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	added_by VARCHAR(36) NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_training_file_member UNIQUE (training_file_id, conversation_id), 
	FOREIGN KEY(training_file_id) REFERENCES training_files (id) ON DELETE CASCADE, 
	FOREIGN KEY(conversation_id) REFERENCES conversations (id)
);
