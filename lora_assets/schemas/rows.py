"""Statuses and row-level records of the domain DB that cross module boundaries."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_assets.schemas.scaffolding import Tier

class BatchJobStatus(StrEnum):
    PLANNED = "planned"  # waits for approval (estimate above the auto-approve threshold, or a pilot done)
    QUEUED = "queued"  # approved: the queued-batch sensor starts it
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ItemStatus(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"  # inside a Message Batch that is being polled
    GENERATED = "generated"
    FAILED = "failed"


class ParseStatus(StrEnum):
    PENDING = "pending"
    PARSED = "parsed"
    FAILED = "failed"


class EnrichmentStatus(StrEnum):
    NOT_STARTED = "not_started"
    IN_PROGRESS = "enrichment_in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class TrainingFileStatus(StrEnum):
    ACTIVE = "active"
    PROCESSING = "processing"
    ARCHIVED = "archived"
    FAILED = "failed"


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", from_attributes=True)


#: Thinking effort of a batch's requests (`off` disables thinking; see README "Thinking").
Effort = Literal["off", "low", "medium", "high", "xhigh", "max"]


class BatchSelection(_Row):
    """What a batch covers. Empty lists mean "all". `effort` is the thinking effort its requests
    are sent with (batches planned before it existed have none: the engine's default)."""

    persona_keys: list[str] = Field(default_factory=list)
    arc_keys: list[str] = Field(default_factory=list)
    topic_keys: list[str] = Field(default_factory=list)
    conversations_per_combination: int = Field(default=1, ge=1, le=1000)
    tier: Tier = "template"
    effort: Effort = "low"


class BatchItemPlan(_Row):
    """One planned generation, with its scaffolding fixed at planning time (design rule 1)."""

    id: str
    batch_job_id: str
    position: int
    persona_id: str
    emotional_arc_id: str
    training_topic_id: str
    prompt_template_id: str
    tier: Tier
    status: ItemStatus = ItemStatus.PENDING
    error: str | None = None
    attempts: int = 0
    conversation_id: str | None = None


class Usage(_Row):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class GenerationRecord(_Row):
    """What generation stores for one item, in one transaction with the raw blob."""

    batch_item_id: str
    model: str
    generator: Literal["claude", "simulator"]
    stop_reason: str | None
    usage: Usage
    cost_usd: float
    response: dict[str, Any] = Field(description="The API Message JSON exactly as returned (stored as raw.json).")
    request_id: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class OpenSubmission(_Row):
    """A Message Batches submission not yet closed: the intent (`token`, item ids, when it was
    recorded as epoch seconds) and, once `create` answered and was recorded, the provider id."""

    token: str
    item_ids: list[str]
    created_at: float
    provider_batch_id: str | None = None
