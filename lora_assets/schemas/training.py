"""v4.0 shapes of the seed `003`: individual enriched JSON, aggregated training file, JSONL line."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_assets.schemas.conversation import EmotionalContext, InputParameters
from lora_assets.schemas.scaffolding import ConsultantProfile

VERTICAL = "financial_planning_consultant"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairConversationMetadata(_Model):
    """Per-pair context. Scaffolding fields are None only for legacy conversations."""

    client_persona: str
    persona_archetype: str | None = Field(description="The persona key, as in the seed (e.g. pragmatic_optimist).")
    client_background: str
    emotional_arc: str | None
    emotional_arc_key: str | None
    training_topic: str | None
    training_topic_key: str | None
    session_context: str
    conversation_phase: str
    expected_outcome: str


class HistoryTurn(_Model):
    turn_number: int = Field(ge=1)
    role: Literal["user", "assistant"]
    content: str


class QualityCriteria(_Model):
    empathy_score: float = Field(ge=0, le=5)
    clarity_score: float = Field(ge=0, le=5)
    appropriateness_score: float = Field(ge=0, le=5)
    brand_voice_alignment: float = Field(ge=0, le=5)


class TrainingMetadata(_Model):
    difficulty_level: Literal["basic", "moderate", "advanced"]
    key_learning_objective: str
    demonstrates_skills: list[str]
    conversation_turn: int = Field(ge=1)
    emotional_progression_target: str
    quality_score: float = Field(ge=0, le=5)
    quality_criteria: QualityCriteria
    human_reviewed: bool = Field(
        default=False, description="In a training file: True when a person approved the conversation in a "
        "review import (`lora-assets review import` / the `review_import` job). Always False in enriched.json "
        "(review happens after enrichment; the build overlays the decision).")
    reviewer_notes: str | None = Field(default=None, description="The reviewer's notes from the review CSV, if any.")
    use_as_seed_example: bool = Field(
        default=False, description="Proposed as a seed example: this pair's heuristic quality_score is at least "
        "4.0. A proposal for the reviewer, not a decision: the review export (`lora-assets review export`, "
        "`review_export` job) counts the proposed pairs per conversation so a person can look at them first. "
        "Nothing is generated from it automatically.")
    generate_variations_count: int = Field(
        default=0, ge=0, description="Always 0: reserved for variation planning (generating N variations of a "
        "seed example), which does not exist yet. No stage reads it; it stays in the v4.0 shape for "
        "compatibility with the seed format.")


class TrainingPair(_Model):
    """One training example (one user turn); also exactly one JSONL line."""

    id: str
    conversation_id: str
    turn_number: int = Field(ge=1)
    conversation_metadata: PairConversationMetadata
    system_prompt: str
    conversation_history: list[HistoryTurn]
    current_user_input: str
    emotional_context: EmotionalContext | None
    target_response: str | None
    training_metadata: TrainingMetadata


class IndividualDatasetMetadata(_Model):
    dataset_name: str
    version: str = "1.0.0"
    created_date: str
    vertical: str = VERTICAL
    total_conversations: int = 1
    total_turns: int = Field(ge=0)
    enrichment_version: str | None = Field(
        default=None, description="The enrichment logic version that wrote this file (core.enrich."
        "ENRICHMENT_VERSION); None in files written before it was recorded.")


class EnrichedConversation(_Model):
    """v4.0 individual enriched JSON (`enriched.json`)."""

    dataset_metadata: IndividualDatasetMetadata
    consultant_profile: ConsultantProfile
    input_parameters: InputParameters | None
    training_pairs: list[TrainingPair]


class QualitySummary(_Model):
    avg_quality_score: float | None
    min_quality_score: float | None
    max_quality_score: float | None
    human_reviewed_count: int = 0


class ScaffoldingDistribution(_Model):
    personas: dict[str, int] = Field(default_factory=dict)
    emotional_arcs: dict[str, int] = Field(default_factory=dict)
    training_topics: dict[str, int] = Field(default_factory=dict)


class AggregateDatasetMetadata(_Model):
    dataset_name: str
    version: str = "4.0.0"
    created_date: str
    vertical: str = VERTICAL
    total_conversations: int = Field(ge=0)
    total_turns: int = Field(ge=0)
    quality_summary: QualitySummary
    scaffolding_distribution: ScaffoldingDistribution


class TrainingFileDocument(_Model):
    """v4.0 aggregated training file (the `.json` output of a training-file version)."""

    dataset_metadata: AggregateDatasetMetadata
    consultant_profile: ConsultantProfile
    training_pairs: list[TrainingPair]


TrainingFileLine = TrainingPair
