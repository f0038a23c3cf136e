"""Parse stage: one Claude response → a validated `ParsedConversation` with `input_parameters`.

Two halves, on purpose:

* **Tolerant of how models wrap JSON.** The response may be an Anthropic Message dict (content
  blocks, possibly led by a `thinking` block), a plain string with the object inside a
  ```json fence or between prose, or already the conversation object. `extract_json_text`
  finds the object with a real JSON decoder, never with regexes over braces.
* **Strict about what is wrong.** A response cut off by `max_tokens`, a refusal, truncated or
  invalid JSON, a missing turn list, roles that do not alternate starting with the client,
  empty content or turn numbers that are not 1..n each raise `ParseError` with a `kind` the
  caller stores on the row, so nothing half-parsed is ever passed on (design rule 2).

`input_parameters` is built from the scaffolding the caller read from the DB by the IDs fixed
at planning time (design rule 1), never from anything the model wrote; the model's
`client_persona` is overwritten with "<persona name> - <archetype>" for the same reason.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ValidationError

from lora_assets.schemas import (
    ConversationMetadata,
    InputParameters,
    ParsedConversation,
    RawConversation,
    ResolvedScaffolding,
)

ParseErrorKind = Literal[
    "truncated",  # stop_reason max_tokens: the JSON is not whole
    "context_window_exceeded",  # stop_reason model_context_window_exceeded: also not whole
    "refusal",  # stop_reason refusal
    "unexpected_stop_reason",  # any stop_reason we do not know to be a complete answer
    "api_error",  # the stored response is an API error object, not a message
    "no_text",  # a message without any text block (e.g. only thinking)
    "no_json",  # text without any JSON object in it
    "truncated_json",  # an object that starts but never closes
    "invalid_json",  # an object that is not valid JSON
    "schema",  # valid JSON that does not match RawConversation
    "missing_turns",  # no turn list, or fewer than two turns
    "turns_not_alternating",  # roles are not user, assistant, user, … starting with the client
    "empty_content",  # a turn whose content is empty or whitespace
    "turn_numbers",  # turn_number is not 1..n in order
    "unreadable",  # the stored raw.json is missing, unreadable, or not a stored response
]

#: stop_reason values that mean the text is a complete answer (None: not recorded, e.g. a file).
COMPLETE_STOP_REASONS: frozenset[str | None] = frozenset({"end_turn", "stop_sequence", None})

_BAD_STOP_REASONS: dict[str, tuple[ParseErrorKind, str]] = {
    "max_tokens": ("truncated", "response was cut off at max_tokens; its JSON is not whole"),
    "model_context_window_exceeded": (
        "context_window_exceeded",
        "response was cut off at the model's context window; its JSON is not whole",
    ),
    "refusal": ("refusal", "the model refused to write this conversation"),
}


class ParseError(ValueError):
    """A response that cannot become a `ParsedConversation`, with the conversation it belongs to.

    `kind` is one of `ParseErrorKind` (stable, for the DB row and metrics); `reason` is for a
    person. `str(err)` is "conversation <id>: <reason>".
    """

    def __init__(self, conversation_id: str, kind: ParseErrorKind, reason: str) -> None:
        self.conversation_id = conversation_id
        self.kind: ParseErrorKind = kind
        self.reason = reason
        super().__init__(f"conversation {conversation_id}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (Dagster and multiprocessing move exceptions around).
        return (type(self), (self.conversation_id, self.kind, self.reason))


class TooManyTurnsError(ValueError):
    """A conversation with more turns than the caller's limit, found before any per-turn work
    (whose cost grows with the square of the turns once enrichment copies the history)."""

    def __init__(self, where: str, turns: int, limit: int) -> None:
        self.where, self.turns, self.limit = where, turns, limit
        super().__init__(f"{where} has {turns:,} turns, over the limit of {limit:,}")


@dataclass(frozen=True)
class TurnProblem:
    """One structural problem of a turn list: its kind, JSON path and a predicate phrase."""

    kind: ParseErrorKind
    where: str
    message: str


#: Deepest nesting of objects and arrays parsed by default (our documents nest under 10 levels;
#: Python's JSON decoder and every recursive walk over the result fail somewhere near 1000).
MAX_JSON_DEPTH = 64

_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_STRUCTURE = b'"[]{}'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
_COMPLETE_STRING = re.compile(r'"[^"]*"')
_CHUNK = 1 << 20


def json_nesting_depth(text: str) -> int:
    """How deeply the objects and arrays in `text` nest (brackets inside strings ignored), found
    without decoding it, in bounded memory: escapes are dropped, then everything but quotes and
    brackets, then the strings, a chunk at a time. A hostile `[[[[…` is measured, not recursed into."""
    data = text.encode("utf-8", "surrogatepass").replace(b"\\\\", b"").replace(b'\\"', b"")
    compact = data.translate(None, _NOT_STRUCTURE)
    del data
    depth = deepest = 0
    inside = False  # in a string that started in an earlier chunk
    for start in range(0, len(compact), _CHUNK):
        chunk = compact[start : start + _CHUNK].decode("ascii")
        if inside:
            end = chunk.find('"')
            if end == -1:
                continue
            chunk, inside = chunk[end + 1 :], False
        chunk = _COMPLETE_STRING.sub("", chunk)
        if (cut := chunk.find('"')) != -1:  # a string that goes on in the next chunk
            chunk, inside = chunk[:cut], True
        if chunk:
            deepest = max(deepest, max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, chunk), initial=depth)))
            depth += chunk.count("[") + chunk.count("{") - chunk.count("]") - chunk.count("}")
    return deepest


def check_json_depth(text: str, *, conversation_id: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """ParseError (kind invalid_json) when `text` nests deeper than `max_depth`."""
    depth = json_nesting_depth(text)
    if depth > max_depth:
        raise ParseError(
            conversation_id, "invalid_json", f"the JSON nests {depth:,} levels deep, deeper than the limit of {max_depth}"
        )


def json_loads(data: str | bytes) -> Any:
    """`json.loads(data)`, decoded by pydantic-core's JSON parser when it can: about twice as fast,
    the same values. What it refuses (invalid JSON, lone surrogates, encodings other than UTF-8)
    is decoded by `json.loads`, so the result or the error is always `json.loads`'s."""
    try:
        return pydantic_core.from_json(data)
    except ValueError:
        return json.loads(data)


# --------------------------------------------------------------------------------------------
# Extraction


def is_message(raw: Mapping[str, Any]) -> bool:
    """True if `raw` looks like an Anthropic Message (or API error) dict rather than a conversation."""
    if "turns" in raw:
        return False
    return raw.get("type") in ("message", "error") or isinstance(raw.get("content"), list)


def _message_text(message: Mapping[str, Any], conversation_id: str) -> str:
    """The concatenated text blocks of a Message; thinking blocks are skipped by type."""
    if message.get("type") == "error":
        error = message.get("error") or {}
        detail = error.get("message") if isinstance(error, Mapping) else error
        raise ParseError(conversation_id, "api_error", f"the stored response is an API error: {detail}")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ParseError(conversation_id, "no_text", "the message has no content list")
    texts: list[str] = []
    seen_types: list[str] = []
    for block in content:
        block_type = block.get("type") if isinstance(block, Mapping) else type(block).__name__
        seen_types.append(str(block_type))
        if block_type == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        # thinking / redacted_thinking / tool blocks carry no conversation JSON: skip by type.
    if not texts:
        kinds = ", ".join(seen_types) or "none"
        raise ParseError(conversation_id, "no_text", f"the message has no text block (content blocks: {kinds})")
    # Text blocks of one message are consecutive pieces of one answer, so join without separator.
    return "".join(texts)


def _looks_like_json_object(text: str, index: int) -> bool:
    """A '{' that opens JSON ('{"' or '{}'), not prose such as "{placeholders}"."""
    rest = text[index + 1 : index + 200].lstrip()
    return rest[:1] in ('"', "}")


def _is_truncation(text: str, exc: json.JSONDecodeError) -> bool:
    """The decoder ran out of text (ignoring a closing fence): the object never closes."""
    if exc.msg.startswith("Unterminated string"):
        return True
    return not text[exc.pos :].strip().strip("`").strip()


def _json_failure(text: str, start: int, exc: json.JSONDecodeError, conversation_id: str) -> ParseError:
    where = f"at line {exc.lineno} column {exc.colno}"
    if _is_truncation(text, exc):
        return ParseError(
            conversation_id,
            "truncated_json",
            f"the JSON object starting at character {start} ends before it is closed ({exc.msg} {where}); "
            "the response is truncated",
        )
    return ParseError(
        conversation_id, "invalid_json", f"invalid JSON in the object starting at character {start}: {exc.msg} {where}"
    )


def _locate_object(text: str, conversation_id: str) -> str:
    """The conversation object in `text`: scan every JSON-looking '{' with a real decoder.

    Decoded objects are outermost (objects nested in one are skipped). The longest object
    holding `turns` wins. Without one, the first object that failed to decode is the broken
    conversation (its nested turns may decode on their own, so they must not be taken for it);
    without a failure, the longest object (it will then fail for having no turns).
    """
    decoder = json.JSONDecoder()
    # Only the spans are kept (never every decoded object: text may hold millions of "{}").
    longest_with_turns: tuple[int, int] | None = None
    longest: tuple[int, int] | None = None
    first_failure: tuple[int, json.JSONDecodeError] | None = None
    index = text.find("{")
    while index != -1:
        if not _looks_like_json_object(text, index):
            index = text.find("{", index + 1)
            continue
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError as exc:
            if first_failure is None:
                first_failure = (index, exc)
            index = text.find("{", index + 1)
            continue
        span = (index, end)
        if "turns" in value and (longest_with_turns is None or end - index > longest_with_turns[1] - longest_with_turns[0]):
            longest_with_turns = span
        if longest is None or end - index > longest[1] - longest[0]:
            longest = span
        index = text.find("{", end)
    if longest_with_turns is not None:
        return text[longest_with_turns[0] : longest_with_turns[1]]
    if first_failure is not None:
        raise _json_failure(text, first_failure[0], first_failure[1], conversation_id)
    if longest is not None:
        return text[longest[0] : longest[1]]
    # Never quote the text: a file handed to `lora-assets parse` may be anything (a secret too).
    raise ParseError(conversation_id, "no_json", f"no JSON object in the response ({len(text):,} characters of text)")


def extract_json_text(raw: Mapping[str, Any] | str, *, conversation_id: str = "unknown") -> str:
    """The text of the conversation JSON object inside `raw`.

    `raw` is an Anthropic Message dict (text blocks selected by type), the conversation object
    itself (a dict with `turns`, returned re-serialised), or a string: the whole string, or the
    object inside a ```json fence or between prose (found with `json.JSONDecoder.raw_decode`
    from each '{'). Raises `ParseError` (kinds api_error, no_text, no_json, truncated_json,
    invalid_json, schema for JSON that is not an object).
    """
    return _extract_json(raw, conversation_id)[0]


def _extract_json(raw: Mapping[str, Any] | str, conversation_id: str) -> tuple[str, dict[str, Any] | None]:
    """`extract_json_text`, and the object already decoded when finding it decoded it (the whole
    text is one object, as structured output returns it), so the caller does not decode it twice."""
    if isinstance(raw, Mapping):
        if not is_message(raw):
            try:
                return json.dumps(raw, ensure_ascii=False), None
            except (RecursionError, ValueError) as exc:
                raise ParseError(conversation_id, "invalid_json", f"the object cannot be serialised: {type(exc).__name__}") from None
        text = _message_text(raw, conversation_id)
    elif isinstance(raw, str):
        text = raw
    else:
        raise ParseError(conversation_id, "no_json", f"expected a message dict or a string, got {type(raw).__name__}")

    check_json_depth(text, conversation_id=conversation_id)
    stripped = text.strip()
    # Fast path: the whole text is one JSON value (structured output does exactly this).
    try:
        whole = json_loads(stripped)
    except json.JSONDecodeError:
        return _locate_object(text, conversation_id), None
    if not isinstance(whole, dict):
        # Valid JSON of the wrong shape (e.g. a list of conversations): never guess which one.
        raise ParseError(conversation_id, "schema", f"the JSON is a {type(whole).__name__}, not a conversation object")
    return stripped, whole


# --------------------------------------------------------------------------------------------
# Structural checks (shared with validate)


def turn_problems(turns: Any, *, prefix: str = "turns") -> list[TurnProblem]:
    """Every structural problem of a turn list (plain dicts or `Turn` models), in order.

    Checks what the schema alone cannot: at least two turns, roles alternating user/assistant
    starting with the client, non-blank content, turn numbers exactly 1..n.
    """
    if not isinstance(turns, Sequence) or isinstance(turns, (str, bytes)):
        return [TurnProblem("missing_turns", prefix, "is missing (a conversation needs a list of turns)")]
    if len(turns) < 2:
        return [
            TurnProblem(
                "missing_turns",
                prefix,
                f"has {len(turns)} turn(s); a conversation needs at least a client turn and an advisor turn",
            )
        ]
    problems: list[TurnProblem] = []
    for index, turn in enumerate(turns):
        if isinstance(turn, BaseModel):
            # A model's fields read directly (a model_dump per turn was most of this check's cost).
            role, content, number = (getattr(turn, "role", None), getattr(turn, "content", None),
                                     getattr(turn, "turn_number", None))
        elif isinstance(turn, Mapping):
            role, content, number = turn.get("role"), turn.get("content"), turn.get("turn_number")
        else:
            problems.append(TurnProblem("schema", f"{prefix}[{index}]", f"is not an object (got {type(turn).__name__})"))
            continue
        expected_role = "user" if index % 2 == 0 else "assistant"
        if role != expected_role:
            problems.append(
                TurnProblem(
                    "turns_not_alternating",
                    f"{prefix}[{index}].role",
                    f"is {role!r}, expected {expected_role!r} "
                    "(turns alternate user/assistant, starting with the client)",
                )
            )
        if not isinstance(content, str) or not content.strip():
            problems.append(TurnProblem("empty_content", f"{prefix}[{index}].content", "is empty"))
        if number != index + 1:
            problems.append(
                TurnProblem(
                    "turn_numbers",
                    f"{prefix}[{index}].turn_number",
                    f"is {number!r}, expected {index + 1} (turn numbers run 1..n in order)",
                )
            )
    return problems


def json_path(loc: Sequence[str | int], prefix: str = "") -> str:
    """A pydantic error location as a JSON path: ('turns', 2, 'role') → 'turns[2].role'."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "$"


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """A one-line summary of a pydantic error: 'turns[1].role: Input should be …; …'."""
    parts = [f"{json_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:limit]]
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"… and {more} more")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Parsing


def check_stop_reason(stop_reason: str | None, *, conversation_id: str) -> None:
    """Raise `ParseError` unless `stop_reason` means the answer is complete."""
    if stop_reason in COMPLETE_STOP_REASONS:
        return
    if stop_reason in _BAD_STOP_REASONS:
        kind, reason = _BAD_STOP_REASONS[stop_reason]
        raise ParseError(conversation_id, kind, f"{reason} (stop_reason {stop_reason!r})")
    raise ParseError(
        conversation_id,
        "unexpected_stop_reason",
        f"stop_reason {stop_reason!r} does not mean a complete answer; refusing to parse it as whole",
    )


def input_parameters_for(scaffolding: ResolvedScaffolding) -> InputParameters:
    """The 10 provenance fields of a conversation, from the scaffolding read from the DB."""
    persona, arc, topic = scaffolding.persona, scaffolding.emotional_arc, scaffolding.training_topic
    return InputParameters(
        persona_id=str(persona.id),
        persona_key=persona.persona_key,
        persona_name=persona.name,
        persona_archetype=persona.archetype,
        emotional_arc_id=str(arc.id),
        emotional_arc_key=arc.arc_key,
        emotional_arc_name=arc.name,
        training_topic_id=str(topic.id),
        training_topic_key=topic.topic_key,
        training_topic_name=topic.name,
    )


def client_persona_for(scaffolding: ResolvedScaffolding) -> str:
    """'<persona name> - <archetype>', the client_persona every conversation of this persona carries."""
    return f"{scaffolding.persona.name} - {scaffolding.persona.archetype}"


def parse_conversation(
    raw: Mapping[str, Any] | str,
    *,
    conversation_id: str,
    scaffolding: ResolvedScaffolding | None,
    stop_reason: str | None = None,
    max_turns: int | None = None,
) -> ParsedConversation:
    """Validate one response and attach its provenance.

    `stop_reason` defaults to the one in the Message dict when `raw` is one. With
    `scaffolding=None` (inspecting an orphan file) `input_parameters` stays None and the
    model's client_persona is kept. Raises `ParseError` naming the conversation and the kind,
    and `TooManyTurnsError` for more than `max_turns` turns (no limit when None).
    """
    message: Mapping[str, Any] | None = None
    if isinstance(raw, str):
        check_json_depth(raw, conversation_id=conversation_id)
        # A stored raw.json read as text is still a Message: treat it as one (stop_reason too);
        # text that is a whole JSON object is used as decoded (decoded once: it may be large).
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict):
            raw = decoded
        del decoded
    if isinstance(raw, Mapping) and is_message(raw):
        message = raw
    if stop_reason is None and message is not None:
        stop_reason = message.get("stop_reason")
    check_stop_reason(stop_reason, conversation_id=conversation_id)

    obj: dict[str, Any]
    if isinstance(raw, Mapping) and message is None:
        obj = dict(raw)  # the conversation object itself; a shallow copy (only its top level changes)
    else:
        text, decoded_whole = _extract_json(raw, conversation_id)
        obj = decoded_whole if decoded_whole is not None else json.loads(text)  # always decodable
        del decoded_whole
    # Provenance comes from the DB only: whatever the model (or an older file) put here is dropped.
    obj.pop("input_parameters", None)
    turns = obj.get("turns")
    if max_turns is not None and isinstance(turns, list) and len(turns) > max_turns:
        raise TooManyTurnsError(f"conversation {conversation_id}: turns", len(turns), max_turns)

    problems = turn_problems(turns)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ParseError(conversation_id, first.kind, f"{first.where} {first.message}{more}")

    try:
        conversation = RawConversation.model_validate(obj)
    except ValidationError as exc:
        raise ParseError(
            conversation_id,
            "schema",
            f"the conversation JSON does not match the schema: {describe_validation_error(exc)}",
        ) from exc

    metadata = conversation.conversation_metadata
    input_parameters: InputParameters | None = None
    if scaffolding is not None:
        input_parameters = input_parameters_for(scaffolding)
        metadata = ConversationMetadata(**{**metadata.model_dump(), "client_persona": client_persona_for(scaffolding)})
    return ParsedConversation(
        conversation_metadata=metadata,
        input_parameters=input_parameters,
        turns=conversation.turns,
    )
