"""The scaffolding shipped in lora_assets/data: loads, is complete, varied, and renders cleanly."""

from __future__ import annotations

import itertools
import json

import pytest

from lora_assets.core.completeness import completeness_report
from lora_assets.core.prompt import (
    KNOWN_PLACEHOLDERS,
    parse_scaffolding_block,
    render_user_prompt,
    system_prompt,
    template_variables,
    turn_count_for,
)
from lora_assets.schemas import ScaffoldingBundle
from lora_assets.store.scaffolding_files import BUNDLED_DIR, FILE_NAMES, load_bundle

LEAKS = ("{{", "}}", "{'", "'}", "[object Object]", "None", "null")


@pytest.fixture(scope="module")
def bundle() -> ScaffoldingBundle:
    return load_bundle()


def test_bundled_files_are_json_of_the_right_shape() -> None:
    for name in FILE_NAMES:
        data = json.loads((BUNDLED_DIR / name).read_text(encoding="utf-8"))
        assert isinstance(data, dict if name == "consultant_profile.json" else list), name


def test_counts(bundle: ScaffoldingBundle) -> None:
    assert len(bundle.personas) >= 10
    assert len(bundle.emotional_arcs) >= 6
    assert len(bundle.training_topics) >= 10
    assert sorted(t.tier for t in bundle.prompt_templates) == ["edge_case", "scenario", "template"]


def test_bundled_scaffolding_passes_completeness(bundle: ScaffoldingBundle) -> None:
    report = completeness_report(
        bundle.personas,
        bundle.emotional_arcs,
        bundle.training_topics,
        bundle.prompt_templates,
        bundle.consultant_profile,
        {},
    )
    assert report.passed, report.missing_fields_markdown()
    assert report.counts["personas"] == len(bundle.personas)
    assert report.counts["combinations"] == len(bundle.personas) * len(bundle.emotional_arcs) * len(bundle.training_topics)
    assert report.missing_fields_markdown() == "No problems found."


def test_reference_records_from_the_bug_spec(bundle: ScaffoldingBundle) -> None:
    personas = {p.persona_key: p for p in bundle.personas}
    arcs = {a.arc_key: a for a in bundle.emotional_arcs}
    topics = {t.topic_key: t for t in bundle.training_topics}
    david = personas["pragmatic_optimist"]
    assert (david.name, david.archetype) == ("David Chen", "The Pragmatic Optimist")
    assert arcs["confusion_to_clarity"].name == "Confusion → Clarity"
    assert arcs["fear_to_confidence"].name == "Fear → Confidence"
    for key in ("shame_to_acceptance", "overwhelm_to_empowerment"):
        assert key in arcs
    assert topics["mortgage_payoff_strategy"].name == "Accelerated Mortgage Payoff"
    assert topics["estate_planning_basics"].name == "Essential Estate Planning"


def test_personas_are_complete_and_varied(bundle: ScaffoldingBundle) -> None:
    standard = {"age", "gender", "location", "marital_status", "dependents", "occupation", "household_income"}
    for p in bundle.personas:
        assert isinstance(p.demographics, dict)
        assert standard <= set(p.demographics), p.persona_key
        assert isinstance(p.demographics["age"], int)
        assert p.archetype.startswith("The "), p.persona_key
        assert p.core_values and p.typical_concerns, p.persona_key
    # JSON-object demographics are the "[object Object]" trap; both background shapes must be exercised.
    shapes = {type(p.financial_background) for p in bundle.personas}
    assert shapes == {str, dict}
    ages = [p.demographics["age"] for p in bundle.personas]
    assert max(ages) - min(ages) >= 30
    assert len({p.demographics["gender"] for p in bundle.personas}) >= 3
    assert len({p.demographics["location"] for p in bundle.personas}) == len(bundle.personas)
    assert len({p.demographics["marital_status"] for p in bundle.personas}) >= 4
    assert len({p.name for p in bundle.personas}) == len(bundle.personas)
    assert len({p.archetype for p in bundle.personas}) == len(bundle.personas)


def test_arcs_and_topics_are_complete(bundle: ScaffoldingBundle) -> None:
    for a in bundle.emotional_arcs:
        assert "→" in a.name and len(a.key_moments) >= 3, a.arc_key
    assert {t.complexity for t in bundle.training_topics} == {"beginner", "intermediate", "advanced"}
    assert len({t.category for t in bundle.training_topics}) >= 8
    for t in bundle.training_topics:
        assert len(t.key_concepts) >= 3, t.topic_key


def test_templates_use_known_placeholders_generously(bundle: ScaffoldingBundle) -> None:
    for t in bundle.prompt_templates:
        used = set(t.placeholders)
        assert used <= KNOWN_PLACEHOLDERS, used - KNOWN_PLACEHOLDERS
        assert "turn_count" in used
        assert len(used) >= 18, (t.template_key, sorted(KNOWN_PLACEHOLDERS - used))
    edge = next(t for t in bundle.prompt_templates if t.tier == "edge_case")
    assert "guaranteed return" in edge.body and "crisis" in edge.body


def test_every_template_renders_with_every_combination(bundle: ScaffoldingBundle) -> None:
    consultant = bundle.consultant_profile
    for persona, arc, topic in itertools.product(bundle.personas, bundle.emotional_arcs, bundle.training_topics):
        turns = turn_count_for(f"{persona.persona_key}:{arc.arc_key}:{topic.topic_key}")
        variables = template_variables(persona, arc, topic, consultant, turns)
        for template in bundle.prompt_templates:
            prompt = render_user_prompt(template, variables)
            for leak in LEAKS:
                assert leak not in prompt, (template.template_key, persona.persona_key, leak)
            assert f"{persona.name} - {persona.archetype}" in prompt
            assert f"exactly {turns} turns" in prompt
            block = parse_scaffolding_block(prompt)
            assert block["persona_name"] == persona.name
            assert block["arc_name"] == arc.name
            assert block["topic_name"] == topic.name
            assert block["turn_count"] == str(turns)


def test_demographics_render_as_prose(bundle: ScaffoldingBundle) -> None:
    david = next(p for p in bundle.personas if p.persona_key == "pragmatic_optimist")
    variables = template_variables(david, bundle.emotional_arcs[0], bundle.training_topics[0], bundle.consultant_profile, 6)
    assert variables["persona_demographics"].startswith("Age 37, male")
    assert "$540,000" in variables["persona_financial_background"]


def test_consultant_profile_builds_the_system_prompt(bundle: ScaffoldingBundle) -> None:
    consultant = bundle.consultant_profile
    assert consultant.name == "Elena Morales, CFP"
    assert consultant.years_experience > 0
    assert consultant.core_philosophy and consultant.communication_style.techniques and consultant.communication_style.avoid
    prompt = system_prompt(consultant)
    assert consultant.name in prompt
    for leak in ("{'", "[object Object]"):
        assert leak not in prompt
