"""Scaffolding JSON files: read a directory of them into a validated `ScaffoldingBundle`, or write one.

A scaffolding directory holds five files:

| file | content |
|---|---|
| `personas.json` | JSON array of `Persona` records |
| `emotional_arcs.json` | JSON array of `EmotionalArc` records |
| `training_topics.json` | JSON array of `TrainingTopic` records |
| `prompt_templates.json` | JSON array of `PromptTemplate` records |
| `consultant_profile.json` | one `ConsultantProfile` JSON object |

`load_bundle` validates every record on its own so that a problem is reported precisely: file,
record (0-based index into the array, plus its key when it has one), field and reason, e.g.

    personas.json: record 3 (persona_key 'busy_parent'): field 'demographics': Input should be a valid dictionary
    personas.json: duplicate persona_key 'x' at records 2 and 5

Beyond the record schemas, a file is refused for what would only fail (or cost money) later:
a key twice in one JSON object (JSON would silently keep the last), a NUL character (PostgreSQL
text cannot hold it), a record or template body over its size limit (`ScaffoldingLimits`: every
byte of a record is sent with each request that uses it), a file over the input size limit.

All problems of all five files are collected and raised together as one `ScaffoldingFileError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lora_assets.errors import UserInputError

from lora_assets.schemas import (
    ConsultantProfile,
    EmotionalArc,
    Persona,
    PromptTemplate,
    ScaffoldingBundle,
    TrainingTopic,
    scaffolding_id,
)

#: The scaffolding shipped with the package.
BUNDLED_DIR: Path = Path(__file__).resolve().parent.parent / "data"

#: bundle field -> (file name, record model, key field, scaffolding_id kind) for the array files.
RECORD_FILES: dict[str, tuple[str, type[BaseModel], str, str]] = {
    "personas": ("personas.json", Persona, "persona_key", "persona"),
    "emotional_arcs": ("emotional_arcs.json", EmotionalArc, "arc_key", "emotional_arc"),
    "training_topics": ("training_topics.json", TrainingTopic, "topic_key", "training_topic"),
    "prompt_templates": ("prompt_templates.json", PromptTemplate, "template_key", "prompt_template"),
}
CONSULTANT_FILE = "consultant_profile.json"

#: Every file of a scaffolding directory, in load order.
FILE_NAMES: tuple[str, ...] = tuple(spec[0] for spec in RECORD_FILES.values()) + (CONSULTANT_FILE,)

# pydantic puts the union member tried into `loc` ("constrained-str", "dict[constrained-str,any]");
# those are not fields, so they are dropped from the field path.
_FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none", "any"})


@dataclass(frozen=True)
class ScaffoldingLimits:
    """Size limits of scaffolding input (defaults = the Settings defaults; the CLI passes the
    configured ones). Each refusal names the environment variable that raises the limit."""

    max_record_bytes: int = 65_536
    max_template_chars: int = 20_000
    max_file_bytes: int = 16 * 1024 * 1024


class ScaffoldingFileError(UserInputError):
    """One or more scaffolding files are missing, unreadable or invalid.

    `problems` holds one line per problem; the message is those lines joined by newlines.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Object(dict):
    """A decoded JSON object that remembers the keys it held more than once."""

    duplicate_keys: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicate_keys = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _content_problems(value: Any, path: str = "") -> list[str]:
    """Duplicate keys and NUL characters anywhere in a decoded value, each with its field path."""
    problems: list[str] = []
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            at = f"field '{where}': " if where else ""
            for key in getattr(item, "duplicate_keys", ()):
                problems.append(f"{at}key {key!r} appears more than once (JSON would keep only the last)")
            for key, child in item.items():
                if "\x00" in key:
                    problems.append(f"{at}a key contains a NUL character (not allowed in text)")
                stack.append((f"{where}.{key}" if where else key, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(item))
        elif isinstance(item, str) and "\x00" in item:
            problems.append(f"field '{where}': contains a NUL character (not allowed in text)")
    return sorted(problems)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _field_path(loc: tuple[Any, ...]) -> str:
    """'communication_style.techniques[2]' from a pydantic error location."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and _FIELD_NAME_RE.match(part) and part not in _TYPE_TAGS:
            path += f".{part}" if path else part
    return path


def _validation_problems(prefix: str, error: ValidationError) -> list[str]:
    """One line per field, union alternatives merged ('... valid string, or ... valid dictionary')."""
    by_field: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        reasons = by_field.setdefault(_field_path(tuple(item.get("loc", ()))), [])
        if item["msg"] not in reasons:
            reasons.append(item["msg"])
    lines = []
    for field, reasons in by_field.items():
        where = f"{prefix}: field '{field}'" if field else prefix
        lines.append(f"{where}: {', or '.join(reasons)}")
    return lines


def _read_json(directory: Path, name: str, problems: list[str], limits: ScaffoldingLimits) -> tuple[bool, Any]:
    """(ok, parsed JSON) of one file; on failure a problem naming the file is appended (never
    quoting its content: only the file and the reason)."""
    path = directory / name
    if not path.is_file():
        problems.append(f"{name}: file not found (expected at {path})")
        return False, None
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            problems.append(f"{name}: {size:,} bytes, over the limit of {limits.max_file_bytes:,} bytes "
                            "(raise it with LORA_MAX_INPUT_FILE_BYTES=<n> if you mean it)")
            return False, None
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"{name}: cannot read file: {exc.strerror or type(exc).__name__}")
        return False, None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{name}: not UTF-8 text (invalid byte at offset {exc.start})")
        return False, None
    try:
        return True, json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        problems.append(f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
        return False, None
    except RecursionError:
        problems.append(f"{name}: the JSON nests too deeply to read")
        return False, None


def _record_label(name: str, index: int, raw: Any, key_field: str) -> str:
    key = raw.get(key_field) if isinstance(raw, dict) else None
    if isinstance(key, str) and key.strip():
        return f"{name}: record {index} ({key_field} {key.strip()!r})"
    return f"{name}: record {index}"


def _join_indices(indices: list[int]) -> str:
    text = [str(i) for i in indices]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " and " + text[-1]


def _size_problems(label: str, raw: dict[str, Any], limits: ScaffoldingLimits) -> list[str]:
    problems = []
    size = len(json.dumps(raw, ensure_ascii=False).encode("utf-8"))
    if size > limits.max_record_bytes:
        problems.append(f"{label}: {size:,} bytes as JSON, over the limit of {limits.max_record_bytes:,} bytes per "
                        "record (raise it with LORA_MAX_SCAFFOLDING_RECORD_BYTES=<n> if you mean it)")
    body = raw.get("body")
    if isinstance(body, str) and len(body) > limits.max_template_chars:
        problems.append(f"{label}: field 'body': {len(body):,} characters, over the limit of "
                        f"{limits.max_template_chars:,} (raise it with LORA_MAX_TEMPLATE_CHARS=<n> if you mean it)")
    return problems


def _load_records(
    name: str, model: type[BaseModel], key_field: str, data: Any, problems: list[str],
    limits: ScaffoldingLimits = ScaffoldingLimits(),
) -> list[BaseModel]:
    if not isinstance(data, list):
        problems.append(f"{name}: expected a JSON array of records, got a JSON {_json_type(data)}")
        return []
    records: list[BaseModel] = []
    positions: dict[str, list[int]] = {}
    for index, raw in enumerate(data):
        label = _record_label(name, index, raw, key_field)
        if isinstance(raw, dict) and isinstance(raw.get(key_field), str) and raw[key_field].strip():
            positions.setdefault(raw[key_field].strip(), []).append(index)
        if not isinstance(raw, dict):
            problems.append(f"{label}: expected a JSON object, got a JSON {_json_type(raw)}")
            continue
        refused = [f"{label}: {p}" for p in _content_problems(raw)] + _size_problems(label, raw, limits)
        if refused:
            problems.extend(refused)
            continue
        try:
            records.append(model.model_validate(raw))
        except ValidationError as exc:
            problems.extend(_validation_problems(label, exc))
    for key, indices in positions.items():
        if len(indices) > 1:
            problems.append(f"{name}: duplicate {key_field} {key!r} at records {_join_indices(indices)}")
    return records


def load_bundle(directory: Path | str = BUNDLED_DIR, limits: ScaffoldingLimits | None = None) -> ScaffoldingBundle:
    """Read and validate the five scaffolding files of `directory` (default: the bundled data).

    Raises `ScaffoldingFileError` listing every problem found (missing file, invalid JSON, wrong
    shape, invalid field, duplicate record key, a key twice in one object, NUL characters, a
    record or template over `limits`), each naming its file, record and field.
    """
    directory = Path(directory)
    limits = limits or ScaffoldingLimits()
    problems: list[str] = []
    if not directory.is_dir():
        raise ScaffoldingFileError([f"scaffolding directory not found: {directory}"])

    parts: dict[str, Any] = {}
    for field, (name, model, key_field, _kind) in RECORD_FILES.items():
        ok, data = _read_json(directory, name, problems, limits)
        if ok:
            parts[field] = _load_records(name, model, key_field, data, problems, limits)

    ok, data = _read_json(directory, CONSULTANT_FILE, problems, limits)
    if ok:
        if not isinstance(data, dict):
            problems.append(f"{CONSULTANT_FILE}: expected a JSON object, got a JSON {_json_type(data)}")
        elif refused := [f"{CONSULTANT_FILE}: {p}" for p in _content_problems(data)] + _size_problems(
            CONSULTANT_FILE, data, limits
        ):
            problems.extend(refused)
        else:
            try:
                parts["consultant_profile"] = ConsultantProfile.model_validate(data)
            except ValidationError as exc:
                problems.extend(_validation_problems(CONSULTANT_FILE, exc))

    if problems:
        raise ScaffoldingFileError(problems)
    try:
        return ScaffoldingBundle(**parts)
    except ValidationError as exc:  # pragma: no cover - every record was validated above
        raise ScaffoldingFileError(_validation_problems(f"scaffolding in {directory}", exc)) from exc


def _record_json(record: BaseModel, key_field: str, kind: str) -> dict[str, Any]:
    """JSON of one record; `id` only when it is not the deterministic id of its key."""
    data = record.model_dump(mode="json")
    if data.get("id") in (None, scaffolding_id(kind, data[key_field])):
        data.pop("id", None)
    return data


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def bundle_to_dir(bundle: ScaffoldingBundle, directory: Path | str) -> Path:
    """Write `bundle` as the five scaffolding files into `directory` (created if missing).

    `load_bundle(bundle_to_dir(b, d)) == b`. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for field, (name, _model, key_field, kind) in RECORD_FILES.items():
        _write_json(directory / name, [_record_json(r, key_field, kind) for r in getattr(bundle, field)])
    _write_json(directory / CONSULTANT_FILE, bundle.consultant_profile.model_dump(mode="json"))
    return directory


def _split_s3(location: str) -> tuple[str, str]:
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise ScaffoldingFileError([f"scaffolding location {location!r}: no bucket (expected s3://bucket/prefix)"])
    return bucket, prefix.strip("/")


def _download_s3(location: str, client: Any, target: Path, max_bytes: int | None = None) -> None:
    """Copy the five files under `location` (s3://bucket/prefix) into `target`; every missing,
    unreadable or oversized (over `max_bytes`, known from its size before any byte is fetched)
    one is named in one ScaffoldingFileError."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = _split_s3(location)
    problems = []
    for name in FILE_NAMES:
        key = f"{prefix}/{name}" if prefix else name
        try:
            if max_bytes is not None:
                size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
                if size > max_bytes:
                    problems.append(f"s3://{bucket}/{key}: {size:,} bytes, over the limit of {max_bytes:,} bytes "
                                    "(raise it with LORA_MAX_INPUT_FILE_BYTES=<n> if you mean it)")
                    continue
            client.download_file(bucket, key, str(target / name))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason = "not found" if code in ("404", "NoSuchKey", "NoSuchBucket") else f"{code or 'error'}: {exc}"
            problems.append(f"s3://{bucket}/{key}: {reason}")
        except BotoCoreError as exc:
            problems.append(f"s3://{bucket}/{key}: {exc.__class__.__name__}: {exc}")
    if problems:
        raise ScaffoldingFileError(problems)


def load_scaffolding(location: str | Path | None, limits: ScaffoldingLimits | None = None,
                     s3_client: Any = None) -> ScaffoldingBundle:
    """The scaffolding bundle at `location`: the bundled data when empty, a local directory, or
    an `s3://bucket/prefix` holding the same five files (read with `s3_client`). Problems are
    named as `load_bundle` names them; S3 ones by their s3:// URL."""
    if not location:
        return load_bundle(BUNDLED_DIR, limits)
    location = str(location)
    if not location.startswith("s3://"):
        return load_bundle(Path(location), limits)
    if s3_client is None:
        raise ScaffoldingFileError([f"scaffolding location {location}: an S3 location needs the S3 client "
                                    "(LORA_S3_ENDPOINT_URL / AWS credentials)"])
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lora-scaffolding-") as tmp:
        _download_s3(location, s3_client, Path(tmp), (limits or ScaffoldingLimits()).max_file_bytes)
        try:
            return load_bundle(Path(tmp), limits)
        except ScaffoldingFileError as exc:
            # Name the S3 objects, not the temporary directory they were copied to.
            base = location.rstrip("/")
            raise ScaffoldingFileError([
                f"{base}/{p}" if p.split(":", 1)[0] in FILE_NAMES else p.replace(tmp, base) for p in exc.problems
            ]) from None
