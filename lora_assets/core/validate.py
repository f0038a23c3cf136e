"""Validate: every problem of one document, each with where it is (for `lora-assets validate`).

Documents are recognised by shape (`detect_kind`): a raw response (Anthropic Message or bare
conversation JSON), a parsed conversation, an enriched conversation, an aggregated training
file, or JSONL training lines. Beyond schema validity (pydantic errors mapped to JSON paths),
the checks are the seed bug-spec's verification list:

* parsed: `input_parameters` present with all 10 fields populated;
* enriched: `input_parameters` present, every pair carries `persona_archetype`,
  `emotional_arc`, `emotional_arc_key`, `training_topic`, `training_topic_key`, and a
  readable `client_background` (never "[object Object]" or a dict repr);
* training file: totals consistent with the pairs, each conversation's pairs in one block,
  pair ids unique; JSONL: every line a valid training pair, ids unique.

A legacy document (written before `input_parameters` existed) is valid input for enrichment
but is still reported, as a `warning`, so `validate` never passes it silently.

The per-conversation rules (the ones the stages record for the Dagster asset checks, and
`parsed_problems` / `enriched_problems`) live in `core.rules`; this module adds document-kind
detection, schema errors mapped to JSON paths, training-file and JSONL consistency.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from lora_assets.core.parse import (
    MAX_JSON_DEPTH,
    ParseError,
    TooManyTurnsError,
    check_stop_reason,
    extract_json_text,
    is_message,
    json_nesting_depth,
    json_path,
    turn_problems,
)
from lora_assets.core.rules import (
    Problem,
    _at,
    _enriched_problem_list,
    _input_parameter_problems,
    _is_legacy_pair,
    _pair_problems,
)

# Re-exported: callers of `validate` (CLI, tests, enrichment) find the per-conversation rules here too.
from lora_assets.core.rules import enriched_problems, is_readable_text, parsed_problems  # noqa: F401
from lora_assets.schemas import ParsedConversation, RawConversation
from lora_assets.schemas.training import EnrichedConversation, TrainingFileDocument, TrainingPair

DocumentKind = Literal["raw", "parsed", "enriched", "training_file", "jsonl"]
DOCUMENT_KINDS: tuple[DocumentKind, ...] = ("raw", "parsed", "enriched", "training_file", "jsonl")

def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text. Split on "\n" only: `str.splitlines()` also splits on U+0085,
    U+2028 and friends, which JSON serialisers (pydantic included) leave unescaped in strings."""
    return [line.removesuffix("\r") for line in text.split("\n")]


class DocumentKindError(ValueError):
    """Text whose kind of document cannot be recognised."""


def _longest_conversation(doc: Any, *, enriched: bool = False) -> tuple[str, int]:
    """(where, length) of the longest turn list, conversation history or (`enriched`: one
    conversation's) pair list in a decoded document, read without validating it (so a limit is
    enforced before the expensive work)."""
    best = ("$", 0)
    if not isinstance(doc, Mapping):
        return best
    if _is_raw_envelope(doc):
        doc = doc["response"] if isinstance(doc["response"], Mapping) else {}
    for where in ("turns", "conversation_history"):
        value = doc.get(where)
        if isinstance(value, list) and len(value) > best[1]:
            best = (where, len(value))
    pairs = doc.get("training_pairs")
    if not isinstance(pairs, list):
        return best
    if enriched and len(pairs) > best[1]:
        best = ("training_pairs", len(pairs))  # one conversation's pairs
    for index, pair in enumerate(pairs):  # the index is formatted only for a new longest
        history = pair.get("conversation_history") if isinstance(pair, Mapping) else None
        if isinstance(history, list) and len(history) > best[1]:
            best = (f"training_pairs[{index}].conversation_history", len(history))
    return best


def check_turn_limit(doc: Any, max_turns: int | None, *, where: str = "", enriched: bool = False) -> None:
    """TooManyTurnsError when a conversation in the decoded `doc` exceeds `max_turns`."""
    if max_turns is None:
        return
    at, turns = _longest_conversation(doc, enriched=enriched)
    if turns > max_turns:
        raise TooManyTurnsError(f"{where}: {at}" if where else at, turns, max_turns)


# --------------------------------------------------------------------------------------------
# Kind detection


def _first_line_object(text: str) -> Any:
    for line in _iter_lines(text):
        if line.strip():
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _kind_of(doc: Any) -> DocumentKind | None:
    if not isinstance(doc, Mapping):
        return None
    if "training_pairs" in doc:
        meta = doc.get("dataset_metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        if "quality_summary" in meta or "scaffolding_distribution" in meta or "input_parameters" not in doc:
            return "training_file"
        return "enriched"
    if "training_metadata" in doc and "current_user_input" in doc:
        return "jsonl"  # a single JSONL line
    if _is_raw_envelope(doc):
        return "raw"  # the pipeline's own raw.json: {"response": <Message>, "generation": {...}}
    if "turns" in doc:
        # A legacy parsed file (no input_parameters) has the raw shape: pass kind="parsed" to be strict.
        return "parsed" if "input_parameters" in doc else "raw"
    if is_message(doc):
        return "raw"
    return None


def _is_raw_envelope(doc: Any) -> bool:
    return isinstance(doc, Mapping) and "response" in doc and isinstance(doc.get("generation"), Mapping)


def detect_kind(text: str) -> DocumentKind:
    """What kind of document `text` is, by shape. Raises `DocumentKindError` if unknown."""
    stripped = text.strip()
    if not stripped:
        raise DocumentKindError("the document is empty")
    try:
        doc = json.loads(stripped)
    except json.JSONDecodeError as exc:
        # Several JSON values on several lines: JSONL.
        first = _first_line_object(stripped)
        if isinstance(first, Mapping) and "\n" in stripped:
            return "jsonl"
        raise DocumentKindError(f"not JSON or JSONL ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    kind = _kind_of(doc)
    if kind is None:
        keys = ", ".join(sorted(doc)[:8]) if isinstance(doc, Mapping) else type(doc).__name__
        raise DocumentKindError(f"not a known document (top-level: {keys}); pass the kind explicitly")
    return kind


# --------------------------------------------------------------------------------------------
# Shared helpers


def schema_problems(model: type[BaseModel], data: Any) -> tuple[BaseModel | None, list[Problem]]:
    """Validate `data` against `model`; the instance (or None) and one Problem per pydantic
    error, located by JSON path ("$" for the document itself)."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, [Problem(json_path(error["loc"]), _pydantic_message(error)) for error in exc.errors()]


def _pydantic_message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is missing"
    if kind == "extra_forbidden":
        return "is not a field of this document"
    value = error.get("input")
    shown = repr(value[:61] if isinstance(value, str) else value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"is invalid: {error['msg']} (got {shown})"


def conversation_turns_in(pairs: Sequence[TrainingPair]) -> int:
    """How many turns the conversation of `pairs` had: the last pair's history, its client turn,
    and its target response if any (the individual file's `total_turns`)."""
    last = max(pairs, key=lambda p: p.turn_number)
    return len(last.conversation_history) + 1 + (1 if last.target_response is not None else 0)


def _pairs_problems(pairs: Sequence[TrainingPair], where_of: Any) -> list[Problem]:
    """Checks shared by training files and JSONL: pair content, unique ids, one block per conversation."""
    problems: list[Problem] = []
    legacy_reported: set[str] = set()
    first_id: dict[str, int] = {}
    block_of: dict[str, tuple[int, int]] = {}
    previous: str | None = None
    for index, pair in enumerate(pairs):
        where = where_of(index)
        if _is_legacy_pair(pair):
            if pair.conversation_id not in legacy_reported:
                legacy_reported.add(pair.conversation_id)
                problems.append(
                    Problem(
                        _at(where, "conversation_metadata"),
                        f"has no scaffolding fields (legacy conversation {pair.conversation_id!r})",
                        "warning",
                    )
                )
            problems += [p for p in _pair_problems(pair, where, None) if p.where.endswith("client_background")]
        else:
            problems += _pair_problems(pair, where, None)
        if pair.id in first_id:
            problems.append(Problem(_at(where, "id"), f"{pair.id!r} repeats {_at(where_of(first_id[pair.id]), 'id')}"))
        else:
            first_id[pair.id] = index
        conv = pair.conversation_id
        if conv != previous and conv in block_of:
            start, end = block_of[conv]
            problems.append(
                Problem(
                    _at(where, "conversation_id"),
                    f"{conv!r} appears again after other conversations (its pairs are "
                    f"{where_of(start)}..{where_of(end)}): a conversation is included twice or out of order",
                )
            )
        elif conv == previous:
            start, _ = block_of[conv]
            if pair.turn_number <= pairs[index - 1].turn_number:
                problems.append(
                    Problem(
                        _at(where, "turn_number"),
                        f"is {pair.turn_number}, not after the previous pair's {pairs[index - 1].turn_number} "
                        f"of conversation {conv!r}",
                    )
                )
            block_of[conv] = (start, index)
        else:
            block_of[conv] = (index, index)
        previous = conv
    return problems


def _training_file_problem_list(doc: TrainingFileDocument) -> list[Problem]:
    pairs = doc.training_pairs
    problems = _pairs_problems(pairs, lambda i: f"training_pairs[{i}]")
    meta = doc.dataset_metadata
    by_conversation: dict[str, list[TrainingPair]] = {}
    for pair in pairs:
        by_conversation.setdefault(pair.conversation_id, []).append(pair)
    if meta.total_conversations != len(by_conversation):
        problems.append(
            Problem(
                "dataset_metadata.total_conversations",
                f"is {meta.total_conversations}, but the training pairs come from "
                f"{len(by_conversation)} conversation(s)",
            )
        )
    turns = sum(conversation_turns_in(group) for group in by_conversation.values())
    if meta.total_turns != turns:
        problems.append(
            Problem(
                "dataset_metadata.total_turns",
                f"is {meta.total_turns}, but the conversations of the training pairs have {turns} turns "
                f"({len(pairs)} training pairs)",
            )
        )
    return problems


# --------------------------------------------------------------------------------------------
# validate_text


_STOP_KINDS = frozenset({"truncated", "refusal", "context_window_exceeded", "unexpected_stop_reason"})


def _merge(precise: list[Problem], general: list[Problem]) -> list[Problem]:
    """`precise` plus the `general` findings about places `precise` does not already cover."""
    known = {p.where for p in precise}
    return precise + [p for p in general if p.where not in known]


def _validate_parsed(doc: Any) -> list[Problem]:
    if not isinstance(doc, Mapping):
        return [Problem("$", f"is a {type(doc).__name__}, not a conversation object")]
    structure = [Problem(p.where, p.message) for p in turn_problems(doc.get("turns"))]
    _, schema = schema_problems(ParsedConversation, doc)
    problems = _merge(structure, schema)
    params = doc.get("input_parameters")
    if params is None:
        return problems + [Problem("input_parameters", "is missing (every parsed conversation needs its provenance)")]
    return _merge(problems, _input_parameter_problems(params))


def _validate_raw(doc: Any, max_turns: int | None = None) -> list[Problem]:
    stop_reason = doc.get("stop_reason") if isinstance(doc, Mapping) else None
    if _is_raw_envelope(doc):
        stop_reason = doc["generation"].get("stop_reason")
        doc = doc["response"]
        if isinstance(doc, Mapping) and stop_reason is None:
            stop_reason = doc.get("stop_reason")
    if isinstance(doc, Mapping) and is_message(doc):
        try:
            check_stop_reason(stop_reason, conversation_id="-")
            text = extract_json_text(doc, conversation_id="-")
        except ParseError as exc:
            return [Problem("stop_reason" if exc.kind in _STOP_KINDS else "content", exc.reason)]
        doc = json.loads(text)
        check_turn_limit(doc, max_turns)
    if not isinstance(doc, Mapping):
        return [Problem("$", f"is a {type(doc).__name__}, not a conversation object")]
    problems = [Problem(p.where, p.message) for p in turn_problems(doc.get("turns"))]
    # Provenance is never read from a raw document (parse drops it), so it is not judged here.
    data = {k: v for k, v in doc.items() if k != "input_parameters"}
    _, schema = schema_problems(RawConversation, data)
    # Turn-structure findings are more precise than the schema's for the same fields.
    return _merge(problems, schema)


def _iter_lines(text: str) -> Iterator[str]:
    """`jsonl_lines(text)` one at a time (a 16 MiB file of short lines is millions of them)."""
    start = 0
    while (end := text.find("\n", start)) != -1:
        yield text[start:end].removesuffix("\r")
        start = end + 1
    yield text[start:].removesuffix("\r")


def _validate_jsonl(text: str, max_turns: int | None = None, max_problems: int | None = None) -> list[Problem]:
    problems: list[Problem] = []
    pairs: list[TrainingPair] = []
    line_of: list[int] = []
    blank: list[int] = []  # blank lines so far: a problem once a training pair follows them
    for number, line in enumerate(_iter_lines(text), start=1):
        if max_problems is not None and len(problems) > max_problems:
            return problems  # stopped: the caller shows the first ones and says there are more
        where = f"line {number}"
        if not line.strip():
            blank.append(number)
            continue
        problems += [Problem(f"line {n}", "is empty (JSONL has one training pair per line)") for n in blank]
        blank = []
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, f"is not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        check_turn_limit(data, max_turns, where=where)
        pair, schema = schema_problems(TrainingPair, data)
        problems += [Problem(where if p.where == "$" else f"{where}: {p.where}", p.message) for p in schema]
        if isinstance(pair, TrainingPair):
            pairs.append(pair)
            line_of.append(number)
    if not pairs and not problems:
        problems.append(Problem("$", "has no training pairs"))
    problems += _pairs_problems(pairs, lambda i: f"line {line_of[i]}")
    return problems


def _validate_training_file(doc: Any, max_problems: int | None) -> list[Problem]:
    """With `max_problems`, the pairs are validated one by one and validation stops once more
    than that many problems are found (a file of a million broken pairs is not held as a million
    times eight pydantic errors); without it, the whole document at once."""
    pairs = doc.get("training_pairs") if isinstance(doc, Mapping) else None
    if max_problems is not None and isinstance(pairs, list):
        problems: list[Problem] = []
        for index, pair in enumerate(pairs):
            _, found = schema_problems(TrainingPair, pair)
            at = f"training_pairs[{index}]"
            problems += [Problem(at if p.where == "$" else f"{at}.{p.where}", p.message) for p in found]
            if len(problems) > max_problems:
                return problems
        if problems:
            _, rest = schema_problems(TrainingFileDocument, {**doc, "training_pairs": []})
            return rest + problems
    training_file, problems = schema_problems(TrainingFileDocument, doc)
    if isinstance(training_file, TrainingFileDocument):
        problems += _training_file_problem_list(training_file)
    return problems


def validate_text(
    text: str, kind: str | None = None, *, max_turns: int | None = None, max_depth: int = MAX_JSON_DEPTH,
    max_problems: int | None = None,
) -> list[Problem]:
    """Every problem of the document in `text` (empty list: valid). `kind` is one of
    `DOCUMENT_KINDS`, or None to detect it from the shape.

    Text nesting deeper than `max_depth` is one problem, found before decoding. With
    `max_turns`, a conversation longer than it raises `TooManyTurnsError` before any per-turn
    work (the caller turns it into a refusal that names the limit). With `max_problems`, a
    JSONL or training file stops being validated once more than that many problems are found
    (so more than `max_problems` problems returned means "and more"); memory stays bounded."""
    if kind is not None and kind not in DOCUMENT_KINDS:
        raise ValueError(f"unknown document kind {kind!r}; expected one of {', '.join(DOCUMENT_KINDS)}")
    depth = json_nesting_depth(text)
    if depth > max_depth:
        return [Problem("$", f"nests {depth:,} levels deep, deeper than the limit of {max_depth}")]
    if kind is None:
        try:
            kind = detect_kind(text)
        except DocumentKindError as exc:
            return [Problem("$", f"cannot be validated: {exc}")]
    try:
        return _validate_kind(text, kind, max_turns, max_problems)
    except RecursionError:  # pragma: no cover - the depth limit comes first
        return [Problem("$", "nests too deeply to be validated")]


def _validate_kind(text: str, kind: str, max_turns: int | None, max_problems: int | None) -> list[Problem]:
    if kind == "jsonl":
        return _validate_jsonl(text, max_turns, max_problems)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return [Problem("$", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]
    check_turn_limit(doc, max_turns, enriched=kind == "enriched")

    if kind == "raw":
        return _validate_raw(doc, max_turns)
    if kind == "parsed":
        return _validate_parsed(doc)
    if kind == "enriched":
        enriched, problems = schema_problems(EnrichedConversation, doc)
        if isinstance(enriched, EnrichedConversation):
            problems += _enriched_problem_list(enriched)
        return problems
    return _validate_training_file(doc, max_problems)
