"""The strict contract: every request body is checked against the installed `anthropic` SDK's own
request types, then against the published limits of API version 2026-10-21 and the 5.5 models.

The SDK's TypedDicts (`MessageCreateParamsNonStreaming`, `MessageCountTokensParams`,
`BatchCreateParams`) are turned into pydantic-core validators with two changes to their core
schema: unknown keys are refused (`extra_behavior: forbid`, as the API refuses them) and
`Iterable[...]` fields are read as lists (pydantic validates iterables lazily, so errors inside
them would never surface). Nothing is hand-copied: a field the SDK adds is accepted, one it drops
is refused.

Each check returns a `Refusal` (HTTP status, API error type, a message that names the field) or
None. The README section "The simulator's contract" lists the rules and their sources.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from dataclasses import dataclass
import threading
from functools import cache, lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator

from .models import EFFORTS, ModelSpec, model_spec

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_REQUESTS",
    "MAX_CACHE_BREAKPOINTS",
    "MESSAGES_MAX_BYTES",
    "Refusal",
    "check_batch",
    "check_count_tokens",
    "check_messages",
    "check_size",
    "output_schema_problem",
    "record_refusal",
]

log = logging.getLogger(__name__)

#: Message Batches: at most 100,000 requests or 256 MB per batch (Batch processing docs).
BATCH_MAX_REQUESTS = 100_000
BATCH_MAX_BYTES = 256 * 1024 * 1024
#: Messages and count_tokens requests: at most 32 MB (API overview, request size limits).
MESSAGES_MAX_BYTES = 32 * 1024 * 1024
#: Prompt caching: at most 4 blocks with cache_control per request.
MAX_CACHE_BREAKPOINTS = 4
_CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: Sampling parameters the 5.x models refuse (API 2026-10-21; the SDK no longer has them).
_SAMPLING = ("temperature", "top_p", "top_k")


@dataclass(frozen=True)
class Refusal:
    """A request the API would refuse: HTTP status, error type and a message naming the field."""

    status: int
    kind: str
    message: str


def record_refusal(where: str, refusal: Refusal) -> None:
    """Log a refusal, and append it as a JSON line to the file LORA_SIM_REFUSAL_LOG names (if
    set): how one audits that every body a suite, the demo or a bench sends passes the contract."""
    log.warning("claude simulator refused %s: %s %s", where, refusal.status, refusal.message)
    if audit := os.environ.get("LORA_SIM_REFUSAL_LOG"):
        line = {"where": where, "status": refusal.status, "type": refusal.kind, "message": refusal.message}
        with open(audit, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


def _invalid(message: str) -> Refusal:
    return Refusal(400, "invalid_request_error", message)


# --------------------------------------------------------------------------------------------
# The SDK's request types as strict validators


def _strict(node: Any) -> None:
    """Make a pydantic core schema strict in place: no unknown keys, iterables read as lists."""
    if isinstance(node, dict):
        kind = node.get("type")
        if kind in ("typed-dict", "model-fields"):
            node["extra_behavior"] = "forbid"
        elif kind == "model":  # the SDK's response models (a content block passed back) allow extras
            node.setdefault("config", {})["extra_fields_behavior"] = "forbid"
        elif kind == "generator":
            node["type"] = "list"
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)


_BUILD_LOCK = threading.Lock()


def warm_validators() -> None:
    """Build the three validators now (about 1 s for Messages, once per process): a simulator
    calls this before it serves, so its first concurrent wave is not held up (a client with a
    short timeout saw that build as a hanging endpoint)."""
    for name in ("messages", "count_tokens", "batch"):
        _validator(name)


@cache
def _validator(name: str) -> SchemaValidator:
    """The strict validator of one SDK request type (built once per process)."""
    with _BUILD_LOCK:  # concurrent first requests would each build it, slower together
        return _build_validator(name)


@cache
def _build_validator(name: str) -> SchemaValidator:
    from anthropic.types import MessageCountTokensParams
    from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
    from anthropic.types.messages.batch_create_params import BatchCreateParams

    sdk_type = {
        "messages": MessageCreateParamsNonStreaming,
        "count_tokens": MessageCountTokensParams,
        "batch": BatchCreateParams,
    }[name]
    schema = TypeAdapter(sdk_type).core_schema
    _strict(schema)
    return SchemaValidator(schema)


def _real_path(loc: tuple[Any, ...], body: Any) -> tuple[list[Any], bool]:
    """The field path of an error location: union member names (not keys of the input) dropped.
    Also whether the location ends on a key the input has or lacks (not on a member name)."""
    path: list[Any] = []
    node = body
    ends_on_field = True
    for i, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and (part in node or i == len(loc) - 1):
            path.append(part)
            node = node.get(part)
            ends_on_field = True
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
            ends_on_field = True
        else:
            ends_on_field = False  # a union member tag such as 'TextBlockParam' or 'str'
    return path, ends_on_field


def _best_error(errors: list[Any], body: Any) -> str:
    """One line for a validation error: the deepest error in the union member whose tag matched.

    A union of block types reports every member's failure; a member whose `type`/`role` literal
    does not match the input is not the one the caller meant, so its errors are set aside."""
    mismatched = [
        tuple(e["loc"][:-1])
        for e in errors
        if e["type"] == "literal_error"
        and len(e["loc"]) > 1
        and e["loc"][-1] in ("type", "role")
        and not _real_path(tuple(e["loc"][:-1]), body)[1]  # the literal tags a union member
    ]
    kept = [e for e in errors if not any(tuple(e["loc"][: len(p)]) == p for p in mismatched)] or errors

    def depth(e: dict[str, Any]) -> tuple[int, int]:
        path, on_field = _real_path(tuple(e["loc"]), body)
        return len(path), int(on_field)

    best = max(kept, key=depth)
    path, _ = _real_path(tuple(best["loc"]), body)
    return f"{'.'.join(str(p) for p in path) or 'body'}: {best['msg']}"


def _type_problem(name: str, raw: bytes) -> str | None:
    """The SDK-type error of a JSON body (`name`: messages, count_tokens or batch), or None."""
    try:
        _validator(name).validate_json(raw, strict=True)
    except ValidationError as err:
        return _best_error(err.errors(include_url=False), json.loads(raw))
    return None


# --------------------------------------------------------------------------------------------
# Published limits


def _model(params: dict[str, Any], where: str) -> tuple[str, ModelSpec] | Refusal:
    if not params["model"]:
        return _invalid(f"{where}model: String should have at least 1 character")
    found = model_spec(params["model"])
    if found is None:
        return Refusal(404, "not_found_error", f"{where}model: {params['model']}")
    return found


def _sampling(params: Any, where: str) -> Refusal | None:
    if not isinstance(params, dict):
        return None
    for name in _SAMPLING:
        if name in params:
            return _invalid(
                f"{where}{name}: sampling parameters are not supported on API version 2026-10-21 "
                f"for {params.get('model')!r}; omit {name}"
            )
    return None


def _effort(params: dict[str, Any], spec: ModelSpec) -> str:
    effort = (params.get("output_config") or {}).get("effort")
    return effort if effort in EFFORTS else spec.default_effort


def _thinking(params: dict[str, Any], alias: str, spec: ModelSpec, where: str) -> Refusal | None:
    thinking = params.get("thinking") or {}
    kind = thinking.get("type")
    if kind == "enabled" or "budget_tokens" in thinking:
        return _invalid(
            f"{where}thinking.type: 'enabled' (a manual budget_tokens) is not supported for {alias}, "
            "which thinks adaptively only; send thinking {'type': 'adaptive'} and set output_config.effort"
        )
    if kind == "between_tools" and not spec.between_tools:
        return _invalid(f"{where}thinking.type: 'between_tools' is not supported for {alias}")
    if kind == "disabled":
        effort = _effort(params, spec)
        if spec.disable_up_to_effort is None:
            return _invalid(f"{where}thinking.type: 'disabled' is not supported for {alias}: its thinking is always on")
        if not spec.may_disable(effort):
            return _invalid(
                f"{where}thinking.type: 'disabled' is not supported for {alias} at effort {effort!r}; "
                f"thinking can be turned off at effort {spec.disable_up_to_effort!r} or lower"
            )
    return None


def _cache_breakpoints(params: dict[str, Any]) -> int:
    """Blocks marked cache_control (tools, system, message content, a tool result's content),
    plus the top-level automatic breakpoint."""

    def marked(blocks: Any) -> int:
        if not isinstance(blocks, list):
            return 0
        n = 0
        for block in blocks:
            if isinstance(block, dict):
                n += block.get("cache_control") is not None
                n += marked(block.get("content"))  # a tool_result's content blocks
        return n

    n = int(params.get("cache_control") is not None) + marked(params.get("tools")) + marked(params.get("system"))
    return n + sum(marked(m.get("content")) for m in params.get("messages") or [] if isinstance(m, dict))


_SCHEMA_KEYS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "allOf",
    "$ref", "$defs", "definitions", "description", "title", "default", "format", "minItems", "pattern",
    "$schema", "$id", "examples",
})
_STRING_FORMATS = frozenset({
    "date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid",
})
#: Regex features outside the supported subset: backreferences, lookaround, word boundaries.
_UNSUPPORTED_REGEX = re.compile(r"\\[1-9]|\\k<|\(\?<?[=!]|\\[bB]")


def output_schema_problem(schema: Any, where: str = "output_config.format.schema") -> str | None:
    """Why `schema` is outside the structured-outputs JSON Schema subset, or None (see
    `_schema_problem`). Memoised on the schema's repr: every request of a run sends the same one."""
    return _schema_problem_cached(repr(schema), where) if isinstance(schema, dict) else _schema_problem(schema, where)


@lru_cache(maxsize=256)
def _schema_problem_cached(schema_repr: str, where: str) -> str | None:
    # A dict's repr is a faithful key for JSON data (str, numbers, bools, None, lists, dicts).
    return _schema_problem(ast.literal_eval(schema_repr), where)


def _schema_problem(schema: Any, where: str) -> str | None:
    """Why `schema` is outside the structured-outputs JSON Schema subset, or None.

    Supported: the basic types, enum of primitives, const, anyOf, allOf (without $ref), local
    $ref/$defs/definitions (not recursive), required, additionalProperties false, the listed string
    formats, minItems 0 or 1, simple regex patterns. Not supported: numeric and string length
    constraints, other array constraints, additionalProperties other than false, recursion,
    external $ref, complex enum values."""
    defs: dict[str, Any] = {}
    if isinstance(schema, dict):
        for key in ("$defs", "definitions"):
            for name, sub in (schema.get(key) or {}).items():
                defs[f"#/{key}/{name}"] = sub

    def walk(node: Any, path: str, refs: tuple[str, ...]) -> str | None:
        if isinstance(node, bool):
            return None
        if not isinstance(node, dict):
            return f"{path}: a schema must be an object"
        for key in node:
            if key not in _SCHEMA_KEYS:
                return f"{path}.{key}: not supported in structured outputs (JSON Schema limitations)"
        if "additionalProperties" in node and node["additionalProperties"] is not False:
            return f"{path}.additionalProperties: must be false in structured outputs"
        if node.get("type") == "object" and node.get("additionalProperties") is not False:
            return f"{path}.additionalProperties: objects must set additionalProperties to false"
        if "minItems" in node and node["minItems"] not in (0, 1):
            return f"{path}.minItems: only 0 or 1 is supported, got {node['minItems']!r}"
        if "format" in node and node["format"] not in _STRING_FORMATS:
            return f"{path}.format: {node['format']!r} is not a supported string format"
        if "pattern" in node and _UNSUPPORTED_REGEX.search(str(node["pattern"])):
            return f"{path}.pattern: backreferences, lookaround and word boundaries are not supported"
        if any(isinstance(v, (dict, list)) for v in node.get("enum") or []):
            return f"{path}.enum: only strings, numbers, booleans and null are supported"
        if "allOf" in node and any(isinstance(s, dict) and "$ref" in s for s in node["allOf"]):
            return f"{path}.allOf: allOf with $ref is not supported"
        if "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return f"{path}.$ref: external references are not supported ({ref!r})"
            if ref in refs:
                return f"{path}.$ref: recursive schemas are not supported ({ref})"
            if ref not in defs:
                return f"{path}.$ref: {ref} is not defined"
            if (problem := walk(defs[ref], f"{where}.{ref[2:].replace('/', '.')}", (*refs, ref))) is not None:
                return problem
        children: list[tuple[str, Any]] = [(f"{path}.properties.{k}", v) for k, v in (node.get("properties") or {}).items()]
        if "items" in node:
            children.append((f"{path}.items", node["items"]))
        for key in ("anyOf", "allOf"):
            children += [(f"{path}.{key}.{i}", s) for i, s in enumerate(node.get(key) or [])]
        for child_path, child in children:
            if (problem := walk(child, child_path, refs)) is not None:
                return problem
        return None

    problem = walk(schema, where, ())
    if problem is None:
        for ref, sub in defs.items():  # definitions nobody references must be valid too
            if (problem := walk(sub, f"{where}.{ref[2:].replace('/', '.')}", (ref,))) is not None:
                return problem
    return problem


def _limits(params: dict[str, Any], where: str) -> Refusal | None:
    """The published limits a type-valid Messages body can still break."""
    found = _model(params, where)
    if isinstance(found, Refusal):
        return found
    alias, spec = found
    max_tokens = params["max_tokens"]
    if max_tokens < 1:
        return _invalid(f"{where}max_tokens: must be at least 1 (the simulator does not pre-warm the cache)")
    if max_tokens > spec.max_output_tokens:
        return _invalid(
            f"{where}max_tokens: {max_tokens} > {spec.max_output_tokens}, which is the maximum allowed "
            f"number of output tokens for {alias}"
        )
    messages = params["messages"]
    if not messages:
        return _invalid(f"{where}messages: at least one message is required")
    if messages[-1].get("role") != "user":
        return _invalid(
            f"{where}messages.{len(messages) - 1}.role: the final message must be a user message; "
            f"assistant message prefill is not supported for {alias}"
        )
    if (refusal := _thinking(params, alias, spec, where)) is not None:
        return refusal
    fmt = (params.get("output_config") or {}).get("format")
    if fmt and (problem := output_schema_problem(fmt.get("schema"), f"{where}output_config.format.schema")):
        return _invalid(problem)
    if (n := _cache_breakpoints(params)) > MAX_CACHE_BREAKPOINTS:
        return _invalid(
            f"{where}cache_control: a maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. Found {n}."
        )
    return None


# --------------------------------------------------------------------------------------------
# Entry points, one per endpoint


def check_size(nbytes: int, limit: int, what: str) -> Refusal | None:
    """413 `request_too_large` for a body over `limit` bytes (checked before it is read)."""
    if nbytes > limit:
        return Refusal(413, "request_too_large", f"{what}: request body is {nbytes} bytes; the limit is {limit} bytes")
    return None


def check_messages(body: Any, raw: bytes) -> Refusal | None:
    """A `POST /v1/messages` body against the SDK's MessageCreateParamsNonStreaming and the limits."""
    if not isinstance(body, dict):
        return _invalid("body: Input should be an object")
    if body.get("stream"):
        return _invalid("stream: streaming is not supported by the loopback simulator")
    if (refusal := _sampling(body, "")) is not None:
        return refusal
    if (problem := _type_problem("messages", raw)) is not None:
        return _invalid(problem)
    return _limits(body, "")


def check_count_tokens(body: Any, raw: bytes) -> Refusal | None:
    """A `POST /v1/messages/count_tokens` body against the SDK's MessageCountTokensParams."""
    if not isinstance(body, dict):
        return _invalid("body: Input should be an object")
    if (refusal := _sampling(body, "")) is not None:
        return refusal
    if (problem := _type_problem("count_tokens", raw)) is not None:
        return _invalid(problem)
    found = _model(body, "")
    if isinstance(found, Refusal):
        return found
    fmt = (body.get("output_config") or {}).get("format")
    if fmt and (problem := output_schema_problem(fmt.get("schema"))):
        return _invalid(problem)
    return None


def check_batch(body: Any, raw: bytes, max_requests: int = BATCH_MAX_REQUESTS) -> tuple[Refusal | None, dict[int, Refusal]]:
    """A `POST /v1/messages/batches` body: the refusal of the whole batch (its shape, request
    count, custom_ids), or None and the refusals of single requests' `params`, by index.

    As the API documents, a request's params are validated asynchronously: a bad one does not
    refuse the batch, it ends as an `errored` result carrying the invalid_request_error."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return _invalid("requests: Field required (a non-empty list)"), {}
    if len(requests) > max_requests:
        return _invalid(f"requests: {len(requests)} requests; a batch holds at most {max_requests}"), {}
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID_RE.match(custom_id):
            return _invalid(f"requests.{i}.custom_id: {custom_id!r} must match {_CUSTOM_ID_RE.pattern}"), {}
        if custom_id in seen:
            return _invalid(f"requests.{i}.custom_id: duplicate {custom_id!r}; custom_ids must be unique"), {}
        seen.add(custom_id)
    per_request: dict[int, Refusal] = {}
    try:
        _validator("batch").validate_json(raw, strict=True)
    except ValidationError as err:
        # Envelope errors refuse the batch; params errors error their request only.
        errors = err.errors(include_url=False)
        def in_params(loc: tuple[Any, ...]) -> bool:
            return len(loc) > 2 and loc[0] == "requests" and loc[2] == "params" and "params" in requests[loc[1]]

        envelope = [e for e in errors if not in_params(tuple(e["loc"]))]
        if envelope:
            return _invalid(_best_error(envelope, body)), {}
        for index in sorted({e["loc"][1] for e in errors}):
            params, where = requests[index]["params"], f"requests.{index}.params."
            problem = _type_problem("messages", json.dumps(params).encode()) or "invalid"
            per_request[index] = _sampling(params, where) or _invalid(where + problem)
    for i, item in enumerate(requests):
        if i in per_request:
            continue
        params = item["params"]
        where = f"requests.{i}.params."
        refusal = _invalid(f"{where}stream: a batch request cannot stream") if params.get("stream") else None
        refusal = refusal or _sampling(params, where) or _limits(params, where)
        if refusal is not None:
            per_request[i] = refusal
    return None, per_request
