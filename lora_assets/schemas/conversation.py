"""Conversation shapes: what the model returns (raw) and what parsing stores (parsed)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmotionalContext(_Model):
    """Emotions detected in (or intended for) one turn."""

    primary_emotion: str = Field(min_length=1)
    secondary_emotions: list[str] = Field(default_factory=list)
    intensity: float = Field(ge=0.0, le=1.0)


class Turn(_Model):
    turn_number: int = Field(ge=1)
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)
    emotional_context: EmotionalContext | None = None


class ConversationMetadata(_Model):
    client_persona: str = Field(min_length=1)
    session_context: str = Field(min_length=1)
    conversation_phase: str = Field(min_length=1)
    expected_outcome: str = Field(min_length=1)


class RawConversation(_Model):
    """The JSON the model must return (also the structured-output schema sent to Claude)."""

    conversation_metadata: ConversationMetadata
    turns: list[Turn] = Field(min_length=2)


class InputParameters(_Model):
    """Provenance of a conversation, resolved from the DB scaffolding, never from model output."""

    persona_id: str = Field(min_length=1)
    persona_key: str = Field(min_length=1)
    persona_name: str = Field(min_length=1)
    persona_archetype: str = Field(min_length=1)
    emotional_arc_id: str = Field(min_length=1)
    emotional_arc_key: str = Field(min_length=1)
    emotional_arc_name: str = Field(min_length=1)
    training_topic_id: str = Field(min_length=1)
    training_topic_key: str = Field(min_length=1)
    training_topic_name: str = Field(min_length=1)


class ParsedConversation(_Model):
    """A validated conversation plus its provenance. `input_parameters` is None only for
    conversations written before it existed (they must still enrich)."""

    conversation_metadata: ConversationMetadata
    input_parameters: InputParameters | None = None
    turns: list[Turn] = Field(min_length=2)
