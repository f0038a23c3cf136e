"""Scaffolding records: personas, emotional arcs, training topics, prompt templates, consultant."""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEY_PATTERN = r"^[a-z][a-z0-9_]{1,63}$"
PLACEHOLDER_RE = re.compile(r"\{\{\s*([a-zA-Z0-9_]+)\s*\}\}")
# Stable ids: the same key gets the same id on every database, so provenance survives re-inits.
_SCAFFOLDING_NS = uuid.UUID("6f3b0c64-6d1f-4a53-9a39-3c7f0f3f2a10")

Tier = Literal["template", "scenario", "edge_case"]


def scaffolding_id(kind: str, key: str) -> str:
    """Deterministic UUID for a scaffolding record of `kind` with `key`."""
    return str(uuid.uuid5(_SCAFFOLDING_NS, f"{kind}:{key}"))


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Persona(_Record):
    """A client persona. `demographics` is a JSON object on purpose: it must render as text."""

    id: str | None = None
    persona_key: str = Field(pattern=KEY_PATTERN)
    name: str = Field(min_length=1)
    archetype: str = Field(min_length=1, description='Display archetype, e.g. "The Pragmatic Optimist".')
    demographics: dict[str, Any] = Field(min_length=1)
    financial_background: str | dict[str, Any] = Field(min_length=1)
    communication_style: str = Field(min_length=1)
    emotional_baseline: str = Field(min_length=1)
    core_values: list[str] = Field(default_factory=list)
    typical_concerns: list[str] = Field(default_factory=list)

    def model_post_init(self, _ctx: Any) -> None:
        if self.id is None:
            self.id = scaffolding_id("persona", self.persona_key)


class EmotionalArc(_Record):
    """How the client's feelings should move through the conversation."""

    id: str | None = None
    arc_key: str = Field(pattern=KEY_PATTERN)
    name: str = Field(min_length=1, description='e.g. "Confusion → Clarity".')
    starting_emotion: str = Field(min_length=1)
    ending_emotion: str = Field(min_length=1)
    description: str = Field(min_length=1)
    key_moments: list[str] = Field(default_factory=list)

    def model_post_init(self, _ctx: Any) -> None:
        if self.id is None:
            self.id = scaffolding_id("emotional_arc", self.arc_key)


class TrainingTopic(_Record):
    """A financial-planning subject the conversation teaches."""

    id: str | None = None
    topic_key: str = Field(pattern=KEY_PATTERN)
    name: str = Field(min_length=1)
    category: str = Field(min_length=1)
    description: str = Field(min_length=1)
    complexity: Literal["beginner", "intermediate", "advanced"] = "intermediate"
    key_concepts: list[str] = Field(default_factory=list)

    def model_post_init(self, _ctx: Any) -> None:
        if self.id is None:
            self.id = scaffolding_id("training_topic", self.topic_key)


class PromptTemplate(_Record):
    """A user-prompt body with `{{placeholder}}` slots, one per tier."""

    id: str | None = None
    template_key: str = Field(pattern=KEY_PATTERN)
    name: str = Field(min_length=1)
    tier: Tier
    body: str = Field(min_length=1)

    def model_post_init(self, _ctx: Any) -> None:
        if self.id is None:
            self.id = scaffolding_id("prompt_template", self.template_key)

    @property
    def placeholders(self) -> list[str]:
        """Placeholder names used in the body, in order of first use."""
        return list(dict.fromkeys(PLACEHOLDER_RE.findall(self.body)))


class CommunicationStyle(_Record):
    tone: str
    techniques: list[str] = Field(default_factory=list)
    avoid: list[str] = Field(default_factory=list)


class ConsultantProfile(_Record):
    """The one advisor every conversation is with; the static part of the system prompt."""

    name: str = Field(min_length=1)
    business: str = Field(min_length=1)
    expertise: str = Field(min_length=1)
    years_experience: int = Field(ge=0)
    core_philosophy: dict[str, str] = Field(default_factory=dict)
    communication_style: CommunicationStyle


class ScaffoldingBundle(_Record):
    """Everything `lora-assets init` loads, validated as one unit before anything is written."""

    personas: list[Persona]
    emotional_arcs: list[EmotionalArc]
    training_topics: list[TrainingTopic]
    prompt_templates: list[PromptTemplate]
    consultant_profile: ConsultantProfile

    @field_validator("personas", "emotional_arcs", "training_topics", "prompt_templates")
    @classmethod
    def _keys_unique(cls, records: list[Any], info: Any) -> list[Any]:
        key_field = {
            "personas": "persona_key",
            "emotional_arcs": "arc_key",
            "training_topics": "topic_key",
            "prompt_templates": "template_key",
        }[info.field_name]
        seen: dict[str, int] = {}
        for index, record in enumerate(records):
            key = getattr(record, key_field)
            if key in seen:
                raise ValueError(
                    f"duplicate {key_field} {key!r} at {info.field_name}[{index}] "
                    f"(first at {info.field_name}[{seen[key]}])"
                )
            seen[key] = index
        return records


class ResolvedScaffolding(_Record):
    """The scaffolding of one item, read from the DB by the IDs fixed at planning time."""

    persona: Persona
    emotional_arc: EmotionalArc
    training_topic: TrainingTopic
    prompt_template: PromptTemplate | None = None
