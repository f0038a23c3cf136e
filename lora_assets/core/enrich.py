"""Enrich stage: a `ParsedConversation` → the v4.0 individual enriched JSON (`EnrichedConversation`).

One training pair per client (user) turn: everything said before it is the history, the
advisor's next turn is the target. Each pair carries the conversation's scaffolding
(`persona_archetype`, `emotional_arc`, `emotional_arc_key`, `training_topic`,
`training_topic_key`) copied from `input_parameters`, a readable `client_background`, the
advisor's training system prompt and heuristic quality metadata (see `core.quality`).

Backward compatible (design rule 5): a conversation written before `input_parameters` existed
still enriches; its scaffolding fields come out null and its background falls back to
"Client profile: <client_persona>" when no persona is given.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from lora_assets.core.parse import turn_problems
from lora_assets.core.quality import detect_skills, overall, score_response
from lora_assets.core.text import client_background as render_client_background
from lora_assets.core.validate import is_readable_text
from lora_assets.schemas import ConsultantProfile, ParsedConversation, Persona, TrainingTopic, Turn
from lora_assets.schemas.training import EnrichedConversation

EnrichErrorKind = Literal["invalid_conversation", "scaffolding_mismatch", "unreadable_client_background"]

#: Topic complexity → the v4.0 difficulty level. Without a topic we assume the middle.
DIFFICULTY: dict[str, Literal["basic", "moderate", "advanced"]] = {
    "beginner": "basic",
    "intermediate": "moderate",
    "advanced": "advanced",
}
DEFAULT_DIFFICULTY: Literal["moderate"] = "moderate"

#: Version of the enrichment logic, recorded in every enriched.json
#: (`dataset_metadata.enrichment_version`) and on its row (`conversations.enrichment_version`).
#: BUMP IT whenever a change here (or in core.quality / core.text / the training system prompt)
#: changes what an enriched.json holds: rows with an older version are then known to be stale,
#: and `lora-assets enrich --batch KEY --re-enrich` rewrites them from the stored parsed files.
ENRICHMENT_VERSION = "2"

#: Pairs at or above this quality score are proposed as seed examples: `use_as_seed_example`
#: is a proposal for the reviewer (the review export counts them per conversation), not a
#: decision; humans approve or reject the conversation.
SEED_EXAMPLE_THRESHOLD = 4.0

#: Used when no user turn of the conversation records an emotion.
UNKNOWN_EMOTION = "unspecified"


class EnrichError(ValueError):
    """A conversation that cannot be enriched; `str()` is "conversation <id>: <reason>"."""

    def __init__(self, conversation_id: str, reason: str, kind: EnrichErrorKind = "invalid_conversation") -> None:
        self.conversation_id = conversation_id
        self.reason = reason
        self.kind: EnrichErrorKind = kind
        super().__init__(f"conversation {conversation_id}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.conversation_id, self.reason, self.kind))


def training_system_prompt(consultant: ConsultantProfile) -> str:
    """The system prompt the fine-tuned advisor is trained (and later run) with.

    Unlike the generation prompt (`core.prompt.system_prompt`) it speaks to the advisor, not to a
    conversation writer, and carries no output-format rules.
    """
    style = consultant.communication_style
    lines = [
        f"You are {consultant.name}, a financial planner at {consultant.business} specialising in "
        f"{consultant.expertise}, with {consultant.years_experience} years of experience.",
    ]
    if consultant.core_philosophy:
        lines.append("")
        lines.append("Your core philosophy:")
        lines.extend(f"- {value}" for value in consultant.core_philosophy.values())
    lines.append("")
    lines.append(f"Your tone is {style.tone}.")
    if style.techniques:
        lines.append("In every answer you:")
        lines.extend(f"- {technique}" for technique in style.techniques)
    if style.avoid:
        lines.append("You avoid:")
        lines.extend(f"- {item}" for item in style.avoid)
    lines.append("")
    lines.append(
        "Acknowledge the client's feelings before the facts, teach the why behind each suggestion, "
        "and never recommend individual securities or promise returns."
    )
    return "\n".join(lines)


def _decoded(value: Any) -> Any:
    """A text column that holds a JSON object/list (TEXT vs JSONB drift) as the value itself."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def client_background_for(persona: Persona | None, client_persona: str) -> str:
    """Readable `client_background`: "<demographics>; <financial background>" from the persona,
    whether its fields are text or JSON objects; "Client profile: <client_persona>" without one."""
    if persona is None:
        return f"Client profile: {client_persona}"
    text = render_client_background(_decoded(persona.demographics), _decoded(persona.financial_background))
    return text or f"Client profile: {client_persona}"


def _difficulty(topic: TrainingTopic | None) -> Literal["basic", "moderate", "advanced"]:
    return DIFFICULTY.get(topic.complexity, DEFAULT_DIFFICULTY) if topic is not None else DEFAULT_DIFFICULTY


def _learning_objective(topic: TrainingTopic | None, parsed: ParsedConversation) -> str:
    if topic is not None:
        return f"{topic.name}: {topic.description}"
    # Without the topic record the conversation's own expected outcome is the best objective.
    return parsed.conversation_metadata.expected_outcome


def _progression_target(user_turns: list[Turn], position: int) -> str:
    """The emotion the advisor should move the client towards: the next user turn's primary
    emotion (the last user turn's own emotion for the last pair)."""
    for turn in user_turns[position + 1 :]:
        if turn.emotional_context is not None:
            return turn.emotional_context.primary_emotion
    # Last pair (or later turns unlabelled): the latest recorded emotion up to this turn.
    for turn in reversed(user_turns[: position + 1]):
        if turn.emotional_context is not None:
            return turn.emotional_context.primary_emotion
    return UNKNOWN_EMOTION


def _check_scaffolding(
    parsed: ParsedConversation, conversation_id: str, persona: Persona | None, topic: TrainingTopic | None
) -> None:
    """The persona/topic records passed in must be the ones `input_parameters` names."""
    params = parsed.input_parameters
    if params is None:
        return
    if persona is not None and persona.persona_key != params.persona_key:
        raise EnrichError(
            conversation_id,
            f"persona {persona.persona_key!r} does not match input_parameters.persona_key {params.persona_key!r}",
            "scaffolding_mismatch",
        )
    if topic is not None and topic.topic_key != params.training_topic_key:
        raise EnrichError(
            conversation_id,
            f"training topic {topic.topic_key!r} does not match input_parameters.training_topic_key "
            f"{params.training_topic_key!r}",
            "scaffolding_mismatch",
        )


def enrich_conversation(
    parsed: ParsedConversation,
    *,
    conversation_id: str,
    consultant: ConsultantProfile,
    persona: Persona | None = None,
    training_topic: TrainingTopic | None = None,
    created_date: str,
) -> EnrichedConversation:
    """Build the v4.0 enriched document of one conversation (pure; see module docstring).

    `persona` and `training_topic` are the DB records named by `input_parameters` (None for a
    legacy conversation or when unknown). Raises `EnrichError` for a turn list that is not a
    valid conversation, for records that contradict `input_parameters`, and for a background
    that would not be readable text.
    """
    problems = turn_problems(parsed.turns)
    if problems:
        first = problems[0]
        raise EnrichError(conversation_id, f"{first.where} {first.message}")
    _check_scaffolding(parsed, conversation_id, persona, training_topic)

    meta = parsed.conversation_metadata
    params = parsed.input_parameters
    background = client_background_for(persona, meta.client_persona)
    if not is_readable_text(background):
        raise EnrichError(
            conversation_id,
            f"client_background would not be readable text: {background[:120]!r}",
            "unreadable_client_background",
        )
    pair_metadata = {
        "client_persona": meta.client_persona,
        "persona_archetype": params.persona_key if params else None,
        "client_background": background,
        "emotional_arc": params.emotional_arc_name if params else None,
        "emotional_arc_key": params.emotional_arc_key if params else None,
        "training_topic": params.training_topic_name if params else None,
        "training_topic_key": params.training_topic_key if params else None,
        "session_context": meta.session_context,
        "conversation_phase": meta.conversation_phase,
        "expected_outcome": meta.expected_outcome,
    }
    system_prompt = training_system_prompt(consultant)
    difficulty = _difficulty(training_topic)
    objective = _learning_objective(training_topic, parsed)

    turns = parsed.turns
    user_turns = [t for t in turns if t.role == "user"]
    # The pairs are plain data, validated once as the whole document below: pydantic-core builds
    # every pair's own metadata and history turns (no pair shares an instance with another, so
    # an edit of one never edits all) several times faster than constructing and copying models
    # in Python, and the document is checked against its schema as it is made.
    history = [{"turn_number": t.turn_number, "role": t.role, "content": t.content} for t in turns]
    pairs: list[dict[str, Any]] = []
    for index, turn in enumerate(turns):
        if turn.role != "user":
            continue
        following = turns[index + 1] if index + 1 < len(turns) else None
        target = following.content if following is not None and following.role == "assistant" else None
        criteria = score_response(target, turn.content, turn.emotional_context, consultant)
        score = overall(criteria)
        pairs.append({
            "id": f"{conversation_id}_turn{turn.turn_number}",
            "conversation_id": conversation_id,
            "turn_number": turn.turn_number,
            "conversation_metadata": pair_metadata,
            "system_prompt": system_prompt,
            "conversation_history": history[:index],
            "current_user_input": turn.content,
            "emotional_context": turn.emotional_context,
            "target_response": target,
            "training_metadata": {
                "difficulty_level": difficulty,
                "key_learning_objective": objective,
                "demonstrates_skills": detect_skills(target),
                "conversation_turn": turn.turn_number,
                "emotional_progression_target": _progression_target(user_turns, len(pairs)),
                "quality_score": score,
                "quality_criteria": criteria,
                "human_reviewed": False,
                "reviewer_notes": None,
                "use_as_seed_example": score >= SEED_EXAMPLE_THRESHOLD,
                # 0 until variation planning exists (see the schema field's description).
                "generate_variations_count": 0,
            },
        })
    return EnrichedConversation.model_validate({
        "dataset_metadata": {
            "dataset_name": f"fp_conversation_{conversation_id}",
            "version": "1.0.0",
            "created_date": created_date,
            "total_conversations": 1,
            # Turns of the conversation (client + advisor), as in the seed's example (7 turns).
            "total_turns": len(turns),
            # Read at call time (not bound at import) so a bump is seen by the next enrichment.
            "enrichment_version": ENRICHMENT_VERSION,
        },
        "consultant_profile": consultant,
        "input_parameters": params,
        "training_pairs": pairs,
    })
