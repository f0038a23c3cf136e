"""Properties over generated conversations: 2–20 turns, arbitrary unicode, optional emotions."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_assets.core.enrich import client_background_for
from lora_assets.core.parse import parse_conversation
from lora_assets.core.quality import score_response
from lora_assets.core.validate import enriched_problems, is_readable_text, validate_text
from lora_assets.schemas import EmotionalContext, ParsedConversation, Turn
from lora_assets.schemas.training import EnrichedConversation, HistoryTurn
from lora_assets_tests.core.factories import (
    CONVERSATION_ID,
    enrich_default,
    make_consultant,
    make_message,
    make_parsed,
    make_persona,
    make_scaffolding,
)

SETTINGS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any unicode (hypothesis excludes surrogates, which JSON cannot carry), but never blank.
contents = st.text(min_size=1, max_size=120).filter(lambda s: s.strip())
emotions = st.none() | st.builds(
    EmotionalContext,
    primary_emotion=st.text(min_size=1, max_size=20),
    secondary_emotions=st.lists(st.text(max_size=12), max_size=3),
    intensity=st.floats(min_value=0.0, max_value=1.0),
)


@st.composite
def conversations(draw: st.DrawFn) -> ParsedConversation:
    count = draw(st.integers(min_value=2, max_value=20))
    turns = [
        Turn(
            turn_number=i + 1,
            role="user" if i % 2 == 0 else "assistant",
            content=draw(contents),
            emotional_context=draw(emotions),
        )
        for i in range(count)
    ]
    return make_parsed(turns=turns, legacy=draw(st.booleans()))


def enrich(parsed: ParsedConversation) -> EnrichedConversation:
    if parsed.input_parameters is None:
        return enrich_default(parsed, persona=None, training_topic=None)
    return enrich_default(parsed)


def as_history(turns: list[Turn]) -> list[HistoryTurn]:
    return [HistoryTurn(turn_number=t.turn_number, role=t.role, content=t.content) for t in turns]


@SETTINGS
@given(conversations())
def test_one_pair_per_user_turn(parsed: ParsedConversation) -> None:
    pairs = enrich(parsed).training_pairs
    users = [t for t in parsed.turns if t.role == "user"]
    assert len(pairs) == len(users)
    assert [p.turn_number for p in pairs] == [t.turn_number for t in users]
    assert [p.current_user_input for p in pairs] == [t.content for t in users]
    assert [p.emotional_context for p in pairs] == [t.emotional_context for t in users]
    assert len({p.id for p in pairs}) == len(pairs)


@SETTINGS
@given(conversations())
def test_histories_are_prefixes(parsed: ParsedConversation) -> None:
    pairs = enrich(parsed).training_pairs
    full = as_history(parsed.turns)
    for pair in pairs:
        history = pair.conversation_history
        assert history == full[: len(history)]
        # the history is exactly everything before the pair's user turn
        assert len(history) == pair.turn_number - 1
    for before, after in zip(pairs, pairs[1:], strict=False):
        assert after.conversation_history[: len(before.conversation_history)] == before.conversation_history
        assert len(after.conversation_history) > len(before.conversation_history)


@SETTINGS
@given(conversations())
def test_target_is_the_following_assistant_turn(parsed: ParsedConversation) -> None:
    turns = parsed.turns
    for pair in enrich(parsed).training_pairs:
        index = pair.turn_number - 1
        if index + 1 < len(turns):
            assert turns[index + 1].role == "assistant"
            assert pair.target_response == turns[index + 1].content
        else:
            assert pair.target_response is None


@SETTINGS
@given(conversations())
def test_no_turn_is_lost(parsed: ParsedConversation) -> None:
    enriched = enrich(parsed)
    for turn in parsed.turns:
        assert any(
            turn.content in (pair.current_user_input, pair.target_response)
            or any(h.content == turn.content and h.turn_number == turn.turn_number for h in pair.conversation_history)
            for pair in enriched.training_pairs
        )
    # The last pair's history + its input + target is the whole conversation.
    last = enriched.training_pairs[-1]
    rebuilt = [h.content for h in last.conversation_history] + [last.current_user_input]
    rebuilt += [last.target_response] if last.target_response is not None else []
    assert rebuilt == [t.content for t in parsed.turns]
    assert enriched.dataset_metadata.total_turns == len(parsed.turns)


@SETTINGS
@given(conversations())
def test_enriched_json_round_trip(parsed: ParsedConversation) -> None:
    enriched = enrich(parsed)
    assert EnrichedConversation.model_validate_json(enriched.model_dump_json()) == enriched
    assert EnrichedConversation.model_validate(json.loads(json.dumps(enriched.model_dump(mode="json")))) == enriched


@SETTINGS
@given(conversations())
def test_enriched_output_always_validates(parsed: ParsedConversation) -> None:
    enriched = enrich(parsed)
    problems = validate_text(enriched.model_dump_json())
    if parsed.input_parameters is None:
        assert [(p.where, p.severity) for p in problems] == [("input_parameters", "warning")]
    else:
        assert problems == [] and enriched_problems(enriched) == []
    jsonl = "\n".join(p.model_dump_json() for p in enriched.training_pairs)
    assert [p for p in validate_text(jsonl, "jsonl") if p.severity == "error"] == []


@SETTINGS
@given(conversations(), st.sampled_from(["bare", "fence", "prose", "message", "thinking"]))
def test_parse_round_trip_however_wrapped(parsed: ParsedConversation, wrapping: str) -> None:
    body = json.dumps(
        {
            "conversation_metadata": parsed.conversation_metadata.model_dump(mode="json"),
            "turns": [t.model_dump(mode="json") for t in parsed.turns],
        },
        ensure_ascii=False,
    )
    raw: Any = {
        "bare": body,
        "fence": f"```json\n{body}\n```",
        "prose": f"Here is the conversation:\n{body}\nI hope this helps.",
        "message": make_message(body),
        "thinking": make_message(f"```json\n{body}\n```", thinking=True),
    }[wrapping]
    again = parse_conversation(raw, conversation_id=CONVERSATION_ID, scaffolding=make_scaffolding())
    assert again.turns == parsed.turns
    assert again.input_parameters is not None


@SETTINGS
@given(contents, contents, emotions)
def test_quality_scores_are_bounded_for_any_text(response: str, user: str, emotion: EmotionalContext | None) -> None:
    criteria = score_response(response, user, emotion, make_consultant())
    for value in criteria.model_dump().values():
        assert 1.0 <= value <= 5.0 and round(value, 1) == value
    assert score_response(response, user, emotion, make_consultant()) == criteria


_PLACEHOLDERS = {"none", "null", "nan", "undefined"}
words = st.from_regex(r"[A-Za-z][A-Za-z0-9 /.-]{0,20}", fullmatch=True).filter(
    lambda s: s.strip().lower() not in _PLACEHOLDERS
)
keys = st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | words,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(
    st.dictionaries(keys, json_values, min_size=1, max_size=5),
    st.dictionaries(keys, json_values, min_size=1, max_size=4) | words,
)
def test_client_background_from_any_json_objects_is_readable(demographics: dict[str, Any], financial: Any) -> None:
    persona = make_persona(demographics=demographics, financial_background=financial)
    background = client_background_for(persona, "David Chen - The Pragmatic Optimist")
    assert is_readable_text(background), background
    assert "{" not in background and "[object Object]" not in background
