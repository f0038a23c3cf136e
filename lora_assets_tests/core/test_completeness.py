"""Scaffolding completeness report: precise problems, and the coverage matrix."""

from __future__ import annotations

from typing import Any

import pytest

from lora_assets.core.completeness import CompletenessReport, Problem, completeness_report
from lora_assets.schemas import EmotionalArc, Persona, PromptTemplate, ScaffoldingBundle, TrainingTopic
from lora_assets.store.scaffolding_files import load_bundle


@pytest.fixture(scope="module")
def bundle() -> ScaffoldingBundle:
    return load_bundle()


def _report(bundle: ScaffoldingBundle, coverage: dict[tuple[str, str, str], int] | None = None, **override: Any) -> CompletenessReport:
    parts: dict[str, Any] = {
        "personas": bundle.personas,
        "arcs": bundle.emotional_arcs,
        "topics": bundle.training_topics,
        "templates": bundle.prompt_templates,
        "consultant": bundle.consultant_profile,
    }
    parts.update(override)
    return completeness_report(**parts, coverage=coverage or {})


def _lenient(model: type, record: Any, **update: Any) -> Any:
    """A record as the DB reads it: `model_construct`, no validation."""
    data = record.model_dump()
    data.update(update)
    return model.model_construct(**data)


def test_clean_bundle_passes(bundle: ScaffoldingBundle) -> None:
    report = _report(bundle)
    assert report.passed
    assert report.problems == []
    assert report.counts["personas"] == len(bundle.personas)
    assert report.counts["emotional_arcs"] == len(bundle.emotional_arcs)
    assert report.counts["training_topics"] == len(bundle.training_topics)
    assert report.counts["prompt_templates"] == 3
    assert report.counts["consultant_profiles"] == 1
    assert report.missing_fields_markdown() == "No problems found."
    assert report.summary().startswith("Scaffolding complete: ")


def test_broken_persona_is_reported_precisely(bundle: ScaffoldingBundle) -> None:
    broken = _lenient(Persona, bundle.personas[0], demographics={}, archetype="  ")
    report = _report(bundle, personas=[broken, *bundle.personas[1:]])
    assert not report.passed
    assert report.problems == [
        Problem(kind="persona", key="pragmatic_optimist", field="archetype", reason="missing or blank archetype"),
        Problem(kind="persona", key="pragmatic_optimist", field="demographics", reason="missing or empty demographics"),
    ]
    table = report.missing_fields_markdown().splitlines()
    assert table[0] == "| kind | key | field | problem |"
    assert table[2] == "| persona | pragmatic_optimist | archetype | missing or blank archetype |"
    assert table[3] == "| persona | pragmatic_optimist | demographics | missing or empty demographics |"
    assert report.summary().startswith("Scaffolding INCOMPLETE: 2 problems;")


def test_demographics_shape_and_age(bundle: ScaffoldingBundle) -> None:
    as_text = _lenient(Persona, bundle.personas[0], demographics="Age 37, male")
    no_age = _lenient(Persona, bundle.personas[1], demographics={"gender": "female"})
    no_background = _lenient(Persona, bundle.personas[2], financial_background=None)
    report = _report(bundle, personas=[as_text, no_age, no_background])
    assert [(p.key, p.field, p.reason) for p in report.problems] == [
        ("pragmatic_optimist", "demographics", "must be a JSON object, got str"),
        ("anxious_planner", "demographics.age", "demographics has no age"),
        ("overwhelmed_avoider", "financial_background", "missing or empty financial_background"),
    ]


def test_record_built_without_fields_does_not_crash(bundle: ScaffoldingBundle) -> None:
    bare_arc = EmotionalArc.model_construct(arc_key="bare_arc")  # name, emotions, description absent
    topic_as_dict = {"topic_key": "dict_topic", "name": "Dict topic", "description": ""}
    report = _report(bundle, arcs=[*bundle.emotional_arcs, bare_arc], topics=[*bundle.training_topics, topic_as_dict])
    assert {(p.kind, p.key, p.field) for p in report.problems} == {
        ("emotional_arc", "bare_arc", "name"),
        ("emotional_arc", "bare_arc", "starting_emotion"),
        ("emotional_arc", "bare_arc", "ending_emotion"),
        ("training_topic", "dict_topic", "description"),
    }


def test_missing_key_is_named_by_index(bundle: ScaffoldingBundle) -> None:
    keyless = {"arc_key": "", "name": "X → Y", "starting_emotion": "x", "ending_emotion": "y"}
    report = _report(bundle, arcs=[*bundle.emotional_arcs, keyless])
    index = len(bundle.emotional_arcs)
    assert report.problems == [Problem(kind="emotional_arc", key=f"#{index}", field="arc_key", reason="missing arc_key")]


def test_duplicate_key(bundle: ScaffoldingBundle) -> None:
    copy = _lenient(TrainingTopic, bundle.training_topics[0], name="Another name")
    report = _report(bundle, topics=[*bundle.training_topics, copy])
    n = len(bundle.training_topics)
    assert report.problems == [
        Problem(
            kind="training_topic",
            key="mortgage_payoff_strategy",
            field="topic_key",
            reason=f"duplicate topic_key: records #0 and #{n} share it",
        )
    ]
    # the duplicate is one row of the matrix, not two
    assert report.counts["combinations"] == len(bundle.personas) * len(bundle.emotional_arcs) * n


def test_unknown_placeholder(bundle: ScaffoldingBundle) -> None:
    template = bundle.prompt_templates[0]
    bad = _lenient(PromptTemplate, template, body=template.body + "\nAlso mention {{unknown_thing}}.")
    report = _report(bundle, templates=[bad, *bundle.prompt_templates[1:]])
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert (problem.kind, problem.key, problem.field) == ("prompt_template", template.template_key, "body")
    assert problem.reason.startswith("unknown placeholder {{unknown_thing}} (known: ")
    assert "{{unknown_thing}}" in report.missing_fields_markdown()


@pytest.mark.parametrize("broken", ["{{persona_name}", "{{consultant_name", "{{persona-key}}", "{persona_name}",
                                    "{{{arc_name}}}", "{{ persona name }}", "{{}}", "{{topic_name|upper}}"])
def test_malformed_placeholder_is_named_with_its_text(bundle: ScaffoldingBundle, broken: str) -> None:
    template = bundle.prompt_templates[0]
    bad = _lenient(PromptTemplate, template, body=template.body + f"\nAlso mention {broken} here.")
    report = _report(bundle, templates=[bad, *bundle.prompt_templates[1:]])
    assert not report.passed
    [problem] = report.problems
    assert (problem.kind, problem.key, problem.field) == ("prompt_template", template.template_key, "body")
    assert problem.reason.startswith(f"malformed placeholder {broken!r}"), problem.reason


def test_missing_tier(bundle: ScaffoldingBundle) -> None:
    templates = [t for t in bundle.prompt_templates if t.tier != "scenario"]
    report = _report(bundle, templates=templates)
    assert report.problems == [
        Problem(kind="prompt_template", key="", field="tier", reason="no template for tier 'scenario'")
    ]


def test_two_templates_for_one_tier(bundle: ScaffoldingBundle) -> None:
    extra = _lenient(PromptTemplate, bundle.prompt_templates[0], template_key="another_standard", id="x")
    report = _report(bundle, templates=[*bundle.prompt_templates, extra])
    assert [(p.key, p.field) for p in report.problems] == [(f"{bundle.prompt_templates[0].template_key}, another_standard", "tier")]
    assert "exactly one expected" in report.problems[0].reason


def test_missing_consultant_and_empty_kinds(bundle: ScaffoldingBundle) -> None:
    report = _report(bundle, consultant=None, personas=[])
    assert Problem(kind="consultant_profile", key="", field="", reason="no consultant profile") in report.problems
    assert Problem(kind="persona", key="", field="", reason="no persona records") in report.problems
    assert report.counts["consultant_profiles"] == 0
    assert "consultant profile MISSING" in report.summary()


def test_markdown_escapes_pipes(bundle: ScaffoldingBundle) -> None:
    bad = _lenient(Persona, bundle.personas[0], persona_key="bad|key")
    row = _report(bundle, personas=[bad]).missing_fields_markdown().splitlines()[2]
    assert row.startswith("| persona | bad\\|key | persona_key | ")


def test_empty_coverage_is_a_matrix_of_zeros(bundle: ScaffoldingBundle) -> None:
    report = _report(bundle)
    md = report.coverage_markdown(max_rows=100).splitlines()
    arcs = [a.arc_key for a in bundle.emotional_arcs]
    assert md[0] == "| persona \\ arc | " + " | ".join(arcs) + " | total |"
    rows = md[2 : 2 + len(bundle.personas)]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [p.persona_key for p in bundle.personas]
    for row in rows:
        assert row.split(" | ")[1:] == ["0"] * len(arcs) + ["0 |"]
    total = len(bundle.personas) * len(bundle.emotional_arcs) * len(bundle.training_topics)
    assert f"0 of {total} combinations covered." in md
    assert report.counts["conversations"] == 0


def test_coverage_counts(bundle: ScaffoldingBundle) -> None:
    p0, p1 = bundle.personas[0], bundle.personas[1]
    a0, a1 = bundle.emotional_arcs[0], bundle.emotional_arcs[1]
    t0, t1 = bundle.training_topics[0], bundle.training_topics[1]
    coverage = {
        (p0.persona_key, a0.arc_key, t0.topic_key): 3,
        (p0.persona_key, a0.arc_key, t1.topic_key): 2,
        (p0.id, a1.id, t1.id): 1,  # ids are mapped to keys
        (p1.persona_key, a1.arc_key, t0.topic_key): 4,
        (p1.persona_key, a1.arc_key, t1.topic_key): 0,  # zero cells do not count as covered
        ("gone_persona", a0.arc_key, t0.topic_key): 5,
    }
    report = _report(bundle, coverage)
    assert report.passed
    assert report.counts["combinations_covered"] == 4
    assert report.counts["conversations"] == 15
    assert report.unmatched_conversations == 5
    md = report.coverage_markdown().splitlines()
    zeros = ["0"] * (len(bundle.emotional_arcs) - 2)
    assert md[2] == f"| {p0.persona_key} | " + " | ".join(["5", "1", *zeros, "6"]) + " |"
    assert md[3] == f"| {p1.persona_key} | " + " | ".join(["0", "4", *zeros, "4"]) + " |"
    per_topic = next(line for line in md if line.startswith("Conversations per topic: "))
    assert f"{t0.topic_key} 7, {t1.topic_key} 3, " in per_topic
    total = len(bundle.personas) * len(bundle.emotional_arcs) * len(bundle.training_topics)
    assert f"4 of {total} combinations covered." in md
    assert any("5 conversation(s) reference" in line for line in md)
    assert f"4 of {total} combinations covered by 15 conversations" in report.summary()


def test_coverage_max_rows(bundle: ScaffoldingBundle) -> None:
    md = _report(bundle).coverage_markdown(max_rows=2)
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and "persona \\ arc" not in line]
    assert len(table_rows) == 2
    assert f"… and {len(bundle.personas) - 2} more personas not shown." in md


def test_report_is_serialisable(bundle: ScaffoldingBundle) -> None:
    report = _report(bundle, {(bundle.personas[0].persona_key, bundle.emotional_arcs[0].arc_key, bundle.training_topics[0].topic_key): 1})
    assert CompletenessReport.model_validate_json(report.model_dump_json()) == report
