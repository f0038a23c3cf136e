"""Parse: tolerant of how models wrap JSON, strict about what is wrong, provenance from the DB."""

from __future__ import annotations

import json
import pickle

import pytest

from lora_assets.core.parse import (
    ParseError,
    extract_json_text,
    input_parameters_for,
    parse_conversation,
)
from lora_assets.schemas import InputParameters
from lora_assets_tests.core.factories import (
    CONVERSATION_ID,
    make_message,
    make_persona,
    make_raw_dict,
    make_scaffolding,
)

CONVERSATION_JSON = json.dumps(make_raw_dict())


def parse(raw, **kwargs):
    kwargs.setdefault("conversation_id", CONVERSATION_ID)
    kwargs.setdefault("scaffolding", make_scaffolding())
    return parse_conversation(raw, **kwargs)


# --- Verification checklist: raw → parsed has input_parameters with all 10 fields populated ---


def test_parsed_has_input_parameters_with_all_10_fields_from_the_scaffolding() -> None:
    scaffolding = make_scaffolding()
    parsed = parse(make_message(), scaffolding=scaffolding)

    params = parsed.input_parameters
    assert params is not None
    values = params.model_dump()
    assert set(values) == set(InputParameters.model_fields) and len(values) == 10
    assert all(isinstance(v, str) and v.strip() for v in values.values())
    assert values == {
        "persona_id": scaffolding.persona.id,
        "persona_key": "pragmatic_optimist",
        "persona_name": "David Chen",
        "persona_archetype": "The Pragmatic Optimist",
        "emotional_arc_id": scaffolding.emotional_arc.id,
        "emotional_arc_key": "confusion_to_clarity",
        "emotional_arc_name": "Confusion → Clarity",
        "training_topic_id": scaffolding.training_topic.id,
        "training_topic_key": "mortgage_payoff_strategy",
        "training_topic_name": "Accelerated Mortgage Payoff",
    }


def test_client_persona_is_overridden_from_the_scaffolding_persona() -> None:
    raw = make_raw_dict(client_persona="Marcus Chen - The Overwhelmed Avoider")
    parsed = parse(raw)
    assert parsed.conversation_metadata.client_persona == "David Chen - The Pragmatic Optimist"


def test_input_parameters_written_by_the_model_are_ignored() -> None:
    raw = make_raw_dict()
    raw["input_parameters"] = {"persona_key": "made_up_by_the_model"}
    parsed = parse(raw)
    assert parsed.input_parameters == input_parameters_for(make_scaffolding())


def test_without_scaffolding_input_parameters_stay_none_and_persona_is_kept() -> None:
    raw = make_raw_dict(client_persona="Marcus Chen - The Overwhelmed Avoider")
    parsed = parse(raw, scaffolding=None)
    assert parsed.input_parameters is None
    assert parsed.conversation_metadata.client_persona == "Marcus Chen - The Overwhelmed Avoider"


def test_input_parameters_for_uses_the_records_ids() -> None:
    persona = make_persona(id="aa514346-cd61-42ac-adad-498934975402")
    params = input_parameters_for(make_scaffolding(persona=persona))
    assert params.persona_id == "aa514346-cd61-42ac-adad-498934975402"


# --- Tolerance -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(CONVERSATION_JSON, id="bare"),
        pytest.param(f"```json\n{CONVERSATION_JSON}\n```", id="json-fence"),
        pytest.param(f"```\n{CONVERSATION_JSON}\n```", id="plain-fence"),
        pytest.param(f"Here is the conversation you asked for:\n\n{CONVERSATION_JSON}\n\nLet me know!", id="prose"),
        pytest.param(
            f"Note: use {{placeholders}} sparingly. Result: {CONVERSATION_JSON} (ends here {{x: 1}})",
            id="prose-with-braces",
        ),
        pytest.param(f'Example shape {{"a": 1}} first, then: {CONVERSATION_JSON}', id="smaller-object-first"),
    ],
)
def test_extract_finds_the_conversation_however_it_is_wrapped(text: str) -> None:
    assert json.loads(extract_json_text(text)) == json.loads(CONVERSATION_JSON)
    assert parse(text).turns[0].role == "user"


def test_message_with_leading_thinking_block() -> None:
    message = make_message(thinking=True)
    assert json.loads(extract_json_text(message)) == json.loads(CONVERSATION_JSON)
    assert len(parse(message).turns) == 4


def test_message_with_redacted_thinking_and_text_split_in_two_blocks() -> None:
    half = len(CONVERSATION_JSON) // 2
    message = make_message(CONVERSATION_JSON[half:], extra_blocks=[{"type": "text", "text": CONVERSATION_JSON[:half]}])
    message["content"].insert(0, {"type": "redacted_thinking", "data": "xyz"})
    assert json.loads(extract_json_text(message)) == json.loads(CONVERSATION_JSON)


def test_message_serialised_as_text_is_read_as_a_message() -> None:
    # raw.json read from storage as text: still a Message, stop_reason included.
    parsed = parse(json.dumps(make_message(f"```json\n{CONVERSATION_JSON}\n```")))
    assert len(parsed.turns) == 4
    with pytest.raises(ParseError) as err:
        parse(json.dumps(make_message(stop_reason="max_tokens")))
    assert err.value.kind == "truncated"


def test_conversation_object_passes_through() -> None:
    raw = make_raw_dict()
    assert json.loads(extract_json_text(raw)) == raw
    assert parse(raw).conversation_metadata.session_context == raw["conversation_metadata"]["session_context"]


# --- Strict rejections ---------------------------------------------------------------------------


def rejection(raw, **kwargs) -> ParseError:
    with pytest.raises(ParseError) as err:
        parse(raw, **kwargs)
    error = err.value
    # Every rejection names the conversation, in the attribute and in the message.
    assert error.conversation_id == CONVERSATION_ID
    assert str(error).startswith(f"conversation {CONVERSATION_ID}: ")
    assert str(error) == f"conversation {CONVERSATION_ID}: {error.reason}"
    return error


@pytest.mark.parametrize(
    ("stop_reason", "kind"),
    [
        ("max_tokens", "truncated"),
        ("refusal", "refusal"),
        ("model_context_window_exceeded", "context_window_exceeded"),
        ("pause_turn", "unexpected_stop_reason"),
    ],
)
def test_incomplete_stop_reasons_are_rejected_even_if_the_json_is_whole(stop_reason: str, kind: str) -> None:
    assert rejection(make_message(stop_reason=stop_reason)).kind == kind
    # Passed explicitly (e.g. from the DB row) it counts too.
    assert rejection(CONVERSATION_JSON, stop_reason=stop_reason).kind == kind


def test_refusal_reason_says_so() -> None:
    error = rejection(make_message("I can't help with that.", stop_reason="refusal"))
    assert "refused" in error.reason


def test_truncated_json_is_rejected() -> None:
    error = rejection(CONVERSATION_JSON[: len(CONVERSATION_JSON) // 2])
    assert error.kind == "truncated_json"
    assert "truncated" in error.reason


def test_truncated_json_inside_an_unclosed_fence() -> None:
    error = rejection("```json\n" + CONVERSATION_JSON[:-40])
    assert error.kind == "truncated_json"


def test_invalid_json_is_rejected() -> None:
    broken = CONVERSATION_JSON.replace('"turns":', '"turns"', 1)
    error = rejection(broken)
    assert error.kind == "invalid_json"
    assert "line" in error.reason and "column" in error.reason


def test_text_without_json_is_rejected() -> None:
    assert rejection("Sorry, I cannot produce that conversation.").kind == "no_json"


def test_message_with_only_thinking_is_rejected() -> None:
    message = make_message()
    message["content"] = [{"type": "thinking", "thinking": "...", "signature": "s"}]
    error = rejection(message)
    assert error.kind == "no_text" and "thinking" in error.reason


def test_api_error_object_is_rejected() -> None:
    error = rejection({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert error.kind == "api_error" and "Overloaded" in error.reason


@pytest.mark.parametrize("turns", [None, [], "not a list"])
def test_missing_turns(turns) -> None:
    raw = make_raw_dict()
    if turns is None:
        del raw["turns"]
    else:
        raw["turns"] = turns
    assert rejection(raw).kind == "missing_turns"


def test_single_turn_is_not_a_conversation() -> None:
    raw = make_raw_dict()
    raw["turns"] = raw["turns"][:1]
    assert rejection(raw).kind == "missing_turns"


def test_roles_must_alternate_starting_with_the_client() -> None:
    raw = make_raw_dict()
    raw["turns"][0]["role"], raw["turns"][1]["role"] = "assistant", "user"
    error = rejection(raw)
    assert error.kind == "turns_not_alternating"
    assert "turns[0].role" in error.reason


def test_two_user_turns_in_a_row() -> None:
    raw = make_raw_dict(turn_count=4)
    raw["turns"][1]["role"] = "user"
    error = rejection(raw)
    assert error.kind == "turns_not_alternating" and "turns[1].role" in error.reason


@pytest.mark.parametrize("content", ["", "   \n\t"])
def test_empty_or_whitespace_content(content: str) -> None:
    raw = make_raw_dict()
    raw["turns"][2]["content"] = content
    error = rejection(raw)
    assert error.kind == "empty_content" and "turns[2].content" in error.reason


@pytest.mark.parametrize("numbers", [[0, 1, 2, 3], [1, 2, 2, 3], [1, 3, 4, 5], [2, 1, 3, 4]])
def test_turn_numbers_must_be_1_to_n(numbers: list[int]) -> None:
    raw = make_raw_dict()
    for turn, number in zip(raw["turns"], numbers, strict=True):
        turn["turn_number"] = number
    assert rejection(raw).kind == "turn_numbers"


def test_schema_violation_names_the_field() -> None:
    raw = make_raw_dict()
    del raw["conversation_metadata"]["session_context"]
    error = rejection(raw)
    assert error.kind == "schema"
    assert "conversation_metadata.session_context" in error.reason


def test_emotional_intensity_out_of_range_is_a_schema_error() -> None:
    raw = make_raw_dict()
    raw["turns"][0]["emotional_context"]["intensity"] = 7
    error = rejection(raw)
    assert error.kind == "schema" and "turns[0].emotional_context.intensity" in error.reason


def test_json_array_is_not_a_conversation() -> None:
    assert rejection(json.dumps([make_raw_dict()])).kind in {"missing_turns", "schema"}


def test_parse_error_survives_pickling() -> None:
    error = ParseError("abc", "refusal", "the model refused")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.conversation_id, copy.kind, copy.reason, str(copy)) == (
        "abc",
        "refusal",
        "the model refused",
        "conversation abc: the model refused",
    )


# --- hostile input: bounded, and never quoted back -------------------------------------------


def test_text_without_json_is_refused_without_quoting_it() -> None:
    secret = "root:$6$s3cr3t:19000:0:99999:7:::"
    with pytest.raises(ParseError) as info:
        parse(secret)
    assert info.value.kind == "no_json" and "s3cr3t" not in str(info.value)
    assert f"{len(secret)} characters of text" in str(info.value)


@pytest.mark.parametrize("raw", ["[" * 50_000 + "]" * 50_000, make_message("[" * 50_000 + "]" * 50_000),
                                 '{"turns": ' + "[" * 5000 + "]" * 5000 + "}"])
def test_deeply_nested_json_is_a_parse_error_not_a_recursion_error(raw) -> None:
    with pytest.raises(ParseError, match="nests .* levels deep, deeper than the limit of 64") as info:
        parse(raw)
    assert info.value.kind == "invalid_json"


def test_json_nesting_depth_ignores_brackets_in_strings() -> None:
    from lora_assets.core.parse import json_nesting_depth

    assert json_nesting_depth('{"a": [1, {"b": "[[[[ \\" ]]"}]}') == 3
    assert json_nesting_depth("plain text") == 0


def test_more_turns_than_the_limit_are_refused_before_any_per_turn_work() -> None:
    from lora_assets.core.parse import TooManyTurnsError

    with pytest.raises(TooManyTurnsError, match="has 8 turns, over the limit of 6"):
        parse(json.dumps(make_raw_dict(turn_count=8)), max_turns=6)
    assert len(parse(json.dumps(make_raw_dict(turn_count=6)), max_turns=6).turns) == 6
