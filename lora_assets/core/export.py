"""Fine-tuning exports of a training file, streamed conversation by conversation.

Formats (each optional, each a caller-supplied binary handle):

* **messages** — Hugging Face / TRL conversational JSONL, one example per conversation:
  `{"messages": [{"role": "system"|"user"|"assistant", "content": …}, …]}`, separate train and
  validation handles (what `load_dataset("json", …)`, TRL `SFTTrainer` and Axolotl
  `type: chat_template` read).
* **openai** — OpenAI chat fine-tuning JSONL: the same messages, every assistant message carries
  `"weight": 1`, or `0` when that turn should not be trained (its pair's quality is below
  `min_trained_quality`).
* **sharegpt** — `{"conversations": [{"from": "system"|"human"|"gpt", "value": …}, …]}`.
* **parquet** — one row per training pair with flat columns, written row group by row group.

One example per conversation, built from its last training pair: that pair's history + its
user input + its target. Earlier pairs' targets are the assistant turns inside that history,
which is why one example trains every answer of the conversation. A trailing user turn with no
answer is dropped (nothing to learn from it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Collection
from typing import IO, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from lora_assets.core.aggregate import DuplicateMemberError, conversation_id_of
from lora_assets.schemas.training import EnrichedConversation, TrainingPair

Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")

#: Column layout of the Parquet export (one row per training pair).
PARQUET_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("turn_number", pa.int32(), nullable=False),
        pa.field("persona_key", pa.string()),
        pa.field("arc_key", pa.string()),
        pa.field("topic_key", pa.string()),
        pa.field("system_prompt", pa.string(), nullable=False),
        pa.field("history_json", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("target", pa.string()),
        pa.field("quality_score", pa.float64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

_SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


class ConversationShapeError(ValueError):
    """A conversation whose turns cannot form a chat example (roles out of order, history
    contradicting the pairs' inputs/targets)."""


class MissingExportHandleError(ValueError):
    """A conversation routed to a split for which an enabled format has no output handle."""


class InvalidSplitError(ValueError):
    """A split name other than "train" or "validation"."""


def _dumps(obj: Any) -> bytes:
    # Compact, UTF-8 (no \u escapes for non-ASCII text), one line.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# The string encoder `_dumps` uses for every str inside a document (ensure_ascii=False).
_json_str = json.encoder.py_encode_basestring if json.encoder.c_encode_basestring is None else json.encoder.c_encode_basestring


# --------------------------------------------------------------------------------------------
# One chat example per conversation


@dataclass(frozen=True)
class ChatExample:
    """The chat example of one conversation.

    `messages` alternate strictly user/assistant after an optional system message and end with
    an assistant message. `assistant_pairs[i]` is the training pair whose target is the i-th
    assistant message (so per-turn facts such as quality can be attached to it).
    """

    conversation_id: str
    messages: list[dict[str, str]]
    assistant_pairs: list[TrainingPair]

    @property
    def chars(self) -> int:
        """Characters of all message contents (for token estimates)."""
        return sum(len(m["content"]) for m in self.messages)


def chat_example(conv: EnrichedConversation, conversation_id: str | None = None) -> ChatExample | None:
    """Build the chat example of `conv`, or None when it has no answered user turn.

    Raises `ConversationShapeError` naming the conversation when roles do not alternate
    user/assistant or the history disagrees with the pairs it was built from.
    """
    cid = conversation_id_of(conv, conversation_id)
    pairs = sorted(conv.training_pairs, key=lambda p: p.turn_number)
    if not pairs:
        return None
    last = pairs[-1]

    messages: list[dict[str, str]] = []
    if last.system_prompt.strip():
        messages.append({"role": "system", "content": last.system_prompt})
    for turn in last.conversation_history:
        messages.append({"role": turn.role, "content": turn.content})
    messages.append({"role": "user", "content": last.current_user_input})
    if last.target_response is not None:
        messages.append({"role": "assistant", "content": last.target_response})
    else:
        messages.pop()  # a trailing user turn with no answer teaches nothing

    first = 1 if messages and messages[0]["role"] == "system" else 0
    for offset, message in enumerate(messages[first:]):
        expected = "user" if offset % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ConversationShapeError(
                f"conversation {cid!r}: message {offset + 1} after the system prompt is "
                f"{message['role']!r}, expected {expected!r} (turns must alternate starting with the user)"
            )

    # Each answered pair is one assistant message, in turn order; check the history agrees with
    # the pairs so weights/quality land on the right turn and no answer is silently replaced.
    answered = [p for p in pairs if p.target_response is not None]
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    users = [m["content"] for m in messages if m["role"] == "user"]
    if len(answered) != len(assistants):
        raise ConversationShapeError(
            f"conversation {cid!r}: {len(answered)} answered training pairs but the last pair's "
            f"history holds {len(assistants)} assistant turns"
        )
    for pair, answer in zip(answered, assistants, strict=True):
        if pair.target_response.strip() != answer.strip():  # type: ignore[union-attr]
            raise ConversationShapeError(
                f"conversation {cid!r}: target of training pair {pair.id!r} differs from the "
                "assistant turn in the last pair's history"
            )
    for pair, question in zip(pairs, users, strict=False):
        if pair.current_user_input.strip() != question.strip():
            raise ConversationShapeError(
                f"conversation {cid!r}: input of training pair {pair.id!r} differs from the "
                "user turn in the last pair's history"
            )
    if not assistants:
        return None
    return ChatExample(conversation_id=cid, messages=messages, assistant_pairs=answered)


def openai_messages(example: ChatExample, min_trained_quality: float | None) -> list[dict[str, Any]]:
    """The example's messages with OpenAI `weight` on assistant turns: 1 trains the turn, 0
    keeps it as context only (its pair's quality_score is below `min_trained_quality`)."""
    return [message if weight is None else {**message, "weight": weight}
            for message, weight in zip(example.messages, openai_weights(example, min_trained_quality), strict=True)]


def openai_weights(example: ChatExample, min_trained_quality: float | None) -> list[int | None]:
    """Per message, the OpenAI `weight` `openai_messages` gives it (None: not an assistant turn)."""
    out: list[int | None] = []
    answers = iter(example.assistant_pairs)
    for message in example.messages:
        if message["role"] == "assistant":
            pair = next(answers)
            low = min_trained_quality is not None and pair.training_metadata.quality_score < min_trained_quality
            out.append(0 if low else 1)
        else:
            out.append(None)
    return out


def sharegpt_conversations(example: ChatExample) -> list[dict[str, str]]:
    """The example in ShareGPT roles: system / human / gpt."""
    return [{"from": _SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in example.messages]


# --------------------------------------------------------------------------------------------
# Stats


class ExportStats(BaseModel):
    """What an `ExportWriter` wrote. `*_train` / `*_validation` are JSONL line counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversations_train: int = 0
    conversations_validation: int = 0
    pairs_train: int = 0
    pairs_validation: int = 0
    messages_train: int = 0
    messages_validation: int = 0
    openai_train: int = 0
    openai_validation: int = 0
    sharegpt_train: int = 0
    sharegpt_validation: int = 0
    parquet_rows: int = 0
    parquet_row_groups: int = 0
    skipped_without_answer: int = 0
    assistant_turns: int = 0
    openai_untrained_turns: int = 0
    openai_skipped_untrainable: int = 0
    chat_chars_train: int = 0
    chat_chars_validation: int = 0

    @property
    def estimated_tokens_train(self) -> int:
        """Rough tokens of the train chat examples (characters / 4)."""
        return self.chat_chars_train // 4

    @property
    def estimated_tokens_validation(self) -> int:
        """Rough tokens of the validation chat examples (characters / 4)."""
        return self.chat_chars_validation // 4

    def lines(self, fmt: Literal["messages", "openai", "sharegpt"], split: Split) -> int:
        """JSONL lines written for `fmt` and `split`."""
        return int(getattr(self, f"{fmt}_{split}"))


# --------------------------------------------------------------------------------------------
# The writer

#: `PARQUET_SCHEMA` columns of a rendered row, in order (`split` is added when it is written).
_ROW_COLUMNS = tuple(name for name in PARQUET_SCHEMA.names if name != "split")


@dataclass(frozen=True)
class Rendered:
    """What one conversation adds to the exports, before its split is known (`ExportWriter.render`):
    its line per chat format (openai: None when it trains nothing), its Parquet rows without the
    `split` column, and what it adds to the counts. Picklable: a build spools it to local disk."""

    conversation_id: str
    pairs: int
    chars: int
    assistant_turns: int
    answered: bool
    openai_untrained_turns: int
    lines: dict[str, bytes | None]
    rows: list[tuple[Any, ...]]


#: Each message's JSON up to its content, by role (what `_dumps` writes there), per format.
_MESSAGE_HEAD = {role: f'{{"role":{_json_str(role)},"content":' for role in _SHAREGPT_FROM}
_SHAREGPT_HEAD = {role: f'{{"from":{_json_str(name)},"value":' for role, name in _SHAREGPT_FROM.items()}


def _chat_lines(example: ChatExample, formats: Collection[str], min_trained_quality: float | None
            ) -> tuple[dict[str, bytes | None], int]:
    """The example's line in each enabled chat format (openai: None when it would train
    nothing), and how many of its answers OpenAI would not train."""
    out: dict[str, bytes | None] = {}
    untrained = 0
    # Each message's content JSON-encoded once for the three formats, its role's part of the JSON
    # precomputed; the lines are byte for byte what `_dumps` makes of `{"messages": …}` /
    # `{"conversations": …}` (tested).
    roles = [m["role"] for m in example.messages]
    contents = [_json_str(m["content"]) for m in example.messages]
    if "messages" in formats:
        items = ",".join([_MESSAGE_HEAD[r] + t + "}" for r, t in zip(roles, contents, strict=True)])
        out["messages"] = f'{{"messages":[{items}]}}\n'.encode()
    if "openai" in formats:
        weights = openai_weights(example, min_trained_quality)
        untrained = weights.count(0)
        if untrained == len(example.assistant_pairs):
            out["openai"] = None
        else:
            items = ",".join([_MESSAGE_HEAD[r] + t + ("}" if w is None else f',"weight":{w}}}')
                              for r, t, w in zip(roles, contents, weights, strict=True)])
            out["openai"] = f'{{"messages":[{items}]}}\n'.encode()
    if "sharegpt" in formats:
        items = ",".join([_SHAREGPT_HEAD[r] + t + "}" for r, t in zip(roles, contents, strict=True)])
        out["sharegpt"] = f'{{"conversations":[{items}]}}\n'.encode()
    return out, untrained

def _rows(conv: EnrichedConversation) -> list[tuple[Any, ...]]:
    """The conversation's Parquet rows (one per pair, in turn order), every column but `split`."""
    rows = []
    turn_json: dict[tuple[int, str, str], str] = {}  # each history turn serialised once per conversation
    for pair in sorted(conv.training_pairs, key=lambda p: p.turn_number):
        meta = pair.conversation_metadata
        parts = []
        for t in pair.conversation_history:
            key = (t.turn_number, t.role, t.content)
            part = turn_json.get(key)
            if part is None:
                # What json.dumps(t.model_dump(), compact) writes: its three fields in order.
                part = turn_json[key] = (f'{{"turn_number":{int(t.turn_number)},"role":{_json_str(t.role)},'
                                         f'"content":{_json_str(t.content)}}}')
            parts.append(part)
        rows.append((pair.id, pair.conversation_id, pair.turn_number, meta.persona_archetype,
                     meta.emotional_arc_key, meta.training_topic_key, pair.system_prompt,
                     f"[{','.join(parts)}]", pair.current_user_input, pair.target_response,
                     pair.training_metadata.quality_score))
    return rows


def render(conv: EnrichedConversation, *, formats: Collection[str] = ("messages", "openai", "sharegpt"),
           min_trained_quality: float | None = None, parquet: bool = True,
           conversation_id: str | None = None) -> tuple[Rendered, ChatExample | None]:
    """Everything `conv` adds to the exports in `formats` (and Parquet), whatever its split
    (`ExportWriter.write` puts it under one), and its chat example. Raises
    `ConversationShapeError` for turns that do not form a chat. A build renders its members while
    it reads them, before the split is known."""
    cid = conversation_id_of(conv, conversation_id)
    example = chat_example(conv, cid)
    lines: dict[str, bytes | None] = {}
    untrained = 0
    if example is not None:
        lines, untrained = _chat_lines(example, formats, min_trained_quality)
    return Rendered(
        conversation_id=cid, pairs=len(conv.training_pairs),
        chars=example.chars if example is not None else 0,
        assistant_turns=len(example.assistant_pairs) if example is not None else 0,
        answered=example is not None, openai_untrained_turns=untrained, lines=lines,
        rows=_rows(conv) if parquet else [],
    ), example


#: numpy dtypes of the Parquet export's numeric columns.
_NUMPY_TYPES = {pa.int32(): np.int32, pa.float64(): np.float64}


def _arrow_column(values: list[Any], type_: pa.DataType) -> pa.Array:
    """A Parquet column's values as an Arrow array, from buffers: `pa.array` / `from_pydict` on a
    Python list imports pandas (≈ 0.4 s of CPU in every build process) only to ask whether the
    list is a pandas object. The same array (values, nulls) as `pa.array(values, type_)`; tested."""
    rows = len(values)
    valid = None
    if any(v is None for v in values):
        valid = pa.py_buffer(np.packbits(np.array([v is not None for v in values]), bitorder="little"))
    if type_ == pa.string():
        encoded = [b"" if v is None else v.encode() for v in values]
        ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        if rows and ends[-1] > np.iinfo(np.int32).max:  # more than 32-bit offsets reach: let Arrow chunk it
            return pa.array(values, type_)
        offsets = np.concatenate([np.zeros(1, dtype=np.int32), ends.astype(np.int32)])
        return pa.Array.from_buffers(type_, rows, [valid, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])
    numbers = np.array([0 if v is None else v for v in values], dtype=_NUMPY_TYPES[type_])
    return pa.Array.from_buffers(type_, rows, [valid, pa.py_buffer(numbers)])


class ExportWriter:
    """Streams every export format at once: call `add(conv, split)` per conversation, then
    `close()` (or use it as a context manager) to finish the Parquet footer and get the stats.

    A format is enabled by passing its handle(s); a conversation routed to a split whose handle
    an enabled format lacks raises `MissingExportHandleError`. Handles are never closed here.
    """

    def __init__(
        self,
        *,
        messages_train: IO[bytes] | None = None,
        messages_validation: IO[bytes] | None = None,
        openai_train: IO[bytes] | None = None,
        openai_validation: IO[bytes] | None = None,
        sharegpt_train: IO[bytes] | None = None,
        sharegpt_validation: IO[bytes] | None = None,
        parquet: IO[bytes] | None = None,
        min_trained_quality: float | None = None,
        row_group_rows: int = 2048,
        # A row group's text is buffered, converted to Arrow and encoded at once, which briefly
        # takes several times its size (measured: ≈ 20 MB for 2 MB of text, ≈ 40 MB for 7 MB):
        # the peak of a training-file build. Small groups keep that peak low and the same
        # whatever the size of the file (with 32 MB it grew until the first full group).
        row_group_bytes: int = 2 << 20,
    ) -> None:
        self._handles: dict[str, dict[Split, IO[bytes] | None]] = {
            "messages": {"train": messages_train, "validation": messages_validation},
            "openai": {"train": openai_train, "validation": openai_validation},
            "sharegpt": {"train": sharegpt_train, "validation": sharegpt_validation},
        }
        self._enabled = {fmt for fmt, h in self._handles.items() if h["train"] is not None or h["validation"] is not None}
        self._min_q = min_trained_quality
        self._rg_rows = max(1, row_group_rows)
        self._rg_bytes = max(1, row_group_bytes)
        self._parquet = pq.ParquetWriter(parquet, PARQUET_SCHEMA) if parquet is not None else None
        self._columns: dict[str, list[Any]] = {name: [] for name in PARQUET_SCHEMA.names}
        self._buffered_bytes = 0
        self._members: set[str] = set()
        self._counts: dict[str, int] = dict.fromkeys(ExportStats.model_fields, 0)
        self._closed = False

    def __enter__(self) -> ExportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, conv: EnrichedConversation, split: Split, *, conversation_id: str | None = None) -> ChatExample | None:
        """Write `conv` to every enabled format under `split`; returns its chat example (None when
        it has no answered turn), so a caller can measure exactly what the messages export holds.

        Raises `DuplicateMemberError` for a conversation id already exported,
        `ConversationShapeError` for turns that do not form a chat, `InvalidSplitError`,
        `MissingExportHandleError`. Nothing is written for a conversation that raises.
        """
        cid = conversation_id_of(conv, conversation_id)
        self._check(cid, split)
        rendered, example = self.render(conv, conversation_id=cid)  # may raise before anything is written
        self.write(rendered, split)
        return example

    def _check(self, cid: str, split: str) -> None:
        if self._closed:
            raise RuntimeError("ExportWriter is closed")
        if split not in SPLITS:
            raise InvalidSplitError(f"split {split!r}: must be 'train' or 'validation'")
        if cid in self._members:
            raise DuplicateMemberError(cid)
        for fmt in sorted(self._enabled):
            if self._handles[fmt][split] is None:  # type: ignore[index]
                raise MissingExportHandleError(
                    f"conversation {cid!r} is in split {split!r} but the {fmt} export has no {split} handle"
                )

    def render(self, conv: EnrichedConversation, *, conversation_id: str | None = None
               ) -> tuple[Rendered, ChatExample | None]:
        """`render` for this writer's formats and settings."""
        return render(conv, formats=self._enabled, min_trained_quality=self._min_q,
                      parquet=self._parquet is not None, conversation_id=conversation_id)

    def write(self, rendered: Rendered, split: Split) -> None:
        """Write a rendered conversation under `split` (the same checks and counts as `add`)."""
        self._check(rendered.conversation_id, split)
        self._members.add(rendered.conversation_id)
        c = self._counts
        c[f"conversations_{split}"] += 1
        c[f"pairs_{split}"] += rendered.pairs
        if not rendered.answered:
            c["skipped_without_answer"] += 1
        else:
            c["assistant_turns"] += rendered.assistant_turns
            c[f"chat_chars_{split}"] += rendered.chars
            c["openai_untrained_turns"] += rendered.openai_untrained_turns
            for fmt in ("messages", "openai", "sharegpt"):
                handle = self._handles[fmt][split]
                if handle is None or fmt not in rendered.lines:
                    continue
                line = rendered.lines[fmt]
                if line is None:  # openai: every answer below the bar, the example would train nothing
                    c["openai_skipped_untrainable"] += 1
                    continue
                handle.write(line)
                c[f"{fmt}_{split}"] += 1
        if self._parquet is not None:
            self._buffer_rows(rendered.rows, split)

    def _buffer_rows(self, rows: list[tuple[Any, ...]], split: Split) -> None:
        cols = self._columns
        if rows:
            # Column by column: one extend each, not an append per value.
            for name, values in zip(_ROW_COLUMNS, zip(*rows, strict=True), strict=True):
                cols[name].extend(values)
            cols["split"].extend([split] * len(rows))
            # system_prompt + history + input + target
            self._buffered_bytes += sum(len(row[6]) + len(row[7]) + len(row[8]) + len(row[9] or "") for row in rows)
        if len(cols["id"]) >= self._rg_rows or self._buffered_bytes >= self._rg_bytes:
            self._flush_rows()

    def _flush_rows(self) -> None:
        rows = len(self._columns["id"])
        if not rows or self._parquet is None:
            return
        table = pa.Table.from_arrays([_arrow_column(self._columns[f.name], f.type) for f in PARQUET_SCHEMA],
                                     schema=PARQUET_SCHEMA)
        self._parquet.write_table(table, row_group_size=rows)
        self._counts["parquet_rows"] += rows
        self._counts["parquet_row_groups"] += 1
        self._columns = {name: [] for name in PARQUET_SCHEMA.names}
        self._buffered_bytes = 0
        del table
        # Arrow's allocator keeps freed row-group buffers for reuse and grows with every group it
        # has written; handing them back keeps the writer's memory flat however many groups.
        pa.default_memory_pool().release_unused()

    @property
    def stats(self) -> ExportStats:
        """Counts so far (Parquet rows count once flushed; `close()` flushes the rest)."""
        return ExportStats(**self._counts)

    def close(self) -> ExportStats:
        """Flush the last row group, write the Parquet footer, return the final stats.
        Idempotent. The caller's handles stay open."""
        if not self._closed:
            self._closed = True
            if self._parquet is not None:
                self._flush_rows()
                self._parquet.close()
        return self.stats


# --------------------------------------------------------------------------------------------
# Axolotl


def _yaml_str(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: safe for any path.
    return json.dumps(value, ensure_ascii=False)


#: Chat templates Axolotl 0.19 ships (`axolotl.utils.schemas.enums.ChatTemplate`); any
#: `tokenizer_default_fallback_<name>` is accepted too.
AXOLOTL_CHAT_TEMPLATES = frozenset(
    {
        "alpaca", "chatml", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken", "gemma",
        "cohere", "llama3", "llama3_2_vision", "llama4", "phi_3", "phi_35", "deepseek_v2", "deepseek_v3",
        "jamba", "jinja", "qwen_25", "qwen3", "tokenizer_default", "exaone", "metharme", "pixtral", "llava",
        "qwen2_vl", "gemma3",
    }
)

#: The default: the base tokenizer's own template, ChatML when it has none. Plain
#: `tokenizer_default` fails outright on a base model without a template.
DEFAULT_CHAT_TEMPLATE = "tokenizer_default_fallback_chatml"


class AxolotlConfigError(ValueError):
    """Axolotl settings that Axolotl itself would refuse (unknown template, jinja without text)."""


def axolotl_config(
    *,
    train_path: str,
    validation_path: str | None = None,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    chat_template_jinja: str | None = None,
    train_on_eos: Literal["turn", "last", "all"] = "turn",
    sequence_len: int | None = None,
    sequence_len_counted_with: str | None = None,
) -> str:
    """A YAML **snippet** (not a full Axolotl config) declaring the messages files as
    `type: chat_template` datasets: merge it into a config that sets `base_model`,
    `adapter: lora`, … .

    Works on any base: `chat_template` defaults to `tokenizer_default_fallback_chatml` (the
    base tokenizer's template, ChatML when it has none); pass a built-in name (`chatml`,
    `llama3`, …) or `chat_template_jinja` (sets `chat_template: jinja`) to choose one. Roles are
    mapped explicitly (`message_property_mappings`, `roles`), only assistant turns are trained
    and each trained turn's end-of-turn token with them (`train_on_eos: turn`). The validation
    file, if any, goes to `test_datasets` (a local JSON file loads as split "train", hence
    `split: train`) and `val_set_size: 0` stops Axolotl from carving a second validation set
    out of the training data. `sequence_len` should come from the length statistics
    (`LengthReport.recommended_sequence_len`: the longest example rounded up, so Axolotl drops or
    truncates nothing); 2048 when unknown. `sequence_len_counted_with` (the report's method) is
    written beside it, so a reader knows whether it is a tokenizer count or an estimate.
    """
    if chat_template_jinja is not None:
        chat_template = "jinja"
    elif chat_template == "jinja":
        raise AxolotlConfigError("chat_template 'jinja' needs chat_template_jinja (the template text or a path)")
    if chat_template not in AXOLOTL_CHAT_TEMPLATES and not (
        chat_template.startswith("tokenizer_default_fallback_")
        and chat_template.removeprefix("tokenizer_default_fallback_") in AXOLOTL_CHAT_TEMPLATES
    ):
        raise AxolotlConfigError(f"chat_template {chat_template!r} is not one Axolotl knows")
    if sequence_len is None:
        sequence_len = 2048
    if sequence_len < 1:
        raise AxolotlConfigError(f"sequence_len {sequence_len!r} must be positive")

    def entry(path: str, *, eval_split: bool) -> list[str]:
        lines = [
            f"  - path: {_yaml_str(path)}",
            "    ds_type: json",
        ]
        if eval_split:
            lines.append("    split: train")
        lines += [
            "    type: chat_template",
            "    field_messages: messages",
            "    message_property_mappings:",
            "      role: role",
            "      content: content",
            "    roles:",
            '      user: ["user"]',
            '      assistant: ["assistant"]',
            '      system: ["system"]',
            '    roles_to_train: ["assistant"]',
            f"    train_on_eos: {train_on_eos}",
        ]
        return lines

    out = [
        "# Axolotl dataset configuration — SNIPPET generated by lora_assets, not a complete config.",
        "# Merge into your Axolotl YAML (base_model, adapter: lora, lora_r, ...).",
        "# Files: Hugging Face conversational JSONL, one {\"messages\": [...]} per line;",
        "# only assistant turns are trained (roles_to_train).",
        "# Paths are relative to the directory axolotl runs in: run it from this version's folder or",
        "# make them absolute.",
        f"chat_template: {_yaml_str(chat_template)}",
    ]
    if chat_template == "tokenizer_default_fallback_chatml":
        # Checked with axolotl 0.19 (docs/axolotl-check.md): on a base tokenizer without a chat
        # template the ChatML fallback's <|im_end|> is not a token, so the turn end is never trained
        # unless it is added; on a base with its own template these lines would be wrong.
        out += [
            "# Base tokenizer WITHOUT a chat template (ChatML is used): uncomment so each assistant turn's",
            "# <|im_end|> is trained (and train the new embeddings, e.g. lora_modules_to_save: [embed_tokens, lm_head]):",
            '# tokens: ["<|im_start|>", "<|im_end|>"]',
            '# eot_tokens: ["<|im_end|>"]',
        ]
    if chat_template_jinja is not None:
        out.append(f"chat_template_jinja: {_yaml_str(chat_template_jinja)}")
    if sequence_len_counted_with is not None:
        out.append(f"# sequence_len: the longest example rounded up to a multiple of 64, counted with "
                   f"{_yaml_str(sequence_len_counted_with)}")
    out += [
        f"sequence_len: {sequence_len}",
        "datasets:",
        *entry(train_path, eval_split=False),
    ]
    if validation_path is not None:
        out += ["test_datasets:", *entry(validation_path, eval_split=True), "val_set_size: 0"]
    return "\n".join(out) + "\n"
