"""The domain DB schema: the one source of truth (sql/ is generated from it and tested equal)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

# JSONB on PostgreSQL, JSON text on SQLite.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Ts = sa.DateTime(timezone=True)


def _now() -> sa.ColumnElement:
    return sa.func.now()


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", Ts, nullable=False, server_default=_now()),
        sa.Column("updated_at", Ts, nullable=False, server_default=_now()),
    ]


schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("applied_at", Ts, nullable=False, server_default=_now()),
)

personas = sa.Table(
    "personas",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("persona_key", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("archetype", sa.Text, nullable=False),
    sa.Column("demographics", Json, nullable=False),
    sa.Column("financial_background", Json, nullable=False),
    sa.Column("communication_style", sa.Text, nullable=False),
    sa.Column("emotional_baseline", sa.Text, nullable=False),
    sa.Column("core_values", Json, nullable=False),
    sa.Column("typical_concerns", Json, nullable=False),
    *_timestamps(),
)

emotional_arcs = sa.Table(
    "emotional_arcs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("arc_key", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("starting_emotion", sa.Text, nullable=False),
    sa.Column("ending_emotion", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("key_moments", Json, nullable=False),
    *_timestamps(),
)

training_topics = sa.Table(
    "training_topics",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("topic_key", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("complexity", sa.String(16), nullable=False),
    sa.Column("key_concepts", Json, nullable=False),
    *_timestamps(),
)

prompt_templates = sa.Table(
    "prompt_templates",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("template_key", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    *_timestamps(),
)

# Single-row table: the consultant profile every conversation uses.
consultant_profiles = sa.Table(
    "consultant_profiles",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("profile", Json, nullable=False),
    *_timestamps(),
)

batch_jobs = sa.Table(
    "batch_jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    # The batch's Dagster partition key: a unique slug of its name (batches planned before slugs
    # existed have none and keep their id as key).
    sa.Column("slug", sa.String(80), unique=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False, server_default="messages"),
    sa.Column("selection", Json, nullable=False),
    sa.Column("total_items", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_by", sa.String(36), nullable=False),
    sa.Column("error", sa.Text),
    # The scaffolding rows (by id) and consultant profile as they were when the batch was planned:
    # what every item is generated, parsed and enriched from, whatever changes in the tables later.
    sa.Column("scaffolding_snapshot", Json),
    # The cost estimate made before planning (core.estimate.CostEstimate), shown beside the actual cost.
    sa.Column("estimate", Json),
    *_timestamps(),
)

batch_items = sa.Table(
    "batch_items",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("batch_job_id", sa.String(36), sa.ForeignKey("batch_jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("persona_id", sa.String(36), sa.ForeignKey("personas.id"), nullable=False),
    sa.Column("emotional_arc_id", sa.String(36), sa.ForeignKey("emotional_arcs.id"), nullable=False),
    sa.Column("training_topic_id", sa.String(36), sa.ForeignKey("training_topics.id"), nullable=False),
    sa.Column("prompt_template_id", sa.String(36), sa.ForeignKey("prompt_templates.id"), nullable=False),
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("conversation_id", sa.String(36)),
    *_timestamps(),
    sa.UniqueConstraint("batch_job_id", "position", name="uq_batch_items_position"),
)
sa.Index("ix_batch_items_job_status", batch_items.c.batch_job_id, batch_items.c.status)

# Message Batches API submissions. The intent (id = our submission token, status `submitting`)
# is written BEFORE `batches.create`, the provider's id right after; a crash between the two is
# reconciled against the provider's batch list by the next run, never resubmitted blindly.
provider_batches = sa.Table(
    "provider_batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # submission token (intent_…); msgbatch_… on rows before 002
    sa.Column("batch_job_id", sa.String(36), sa.ForeignKey("batch_jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="in_progress"),
    sa.Column("item_ids", Json, nullable=False),
    sa.Column("provider_batch_id", sa.String(64), unique=True),
    *_timestamps(),
)

# Claims: an item (or judge item) is requested only by the run holding its lease. A dead run's
# lease expires (epoch seconds) and is taken over; a live run renews its leases.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
sa.Index("ix_leases_run", leases.c.run_id)

# Every paid response, including the ones that bought nothing (duplicates, truncated and refused
# answers): what a batch cost is the sum of this table. `id` is the provider's message id (so a
# replay of a spooled answer is not counted twice), or a generated id for summed failure costs.
paid_requests = sa.Table(
    "paid_requests",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("batch_job_id", sa.String(36), sa.ForeignKey("batch_jobs.id", ondelete="CASCADE")),
    sa.Column("item_id", sa.String(80), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # stored | duplicate | wasted
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("created_at", Ts, nullable=False, server_default=_now()),
)
sa.Index("ix_paid_requests_batch", paid_requests.c.batch_job_id, paid_requests.c.outcome)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("batch_job_id", sa.String(36), sa.ForeignKey("batch_jobs.id")),
    # UNIQUE: two concurrent runs of one partition cannot both store an item's conversation.
    sa.Column("batch_item_id", sa.String(36), sa.ForeignKey("batch_items.id"), unique=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("persona_id", sa.String(36), sa.ForeignKey("personas.id")),
    sa.Column("emotional_arc_id", sa.String(36), sa.ForeignKey("emotional_arcs.id")),
    sa.Column("training_topic_id", sa.String(36), sa.ForeignKey("training_topics.id")),
    sa.Column("prompt_template_id", sa.String(36), sa.ForeignKey("prompt_templates.id")),
    sa.Column("tier", sa.String(16)),
    sa.Column("scaffolding_snapshot", Json),
    sa.Column("model", sa.Text),
    sa.Column("generator", sa.String(16)),
    sa.Column("stop_reason", sa.String(32)),
    sa.Column("request_id", sa.Text),
    sa.Column("input_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cache_creation_input_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cache_read_input_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("raw_response_path", sa.Text),
    sa.Column("file_path", sa.Text),
    sa.Column("parse_status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("parse_error", sa.Text),
    sa.Column("enriched_file_path", sa.Text),
    sa.Column("enrichment_status", sa.String(32), nullable=False, server_default="not_started"),
    sa.Column("enrichment_error", sa.Text),
    sa.Column("turn_count", sa.Integer),
    sa.Column("training_pair_count", sa.Integer),
    sa.Column("quality_score", sa.Float),
    sa.Column("judge_scores", Json),
    sa.Column("human_reviewed", sa.Boolean, nullable=False, server_default=sa.false()),
    # Human review (core.review): approve | reject | NULL (not reviewed), the reviewer's notes, when.
    # A rejected conversation never enters a training file.
    sa.Column("review_decision", sa.String(16)),
    sa.Column("reviewer_notes", sa.Text),
    sa.Column("reviewed_at", Ts),
    # The enrichment logic version its enriched.json was written by (core.enrich.ENRICHMENT_VERSION).
    sa.Column("enrichment_version", sa.String(32)),
    # What the stage's checks found while the conversation was in memory: {"run_id": the run
    # that wrote the file, "problems": {check name: [messages]}}. Checks read these instead of
    # every file again (and re-read only files another run wrote).
    sa.Column("parse_checks", Json),
    sa.Column("enrichment_checks", Json),
    *_timestamps(),
)
sa.Index("ix_conversations_batch", conversations.c.batch_job_id)
sa.Index(
    "ix_conversations_scaffolding",
    conversations.c.persona_id,
    conversations.c.emotional_arc_id,
    conversations.c.training_topic_id,
)

training_files = sa.Table(
    "training_files",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("description", sa.Text),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),
    sa.Column("min_quality", sa.Float),
    # Leave out members whose Claude-judge overall score is below this, or who were never judged.
    sa.Column("min_judge_score", sa.Float),
    sa.Column("current_version", sa.Integer, nullable=False, server_default="0"),
    # Metadata of the current version, as in the seed's training_files table.
    sa.Column("json_file_path", sa.Text),
    sa.Column("jsonl_file_path", sa.Text),
    sa.Column("conversation_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_training_pairs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("json_file_size", sa.BigInteger),
    sa.Column("jsonl_file_size", sa.BigInteger),
    sa.Column("avg_quality_score", sa.Numeric(4, 2)),
    sa.Column("min_quality_score", sa.Numeric(4, 2)),
    sa.Column("max_quality_score", sa.Numeric(4, 2)),
    sa.Column("human_reviewed_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("scaffolding_distribution", Json),
    sa.Column("created_by", sa.String(36), nullable=False),
    *_timestamps(),
)

training_file_conversations = sa.Table(
    "training_file_conversations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("training_file_id", sa.String(36), sa.ForeignKey("training_files.id", ondelete="CASCADE"), nullable=False),
    sa.Column("conversation_id", sa.String(36), sa.ForeignKey("conversations.id"), nullable=False),
    sa.Column("added_at", Ts, nullable=False, server_default=_now()),
    sa.Column("added_by", sa.String(36), nullable=False),
    sa.UniqueConstraint("training_file_id", "conversation_id", name="uq_training_file_member"),
)

# One row per built version; earlier versions stay readable.
training_file_versions = sa.Table(
    "training_file_versions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("training_file_id", sa.String(36), sa.ForeignKey("training_files.id", ondelete="CASCADE"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("json_file_path", sa.Text),
    sa.Column("jsonl_file_path", sa.Text),
    sa.Column("conversation_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_training_pairs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("json_file_size", sa.BigInteger),
    sa.Column("jsonl_file_size", sa.BigInteger),
    sa.Column("avg_quality_score", sa.Numeric(4, 2)),
    sa.Column("min_quality_score", sa.Numeric(4, 2)),
    sa.Column("max_quality_score", sa.Numeric(4, 2)),
    sa.Column("human_reviewed_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("scaffolding_distribution", Json),
    sa.Column("outputs", Json),  # format -> {path, lines, bytes}
    sa.Column("stats", Json),  # filtering / dedup / split figures
    sa.Column("conversation_ids", Json),  # exactly which conversations this version holds
    sa.Column("split", Json),  # conversation id -> train | validation
    sa.Column("built_by_run", sa.String(64)),  # the Dagster run that built it: its checks judge this version
    sa.Column("created_at", Ts, nullable=False, server_default=_now()),
    sa.UniqueConstraint("training_file_id", "version", name="uq_training_file_version"),
)

SCAFFOLDING_TABLES = (personas, emotional_arcs, training_topics, prompt_templates)
