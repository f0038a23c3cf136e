"""Token lengths of the chat examples a training file exports, and the sequence length to train
them with — counted the way the trainer will count them.

Three ways to count, behind one `TokenCounter` protocol, chosen by `token_counter(path)`:

* `ChatTemplateCounter` — the tokenizer directory has a chat template (`chat_template.jinja`, or
  `chat_template` in `tokenizer_config.json`, the same precedence as transformers). Every example
  is rendered through that template exactly as transformers' ``apply_chat_template(...,
  return_assistant_tokens_mask=True)`` renders it for TRL (`assistant_only_loss=True`): the same
  sandboxed jinja environment, the template's special tokens (`bos_token`, `eos_token`, …) as
  variables, the ``{% generation %}`` blocks marking what is trained. The rendered texts are
  batch-encoded with the `tokenizers` package (no special tokens added: the template has its
  own), and a token is trained when transformers' mask would mark it (the token of a block's
  first character to the token of its last). So the turn-end token is counted as trained
  whenever the template puts it inside the block, as TRL trains it.
* `TokenizerCounter` — a `tokenizer.json` without a chat template: each message's content is
  tokenised and framed by a stated per-message overhead modelled on ChatML, the template Axolotl
  falls back to: ``<|im_start|>{role}\\n`` (`MESSAGE_HEADER_TOKENS` = 3) before the content and
  ``<|im_end|>\\n`` (`MESSAGE_FOOTER_TOKENS` = 2) after it. An assistant turn trains its content
  and its turn end (`TURN_END_TOKENS` = 1, `<|im_end|>`; Axolotl's `train_on_eos: turn`).
* `CharEstimateCounter` — no tokenizer named: ``ceil(characters × (1 + ESTIMATE_MARGIN) / 4)``
  per content, framed like `TokenizerCounter` but with a 6-token header
  (`ESTIMATE_OVERHEAD_TOKENS` = 11 per message: `<|im_start|>` is several tokens where the
  tokenizer does not have it as a special token). chars/4 is the usual rule of thumb for English
  BPE vocabularies; the stated margin covers tokenizers that need more tokens per character
  (numbers, names). Reported as ``"estimate: chars/4 + 10%"`` everywhere a figure from it is
  shown, so nobody mistakes it for a measurement. On the test set it is never below the count
  through a chat template and 9–21% above it at the longest example.

`LengthStats` is a streaming accumulator: `add(messages)` per example, `result()` at the end.
It buffers `BATCH` examples so the tokenizer encodes them in one call, and keeps a few integers
per example (its length and where its trained tokens sit), not text.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from lora_assets.core.chat_template import (
    CHAT_TEMPLATE_FILE,
    SPECIAL_TOKEN_NAMES,
    TOKENIZER_CONFIG_FILE,
    ChatTemplateError,
    ChatTemplateSource,
    compile_chat_template,
    find_chat_template,
    render_with_generation_spans,
    tokenizer_config,
    trained_spans,
)

#: Share added to chars/4 by the estimate (stated on the card). Measured on the test set
#: (lora_assets_tests/core/test_tokens_chat_template.py): with it and `ESTIMATE_OVERHEAD_TOKENS`
#: the estimate is never below the count through a chat template (chars/4 + 5 tokens per message
#: alone was up to 12% below where `<|im_start|>` is not one token).
ESTIMATE_MARGIN = 0.10
#: Characters per token of the estimate (before the margin).
CHARS_PER_TOKEN = 4
#: Method label of the character-based estimate (shown wherever its figures are reported).
ESTIMATE_METHOD = f"estimate: chars/{CHARS_PER_TOKEN} + {ESTIMATE_MARGIN:.0%}"

#: Template tokens before a message's content (ChatML: `<|im_start|>`, role, newline).
MESSAGE_HEADER_TOKENS = 3
#: Template tokens after a message's content (ChatML: `<|im_end|>`, newline).
MESSAGE_FOOTER_TOKENS = 2
#: Template tokens per message, header + footer.
MESSAGE_OVERHEAD_TOKENS = MESSAGE_HEADER_TOKENS + MESSAGE_FOOTER_TOKENS
#: The estimate's template tokens per message: a header of up to 9 tokens (`<|im_start|>` may be
#: several tokens where it is not a special token of the tokenizer) and the 2-token footer.
ESTIMATE_HEADER_TOKENS = 9
#: Template tokens per message of the estimate, header + footer.
ESTIMATE_OVERHEAD_TOKENS = ESTIMATE_HEADER_TOKENS + MESSAGE_FOOTER_TOKENS
#: Footer tokens trained with each assistant turn (ChatML `<|im_end|>`), as TRL and Axolotl's
#: `train_on_eos: turn` train it.
TURN_END_TOKENS = 1

#: How an example was framed: rendered through the tokenizer's chat template, or contents plus a
#: fixed per-message overhead.
Counting = Literal["chat_template", "message_overhead"]

#: Recommended lengths are rounded up to a multiple of this. 64 rather than 256: these
#: conversations run to about 1–3K tokens, where rounding to 256 can add up to a quarter of
#: padding (Axolotl pads every packed sample to `sequence_len`), while 64 is still a multiple of
#: the 8/16/64 alignments GPU matmul kernels favour.
LENGTH_MULTIPLE = 64

#: Default `sequence_len` when no length statistics are known.
DEFAULT_SEQUENCE_LEN = 2048

#: Examples `LengthStats` buffers before counting them in one batch (one `encode_batch` call).
BATCH = 256


class TokenizerLoadError(ValueError):
    """A tokenizer path that does not name a loadable `tokenizer.json` (or its chat template)."""


@dataclass(frozen=True, slots=True)
class ExampleCount:
    """The tokens of one chat example as a trainer sees them."""

    length: int
    #: Token spans [start, end) the trainer trains (assistant turns), disjoint and in order.
    trained: tuple[tuple[int, int], ...]
    #: Tokens of each user/assistant message: its content and template tokens under the
    #: per-message overhead; its content as tokenised in the rendered example under a template.
    turns: tuple[int, ...]
    #: Trained tokens of each assistant turn (turn end included).
    assistant_turns: tuple[int, ...]


@runtime_checkable
class TokenCounter(Protocol):
    """Counts chat examples. `method` says with what (a tokenizer path, or the estimate label),
    `counting` how an example is framed, `chat_template` where the template came from (if any)."""

    @property
    def method(self) -> str:
        """What the counts are made with, for reports."""
        ...

    @property
    def counting(self) -> Counting:
        """How an example is framed: its chat template, or contents + a per-message overhead."""
        ...

    @property
    def chat_template(self) -> str | None:
        """Where the chat template came from (None: no template, the per-message overhead)."""
        ...

    @property
    def message_overhead_tokens(self) -> int | None:
        """Template tokens counted per message (None: the chat template is rendered instead)."""
        ...

    def count_examples(self, examples: Sequence[Sequence[Mapping[str, str]]]) -> list[ExampleCount]:
        """Each example's length, trained spans and turn lengths."""
        ...


def _overhead_example(messages: Sequence[Mapping[str, str]], counts: Sequence[int], header: int) -> ExampleCount:
    """An example framed by a fixed ChatML-like overhead (`header` tokens before each content,
    `MESSAGE_FOOTER_TOKENS` after it), from its messages' content counts."""
    position = 0
    trained: list[tuple[int, int]] = []
    turns: list[int] = []
    assistant: list[int] = []
    for message, tokens in zip(messages, counts, strict=True):
        start = position + header
        position = start + tokens + MESSAGE_FOOTER_TOKENS
        if message["role"] != "system":
            turns.append(tokens + header + MESSAGE_FOOTER_TOKENS)
        if message["role"] == "assistant":
            trained.append((start, start + tokens + TURN_END_TOKENS))
            assistant.append(tokens + TURN_END_TOKENS)
    return ExampleCount(position, tuple(trained), tuple(turns), tuple(assistant))


class _OverheadCounter:
    """Contents counted one by one, each message framed by `header_tokens` + the footer."""

    counting: Counting = "message_overhead"
    chat_template: str | None = None
    header_tokens = MESSAGE_HEADER_TOKENS

    @property
    def message_overhead_tokens(self) -> int:
        """Template tokens counted per message."""
        return self.header_tokens + MESSAGE_FOOTER_TOKENS

    def count_many(self, texts: Sequence[str]) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def count_examples(self, examples: Sequence[Sequence[Mapping[str, str]]]) -> list[ExampleCount]:
        """Each example framed by the per-message overhead (contents counted in one batch)."""
        counts = self.count_many([m["content"] for messages in examples for m in messages])
        out, at = [], 0
        for messages in examples:
            out.append(_overhead_example(messages, counts[at:at + len(messages)], self.header_tokens))
            at += len(messages)
        return out


class CharEstimateCounter(_OverheadCounter):
    """Character-based estimate: ceil(len(text) × (1 + ESTIMATE_MARGIN) / 4) tokens per text,
    `ESTIMATE_OVERHEAD_TOKENS` per message."""

    method = ESTIMATE_METHOD
    header_tokens = ESTIMATE_HEADER_TOKENS

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Estimated tokens of each text, margin included."""
        # Integer arithmetic: ceil(chars × 110 / 400) without float rounding at exact multiples.
        num, den = round((1 + ESTIMATE_MARGIN) * 100), CHARS_PER_TOKEN * 100
        return [-(-len(t) * num // den) for t in texts]


def _tokenizer_file(path: str | Path) -> Path:
    given = Path(path)
    file = given / "tokenizer.json" if given.is_dir() else given
    if not file.is_file():
        where = f"directory {str(given)!r} has no tokenizer.json" if given.is_dir() else f"{str(given)!r} does not exist"
        raise TokenizerLoadError(f"tokenizer {where}")
    return file


def _load_tokenizer(file: Path) -> Any:
    """The `tokenizers` tokenizer of `file`, with the special tokens its directory's
    `tokenizer_config.json` names added as transformers adds them on loading (an `eos_token` such
    as `<|im_end|>` that the vocabulary lacks becomes one token, not pieces of text)."""
    from tokenizers import AddedToken, Tokenizer  # imported on use: only builds that name a tokenizer pay for it

    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust loader raises a bare Exception on bad JSON
        raise TokenizerLoadError(f"tokenizer {str(file)!r} cannot be loaded: {exc}") from exc
    try:
        config = tokenizer_config(file.parent)
    except ChatTemplateError as exc:
        raise TokenizerLoadError(str(exc)) from exc
    wanted: list[Any] = [v for _, v in sorted((config.get("added_tokens_decoder") or {}).items(),
                                              key=lambda kv: int(kv[0]))]
    wanted += [config.get(name) for name in SPECIAL_TOKEN_NAMES]
    for key in ("extra_special_tokens", "additional_special_tokens"):
        extra = config.get(key)
        wanted += extra if isinstance(extra, list) else []
    have_text = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    tokens = []
    for value in wanted:
        if isinstance(value, str) and value not in have_text:
            tokens.append(AddedToken(value, special=True, normalized=False))
        elif isinstance(value, Mapping) and isinstance(value.get("content"), str) and value["content"] not in have_text:
            fields = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in value}
            tokens.append(AddedToken(value["content"], **{"special": True, "normalized": False, **fields}))
        else:
            continue
        have_text.add(tokens[-1].content)
    if tokens:
        tokenizer.add_special_tokens(tokens)
    return tokenizer


class TokenizerCounter(_OverheadCounter):
    """Counts with a Hugging Face `tokenizers` tokenizer loaded from a local file, framing each
    message with the fixed overhead (for a tokenizer without a chat template).

    `path` is a `tokenizer.json` or a directory containing one (an HF tokenizer directory).
    Nothing is downloaded.
    """

    def __init__(self, path: str | Path) -> None:
        file = _tokenizer_file(path)
        self._tokenizer = _load_tokenizer(file)
        self._method = str(file)

    @property
    def method(self) -> str:
        """The tokenizer file the counts come from."""
        return self._method

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, without the tokenizer's special tokens (the template adds its own)."""
        if not texts:
            return []
        return [len(enc.ids) for enc in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]


class ChatTemplateCounter:
    """Counts examples rendered through the tokenizer's own chat template, as TRL's
    `assistant_only_loss` sees them (see the module docstring).

    `path` is a tokenizer directory (or its `tokenizer.json`); the template is looked up next to
    the `tokenizer.json` (`find_chat_template`), compiled once and rendered per example; the
    rendered texts of a batch are encoded in one `encode_batch` call.
    """

    counting: Counting = "chat_template"
    message_overhead_tokens: int | None = None

    def __init__(self, path: str | Path, source: ChatTemplateSource | None = None) -> None:
        file = _tokenizer_file(path)
        self._tokenizer = _load_tokenizer(file)
        self._method = str(file)
        try:
            found = source if source is not None else find_chat_template(file.parent)
            template = compile_chat_template(found.text) if found is not None else None
        except ChatTemplateError as exc:
            raise TokenizerLoadError(f"tokenizer {str(file)!r}: {exc}") from exc
        if found is None or template is None:
            raise TokenizerLoadError(f"no chat template next to {str(file)!r} ({CHAT_TEMPLATE_FILE} or "
                                     f"chat_template in {TOKENIZER_CONFIG_FILE})")
        self._source = found
        self._template = template

    @property
    def method(self) -> str:
        """The tokenizer file the counts come from."""
        return self._method

    @property
    def chat_template(self) -> str:
        """Where the chat template came from."""
        return self._source.origin

    def render(self, messages: Sequence[Mapping[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """One example rendered through the template, and its generation blocks' character spans."""
        return render_with_generation_spans(self._template, messages, self._source.special_tokens)

    def count_examples(self, examples: Sequence[Sequence[Mapping[str, str]]]) -> list[ExampleCount]:
        """Each example rendered, batch-encoded, and its trained tokens marked as transformers does."""
        if not examples:
            return []
        rendered = [self.render(messages) for messages in examples]
        encodings = self._tokenizer.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        out = []
        for messages, (text, spans), enc in zip(examples, rendered, encodings, strict=True):
            trained, per_block = trained_spans(enc, spans)
            out.append(ExampleCount(len(enc.ids), tuple(trained), tuple(_content_tokens(messages, text, enc)),
                                    tuple(per_block)))
        return out


def _content_tokens(messages: Sequence[Mapping[str, str]], text: str, encoding: Any) -> list[int]:
    """Tokens of each user/assistant content where it sits in the rendered text (found in order;
    a content the template rewrote, and so cannot be found verbatim, is left out)."""
    out, at = [], 0
    for message in messages:
        content = message["content"]
        where = text.find(content, at) if content else -1
        if where < 0:
            continue
        at = where + len(content)
        if message["role"] == "system":
            continue
        first, last = encoding.char_to_token(where), encoding.char_to_token(at - 1)
        if first is not None and last is not None:
            out.append(last - first + 1)
    return out


def token_counter(tokenizer: str | Path | None = None) -> TokenCounter:
    """The counter for a build: the named tokenizer through its chat template when its directory
    has one, the tokenizer with the per-message overhead when not, the character estimate when no
    tokenizer is named."""
    if tokenizer is None or str(tokenizer) == "":
        return CharEstimateCounter()
    file = _tokenizer_file(tokenizer)
    try:
        source = find_chat_template(file.parent)
    except ChatTemplateError as exc:
        raise TokenizerLoadError(f"tokenizer {str(file)!r}: {exc}") from exc
    return ChatTemplateCounter(file, source) if source is not None else TokenizerCounter(file)


# --------------------------------------------------------------------------------------------
# Results


class Percentiles(BaseModel):
    """Nearest-rank percentiles of a set of token lengths (0 everywhere for an empty set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(ge=0)
    p50: int = 0
    p95: int = 0
    p99: int = 0
    max: int = 0
    mean: float = 0.0


class Truncation(BaseModel):
    """What training at `max_length` would cut (sequences truncated at the end, keeping the start,
    as TRL and Axolotl do)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int = Field(ge=1)
    examples_over: int = Field(ge=0, description="Examples longer than max_length.")
    assistant_tokens_cut: int = Field(ge=0, description="Trained (assistant) tokens at positions ≥ max_length.")
    assistant_tokens_total: int = Field(ge=0, description="Trained (assistant) tokens, turn ends included.")

    @property
    def assistant_cut_rate(self) -> float:
        """Share of all assistant tokens that would not be trained."""
        return self.assistant_tokens_cut / self.assistant_tokens_total if self.assistant_tokens_total else 0.0


class LengthReport(BaseModel):
    """Token lengths of a set of chat examples and the lengths recommended to train them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(description='The estimate label ("estimate: chars/4 + 10%") or the tokenizer path.')
    counting: Counting = Field(
        default="message_overhead",
        description="chat_template: each example rendered through the tokenizer's chat template; "
        "message_overhead: contents plus message_overhead_tokens per message.")
    chat_template: str | None = Field(default=None, description="Where the chat template came from.")
    message_overhead_tokens: int | None = Field(
        default=MESSAGE_OVERHEAD_TOKENS, description="Template tokens counted per message (None: the chat template "
        "was rendered instead).")
    estimate_margin: float | None = Field(default=None, description="Margin added to chars/4 (estimate only).")
    assistant_tokens: int = Field(default=0, ge=0, description="Trained (assistant) tokens, turn ends included.")
    examples: Percentiles = Field(description="Whole examples: system + all turns + template tokens.")
    turns: Percentiles = Field(description="Single user/assistant messages.")
    assistant_turns: Percentiles = Field(description="Trained tokens of each assistant turn, turn end included.")
    recommended_sequence_len: int = Field(
        description="Axolotl sequence_len: the longest example rounded up to a multiple of 64 (Axolotl drops or "
        "truncates longer samples, so this keeps every example whole).")
    recommended_max_length: int = Field(
        description="TRL SFTConfig max_length: the longest example rounded up to a multiple of 64 (TRL pads per "
        "batch, so a limit that cuts nothing costs nothing on ordinary batches).")
    truncation: Truncation | None = Field(default=None, description="Cut at a configured max_length, if one was given.")


def round_up(value: int, multiple: int = LENGTH_MULTIPLE) -> int:
    """`value` rounded up to a positive multiple of `multiple` (at least one multiple)."""
    return max(multiple, -(-value // multiple) * multiple)


def percentiles(values: Sequence[int] | array) -> Percentiles:
    """Nearest-rank p50/p95/p99 (the smallest value with at least p% of values at or below it),
    max and mean of `values`."""
    n = len(values)
    if n == 0:
        return Percentiles(count=0)
    ordered = sorted(values)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p / 100 * n) - 1)]

    return Percentiles(count=n, p50=rank(50), p95=rank(95), p99=rank(99), max=ordered[-1], mean=round(sum(ordered) / n, 1))


# --------------------------------------------------------------------------------------------
# The accumulator


class LengthStats:
    """Streaming token-length statistics: `add(messages)` per example, then `result()`.

    Examples are counted `BATCH` at a time (one tokenizer call per batch). Kept per example: its
    total length and the [start, end) token positions of its trained (assistant) tokens — enough
    to answer `over(max_length)` for any limit afterwards.
    """

    def __init__(self, counter: TokenCounter | None = None) -> None:
        self.counter: TokenCounter = counter if counter is not None else CharEstimateCounter()
        self._pending: list[Sequence[Mapping[str, str]]] = []
        self._example_lengths = array("I")
        self._turn_lengths = array("I")
        self._assistant_lengths = array("I")
        # Flat (example index, start, end) triples of trained token spans.
        self._spans = array("I")

    def add(self, messages: Sequence[Mapping[str, str]]) -> None:
        """Count one example (messages as the messages export writes them), in the next batch."""
        self._pending.append(messages)
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for count in self.counter.count_examples(pending):
            index = len(self._example_lengths)
            self._example_lengths.append(count.length)
            self._turn_lengths.extend(count.turns)
            self._assistant_lengths.extend(count.assistant_turns)
            for start, end in count.trained:
                self._spans.extend((index, start, end))

    @property
    def lengths(self) -> list[int]:
        """The length of every example counted so far, in the order added."""
        self._flush()
        return self._example_lengths.tolist()

    def over(self, max_length: int) -> Truncation:
        """How many examples exceed `max_length` tokens and how many trained tokens sit at
        positions ≥ `max_length` (so would be cut and never trained)."""
        if max_length < 1:
            raise ValueError(f"max_length {max_length!r} must be at least 1")
        self._flush()
        spans = self._spans
        cut = total = 0
        for i in range(0, len(spans), 3):
            start, end = spans[i + 1], spans[i + 2]
            total += end - start
            cut += max(0, end - max(start, max_length))
        return Truncation(
            max_length=max_length,
            examples_over=sum(1 for n in self._example_lengths if n > max_length),
            assistant_tokens_cut=cut,
            assistant_tokens_total=total,
        )

    def result(self, max_length: int | None = None) -> LengthReport:
        """The report so far; with `max_length`, also what that limit would cut."""
        self._flush()
        examples = percentiles(self._example_lengths)
        spans = self._spans
        recommended = round_up(examples.max) if examples.count else DEFAULT_SEQUENCE_LEN
        return LengthReport(
            method=self.counter.method,
            counting=self.counter.counting,
            chat_template=self.counter.chat_template,
            message_overhead_tokens=self.counter.message_overhead_tokens,
            estimate_margin=ESTIMATE_MARGIN if self.counter.method == ESTIMATE_METHOD else None,
            assistant_tokens=sum(spans[i + 2] - spans[i + 1] for i in range(0, len(spans), 3)),
            examples=examples,
            turns=percentiles(self._turn_lengths),
            assistant_turns=percentiles(self._assistant_lengths),
            recommended_sequence_len=recommended,
            recommended_max_length=recommended,
            truncation=self.over(max_length) if max_length is not None else None,
        )
