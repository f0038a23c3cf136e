"""Conversation shapes: what the model returns (raw) and what parsing stores (parsed)."""

from __future__ import annotations

from typing import Annotated, Literal

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


#: A populated text field: at least one non-whitespace character ("   " is not a value).
Populated = Annotated[str, Field(min_length=1, pattern=r"\S")]


class InputParameters(_Model):
    """Provenance of a conversation, resolved from the DB scaffolding, never from model output."""

    persona_id: Populated
    persona_key: Populated
    persona_name: Populated
    persona_archetype: Populated
    emotional_arc_id: Populated
    emotional_arc_key: Populated
    emotional_arc_name: Populated
    training_topic_id: Populated
    training_topic_key: Populated
    training_topic_name: Populated


class ParsedConversation(_Model):
    """A validated conversation plus its provenance. `input_parameters` is None only for
    conversations written before it existed (they must still enrich)."""

    conversation_metadata: ConversationMetadata
    input_parameters: InputParameters | None = None
    turns: list[Turn] = Field(min_length=2)
