"""Schema round-trips and rejections."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lora_assets.schemas import (
    SCHEMAS,
    InputParameters,
    ParsedConversation,
    Persona,
    PromptTemplate,
    RawConversation,
    ScaffoldingBundle,
    scaffolding_id,
)

RAW = {
    "conversation_metadata": {
        "client_persona": "David Chen - The Pragmatic Optimist",
        "session_context": "First meeting about paying the mortgage off early",
        "conversation_phase": "initial_opportunity_exploration",
        "expected_outcome": "A clear comparison of payoff vs investing",
    },
    "turns": [
        {"turn_number": 1, "role": "user", "content": "I'm confused about extra payments.",
         "emotional_context": {"primary_emotion": "confusion", "secondary_emotions": ["hope"], "intensity": 0.6}},
        {"turn_number": 2, "role": "assistant", "content": "That's a very common question. Let's look at it together."},
    ],
}


def test_raw_conversation_round_trips() -> None:
    model = RawConversation.model_validate(RAW)
    assert json.loads(model.model_dump_json(exclude_none=True)) == RAW


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda d: d["turns"][0].update(role="advisor"), "role"),
        (lambda d: d["turns"][0].update(content=""), "content"),
        (lambda d: d["turns"][0].update(turn_number=0), "turn_number"),
        (lambda d: d["turns"][0]["emotional_context"].update(intensity=1.5), "intensity"),
        (lambda d: d["conversation_metadata"].pop("client_persona"), "client_persona"),
        (lambda d: d.update(turns=d["turns"][:1]), "turns"),
        (lambda d: d.update(extra_field=1), "extra_field"),
    ],
)
def test_raw_conversation_rejects(mutate, where: str) -> None:
    data = json.loads(json.dumps(RAW))
    mutate(data)
    with pytest.raises(ValidationError) as info:
        RawConversation.model_validate(data)
    assert where in str(info.value)


def test_input_parameters_require_all_ten_fields_populated() -> None:
    full = {f: "x" for f in InputParameters.model_fields}
    assert len(full) == 10
    InputParameters.model_validate(full)
    with pytest.raises(ValidationError, match="persona_archetype"):
        InputParameters.model_validate(full | {"persona_archetype": ""})


def test_parsed_conversation_allows_legacy_without_input_parameters() -> None:
    assert ParsedConversation.model_validate(RAW).input_parameters is None


def test_persona_demographics_must_be_an_object_and_ids_are_stable() -> None:
    base = dict(persona_key="pragmatic_optimist", name="David Chen", archetype="The Pragmatic Optimist",
                demographics={"age": 37}, financial_background="High earner", communication_style="direct",
                emotional_baseline="calm")
    p = Persona.model_validate(base)
    assert p.id == scaffolding_id("persona", "pragmatic_optimist") == Persona.model_validate(base).id
    with pytest.raises(ValidationError, match="demographics"):
        Persona.model_validate(base | {"demographics": "Age 37"})
    with pytest.raises(ValidationError, match="persona_key"):
        Persona.model_validate(base | {"persona_key": "Bad Key!"})


def test_template_placeholders_listed_in_order() -> None:
    t = PromptTemplate(template_key="tt", name="t", tier="template", body="{{a}} {{ b }} {{a}}")
    assert t.placeholders == ["a", "b"]


def test_bundle_rejects_duplicate_keys_naming_both_records(tmp_path) -> None:
    from lora_assets.store.scaffolding_files import load_bundle

    bundle = load_bundle()
    data = bundle.model_dump()
    data["personas"].append(data["personas"][0])
    with pytest.raises(ValidationError, match=r"duplicate persona_key .* at personas\[\d+\] \(first at personas\[0\]\)"):
        ScaffoldingBundle.model_validate(data)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_schema_exports_json_schema(name: str) -> None:
    schema = SCHEMAS[name].model_json_schema()
    assert schema["type"] == "object" and schema["properties"]
