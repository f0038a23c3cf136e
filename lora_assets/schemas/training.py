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
    human_reviewed: bool = False
    reviewer_notes: str | None = None
    use_as_seed_example: bool = False
    generate_variations_count: int = Field(default=0, ge=0)


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
