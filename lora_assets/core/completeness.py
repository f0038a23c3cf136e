"""Scaffolding completeness: what is missing or broken in the personas, arcs, topics, templates and
consultant profile, plus the persona × arc × topic coverage of existing conversations.

Pure: no I/O. Records may come from the DB constructed leniently (`model_construct`) or even as
plain dicts, so every field is read defensively; a record that lacks a field is reported, never
crashes the check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, get_args

from pydantic import BaseModel, Field

from lora_assets.core.prompt import KNOWN_PLACEHOLDERS, broken_placeholders, unknown_placeholders
from lora_assets.core.text import md_cell
from lora_assets.schemas import PromptTemplate
from lora_assets.schemas.scaffolding import KEY_PATTERN, Tier

TIERS: tuple[str, ...] = get_args(Tier)
_KEY_RE = re.compile(KEY_PATTERN)

#: kind -> (key field, required non-blank text fields other than the key)
_REQUIRED_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "persona": ("persona_key", ("name", "archetype")),
    "emotional_arc": ("arc_key", ("name", "starting_emotion", "ending_emotion")),
    "training_topic": ("topic_key", ("name", "description")),
    "prompt_template": ("template_key", ("name",)),
}


class Problem(BaseModel):
    """One thing wrong with the scaffolding."""

    kind: str = Field(description="persona | emotional_arc | training_topic | prompt_template | consultant_profile")
    key: str = Field(description="The record's key; '#<index>' when it has none; '' for the kind as a whole.")
    field: str = Field(description="The field at fault; '' when the problem is not about one field.")
    reason: str


class CoverageCell(BaseModel):
    """Number of existing conversations for one persona × arc × topic combination."""

    persona_key: str
    arc_key: str
    topic_key: str
    conversations: int


class CompletenessReport(BaseModel):
    """Result of `completeness_report`."""

    passed: bool
    problems: list[Problem] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    persona_keys: list[str] = Field(default_factory=list)
    arc_keys: list[str] = Field(default_factory=list)
    topic_keys: list[str] = Field(default_factory=list)
    coverage: list[CoverageCell] = Field(
        default_factory=list, description="Non-zero cells over the known keys, sorted by key."
    )
    unmatched_conversations: int = Field(
        default=0, description="Conversations whose persona/arc/topic is not in the scaffolding."
    )

    def missing_fields_markdown(self) -> str:
        """A markdown table `kind | key | field | problem`, or 'No problems found.'."""
        if not self.problems:
            return "No problems found."
        lines = ["| kind | key | field | problem |", "|---|---|---|---|"]
        for p in self.problems:
            lines.append(f"| {_md(p.kind)} | {_md(p.key)} | {_md(p.field)} | {_md(p.reason)} |")
        return "\n".join(lines)

    def coverage_markdown(self, max_rows: int = 50) -> str:
        """Persona × arc matrix of conversation counts (summed over topics), then the count per
        topic and how many persona × arc × topic combinations have at least one conversation.
        At most `max_rows` persona rows are shown."""
        by_pa: dict[tuple[str, str], int] = {}
        by_topic: dict[str, int] = dict.fromkeys(self.topic_keys, 0)
        for cell in self.coverage:
            by_pa[(cell.persona_key, cell.arc_key)] = by_pa.get((cell.persona_key, cell.arc_key), 0) + cell.conversations
            by_topic[cell.topic_key] = by_topic.get(cell.topic_key, 0) + cell.conversations

        out: list[str] = []
        if self.persona_keys and self.arc_keys:
            out.append("| persona \\ arc | " + " | ".join(_md(a) for a in self.arc_keys) + " | total |")
            out.append("|---|" + "---:|" * (len(self.arc_keys) + 1))
            shown = self.persona_keys[: max(max_rows, 0)]
            for persona in shown:
                cells = [by_pa.get((persona, arc), 0) for arc in self.arc_keys]
                out.append(f"| {_md(persona)} | " + " | ".join(str(c) for c in cells) + f" | {sum(cells)} |")
            hidden = len(self.persona_keys) - len(shown)
            if hidden > 0:
                out.append("")
                out.append(f"… and {hidden} more persona{'s' if hidden != 1 else ''} not shown.")
        else:
            out.append("(no personas or emotional arcs: empty matrix)")
        out.append("")
        if self.topic_keys:
            out.append("Conversations per topic: " + ", ".join(f"{t} {by_topic.get(t, 0)}" for t in self.topic_keys))
        else:
            out.append("Conversations per topic: (no training topics)")
        covered = self.counts.get("combinations_covered", 0)
        total = self.counts.get("combinations", 0)
        out.append(f"{covered} of {total} combinations covered.")
        if self.unmatched_conversations:
            out.append(
                f"{self.unmatched_conversations} conversation(s) reference a persona, arc or topic "
                "that is not in the current scaffolding."
            )
        return "\n".join(out)

    def summary(self) -> str:
        """One line: verdict, record counts, problems and coverage."""
        c = self.counts
        records = (
            f"{c.get('personas', 0)} personas, {c.get('emotional_arcs', 0)} emotional arcs, "
            f"{c.get('training_topics', 0)} training topics, {c.get('prompt_templates', 0)} prompt templates, "
            f"consultant profile {'present' if c.get('consultant_profiles') else 'MISSING'}"
        )
        coverage = (
            f"{c.get('combinations_covered', 0)} of {c.get('combinations', 0)} combinations covered "
            f"by {c.get('conversations', 0)} conversations"
        )
        if self.passed:
            return f"Scaffolding complete: {records}; {coverage}."
        n = len(self.problems)
        return f"Scaffolding INCOMPLETE: {n} problem{'s' if n != 1 else ''}; {records}; {coverage}."


_md = md_cell  # markdown table cells: the package's one escaper


def _get(record: Any, name: str) -> Any:
    """Field `name` of a model (possibly built with `model_construct`) or a mapping; None if absent."""
    if isinstance(record, Mapping):
        return record.get(name)
    try:
        return getattr(record, name, None)
    except Exception:  # a property of a half-constructed model may raise anything
        return None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (dict, list, tuple)):
        return len(value) == 0
    return False


def _check_records(
    kind: str, records: list[Any], problems: list[Problem]
) -> tuple[list[str], dict[str, str]]:
    """Key and required-text checks shared by every kind. Returns the record labels (key or
    '#index', in order) and a map id -> key for records that have both."""
    key_field, required = _REQUIRED_TEXT[kind]
    labels: list[str] = []
    ids: dict[str, str] = {}
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        key = _text(_get(record, key_field))
        label = key or f"#{index}"
        labels.append(label)
        if not key:
            problems.append(Problem(kind=kind, key=label, field=key_field, reason=f"missing {key_field}"))
        elif not _KEY_RE.match(key):
            problems.append(
                Problem(kind=kind, key=label, field=key_field, reason=f"{key_field} {key!r} does not match {KEY_PATTERN}")
            )
        if key:
            if key in seen:
                problems.append(
                    Problem(
                        kind=kind,
                        key=label,
                        field=key_field,
                        reason=f"duplicate {key_field}: records #{seen[key]} and #{index} share it",
                    )
                )
            else:
                seen[key] = index
            record_id = _get(record, "id")
            if isinstance(record_id, str) and record_id:
                ids[record_id] = key
        for name in required:
            if _is_blank(_get(record, name)):
                problems.append(Problem(kind=kind, key=label, field=name, reason=f"missing or blank {name}"))
    return labels, ids


def _check_personas(personas: list[Any], labels: list[str], problems: list[Problem]) -> None:
    for label, persona in zip(labels, personas, strict=True):
        demographics = _get(persona, "demographics")
        if _is_blank(demographics):
            problems.append(Problem(kind="persona", key=label, field="demographics", reason="missing or empty demographics"))
        elif not isinstance(demographics, dict):
            problems.append(
                Problem(
                    kind="persona",
                    key=label,
                    field="demographics",
                    reason=f"must be a JSON object, got {type(demographics).__name__}",
                )
            )
        elif _is_blank(demographics.get("age")):
            problems.append(Problem(kind="persona", key=label, field="demographics.age", reason="demographics has no age"))
        background = _get(persona, "financial_background")
        if _is_blank(background):
            problems.append(
                Problem(kind="persona", key=label, field="financial_background", reason="missing or empty financial_background")
            )
        elif not isinstance(background, (str, dict)):
            problems.append(
                Problem(
                    kind="persona",
                    key=label,
                    field="financial_background",
                    reason=f"must be text or a JSON object, got {type(background).__name__}",
                )
            )


def _check_templates(templates: list[Any], labels: list[str], problems: list[Problem]) -> None:
    by_tier: dict[str, list[str]] = {tier: [] for tier in TIERS}
    for label, template in zip(labels, templates, strict=True):
        tier = _get(template, "tier")
        if tier in by_tier:
            by_tier[tier].append(label)
        else:
            problems.append(
                Problem(kind="prompt_template", key=label, field="tier", reason=f"unknown tier {tier!r}; expected one of {list(TIERS)}")
            )
        body = _get(template, "body")
        if not isinstance(body, str) or not body.strip():
            problems.append(Problem(kind="prompt_template", key=label, field="body", reason="missing or blank body"))
            continue
        for text in broken_placeholders(body):
            problems.append(
                Problem(
                    kind="prompt_template",
                    key=label,
                    field="body",
                    reason=f"malformed placeholder {text!r}: a placeholder is {{{{name}}}}, two braces each side "
                    "of a known name (letters, digits, underscores); it would be sent to Claude as written",
                )
            )
        probe = PromptTemplate.model_construct(template_key=label, body=body)
        for name in unknown_placeholders(probe):
            problems.append(
                Problem(
                    kind="prompt_template",
                    key=label,
                    field="body",
                    reason=f"unknown placeholder {{{{{name}}}}} (known: {', '.join(sorted(KNOWN_PLACEHOLDERS))})",
                )
            )
    for tier, keys in by_tier.items():
        if not keys:
            problems.append(Problem(kind="prompt_template", key="", field="tier", reason=f"no template for tier {tier!r}"))
        elif len(keys) > 1:
            problems.append(
                Problem(
                    kind="prompt_template",
                    key=", ".join(keys),
                    field="tier",
                    reason=f"{len(keys)} templates for tier {tier!r}; exactly one expected",
                )
            )


def _check_consultant(consultant: Any, problems: list[Problem]) -> None:
    if consultant is None:
        problems.append(Problem(kind="consultant_profile", key="", field="", reason="no consultant profile"))
        return
    for name in ("name", "business", "expertise"):
        if _is_blank(_get(consultant, name)):
            problems.append(Problem(kind="consultant_profile", key="", field=name, reason=f"missing or blank {name}"))
    if _get(consultant, "communication_style") is None:
        problems.append(
            Problem(kind="consultant_profile", key="", field="communication_style", reason="missing communication_style")
        )


def completeness_report(
    personas: Iterable[Any],
    arcs: Iterable[Any],
    topics: Iterable[Any],
    templates: Iterable[Any],
    consultant: Any,
    coverage: Mapping[tuple[str, str, str], int] | None = None,
) -> CompletenessReport:
    """Check the scaffolding and tabulate conversation coverage.

    `coverage` maps (persona, arc, topic) to a number of existing conversations; each element may
    be the record's key or its id (ids are mapped to keys). Combinations not in the scaffolding
    are counted in `unmatched_conversations` (informational, not a problem).
    """
    personas, arcs, topics, templates = list(personas), list(arcs), list(topics), list(templates)
    problems: list[Problem] = []

    persona_labels, persona_ids = _check_records("persona", personas, problems)
    _check_personas(personas, persona_labels, problems)
    arc_labels, arc_ids = _check_records("emotional_arc", arcs, problems)
    topic_labels, topic_ids = _check_records("training_topic", topics, problems)
    template_labels, _ = _check_records("prompt_template", templates, problems)
    _check_templates(templates, template_labels, problems)
    _check_consultant(consultant, problems)

    for kind, records in (("persona", personas), ("emotional_arc", arcs), ("training_topic", topics)):
        if not records:
            problems.append(Problem(kind=kind, key="", field="", reason=f"no {kind.replace('_', ' ')} records"))

    persona_keys = list(dict.fromkeys(persona_labels))
    arc_keys = list(dict.fromkeys(arc_labels))
    topic_keys = list(dict.fromkeys(topic_labels))
    known = (set(persona_keys), set(arc_keys), set(topic_keys))
    id_maps = (persona_ids, arc_ids, topic_ids)

    cells: dict[tuple[str, str, str], int] = {}
    unmatched = 0
    total_conversations = 0
    for combo, count in (coverage or {}).items():
        n = int(count or 0)
        if n <= 0:
            continue
        total_conversations += n
        resolved = tuple(id_map.get(str(part), str(part)) for part, id_map in zip(combo, id_maps, strict=True))
        if all(part in keys for part, keys in zip(resolved, known, strict=True)):
            cells[resolved] = cells.get(resolved, 0) + n  # type: ignore[index]
        else:
            unmatched += n

    counts = {
        "personas": len(personas),
        "emotional_arcs": len(arcs),
        "training_topics": len(topics),
        "prompt_templates": len(templates),
        "consultant_profiles": 0 if consultant is None else 1,
        "problems": len(problems),
        "combinations": len(persona_keys) * len(arc_keys) * len(topic_keys),
        "combinations_covered": len(cells),
        "conversations": total_conversations,
    }
    return CompletenessReport(
        passed=not problems,
        problems=problems,
        counts=counts,
        persona_keys=persona_keys,
        arc_keys=arc_keys,
        topic_keys=topic_keys,
        coverage=[
            CoverageCell(persona_key=p, arc_key=a, topic_key=t, conversations=n) for (p, a, t), n in sorted(cells.items())
        ],
        unmatched_conversations=unmatched,
    )
