"""Enrich: v4.0 pairs carrying the scaffolding, readable backgrounds, legacy conversations."""

from __future__ import annotations

import json

import pytest

from lora_assets.core.enrich import EnrichError, client_background_for, training_system_prompt
from lora_assets.core.parse import parse_conversation
from lora_assets.core.prompt import system_prompt as generation_system_prompt
from lora_assets.core.validate import enriched_problems, is_readable_text
from lora_assets.schemas import Persona, Turn
from lora_assets.schemas.training import EnrichedConversation
from lora_assets_tests.core.factories import (
    CONVERSATION_ID,
    CURT_GUARANTEE_ANSWER,
    EMPATHETIC_ANSWER,
    enrich_default,
    make_consultant,
    make_emotion,
    make_message,
    make_parsed,
    make_persona,
    make_raw_dict,
    make_scaffolding,
    make_topic,
    make_turns,
)

SCAFFOLDING_FIELDS = ("persona_archetype", "emotional_arc", "emotional_arc_key", "training_topic", "training_topic_key")


def enriched_from_raw(turn_count: int = 6) -> EnrichedConversation:
    """The real path: Claude's message → parse (with DB scaffolding) → enrich."""
    message = make_message(json.dumps(make_raw_dict(turn_count)), thinking=True)
    parsed = parse_conversation(message, conversation_id=CONVERSATION_ID, scaffolding=make_scaffolding())
    return enrich_default(parsed)


# --- Verification checklist ------------------------------------------------------------------


def test_enriched_json_contains_input_parameters_copied_from_parsed() -> None:
    parsed = make_parsed()
    enriched = enrich_default(parsed)
    assert enriched.input_parameters == parsed.input_parameters
    assert enriched.model_dump(mode="json")["input_parameters"]["persona_key"] == "pragmatic_optimist"


@pytest.mark.parametrize("field", SCAFFOLDING_FIELDS)
def test_each_training_pair_has_the_scaffolding_field(field: str) -> None:
    enriched = enriched_from_raw(turn_count=6)
    assert len(enriched.training_pairs) == 3
    expected = {
        "persona_archetype": "pragmatic_optimist",  # the persona KEY, as the seed example shows
        "emotional_arc": "Confusion → Clarity",
        "emotional_arc_key": "confusion_to_clarity",
        "training_topic": "Accelerated Mortgage Payoff",
        "training_topic_key": "mortgage_payoff_strategy",
    }[field]
    for pair in enriched.training_pairs:
        assert getattr(pair.conversation_metadata, field) == expected
        # and it survives serialisation (the file, not just the model)
        assert pair.model_dump(mode="json")["conversation_metadata"][field] == expected


def test_client_background_from_json_object_demographics_is_readable_text() -> None:
    # The "[object Object]" trap: demographics is a JSON object (JSONB column).
    enriched = enrich_default(persona=make_persona())
    background = enriched.training_pairs[0].conversation_metadata.client_background
    assert background == (
        "Age 37, male, Urban/Suburban, Married, 2 children; "
        "High earner with complex compensation (RSUs, bonus) and a 30-year mortgage"
    )
    for bad in ("[object Object]", "{", "}", "'age'", "dict"):
        assert bad not in background
    assert is_readable_text(background)


def test_client_background_from_json_object_financial_background() -> None:
    persona = make_persona(financial_background={"income": "$185,000", "debts": ["mortgage", "car loan"]})
    background = enrich_default(persona=persona).training_pairs[0].conversation_metadata.client_background
    assert background == (
        "Age 37, male, Urban/Suburban, Married, 2 children; Income: $185,000; Debts: mortgage, car loan"
    )
    assert is_readable_text(background)


def test_client_background_from_text_demographics() -> None:
    # Persona.demographics is a JSON object in our schema; rows from a TEXT column still exist,
    # so build one without validation the way such a row would arrive.
    persona = Persona.model_construct(**{**make_persona().model_dump(), "demographics": "Age 52, female, Rural"})
    background = client_background_for(persona, "Ann Lee - The Anxious Planner")
    assert background.startswith("Age 52, female, Rural; High earner")
    assert is_readable_text(background)


def test_client_background_from_json_text_in_a_text_column() -> None:
    persona = Persona.model_construct(
        **{**make_persona().model_dump(), "demographics": '{"age": 52, "gender": "female", "location": "Rural"}'}
    )
    background = client_background_for(persona, "Ann Lee - The Anxious Planner")
    assert background.startswith("Age 52, female, Rural; ")
    assert is_readable_text(background)


def test_client_background_without_persona_is_the_client_profile() -> None:
    parsed = make_parsed(legacy=True)
    enriched = enrich_default(parsed, persona=None, training_topic=None)
    assert {p.conversation_metadata.client_background for p in enriched.training_pairs} == {
        "Client profile: Marcus Chen - The Overwhelmed Avoider"
    }


def test_old_conversation_without_input_parameters_still_enriches_with_null_fields() -> None:
    parsed = make_parsed(legacy=True)
    assert parsed.input_parameters is None
    enriched = enrich_default(parsed, persona=None, training_topic=None)

    assert enriched.input_parameters is None
    assert len(enriched.training_pairs) == 2
    for pair in enriched.training_pairs:
        dumped = pair.model_dump(mode="json")["conversation_metadata"]
        for field in SCAFFOLDING_FIELDS:
            assert field in dumped and dumped[field] is None
    # Schema-valid as a file, and the validator reports it only as a legacy warning.
    EnrichedConversation.model_validate_json(enriched.model_dump_json())
    assert enriched_problems(enriched) == [
        "input_parameters is null (legacy conversation enriched before input_parameters existed; "
        "its training pairs have no scaffolding fields)"
    ]


def test_old_conversation_with_persona_record_gets_a_real_background() -> None:
    enriched = enrich_default(make_parsed(legacy=True), persona=make_persona(), training_topic=None)
    assert enriched.training_pairs[0].conversation_metadata.client_background.startswith("Age 37")
    assert enriched.training_pairs[0].conversation_metadata.persona_archetype is None


# --- Pair structure ---------------------------------------------------------------------------


def test_one_pair_per_user_turn_with_history_input_and_target() -> None:
    turns = make_turns(6)
    enriched = enrich_default(make_parsed(turns=turns))
    pairs = enriched.training_pairs
    assert [p.id for p in pairs] == [f"{CONVERSATION_ID}_turn{n}" for n in (1, 3, 5)]
    assert [p.turn_number for p in pairs] == [1, 3, 5]
    assert all(p.conversation_id == CONVERSATION_ID for p in pairs)
    assert pairs[0].conversation_history == []
    assert [h.content for h in pairs[2].conversation_history] == [t.content for t in turns[:4]]
    assert pairs[1].current_user_input == turns[2].content
    assert pairs[1].emotional_context == turns[2].emotional_context
    assert pairs[1].target_response == turns[3].content


def test_last_user_turn_without_answer_has_null_target() -> None:
    enriched = enrich_default(make_parsed(turns=make_turns(5)))
    last = enriched.training_pairs[-1]
    assert last.turn_number == 5 and last.target_response is None
    assert last.training_metadata.quality_score == 1.0
    assert last.training_metadata.demonstrates_skills == []
    assert last.training_metadata.use_as_seed_example is False


def test_dataset_metadata() -> None:
    enriched = enrich_default(make_parsed(turns=make_turns(7)), created_date="2025-12-01")
    meta = enriched.dataset_metadata
    assert meta.dataset_name == f"fp_conversation_{CONVERSATION_ID}"
    assert (meta.version, meta.created_date, meta.vertical) == ("1.0.0", "2025-12-01", "financial_planning_consultant")
    assert (meta.total_conversations, meta.total_turns) == (1, 7)
    assert enriched.consultant_profile == make_consultant()


def test_pair_conversation_metadata_copies_the_parsed_metadata() -> None:
    parsed = make_parsed()
    meta = enrich_default(parsed).training_pairs[0].conversation_metadata
    source = parsed.conversation_metadata
    assert meta.client_persona == "David Chen - The Pragmatic Optimist"
    assert (meta.session_context, meta.conversation_phase, meta.expected_outcome) == (
        source.session_context,
        source.conversation_phase,
        source.expected_outcome,
    )


# --- Training metadata -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("complexity", "level"), [("beginner", "basic"), ("intermediate", "moderate"), ("advanced", "advanced")]
)
def test_difficulty_from_topic_complexity(complexity: str, level: str) -> None:
    enriched = enrich_default(training_topic=make_topic(complexity=complexity))
    assert {p.training_metadata.difficulty_level for p in enriched.training_pairs} == {level}


def test_difficulty_without_topic_is_moderate_and_objective_is_the_expected_outcome() -> None:
    parsed = make_parsed()
    enriched = enrich_default(parsed, training_topic=None)
    metadata = enriched.training_pairs[0].training_metadata
    assert metadata.difficulty_level == "moderate"
    assert metadata.key_learning_objective == parsed.conversation_metadata.expected_outcome


def test_learning_objective_from_topic() -> None:
    objective = enrich_default().training_pairs[0].training_metadata.key_learning_objective
    assert objective.startswith("Accelerated Mortgage Payoff: Weigh paying the mortgage early")


def test_training_metadata_fields() -> None:
    enriched = enrich_default(make_parsed(turns=make_turns(6)))
    first, second, last = (p.training_metadata for p in enriched.training_pairs)
    assert (first.conversation_turn, second.conversation_turn, last.conversation_turn) == (1, 3, 5)
    # next user turn's primary emotion; the last pair uses its own
    assert (first.emotional_progression_target, second.emotional_progression_target) == ("anxiety", "curiosity")
    assert last.emotional_progression_target == "curiosity"
    for metadata in (first, second, last):
        assert metadata.human_reviewed is False and metadata.reviewer_notes is None
        assert metadata.generate_variations_count == 0
        assert metadata.use_as_seed_example == (metadata.quality_score >= 4.0)
        assert "emotional_validation" in metadata.demonstrates_skills
        assert "specific_numbers" in metadata.demonstrates_skills


def test_progression_target_without_any_emotions() -> None:
    enriched = enrich_default(make_parsed(turns=make_turns(4, with_emotions=False)))
    assert {p.training_metadata.emotional_progression_target for p in enriched.training_pairs} == {"unspecified"}


def test_quality_follows_the_target_response() -> None:
    good = make_turns(2)
    bad = [good[0], Turn(turn_number=2, role="assistant", content=CURT_GUARANTEE_ANSWER)]
    good_pair = enrich_default(make_parsed(turns=good)).training_pairs[0].training_metadata
    bad_pair = enrich_default(make_parsed(turns=bad)).training_pairs[0].training_metadata
    assert good_pair.quality_score > bad_pair.quality_score
    assert good_pair.use_as_seed_example and not bad_pair.use_as_seed_example
    assert good_pair.quality_criteria != bad_pair.quality_criteria


# --- System prompt -----------------------------------------------------------------------------


def test_training_system_prompt_is_for_the_advisor_not_the_generator() -> None:
    consultant = make_consultant()
    prompt = training_system_prompt(consultant)
    assert prompt.startswith("You are Elena Morales, CFP")
    for technique in consultant.communication_style.techniques:
        assert technique in prompt
    assert "JSON" not in prompt and prompt != generation_system_prompt(consultant)
    pairs = enrich_default().training_pairs
    assert {p.system_prompt for p in pairs} == {prompt}


# --- Errors --------------------------------------------------------------------------------------


def test_persona_that_contradicts_input_parameters_is_rejected() -> None:
    other = make_persona(persona_key="anxious_planner", name="Ann Lee")
    with pytest.raises(EnrichError) as err:
        enrich_default(persona=other)
    assert err.value.conversation_id == CONVERSATION_ID
    assert err.value.kind == "scaffolding_mismatch"
    assert str(err.value).startswith(f"conversation {CONVERSATION_ID}: persona 'anxious_planner'")


def test_topic_that_contradicts_input_parameters_is_rejected() -> None:
    with pytest.raises(EnrichError, match="training topic 'estate_planning_basics'"):
        enrich_default(training_topic=make_topic(topic_key="estate_planning_basics"))


def test_turns_that_do_not_alternate_are_rejected() -> None:
    turns = make_turns(4)
    swapped = [turns[0], turns[2].model_copy(update={"turn_number": 2}), *turns[2:]]
    swapped[2] = swapped[2].model_copy(update={"turn_number": 3, "role": "assistant", "emotional_context": None})
    with pytest.raises(EnrichError) as err:
        enrich_default(make_parsed(turns=swapped))
    assert "turns[1].role" in err.value.reason


def test_unreadable_background_is_rejected_not_written() -> None:
    persona = Persona.model_construct(**{**make_persona().model_dump(), "demographics": "[object Object]"})
    with pytest.raises(EnrichError) as err:
        enrich_default(persona=persona)
    assert err.value.kind == "unreadable_client_background"


def test_emotions_on_user_turns_are_kept_verbatim() -> None:
    emotion = make_emotion("shame", 0.9, ("fear",))
    turns = make_turns(2)
    turns[0] = turns[0].model_copy(update={"emotional_context": emotion})
    pair = enrich_default(make_parsed(turns=turns)).training_pairs[0]
    assert pair.emotional_context == emotion
    assert EMPATHETIC_ANSWER == pair.target_response


def test_enrichment_version_is_recorded_and_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_assets.core import enrich

    doc = enrich_default(make_parsed(turns=make_turns(4)))
    assert doc.dataset_metadata.enrichment_version == enrich.ENRICHMENT_VERSION
    # A bump is seen by the next enrichment, and the file still validates as v4.0.
    monkeypatch.setattr(enrich, "ENRICHMENT_VERSION", "99")
    bumped = enrich_default(make_parsed(turns=make_turns(4)))
    assert bumped.dataset_metadata.enrichment_version == "99"
    assert EnrichedConversation.model_validate_json(bumped.model_dump_json()) == bumped
    assert enriched_problems(bumped) == []
    # A file written before the version was recorded still validates (None).
    legacy = json.loads(doc.model_dump_json())
    del legacy["dataset_metadata"]["enrichment_version"]
    assert EnrichedConversation.model_validate(legacy).dataset_metadata.enrichment_version is None
