"""Token lengths of the chat examples a training file exports, and the sequence length to train
them with.

Two ways to count, behind one `TokenCounter` protocol:

* `TokenizerCounter` — the base model's own tokenizer, loaded from a local `tokenizer.json` (or
  an HF tokenizer directory holding one) with the `tokenizers` package. Reported as its path.
* `CharEstimateCounter` — when no tokenizer is named: ``ceil(characters / 4)`` per text, the
  usual rule of thumb for English BPE vocabularies. Reported as ``"estimate: chars/4"``,
  everywhere a figure from it is shown, so nobody mistakes it for a measurement.

An example is counted as the messages export renders it (system + every turn), each message
framed by the chat template. The template's own tokens are not in the data, so each message adds
a fixed overhead modelled on ChatML, the template Axolotl falls back to:
``<|im_start|>{role}\\n`` before the content (3 tokens: marker, role, newline) and
``<|im_end|>\\n`` after it (2 tokens) — `MESSAGE_HEADER_TOKENS` + `MESSAGE_FOOTER_TOKENS` = 5.
Llama-3-style templates spend about as much (`<|start_header_id|>role<|end_header_id|>\\n\\n` …
`<|eot_id|>`), so the figure is close for the common bases. Contents are tokenised one message
at a time (a BPE merge never crosses a template marker, so this matches the rendered text).

`LengthStats` is a streaming accumulator: `add(messages)` per example, `result()` at the end.
It keeps a few integers per example (its length and where its assistant turns sit), not text.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

#: Method label of the character-based estimate (shown wherever its figures are reported).
ESTIMATE_METHOD = "estimate: chars/4"
#: Characters per token of the estimate.
CHARS_PER_TOKEN = 4

#: Template tokens before a message's content (ChatML: `<|im_start|>`, role, newline).
MESSAGE_HEADER_TOKENS = 3
#: Template tokens after a message's content (ChatML: `<|im_end|>`, newline).
MESSAGE_FOOTER_TOKENS = 2
#: Template tokens per message, header + footer.
MESSAGE_OVERHEAD_TOKENS = MESSAGE_HEADER_TOKENS + MESSAGE_FOOTER_TOKENS

#: Recommended lengths are rounded up to a multiple of this. 64 rather than 256: these
#: conversations run to about 1–3K tokens, where rounding to 256 can add up to a quarter of
#: padding (Axolotl pads every packed sample to `sequence_len`), while 64 is still a multiple of
#: the 8/16/64 alignments GPU matmul kernels favour.
LENGTH_MULTIPLE = 64

#: Default `sequence_len` when no length statistics are known.
DEFAULT_SEQUENCE_LEN = 2048


class TokenizerLoadError(ValueError):
    """A tokenizer path that does not name a loadable `tokenizer.json`."""


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of texts. `method` says how (a tokenizer path, or the estimate label)."""

    @property
    def method(self) -> str:
        """How the counts are made, for reports."""
        ...

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text (no special tokens added)."""
        ...


class CharEstimateCounter:
    """Character-based estimate: ceil(len(text) / 4) tokens per text."""

    method = ESTIMATE_METHOD

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Estimated tokens of each text."""
        return [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]


class TokenizerCounter:
    """Counts with a Hugging Face `tokenizers` tokenizer loaded from a local file.

    `path` is a `tokenizer.json` or a directory containing one (an HF tokenizer directory).
    Nothing is downloaded.
    """

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer  # imported on use: only builds that name a tokenizer pay for it

        given = Path(path)
        file = given / "tokenizer.json" if given.is_dir() else given
        if not file.is_file():
            where = f"directory {str(given)!r} has no tokenizer.json" if given.is_dir() else f"{str(given)!r} does not exist"
            raise TokenizerLoadError(f"tokenizer {where}")
        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust loader raises a bare Exception on bad JSON
            raise TokenizerLoadError(f"tokenizer {str(file)!r} cannot be loaded: {exc}") from exc
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


def token_counter(tokenizer: str | Path | None = None) -> TokenCounter:
    """The counter for a build: the named tokenizer, or the character estimate when none is named."""
    return CharEstimateCounter() if tokenizer is None or str(tokenizer) == "" else TokenizerCounter(tokenizer)


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
    assistant_tokens_cut: int = Field(ge=0, description="Assistant content tokens at positions ≥ max_length.")
    assistant_tokens_total: int = Field(ge=0)

    @property
    def assistant_cut_rate(self) -> float:
        """Share of all assistant tokens that would not be trained."""
        return self.assistant_tokens_cut / self.assistant_tokens_total if self.assistant_tokens_total else 0.0


class LengthReport(BaseModel):
    """Token lengths of a set of chat examples and the lengths recommended to train them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(description='"estimate: chars/4" or the tokenizer path.')
    message_overhead_tokens: int = Field(description="Template tokens counted per message.")
    examples: Percentiles = Field(description="Whole examples: system + all turns + template overhead.")
    turns: Percentiles = Field(description="Single user/assistant messages, with template overhead.")
    assistant_turns: Percentiles = Field(description="Assistant messages only, with template overhead.")
    recommended_sequence_len: int = Field(description="Axolotl sequence_len: p99 rounded up to a multiple of 64.")
    recommended_max_length: int = Field(
        description="TRL SFTConfig max_length: the longest example rounded up to a multiple of 64 (TRL pads per "
        "batch, so a limit that cuts nothing costs nothing on ordinary batches)."
    )
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

    Kept per example: its total length and the (start, end) token positions of its assistant
    contents — enough to answer `over(max_length)` for any limit afterwards.
    """

    def __init__(self, counter: TokenCounter | None = None) -> None:
        self.counter: TokenCounter = counter if counter is not None else CharEstimateCounter()
        self._example_lengths = array("I")
        self._turn_lengths = array("I")
        self._assistant_lengths = array("I")
        # Flat (example index, start, end) triples of assistant content spans.
        self._spans = array("I")

    def add(self, messages: Sequence[Mapping[str, str]]) -> int:
        """Count one example (messages as the messages export writes them); returns its length."""
        counts = self.counter.count_many([m["content"] for m in messages])
        index = len(self._example_lengths)
        position = 0
        for message, tokens in zip(messages, counts, strict=True):
            start = position + MESSAGE_HEADER_TOKENS
            position = start + tokens + MESSAGE_FOOTER_TOKENS
            framed = tokens + MESSAGE_OVERHEAD_TOKENS
            if message["role"] != "system":
                self._turn_lengths.append(framed)
            if message["role"] == "assistant":
                self._assistant_lengths.append(framed)
                self._spans.extend((index, start, start + tokens))
        self._example_lengths.append(position)
        return position

    def over(self, max_length: int) -> Truncation:
        """How many examples exceed `max_length` tokens and how many assistant content tokens sit
        at positions ≥ `max_length` (so would be cut and never trained)."""
        if max_length < 1:
            raise ValueError(f"max_length {max_length!r} must be at least 1")
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
        examples = percentiles(self._example_lengths)
        return LengthReport(
            method=self.counter.method,
            message_overhead_tokens=MESSAGE_OVERHEAD_TOKENS,
            examples=examples,
            turns=percentiles(self._turn_lengths),
            assistant_turns=percentiles(self._assistant_lengths),
            recommended_sequence_len=round_up(examples.p99) if examples.count else DEFAULT_SEQUENCE_LEN,
            recommended_max_length=round_up(examples.max) if examples.count else DEFAULT_SEQUENCE_LEN,
            truncation=self.over(max_length) if max_length is not None else None,
        )
