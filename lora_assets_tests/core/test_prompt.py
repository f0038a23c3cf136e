"""The placeholder grammar: well-formed `{{name}}` placeholders render, anything that looks like a
placeholder gone wrong is found (and never rendered into a paid prompt)."""

from __future__ import annotations

import pytest

from lora_assets.core.prompt import TemplateError, broken_placeholders, render_template
from lora_assets.schemas import PromptTemplate


@pytest.mark.parametrize("body, found", [
    ("Hi {{persona_name}, welcome", ["{{persona_name}"]),
    ("Advisor {{consultant_name speaks", ["{{consultant_name"]),
    ("Key {{persona-key}} here", ["{{persona-key}}"]),
    ("Single {persona_name} braces}", ["{persona_name}", "braces}"]),
    ("Tail arc_name} only", ["arc_name}"]),
    ("Triple {{{arc_name}}} braces", ["{{{arc_name}}}"]),
    ("Empty {{}} and {{ }}", ["{{}}", "{{ }}"]),
    ("Shell ${topic_name} style", ["{topic_name}"]),
    ("Good {{arc_name}} then bad {{topic_key} end", ["{{topic_key}"]),
    ("Two {{consultant_name and {{persona-key}} here", ["{{consultant_name", "{{persona-key}}"]),
    ("Spaced {{ persona name }} inside", ["{{ persona name }}"]),
    ("Pipe {{topic_name|upper}} filter", ["{{topic_name|upper}}"]),
])
def test_broken_placeholders_are_found_with_their_text(body: str, found: list[str]) -> None:
    assert broken_placeholders(body) == found


@pytest.mark.parametrize("body", [
    "Plain prose without braces.",
    "{{persona_name}} meets {{ consultant_name }} about {{topic_name}}{{arc_name}}.",
    'A JSON example: {"turns": [{"role": "user"}]}',
])
def test_well_formed_text_has_no_broken_placeholders(body: str) -> None:
    assert broken_placeholders(body) == []


def test_render_refuses_a_malformed_placeholder_instead_of_sending_it() -> None:
    template = PromptTemplate(template_key="tpl", name="T", tier="template", body="Hello {{persona_name}, {{arc_name}}")
    with pytest.raises(TemplateError, match=r"template 'tpl': malformed placeholder\(s\) \['\{\{persona_name\}'\]"):
        render_template(template, {"persona_name": "Ann", "arc_name": "calm"})
    good = PromptTemplate(template_key="tpl", name="T", tier="template", body="Hello {{ persona_name }}, {{arc_name}}")
    assert render_template(good, {"persona_name": "Ann", "arc_name": "calm"}) == "Hello Ann, calm"
