"""Prompt rendering: template variables from scaffolding, `{{placeholder}}` substitution, and the
static (cacheable) system prompt built from the consultant profile."""

from __future__ import annotations

import re

from lora_assets.core.text import render_demographics, render_financial_background
from lora_assets.schemas import ConsultantProfile, EmotionalArc, Persona, PromptTemplate, TrainingTopic
from lora_assets.schemas.scaffolding import PLACEHOLDER_RE

#: Every placeholder a template may use. The completeness check rejects any other.
KNOWN_PLACEHOLDERS: frozenset[str] = frozenset(
    {
        "persona_name",
        "persona_key",
        "persona_archetype",
        "persona_demographics",
        "persona_financial_background",
        "persona_communication_style",
        "persona_emotional_baseline",
        "persona_core_values",
        "persona_typical_concerns",
        "arc_name",
        "arc_key",
        "arc_starting_emotion",
        "arc_ending_emotion",
        "arc_description",
        "arc_key_moments",
        "topic_name",
        "topic_key",
        "topic_category",
        "topic_description",
        "topic_complexity",
        "topic_key_concepts",
        "consultant_name",
        "turn_count",
    }
)


class TemplateError(ValueError):
    """A template uses a placeholder we cannot resolve."""


def template_variables(
    persona: Persona,
    arc: EmotionalArc,
    topic: TrainingTopic,
    consultant: ConsultantProfile,
    turn_count: int,
) -> dict[str, str]:
    """Resolved text for every known placeholder (JSON objects rendered as prose)."""
    return {
        "persona_name": persona.name,
        "persona_key": persona.persona_key,
        "persona_archetype": persona.archetype,
        "persona_demographics": render_demographics(persona.demographics),
        "persona_financial_background": render_financial_background(persona.financial_background),
        "persona_communication_style": persona.communication_style,
        "persona_emotional_baseline": persona.emotional_baseline,
        "persona_core_values": ", ".join(persona.core_values),
        "persona_typical_concerns": "; ".join(persona.typical_concerns),
        "arc_name": arc.name,
        "arc_key": arc.arc_key,
        "arc_starting_emotion": arc.starting_emotion,
        "arc_ending_emotion": arc.ending_emotion,
        "arc_description": arc.description,
        "arc_key_moments": "; ".join(arc.key_moments),
        "topic_name": topic.name,
        "topic_key": topic.topic_key,
        "topic_category": topic.category,
        "topic_description": topic.description,
        "topic_complexity": topic.complexity,
        "topic_key_concepts": ", ".join(topic.key_concepts),
        "consultant_name": consultant.name,
        "turn_count": str(turn_count),
    }


def unknown_placeholders(template: PromptTemplate) -> list[str]:
    """Placeholders in `template` that no scaffolding field resolves."""
    return [p for p in template.placeholders if p not in KNOWN_PLACEHOLDERS]


#: What looks like a placeholder gone wrong once the well-formed `{{name}}` ones are masked: a
#: stray `{{` or `}}` (`{{persona_name}`, `{{consultant_name`, `{{persona-key}}`, `{{{x}}}`), or a
#: single brace against a name (`{persona_name}`, `{topic_key`, `arc_name}`). Prose never needs
#: these, and each would be sent literally in every paid prompt. A JSON example in a template
#: (`{"key": …}`) still passes: its braces touch quotes, not names.
_BROKEN_RE = re.compile(r"\{\{|\}\}|\{\s*[A-Za-z_$%#][\w.\-]*\s*\}?|[\w\-]\s*\}")
_WELL_FORMED_RE = re.compile(r"(?<!\{)\{\{\s*[a-zA-Z0-9_]+\s*\}\}(?!\})")


def broken_placeholders(body: str, reach: int = 40) -> list[str]:
    """The pieces of `body` that look like a malformed placeholder (see `_BROKEN_RE`), each
    widened to its braces so the user can find it: `{{persona_name}`, `{{persona-key}}`."""
    masked = _WELL_FORMED_RE.sub(lambda m: "\x00" * len(m.group(0)), body)
    spans: list[tuple[int, int]] = []
    for match in _BROKEN_RE.finditer(masked):
        start, end = match.start(), match.end()
        if masked[start] == "{":
            close = masked.find("}", end, start + reach) if masked[end - 1] != "}" else end - 1
            # Its own closing brace only: not one after the next opening (`{{a and {{b}}`) or line.
            if close >= 0 and ("{" in masked[end:close] or "\n" in masked[end:close]):
                close = -1
            end = max(end, close + 1) if close >= 0 else _token_end(body, end, reach)
            while end < len(body) and body[end] == "}":
                end += 1
        else:
            opening = masked.rfind("{", max(0, start - reach), start)
            if opening >= 0 and ("}" in masked[opening:start] or "\n" in masked[opening:start]):
                opening = -1
            start = opening if opening >= 0 else _token_start(body, start, reach)
            while start > 0 and body[start - 1] == "{":
                start -= 1
        if spans and start < spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return list(dict.fromkeys(body[a:b] for a, b in spans))


def _token_end(body: str, at: int, reach: int) -> int:
    limit = min(len(body), at + reach)
    while at < limit and not body[at].isspace():
        at += 1
    return at


def _token_start(body: str, at: int, reach: int) -> int:
    limit = max(0, at - reach)
    while at > limit and not body[at - 1].isspace():
        at -= 1
    return at


def render_template(template: PromptTemplate, variables: dict[str, str]) -> str:
    """Substitute every `{{name}}`; raise TemplateError naming the template and placeholder (an
    unknown one, or one that is malformed: it would otherwise be sent literally)."""
    broken = broken_placeholders(template.body)
    if broken:
        raise TemplateError(f"template {template.template_key!r}: malformed placeholder(s) {broken}")
    missing = [p for p in template.placeholders if p not in variables]
    if missing:
        raise TemplateError(f"template {template.template_key!r}: unresolvable placeholder(s) {missing}")
    return PLACEHOLDER_RE.sub(lambda m: variables[m.group(1)], template.body)


def turn_count_for(seed: str, low: int = 4, high: int = 10) -> int:
    """A deterministic even turn count in [low, high] for an item (user/assistant pairs)."""
    import hashlib

    span = (high - low) // 2 + 1
    return low + 2 * (int(hashlib.sha256(seed.encode()).hexdigest(), 16) % span)


def system_prompt(consultant: ConsultantProfile) -> str:
    """The static system prompt: consultant profile + output rules. Identical for every item of
    a run, so it is sent as a cached block."""
    style = consultant.communication_style
    philosophy = "\n".join(f"- {k.replace('_', ' ').capitalize()}: {v}" for k, v in consultant.core_philosophy.items())
    techniques = "\n".join(f"- {x}" for x in style.techniques)
    avoid = "\n".join(f"- {x}" for x in style.avoid)
    return f"""You write realistic training conversations between a financial-planning client and the advisor described below. The conversations train an advisor model, so the advisor's turns must model excellent, emotionally intelligent practice.

# The advisor
Name: {consultant.name}
Business: {consultant.business}
Expertise: {consultant.expertise}
Years of experience: {consultant.years_experience}

Core philosophy:
{philosophy}

Tone: {style.tone}
Techniques the advisor uses:
{techniques}
The advisor never:
{avoid}

# Output rules
1. Return ONE JSON object and nothing else: no prose, no code fence.
2. Shape: {{"conversation_metadata": {{"client_persona", "session_context", "conversation_phase", "expected_outcome"}}, "turns": [{{"turn_number", "role", "content", "emotional_context"}}]}}.
3. Turns alternate strictly, starting with the client: role "user" is the client, role "assistant" is the advisor. turn_number starts at 1 and increases by 1.
4. Every user turn carries emotional_context {{"primary_emotion", "secondary_emotions", "intensity" (0.0-1.0)}} that follows the requested emotional arc.
5. client_persona is "<client name> - <archetype>" exactly as given.
6. Advisor turns are specific and educational, never give individualized securities recommendations, and acknowledge feelings before facts.
7. Never mention that this is synthetic or that you are an AI.
"""


#: Fields of the `<scaffolding>` block appended to every user prompt, in order.
SCAFFOLDING_BLOCK_FIELDS: tuple[str, ...] = (
    "persona_name",
    "persona_archetype",
    "persona_demographics",
    "persona_financial_background",
    "arc_name",
    "arc_starting_emotion",
    "arc_ending_emotion",
    "topic_name",
    "topic_description",
    "turn_count",
)


def scaffolding_block(variables: dict[str, str]) -> str:
    """A `<scaffolding>` block of `key: value` lines: an unambiguous spec for the model (and what
    the loopback simulator reads to compose its conversation)."""
    lines = [f"{k}: {' '.join(variables[k].split())}" for k in SCAFFOLDING_BLOCK_FIELDS]
    return "<scaffolding>\n" + "\n".join(lines) + "\n</scaffolding>"


def parse_scaffolding_block(prompt: str) -> dict[str, str]:
    """Inverse of `scaffolding_block`: the key/value pairs found in `prompt` (empty if none)."""
    import re

    match = re.search(r"<scaffolding>\n(.*?)\n</scaffolding>", prompt, re.S)
    if not match:
        return {}
    pairs = (line.split(": ", 1) for line in match.group(1).splitlines() if ": " in line)
    return {k.strip(): v.strip() for k, v in pairs}


def render_user_prompt(template: PromptTemplate, variables: dict[str, str]) -> str:
    """The full user message: the rendered template followed by the scaffolding block."""
    return render_template(template, variables).rstrip() + "\n\n" + scaffolding_block(variables)
