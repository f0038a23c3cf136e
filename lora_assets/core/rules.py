"""Per-conversation rules: the findings the stages record on each conversation while it is in
memory (the Dagster asset checks read them) and `validate` reports for one document.

* parsed: `input_parameters` present with all 10 fields populated, equal to the scaffolding the
  conversation was planned with, and `client_persona` "<name> - <archetype>" of its persona;
* enriched: `input_parameters` present, every pair carries `persona_archetype`,
  `emotional_arc`, `emotional_arc_key`, `training_topic`, `training_topic_key`, and a
  readable `client_background` (never "[object Object]" or a dict repr).

Each rule returns `Problem`s whose text reads as a sentence ("training_pairs[2]
.conversation_metadata.emotional_arc_key is null").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from lora_assets.core.parse import client_persona_for, input_parameters_for, turn_problems
from lora_assets.schemas import InputParameters, ParsedConversation, ResolvedScaffolding
from lora_assets.schemas.training import EnrichedConversation, TrainingPair

#: The per-pair scaffolding fields the bug spec requires (copied from `input_parameters`).
PAIR_SCAFFOLDING_FIELDS: tuple[str, ...] = (
    "persona_archetype",
    "emotional_arc",
    "emotional_arc_key",
    "training_topic",
    "training_topic_key",
)
#: Where each pair field comes from in `input_parameters`.
PAIR_FIELD_SOURCE: dict[str, str] = {
    "persona_archetype": "persona_key",
    "emotional_arc": "emotional_arc_name",
    "emotional_arc_key": "emotional_arc_key",
    "training_topic": "training_topic_name",
    "training_topic_key": "training_topic_key",
}
INPUT_PARAMETER_FIELDS: tuple[str, ...] = tuple(InputParameters.model_fields)

# Signs that a text field is a serialised object, not prose: JS "[object Object]", braces of a
# JSON/dict dump, Python list reprs, default object reprs.
_UNREADABLE = re.compile(r"\[object \w+\]|[{}]|\[\s*['\"]|['\"]\s*\]|<[\w.]+ object at 0x[0-9a-f]+>", re.I)
_PLACEHOLDER_WORDS = frozenset({"undefined", "null", "none", "nan", "[object object]"})


@dataclass(frozen=True)
class Problem:
    """One finding: `where` is a JSON path ("training_pairs[3].conversation_metadata
    .client_background", "$" for the whole document) or a line ("line 12"); `message` is a
    predicate that reads after it ("is null"). Warnings are legacy findings, still reported."""

    where: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.where} {self.message}"


@functools.lru_cache(maxsize=1024)
def is_readable_text(s: str | None) -> bool:
    """True for prose; False for empty text, "[object Object]", braces or Python/JSON reprs
    ("{'age': 37}", "['a', 'b']"), or a part that is just undefined/null/None. (Cached: a
    conversation's pairs, and a persona's conversations, repeat the same client background.)"""
    if s is None or not s.strip():
        return False
    if _UNREADABLE.search(s):
        return False
    parts = (p.strip().lower() for p in re.split(r"[;,]", s))
    return not any(p in _PLACEHOLDER_WORDS for p in parts)


def _at(base: str, path: str) -> str:
    """Join a location and a field path: 'training_pairs[3]' + 'id' → 'training_pairs[3].id';
    'line 12' + 'id' → 'line 12: id'."""
    return f"{base}: {path}" if base.startswith("line ") else f"{base}.{path}"


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _input_parameter_problems(params: Any, where: str = "input_parameters") -> list[Problem]:
    """Each of the 10 provenance fields must be present and non-blank."""
    if params is None:
        return [Problem(where, "is missing")]
    if isinstance(params, BaseModel):
        # Its attributes, not model_dump(): a dump builds a dict of every field, twice per
        # conversation (parse and enrich checks), to read ten strings.
        fields = type(params).model_fields
        return [
            Problem(f"{where}.{name}", "is missing" if name not in fields else "is empty")
            for name in INPUT_PARAMETER_FIELDS
            if _blank(getattr(params, name, None))
        ]
    data = params
    if not isinstance(data, Mapping):
        return [Problem(where, f"is not an object (got {type(data).__name__})")]
    return [
        Problem(f"{where}.{name}", "is missing" if name not in data else "is empty")
        for name in INPUT_PARAMETER_FIELDS
        if _blank(data.get(name))
    ]


def _pair_problems(pair: TrainingPair, where: str, params: InputParameters | None) -> list[Problem]:
    """The bug-spec checks of one training pair: 5 scaffolding fields, readable background."""
    meta = pair.conversation_metadata
    problems: list[Problem] = []
    for name in PAIR_SCAFFOLDING_FIELDS:
        value = getattr(meta, name)
        if _blank(value):
            problems.append(Problem(_at(where, f"conversation_metadata.{name}"), "is null" if value is None else "is empty"))
        elif params is not None and value != getattr(params, PAIR_FIELD_SOURCE[name]):
            problems.append(
                Problem(
                    _at(where, f"conversation_metadata.{name}"),
                    f"is {value!r} but input_parameters.{PAIR_FIELD_SOURCE[name]} is "
                    f"{getattr(params, PAIR_FIELD_SOURCE[name])!r}",
                )
            )
    if not is_readable_text(meta.client_background):
        problems.append(
            Problem(
                _at(where, "conversation_metadata.client_background"),
                f"is not readable text: {meta.client_background[:80]!r}",
            )
        )
    return problems


def _is_legacy_pair(pair: TrainingPair) -> bool:
    """All five scaffolding fields null: a conversation enriched before input_parameters existed."""
    return all(getattr(pair.conversation_metadata, name) is None for name in PAIR_SCAFFOLDING_FIELDS)


# --------------------------------------------------------------------------------------------
# Per-document checks (also used by the Dagster asset checks)


def _input_parameter_mismatches(parsed: ParsedConversation, expected: ResolvedScaffolding) -> list[Problem]:
    if parsed.input_parameters is None:
        return []
    wanted = input_parameters_for(expected)
    actual = parsed.input_parameters
    return [
        Problem(f"input_parameters.{name}",
                f"is {getattr(actual, name)!r}, expected {getattr(wanted, name)!r} (from the scaffolding)")
        for name in INPUT_PARAMETER_FIELDS
        if not _blank(getattr(actual, name)) and getattr(actual, name) != getattr(wanted, name)
    ]


def input_parameter_problems(parsed: ParsedConversation, expected: ResolvedScaffolding | None) -> list[Problem]:
    """`input_parameters` present with all 10 fields populated and, given the scaffolding the
    conversation was planned with, every field (ids, keys, names) equal to it."""
    problems = _input_parameter_problems(parsed.input_parameters)
    return problems + (_input_parameter_mismatches(parsed, expected) if expected is not None else [])


def client_persona_problems(parsed: ParsedConversation, expected: ResolvedScaffolding) -> list[Problem]:
    """`client_persona` equals "<name> - <archetype>" of the scaffolding persona."""
    wanted = client_persona_for(expected)
    actual = parsed.conversation_metadata.client_persona
    if actual == wanted:
        return []
    return [Problem("conversation_metadata.client_persona", f"is {actual!r}, expected {wanted!r}")]


def _parsed_problem_list(parsed: ParsedConversation, expected: ResolvedScaffolding | None) -> list[Problem]:
    problems = [Problem(p.where, p.message) for p in turn_problems(parsed.turns)]
    problems += _input_parameter_problems(parsed.input_parameters)
    if expected is not None:
        problems += client_persona_problems(parsed, expected)
        problems += _input_parameter_mismatches(parsed, expected)
    return problems


def parsed_problems(parsed: ParsedConversation, expected: ResolvedScaffolding | None) -> list[str]:
    """Problems of a parsed conversation: turn structure; `input_parameters` present with all 10
    fields populated; and, given the scaffolding it was planned with, `client_persona` equal to
    "<name> - <archetype>" and every input parameter (ids, keys, names) equal to it."""
    return [str(p) for p in _parsed_problem_list(parsed, expected)]


def enriched_input_parameter_problems(enriched: EnrichedConversation) -> list[Problem]:
    """The enriched JSON carries `input_parameters` (copied from the parsed file), all populated.
    Strict: a legacy file without them is a problem here (`validate` reports it as a warning)."""
    if enriched.input_parameters is None:
        return [Problem("input_parameters", "is missing from enriched.json")]
    return _input_parameter_problems(enriched.input_parameters)


def pair_scaffolding_problems(enriched: EnrichedConversation) -> list[Problem]:
    """Every training pair has the 5 scaffolding fields, non-null and equal to `input_parameters`."""
    return [
        p
        for index, pair in enumerate(enriched.training_pairs)
        for p in _pair_problems(pair, f"training_pairs[{index}]", enriched.input_parameters)
        if not p.where.endswith("client_background")
    ]


def client_background_problems(enriched: EnrichedConversation) -> list[Problem]:
    """Every pair's `client_background` is readable text (no "[object Object]", JSON or repr)."""
    return [
        Problem(f"training_pairs[{index}].conversation_metadata.client_background",
                f"is not readable text: {pair.conversation_metadata.client_background[:80]!r}")
        for index, pair in enumerate(enriched.training_pairs)
        if not is_readable_text(pair.conversation_metadata.client_background)
    ]


def _enriched_problem_list(enriched: EnrichedConversation) -> list[Problem]:
    params = enriched.input_parameters
    problems: list[Problem] = []
    if params is None:
        problems.append(
            Problem(
                "input_parameters",
                "is null (legacy conversation enriched before input_parameters existed; "
                "its training pairs have no scaffolding fields)",
                "warning",
            )
        )
    else:
        problems += _input_parameter_problems(params)
    if not enriched.training_pairs:
        problems.append(Problem("training_pairs", "is empty (a conversation yields one pair per client turn)"))
    seen: dict[str, int] = {}
    for index, pair in enumerate(enriched.training_pairs):
        where = f"training_pairs[{index}]"
        if params is None and _is_legacy_pair(pair):
            # Already reported once as the legacy warning; only the background is still checked.
            problems += [p for p in _pair_problems(pair, where, None) if p.where.endswith("client_background")]
        else:
            problems += _pair_problems(pair, where, params)
        if pair.id in seen:
            problems.append(Problem(f"{where}.id", f"{pair.id!r} repeats training_pairs[{seen[pair.id]}].id"))
        seen.setdefault(pair.id, index)
    return problems


def enriched_problems(enriched: EnrichedConversation) -> list[str]:
    """Problems of an enriched conversation: `input_parameters` present (null is reported as a
    legacy warning); every pair has the 5 scaffolding fields, equal to `input_parameters`;
    every `client_background` is readable text; pair ids unique."""
    return [str(p) for p in _enriched_problem_list(enriched)]
