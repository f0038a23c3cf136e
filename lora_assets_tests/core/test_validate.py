"""Validate: finds each crafted problem at its location, passes valid documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lora_assets.core.rules import Problem, enriched_problems, is_readable_text, parsed_problems
from lora_assets.core.validate import DocumentKindError, detect_kind, validate_text
from lora_assets_tests.core.factories import (
    enrich_default,
    make_message,
    make_parsed,
    make_persona,
    make_raw_dict,
    make_scaffolding,
    make_training_file,
    make_turns,
)


def dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")


def text(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=2)


def enriched_doc(conversation_id: str = "conv-a", turn_count: int = 6, **kwargs: Any) -> dict[str, Any]:
    return dump(enrich_default(make_parsed(turn_count), conversation_id=conversation_id, **kwargs))


def training_file_doc(*ids: str) -> dict[str, Any]:
    documents = [enrich_default(make_parsed(6), conversation_id=i) for i in ids]
    return dump(make_training_file(*documents))


def jsonl_text(*ids: str) -> str:
    pairs = training_file_doc(*ids)["training_pairs"]
    return "\n".join(json.dumps(p, ensure_ascii=False) for p in pairs) + "\n"


def where(problems: list[Problem]) -> list[str]:
    return [p.where for p in problems]


# --- kind detection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        (lambda: text(make_message()), "raw"),
        (lambda: text(make_raw_dict()), "raw"),
        (lambda: text(dump(make_parsed())), "parsed"),
        (lambda: text(enriched_doc()), "enriched"),
        (lambda: text(training_file_doc("a", "b")), "training_file"),
        (lambda: jsonl_text("a", "b"), "jsonl"),
        (lambda: json.dumps(training_file_doc("a")["training_pairs"][0]), "jsonl"),
    ],
)
def test_detect_kind(doc, kind: str) -> None:
    assert detect_kind(doc()) == kind


@pytest.mark.parametrize("bad", ["", "   ", "not json", "[1, 2]", '{"hello": "world"}'])
def test_unknown_documents(bad: str) -> None:
    with pytest.raises(DocumentKindError):
        detect_kind(bad)
    problems = validate_text(bad)
    assert len(problems) == 1 and problems[0].where == "$" and "cannot be validated" in problems[0].message


def test_unknown_kind_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown document kind"):
        validate_text("{}", kind="csv")


# --- valid documents pass ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        (lambda: text(make_message(thinking=True)), None),
        (lambda: text(make_message(f"```json\n{json.dumps(make_raw_dict())}\n```")), "raw"),
        (lambda: text(make_raw_dict()), None),
        (lambda: text(dump(make_parsed())), None),
        (lambda: text(dump(make_parsed())), "parsed"),
        (lambda: text(enriched_doc()), None),
        (lambda: text(training_file_doc("a", "b", "c")), None),
        (lambda: jsonl_text("a", "b"), None),
        (lambda: jsonl_text("a", "b").rstrip("\n"), "jsonl"),
    ],
)
def test_valid_documents_have_no_problems(doc, kind: str | None) -> None:
    assert validate_text(doc(), kind) == []


# --- raw -------------------------------------------------------------------------------------------


def test_raw_truncated_message() -> None:
    problems = validate_text(text(make_message(stop_reason="max_tokens")))
    assert where(problems) == ["stop_reason"] and "max_tokens" in problems[0].message


def test_raw_with_turn_problems_lists_them_all() -> None:
    raw = make_raw_dict()
    raw["turns"][0]["role"] = "assistant"
    raw["turns"][2]["content"] = " "
    raw["turns"][3]["turn_number"] = 9
    problems = validate_text(text(raw))
    assert where(problems) == ["turns[0].role", "turns[2].content", "turns[3].turn_number"]


def test_raw_schema_problem_is_located() -> None:
    raw = make_raw_dict()
    raw["conversation_metadata"]["expected_outcome"] = 3
    assert where(validate_text(text(raw))) == ["conversation_metadata.expected_outcome"]


def test_raw_with_truncated_json_text() -> None:
    problems = validate_text(text(make_message(json.dumps(make_raw_dict())[:300])))
    assert where(problems) == ["content"] and "truncated" in problems[0].message


# --- parsed ----------------------------------------------------------------------------------------


def test_parsed_without_input_parameters_is_a_problem_when_asked_as_parsed() -> None:
    problems = validate_text(text(dump(make_parsed(legacy=True))), "parsed")
    assert where(problems) == ["input_parameters"]


@pytest.mark.parametrize("field", ["persona_key", "emotional_arc_name", "training_topic_id", "persona_archetype"])
def test_parsed_with_a_missing_input_parameter(field: str) -> None:
    doc = dump(make_parsed())
    del doc["input_parameters"][field]
    problems = validate_text(text(doc))
    assert where(problems) == [f"input_parameters.{field}"]
    assert problems[0].message == "is missing"


def test_parsed_with_an_empty_input_parameter() -> None:
    doc = dump(make_parsed())
    doc["input_parameters"]["emotional_arc_key"] = ""
    assert where(validate_text(text(doc))) == ["input_parameters.emotional_arc_key"]


def test_blank_input_parameters_of_a_model_are_found_without_dumping_it() -> None:
    """The rules read a model's attributes (not its dump): an unvalidated model with blank fields
    (as `model_construct` can make) still gets one "is empty" per field, in field order."""
    parsed = make_parsed()
    assert parsed.input_parameters is not None
    blank = parsed.input_parameters.model_construct(
        **{**parsed.input_parameters.model_dump(), "persona_key": "  ", "training_topic_name": None})
    assert parsed_problems(parsed.model_copy(update={"input_parameters": blank}), None) == [
        "input_parameters.persona_key is empty", "input_parameters.training_topic_name is empty"]


def test_parsed_with_turns_not_alternating() -> None:
    doc = dump(make_parsed())
    doc["turns"][1]["role"] = "user"
    assert where(validate_text(text(doc))) == ["turns[1].role"]


def test_parsed_problems_against_the_expected_scaffolding() -> None:
    parsed = make_parsed()
    assert parsed_problems(parsed, make_scaffolding()) == []

    ann = make_persona(persona_key="anxious_planner", name="Ann Lee", archetype="The Anxious Planner")
    other = make_scaffolding(persona=ann)
    problems = parsed_problems(parsed, other)
    assert problems[0] == (
        "conversation_metadata.client_persona is 'David Chen - The Pragmatic Optimist', "
        "expected 'Ann Lee - The Anxious Planner'"
    )
    assert any(p.startswith("input_parameters.persona_id is ") for p in problems)
    assert (
        "input_parameters.persona_key is 'pragmatic_optimist', expected 'anxious_planner' (from the scaffolding)"
        in problems
    )
    assert not any("emotional_arc" in p for p in problems)


def test_parsed_problems_of_a_legacy_conversation() -> None:
    assert parsed_problems(make_parsed(legacy=True), None) == ["input_parameters is missing"]


# --- enriched --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["persona_archetype", "emotional_arc", "emotional_arc_key", "training_topic", "training_topic_key"]
)
def test_enriched_pair_with_a_null_scaffolding_field(field: str) -> None:
    doc = enriched_doc()
    doc["training_pairs"][2]["conversation_metadata"][field] = None
    problems = validate_text(text(doc))
    assert [str(p) for p in problems] == [f"training_pairs[2].conversation_metadata.{field} is null"]


def test_enriched_pair_without_the_field_at_all_is_a_schema_problem() -> None:
    doc = enriched_doc()
    del doc["training_pairs"][1]["conversation_metadata"]["emotional_arc_key"]
    problems = validate_text(text(doc))
    assert [str(p) for p in problems] == ["training_pairs[1].conversation_metadata.emotional_arc_key is missing"]


def test_enriched_pair_field_that_contradicts_input_parameters() -> None:
    doc = enriched_doc()
    doc["training_pairs"][0]["conversation_metadata"]["training_topic_key"] = "estate_planning_basics"
    problems = validate_text(text(doc))
    assert where(problems) == ["training_pairs[0].conversation_metadata.training_topic_key"]
    assert "input_parameters.training_topic_key is 'mortgage_payoff_strategy'" in problems[0].message


@pytest.mark.parametrize(
    "background",
    [
        "[object Object]; High earner with complex compensation",
        "{'age': 37, 'gender': 'male'}; High earner",
        '{"age": 37}',
        "Age 37, male; ['RSUs', 'bonus']",
        "undefined; High earner",
        "",
    ],
)
def test_enriched_unreadable_client_background(background: str) -> None:
    doc = enriched_doc()
    doc["training_pairs"][1]["conversation_metadata"]["client_background"] = background
    problems = validate_text(text(doc))
    assert where(problems) == ["training_pairs[1].conversation_metadata.client_background"]
    assert problems[0].message.startswith("is not readable text")


def test_enriched_legacy_file_is_reported_as_a_warning() -> None:
    doc = dump(enrich_default(make_parsed(legacy=True), persona=None, training_topic=None))
    problems = validate_text(text(doc))
    assert where(problems) == ["input_parameters"]
    assert problems[0].severity == "warning" and "legacy" in problems[0].message


def test_enriched_without_input_parameters_but_with_pair_fields_is_still_checked() -> None:
    doc = enriched_doc()
    doc["input_parameters"] = None
    doc["training_pairs"][0]["conversation_metadata"]["emotional_arc"] = None
    problems = validate_text(text(doc))
    assert where(problems) == ["input_parameters", "training_pairs[0].conversation_metadata.emotional_arc"]


def test_enriched_schema_problem_is_located() -> None:
    doc = enriched_doc()
    doc["training_pairs"][1]["training_metadata"]["quality_score"] = 7
    doc["training_pairs"][0]["training_metadata"]["difficulty_level"] = "hard"
    problems = validate_text(text(doc))
    assert where(problems) == [
        "training_pairs[0].training_metadata.difficulty_level",
        "training_pairs[1].training_metadata.quality_score",
    ]


def test_enriched_duplicate_pair_id() -> None:
    doc = enriched_doc()
    doc["training_pairs"][2]["id"] = doc["training_pairs"][0]["id"]
    assert [str(p) for p in validate_text(text(doc))] == [
        "training_pairs[2].id 'conv-a_turn1' repeats training_pairs[0].id"
    ]


def test_enriched_problems_messages_are_precise() -> None:
    enriched = enrich_default(make_parsed(6))
    assert enriched_problems(enriched) == []
    broken = enriched.model_copy(deep=True)
    broken.training_pairs[2].conversation_metadata.emotional_arc_key = None
    broken.training_pairs[1].conversation_metadata.client_background = "[object Object]; High earner"
    assert enriched_problems(broken) == [
        "training_pairs[1].conversation_metadata.client_background is not readable text: "
        "'[object Object]; High earner'",
        "training_pairs[2].conversation_metadata.emotional_arc_key is null",
    ]


# --- training file ---------------------------------------------------------------------------------


def test_training_file_totals_must_match_the_pairs() -> None:
    doc = training_file_doc("a", "b")
    assert (doc["dataset_metadata"]["total_conversations"], doc["dataset_metadata"]["total_turns"]) == (2, 12)
    doc["dataset_metadata"]["total_conversations"] = 3
    doc["dataset_metadata"]["total_turns"] = 6
    problems = validate_text(text(doc))
    assert where(problems) == ["dataset_metadata.total_conversations", "dataset_metadata.total_turns"]
    assert "2 conversation(s)" in problems[0].message and "12 turns" in problems[1].message


def test_training_file_with_a_conversation_twice() -> None:
    doc = training_file_doc("a", "b")
    doc["training_pairs"] += [json.loads(json.dumps(p)) for p in doc["training_pairs"][:3]]
    problems = validate_text(text(doc))
    # the repeated block is found once as a conversation out of place, and each pair as a repeated id
    assert where(problems) == [
        "training_pairs[6].id",
        "training_pairs[6].conversation_id",
        "training_pairs[7].id",
        "training_pairs[8].id",
    ]
    assert "'a' appears again after other conversations" in problems[1].message


def test_training_file_with_interleaved_conversations() -> None:
    doc = training_file_doc("a", "b")
    pairs = doc["training_pairs"]
    doc["training_pairs"] = [pairs[0], pairs[3], pairs[1], pairs[2], pairs[4], pairs[5]]
    problems = validate_text(text(doc))
    assert where(problems) == ["training_pairs[2].conversation_id", "training_pairs[4].conversation_id"]


def test_training_file_with_pairs_out_of_order() -> None:
    doc = training_file_doc("a")
    pairs = doc["training_pairs"]
    doc["training_pairs"] = [pairs[1], pairs[0], pairs[2]]
    assert where(validate_text(text(doc))) == ["training_pairs[1].turn_number"]


def test_training_file_schema_problem() -> None:
    doc = training_file_doc("a")
    del doc["dataset_metadata"]["quality_summary"]
    doc["training_pairs"][0]["target_response"] = 42
    problems = validate_text(text(doc), "training_file")
    assert where(problems) == ["dataset_metadata.quality_summary", "training_pairs[0].target_response"]


def test_training_file_pair_checks_apply() -> None:
    doc = training_file_doc("a", "b")
    doc["training_pairs"][4]["conversation_metadata"]["client_background"] = "[object Object]"
    assert where(validate_text(text(doc))) == ["training_pairs[4].conversation_metadata.client_background"]


def test_training_file_with_a_legacy_conversation_warns_once() -> None:
    legacy = enrich_default(make_parsed(legacy=True), conversation_id="old", persona=None, training_topic=None)
    modern = enrich_default(make_parsed(), conversation_id="new")
    problems = validate_text(text(dump(make_training_file(legacy, modern))))
    assert where(problems) == ["training_pairs[0].conversation_metadata"]
    assert problems[0].severity == "warning" and "'old'" in problems[0].message


# --- JSONL -------------------------------------------------------------------------------------------


def test_jsonl_invalid_line() -> None:
    lines = jsonl_text("a", "b").rstrip("\n").split("\n")
    lines[1] = lines[1][:50]
    problems = validate_text("\n".join(lines), "jsonl")
    assert where(problems) == ["line 2"] and "not valid JSON" in problems[0].message


def test_jsonl_schema_problem_names_line_and_field() -> None:
    lines = jsonl_text("a").rstrip("\n").split("\n")
    pair = json.loads(lines[2])
    pair["training_metadata"]["quality_score"] = "high"
    lines[2] = json.dumps(pair)
    assert where(validate_text("\n".join(lines))) == ["line 3: training_metadata.quality_score"]


def test_jsonl_duplicate_ids() -> None:
    lines = jsonl_text("a", "b").rstrip("\n").split("\n")
    lines.append(lines[4])
    problems = validate_text("\n".join(lines))
    assert [str(p) for p in problems] == [
        "line 7: id 'b_turn3' repeats line 5: id",
        "line 7: turn_number is 3, not after the previous pair's 5 of conversation 'b'",
    ]


def test_jsonl_blank_line_in_the_middle() -> None:
    lines = jsonl_text("a").rstrip("\n").split("\n")
    lines.insert(1, "")
    assert where(validate_text("\n".join(lines), "jsonl")) == ["line 2"]


def test_jsonl_pair_checks_apply() -> None:
    lines = jsonl_text("a").rstrip("\n").split("\n")
    pair = json.loads(lines[0])
    pair["conversation_metadata"]["persona_archetype"] = None
    lines[0] = json.dumps(pair)
    assert where(validate_text("\n".join(lines))) == ["line 1: conversation_metadata.persona_archetype"]


# --- readable text -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "readable"),
    [
        ("Age 37, male, Urban/Suburban; High earner with RSUs", True),
        ("Client profile: David Chen - The Pragmatic Optimist", True),
        ("Income: $185,000 (after tax) [approx.]", True),
        ("[object Object]; High earner", False),
        ("{'age': 37}", False),
        ('{"age": 37}', False),
        ("['a', 'b']", False),
        ("<lora_assets.schemas.Persona object at 0x7f3a2c>", False),
        ("Age 37; None", False),
        ("null", False),
        ("", False),
        ("   ", False),
        (None, False),
    ],
)
def test_is_readable_text(value: str | None, readable: bool) -> None:
    assert is_readable_text(value) is readable


def test_turn_list_from_factory_is_consistent() -> None:
    # Guard for the factories other tests rely on.
    turns = make_turns(5)
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert [t.turn_number for t in turns] == [1, 2, 3, 4, 5]


# --- the pipeline's own raw.json; limits ------------------------------------------------------


def test_the_pipelines_raw_json_is_recognised_and_validated() -> None:
    envelope = {"response": make_message(), "generation": {"stop_reason": "end_turn", "model": "claude-haiku-5-5"}}
    assert detect_kind(json.dumps(envelope)) == "raw"
    assert validate_text(json.dumps(envelope)) == []
    cut = {"response": make_message(stop_reason="max_tokens"), "generation": {"stop_reason": "max_tokens"}}
    assert [p.where for p in validate_text(json.dumps(cut))] == ["stop_reason"]


def test_deep_nesting_is_one_problem_not_a_recursion_error() -> None:
    assert validate_text("[" * 100_000 + "]" * 100_000) == [
        Problem("$", "nests 100,000 levels deep, deeper than the limit of 64")
    ]


@pytest.mark.parametrize("kind", ["raw", "parsed", "jsonl"])
def test_a_conversation_over_the_turn_limit_is_refused(kind: str) -> None:
    from lora_assets.core.parse import TooManyTurnsError

    parsed = json.loads(make_parsed(turn_count=12).model_dump_json())
    text = json.dumps(parsed) if kind != "jsonl" else "\n".join(
        json.dumps({"conversation_history": parsed["turns"], "training_metadata": {}, "current_user_input": "x"})
        for _ in range(2))
    with pytest.raises(TooManyTurnsError, match="12 turns, over the limit of 10"):
        validate_text(text, kind, max_turns=10)
