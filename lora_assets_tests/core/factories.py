"""Builders of valid scaffolding and conversation models for tests.

Every builder returns a valid model with realistic defaults (the seed's David Chen /
Confusion → Clarity / mortgage payoff example) and takes keyword overrides, so a test states
only what it is about:

    persona = make_persona(demographics={"age": 52})
    parsed = make_parsed(turn_count=6, legacy=True)
"""

from __future__ import annotations

import json
from typing import Any

from lora_assets.schemas import (
    ConsultantProfile,
    ConversationMetadata,
    EmotionalArc,
    EmotionalContext,
    InputParameters,
    ParsedConversation,
    Persona,
    RawConversation,
    ResolvedScaffolding,
    TrainingTopic,
    Turn,
)
from lora_assets.schemas.scaffolding import CommunicationStyle

CONVERSATION_ID = "c8cf8756-4bb5-43eb-93e4-2ad00764126a"

EMPATHETIC_ANSWER = (
    "I hear you, and it makes complete sense to feel anxious about this. Many people in your "
    "position feel the same way, so you're not alone. Would it help if we walked through it "
    "together? First, we list your three debts and their rates. Next, we put an extra $200 a "
    "month toward the 7% loan, which means it is paid off about four years sooner. The right "
    "pace depends on your situation, so we can look at options that fit your goals."
)
CURT_GUARANTEE_ANSWER = (
    "Obviously you should have started years ago. Just buy TSLA, it's guaranteed to go up. Don't worry."
)


def make_persona(**overrides: Any) -> Persona:
    """A persona whose `demographics` is a JSON object (the "[object Object]" trap)."""
    fields: dict[str, Any] = {
        "persona_key": "pragmatic_optimist",
        "name": "David Chen",
        "archetype": "The Pragmatic Optimist",
        "demographics": {
            "age": 37,
            "gender": "male",
            "location": "Urban/Suburban",
            "family_status": "Married, 2 children",
        },
        "financial_background": "High earner with complex compensation (RSUs, bonus) and a 30-year mortgage",
        "communication_style": "Direct, asks for numbers",
        "emotional_baseline": "Optimistic but confused by conflicting advice",
        "core_values": ["family security", "efficiency"],
        "typical_concerns": ["paying the mortgage early vs investing"],
    }
    fields.update(overrides)
    return Persona(**fields)


def make_arc(**overrides: Any) -> EmotionalArc:
    fields: dict[str, Any] = {
        "arc_key": "confusion_to_clarity",
        "name": "Confusion → Clarity",
        "starting_emotion": "confusion",
        "ending_emotion": "clarity",
        "description": "The client arrives confused by conflicting advice and leaves with a clear plan.",
        "key_moments": ["names the confusion", "sees the trade-off", "chooses a next step"],
    }
    fields.update(overrides)
    return EmotionalArc(**fields)


def make_topic(**overrides: Any) -> TrainingTopic:
    fields: dict[str, Any] = {
        "topic_key": "mortgage_payoff_strategy",
        "name": "Accelerated Mortgage Payoff",
        "category": "debt",
        "description": "Weigh paying the mortgage early against investing the difference.",
        "complexity": "intermediate",
        "key_concepts": ["interest saved", "opportunity cost", "liquidity"],
    }
    fields.update(overrides)
    return TrainingTopic(**fields)


def make_consultant(**overrides: Any) -> ConsultantProfile:
    fields: dict[str, Any] = {
        "name": "Elena Morales, CFP",
        "business": "Pathways Financial Planning",
        "expertise": "fee-only financial planning for mid-career professionals",
        "years_experience": 15,
        "core_philosophy": {
            "principle_1": "Money is emotional - always acknowledge feelings before facts",
            "principle_2": "Education-first - teach the why not just the what",
        },
        "communication_style": CommunicationStyle(
            tone="warm, professional, never condescending",
            techniques=[
                "acknowledge emotions explicitly",
                "use metaphors and stories for complex concepts",
                "provide specific numbers over abstractions",
                "ask permission before educating",
                "celebrate progress and small wins",
            ],
            avoid=[
                "financial jargon without explanation",
                "assumptions about knowledge level",
                "judgment of past financial decisions",
                "overwhelming with too many options",
                "generic platitudes without specifics",
            ],
        ),
    }
    fields.update(overrides)
    return ConsultantProfile(**fields)


def make_scaffolding(
    persona: Persona | None = None, arc: EmotionalArc | None = None, topic: TrainingTopic | None = None
) -> ResolvedScaffolding:
    return ResolvedScaffolding(
        persona=persona or make_persona(),
        emotional_arc=arc or make_arc(),
        training_topic=topic or make_topic(),
    )


def make_emotion(
    primary: str = "confusion", intensity: float = 0.7, secondary: tuple[str, ...] = ()
) -> EmotionalContext:
    return EmotionalContext(primary_emotion=primary, secondary_emotions=list(secondary), intensity=intensity)


_USER_LINES = (
    "I keep hearing I should pay off my mortgage early, but others say invest. I'm honestly confused.",
    "That helps. But what if the market drops right after I invest?",
    "Okay, I think I see the trade-off now. What would a first step look like?",
    "Thanks, that feels doable. I'm actually a bit relieved.",
)
_EMOTIONS = ("confusion", "anxiety", "curiosity", "relief")


def make_turns(turn_count: int = 4, *, with_emotions: bool = True) -> list[Turn]:
    """`turn_count` alternating turns starting with the client; user turns carry emotions."""
    turns = []
    for index in range(turn_count):
        number = index + 1
        if index % 2 == 0:
            k = (index // 2) % len(_USER_LINES)
            turns.append(
                Turn(
                    turn_number=number,
                    role="user",
                    content=_USER_LINES[k],
                    emotional_context=make_emotion(_EMOTIONS[k], 0.8 - 0.15 * k) if with_emotions else None,
                )
            )
        else:
            turns.append(Turn(turn_number=number, role="assistant", content=EMPATHETIC_ANSWER))
    return turns


def make_metadata(**overrides: Any) -> ConversationMetadata:
    fields: dict[str, Any] = {
        # What the model wrote: deliberately NOT the scaffolding persona (parse must override it).
        "client_persona": "Marcus Chen - The Overwhelmed Avoider",
        "session_context": "First video meeting after an online enquiry about the mortgage.",
        "conversation_phase": "initial_opportunity_exploration",
        "expected_outcome": "The client understands the trade-off and picks a first step.",
    }
    fields.update(overrides)
    return ConversationMetadata(**fields)


def make_raw(turn_count: int = 4, **metadata: Any) -> RawConversation:
    return RawConversation(conversation_metadata=make_metadata(**metadata), turns=make_turns(turn_count))


def make_raw_dict(turn_count: int = 4, **metadata: Any) -> dict[str, Any]:
    """The conversation JSON as the model returns it (plain data, for parse tests)."""
    return make_raw(turn_count, **metadata).model_dump(mode="json")


def make_input_parameters(scaffolding: ResolvedScaffolding | None = None) -> InputParameters:
    from lora_assets.core.parse import input_parameters_for

    return input_parameters_for(scaffolding or make_scaffolding())


def make_parsed(
    turn_count: int = 4,
    *,
    scaffolding: ResolvedScaffolding | None = None,
    legacy: bool = False,
    turns: list[Turn] | None = None,
) -> ParsedConversation:
    """A parsed conversation as parse produces it; `legacy=True`: written before input_parameters."""
    scaffolding = scaffolding or make_scaffolding()
    persona = scaffolding.persona
    # A legacy file keeps what the model wrote; parse now overrides it from the scaffolding.
    client_persona = "Marcus Chen - The Overwhelmed Avoider" if legacy else f"{persona.name} - {persona.archetype}"
    return ParsedConversation(
        conversation_metadata=make_metadata(client_persona=client_persona),
        input_parameters=None if legacy else make_input_parameters(scaffolding),
        turns=turns if turns is not None else make_turns(turn_count),
    )


def make_message(
    text: str | None = None,
    *,
    stop_reason: str | None = "end_turn",
    thinking: bool = False,
    extra_blocks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An Anthropic Message JSON dict (as stored in raw.json) whose text is `text`
    (default: the raw conversation JSON)."""
    if text is None:
        text = json.dumps(make_raw_dict())
    content: list[dict[str, Any]] = []
    if thinking:
        content.append({"type": "thinking", "thinking": "Plan: {alternate turns} ...", "signature": "sig"})
    content.extend(extra_blocks or [])
    content.append({"type": "text", "text": text})
    return {
        "id": "msg_01TEST",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-5-5",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 1200, "output_tokens": 900},
    }


def enrich_default(parsed: ParsedConversation | None = None, **overrides: Any) -> Any:
    """`enrich_conversation` with the default consultant/persona/topic and a fixed date."""
    from lora_assets.core.enrich import enrich_conversation

    kwargs: dict[str, Any] = {
        "conversation_id": CONVERSATION_ID,
        "consultant": make_consultant(),
        "persona": make_persona(),
        "training_topic": make_topic(),
        "created_date": "2025-12-01",
    }
    kwargs.update(overrides)
    return enrich_conversation(parsed if parsed is not None else make_parsed(), **kwargs)


def make_training_file(*enriched: Any, name: str = "production_batch_001") -> Any:
    """A v4.0 aggregated training file of `enriched` conversations, with consistent totals
    (`total_turns` = sum of the conversations' own `total_turns`)."""
    from lora_assets.schemas.training import (
        AggregateDatasetMetadata,
        QualitySummary,
        ScaffoldingDistribution,
        TrainingFileDocument,
    )

    pairs = [pair for document in enriched for pair in document.training_pairs]
    scores = [p.training_metadata.quality_score for p in pairs]
    distribution = ScaffoldingDistribution()
    for document in enriched:
        params = document.input_parameters
        if params is not None:
            for counts, key in (
                (distribution.personas, params.persona_key),
                (distribution.emotional_arcs, params.emotional_arc_key),
                (distribution.training_topics, params.training_topic_key),
            ):
                counts[key] = counts.get(key, 0) + 1
    return TrainingFileDocument(
        dataset_metadata=AggregateDatasetMetadata(
            dataset_name=name,
            created_date="2025-12-01T12:00:00Z",
            total_conversations=len(enriched),
            total_turns=sum(document.dataset_metadata.total_turns for document in enriched),
            quality_summary=QualitySummary(
                avg_quality_score=sum(scores) / len(scores) if scores else None,
                min_quality_score=min(scores, default=None),
                max_quality_score=max(scores, default=None),
            ),
            scaffolding_distribution=distribution,
        ),
        consultant_profile=enriched[0].consultant_profile if enriched else make_consultant(),
        training_pairs=pairs,
    )


def modules_loaded_by(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running `code` (an import's cost
    is per process, so it is measured in a new one)."""
    import json
    import subprocess
    import sys

    probe = f"{code}\nimport json as _j, sys as _s; print(_j.dumps(sorted(m for m in {modules!r} if m in _s.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])

