"""Train/validation leakage and diversity of a training file's chat examples.

Computed from the examples as the messages export writes them, looking only at what a model
learns from: the assistant turns.

**Overlap** (validation measured against train):

* *verbatim sentences* — assistant sentences of validation found word for word (after
  `dedup.normalise_text`: NFKC, case-folded, whitespace collapsed) among train's assistant
  sentences. Sentences shorter than `min_sentence_words` words ("I understand.") are skipped:
  they recur in any conversation set and say nothing about leakage.
* *exact duplicate turns* — a whole (normalised) assistant turn of validation identical to one
  in train. Blocking by default: the validation loss on such a turn measures memorisation.
  Turns shorter than `min_turn_words` words are skipped for the same reason as short sentences.
* *near-duplicate turns* — validation turns (not exact duplicates) whose MinHash estimate of
  word-shingle Jaccard similarity with some train turn reaches `near_duplicate_jaccard`; the
  shingling is `dedup.word_shingles`, the signature datasketch's seeded MinHash (`core.minhash`; 64
  permutations by default: an estimate within about ±0.05 of the true similarity, at 256 bytes
  per turn), the candidates come from LSH banding.

**Diversity** (train and validation together, overall and per persona × arc × topic cell):

* *distinct-1 / distinct-2* — distinct word unigrams / bigrams over all assistant words
  (bigrams do not cross turns). Both fall as a corpus grows, so compare like with like.
* *template rate* — assistant sentences with capitalised names, money and numbers masked
  (`mask_template`), then distinct masked sentences / all sentences: 1.0 means no sentence is a
  fill-in-the-blanks copy of another; the most repeated template is reported with its count.

`LeakageStats` is a streaming accumulator (`add(messages, split, …)` per example in any order,
`result()` at the end). It keeps hashes and word ids (the distinct words once, as the vocabulary)
in flat arrays, a few bytes per sentence and turn, never the text: the train turns' MinHash
sketches and the templates' text go to a temporary file (read back once in `result`, the text
only of the templates a report names).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from lora_assets.core.aggregate import LEGACY_KEY
from lora_assets.core.dedup import BandIndex, TargetTexts, normalise_text, normalise_texts, shingle_hashes
from lora_assets.core.diversity import CellCounters, template_figures
from lora_assets.core.minhash import MinHasher, crc32_hashes

Split = Literal["train", "validation"]

_WORD = re.compile(r"\w+")
# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace,
# or at a line break: `(?<=[.!?])["')\]]*\s+|\n+`, written to start with the class of a separator's
# first character (the engine then skips to candidates; tests pin it to that form).
_SENTENCE_END = re.compile(r"""[\s"')\]](?:(?<=[.!?]["')\]])["')\]]*\s+|(?<=[.!?]\s)\s*|(?<=\n)\n*)""")
# Each pattern starts with a character class, so the regex engine jumps from candidate to
# candidate instead of trying every position (`\b` first defeats that: 2-3x the time over a
# member's text); the lookbehind right after it is the `\b` it replaces. Read as:
#   _MONEY  = [$€£]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:[kKmMbB]|thousand|million|billion)\b)?
#             | \b\d[\d,]*(?:\.\d+)?\s?(?:dollars|USD|EUR|GBP)\b
#   _NUMBER = \b\d[\d,]*(?:\.\d+)?(?:\s?%|\s?percent\b|st\b|nd\b|rd\b|th\b|[kK]\b)?
#   _NAME   = \b[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*\b   (a capitalised word, Title case, two letters or
#             more; "I" and acronyms are not names)
# (tests pin them to those forms).
_MONEY = re.compile(
    r"[$€£\d](?:(?<=[$€£])\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:[kKmMbB]|thousand|million|billion)\b)?"
    r"|(?<!\w\d)(?<=\d)[\d,]*(?:\.\d+)?\s?(?:dollars|USD|EUR|GBP)\b)"
)
_NUMBER = re.compile(r"\d(?<!\w\d)[\d,]*(?:\.\d+)?(?:\s?%|\s?percent\b|st\b|nd\b|rd\b|th\b|[kK]\b)?")
_NAME = re.compile(r"[A-Z](?<!\w[A-Z])[a-z]+(?:[-'][A-Z]?[a-z]+)*\b")
_FIRST_WORD = re.compile(r"^\W*\w")
_ADDRESSED = re.compile(r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*,")  # a first word that names the client
_DIGIT = re.compile(r"\d")
# `mask_template`'s kept first name in one match: the leading non-word characters, then `_NAME`'s
# match at the first word character (atomic: the match `_NAME.match` returns, never a shorter
# one), not followed by a comma (`_ADDRESSED` matches exactly then).
_KEPT_FIRST_NAME = re.compile(r"\W*+(?>[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*\b)(?!,)")

#: Rows per LSH band (see `LeakageStats.__init__`).
_BAND_ROWS = 4
#: Train signatures looked up per numpy pass in `_near_matches` (bounds its temporaries).
_QUERY_BLOCK = 1024
#: How many examples of a finding a result keeps for its messages.
EXAMPLES_KEPT = 5


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (split after . ! ? and at line breaks), stripped, empties dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def mask_template(sentence: str) -> str:
    """The sentence as a template: money → <MONEY>, numbers (incl. percentages) → <NUM>,
    capitalised words → <NAME> (the first word only when a comma follows it); then normalised
    (case, whitespace), so "<NAME>" reads "<name>"."""
    masked = sentence.strip()
    if _DIGIT.search(masked):  # money and numbers both need a digit: most sentences skip both
        masked = _MONEY.sub("<MONEY>", masked)
        masked = _NUMBER.sub("<NUM>", masked)
    # The first word is capitalised anyway: masking it would erase real differences
    # ("Let us…" / "Consider…"), so there a capitalised word counts as a name only when a comma
    # follows — the advisor addressing the client ("David, …"). This also folds "Yes, …" into
    # "Well, …", which only matters when the rest of the sentence is the same template anyway.
    first = _FIRST_WORD.match(masked)
    if first:
        # Only a name starting at the first word character can start before the first word's
        # end; it is kept, and names are masked in what follows it (which starts with a non-word
        # character, as a name ends at \b, so the cut changes no match).
        kept = _NAME.match(masked, first.end() - 1)
        if kept and not _ADDRESSED.match(masked, first.end() - 1):
            return normalise_text(masked[: kept.end()] + _NAME.sub("<NAME>", masked[kept.end() :]))
    return normalise_text(_NAME.sub("<NAME>", masked))


#: Joins a member's sentences for one substitution pass (see `dedup.normalise_texts`): no pattern
#: here matches U+0000 or across it (it is neither whitespace nor a word character, so `\b` and
#: `\s` see a text's end there).
_SEP = "\x00"


def mask_templates(sentences: Sequence[str]) -> list[str]:
    """`mask_template` of each sentence (the same strings; tested), with the money, number and
    name substitutions and the normalisation each made once over all the sentences joined, not
    once per sentence."""
    joined = _SEP.join(s.strip() for s in sentences)
    if not sentences or joined.count(_SEP) != len(sentences) - 1:  # a sentence holds the separator
        return [mask_template(s) for s in sentences]
    if _DIGIT.search(joined):
        joined = _NUMBER.sub("<NUM>", _MONEY.sub("<MONEY>", joined))
    heads: list[str] = []
    rests: list[str] = []
    for masked in joined.split(_SEP):
        # The first word stays unless it addresses the client (as in `mask_template`).
        kept = _KEPT_FIRST_NAME.match(masked)
        if kept:
            heads.append(masked[: kept.end()])
            rests.append(masked[kept.end() :])
        else:
            heads.append("")
            rests.append(masked)
    named = _NAME.sub("<NAME>", _SEP.join(rests)).split(_SEP)
    return normalise_texts([head + rest for head, rest in zip(heads, named, strict=True)])


def _digests_found(queries: bytes, pool: bytes) -> int:
    """How many of the 16-byte digests back to back in `queries` occur in `pool` (each digest as two
    64-bit words: equal words are equal bytes). Sorting and bisecting the words measured 9x faster
    than `np.isin` on a structured dtype (27 -> 3 ms for 19,000 train sentences)."""
    words = np.frombuffer(pool, dtype=np.uint64).reshape(-1, 2)
    asked = np.frombuffer(queries, dtype=np.uint64).reshape(-1, 2)
    ordered = words[np.lexsort((words[:, 1], words[:, 0]))]
    distinct = np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1)]
    first, second = ordered[distinct, 0], ordered[distinct, 1]
    left = np.searchsorted(first, asked[:, 0], side="left")
    right = np.searchsorted(first, asked[:, 0], side="right")
    single = right - left == 1
    found = int(np.count_nonzero(second[left[single]] == asked[single, 1]))
    # Distinct digests sharing their first word: possible, never seen; compared one by one.
    for i in np.flatnonzero(right - left > 1).tolist():
        found += bool((second[left[i] : right[i]] == asked[i, 1]).any())
    return found


def _digest(text: str) -> bytes:
    # 16 bytes: collisions are negligible at any dataset size, and half the memory of SHA-256.
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _cell_key(cell: Sequence[str | None] | None) -> tuple[str, str, str]:
    if cell is None:
        return (LEGACY_KEY, LEGACY_KEY, LEGACY_KEY)
    persona, arc, topic = cell
    return (persona or LEGACY_KEY, arc or LEGACY_KEY, topic or LEGACY_KEY)


# --------------------------------------------------------------------------------------------
# Results


class LeakageThresholds(BaseModel):
    """When leakage/diversity figures become problems. `None` switches a rule off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_exact_duplicate_turns: int | None = Field(
        default=0, ge=0, description="Blocking above this many validation assistant turns found verbatim in train."
    )
    block_verbatim_sentence_rate: float | None = Field(
        default=None, ge=0, le=1, description="Blocking above this share of validation sentences found verbatim in train."
    )
    warn_verbatim_sentence_rate: float | None = Field(default=0.10, ge=0, le=1)
    warn_near_duplicate_turn_rate: float | None = Field(default=0.05, ge=0, le=1)
    min_template_rate: float | None = Field(
        default=0.5, ge=0, le=1, description="Warn when distinct masked sentences / sentences falls below this."
    )
    max_top_template_share: float | None = Field(
        default=0.02, ge=0, le=1, description="Warn when one template is more than this share of all sentences…"
    )
    min_top_template_count: int = Field(default=5, ge=1, description="…and occurs at least this often.")
    min_cell_template_rate: float | None = Field(default=0.5, ge=0, le=1)
    min_cell_sentences: int = Field(default=20, ge=1, description="Cells with fewer sentences are not judged.")
    min_distinct_2: float | None = Field(
        default=None, ge=0, le=1, description="Off by default: distinct-2 falls with corpus size, so set it per dataset size."
    )


class DuplicateTurn(BaseModel):
    """A validation assistant turn that also occurs in train."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validation_conversation_id: str
    validation_turn: int = Field(description="1-based index among the example's assistant turns.")
    train_conversation_id: str
    similarity: float = 1.0


class Overlap(BaseModel):
    """Validation measured against train."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validation_sentences: int = 0
    verbatim_sentences: int = 0
    validation_turns: int = 0
    short_turns_skipped: int = 0
    exact_duplicate_turns: int = 0
    near_duplicate_turns: int = 0
    near_duplicate_jaccard: float
    exact_examples: list[DuplicateTurn] = Field(default_factory=list)
    near_examples: list[DuplicateTurn] = Field(default_factory=list)

    @property
    def verbatim_rate(self) -> float:
        """Share of validation sentences found verbatim in train."""
        return self.verbatim_sentences / self.validation_sentences if self.validation_sentences else 0.0

    @property
    def near_duplicate_rate(self) -> float:
        """Share of compared validation turns that near-duplicate a train turn."""
        return self.near_duplicate_turns / self.validation_turns if self.validation_turns else 0.0


class Diversity(BaseModel):
    """Lexical and template diversity of a set of assistant turns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversations: int = 0
    # Words (the diversity measures count words, not tokenizer tokens); versions recorded before
    # the rename say `assistant_tokens`.
    assistant_words: int = Field(default=0, validation_alias=AliasChoices("assistant_words", "assistant_tokens"))
    distinct_1: float = 0.0
    distinct_2: float = 0.0
    sentences: int = 0
    distinct_templates: int = 0
    top_template: str | None = None
    top_template_count: int = 0

    @property
    def template_rate(self) -> float:
        """Distinct masked sentences / all sentences (1.0 when there are none)."""
        return self.distinct_templates / self.sentences if self.sentences else 1.0


class CellDiversity(Diversity):
    """`Diversity` of one persona × arc × topic cell."""

    persona: str
    arc: str
    topic: str


class LeakageReport(BaseModel):
    """Overlap between the splits and diversity of the assistant turns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_examples: int = 0
    validation_examples: int = 0
    min_sentence_words: int
    min_turn_words: int
    overlap: Overlap
    diversity: Diversity
    cells: list[CellDiversity] = Field(default_factory=list)

    def problems(self, thresholds: LeakageThresholds | None = None) -> tuple[list[str], list[str]]:
        """(blocking, warnings): readable findings under `thresholds` (defaults when None)."""
        t = thresholds or LeakageThresholds()
        blocking: list[str] = []
        warnings: list[str] = []
        o = self.overlap

        def examples(items: list[DuplicateTurn]) -> str:
            shown = "; ".join(
                f"validation {d.validation_conversation_id} turn {d.validation_turn} ~ train {d.train_conversation_id}"
                + ("" if d.similarity == 1.0 else f" ({d.similarity:.2f})")
                for d in items
            )
            return f" (e.g. {shown})" if shown else ""

        if t.max_exact_duplicate_turns is not None and o.exact_duplicate_turns > t.max_exact_duplicate_turns:
            blocking.append(
                f"{o.exact_duplicate_turns} validation assistant turn(s) occur verbatim in train "
                f"(allowed {t.max_exact_duplicate_turns}){examples(o.exact_examples)}: the validation loss would "
                "measure memorisation"
            )
        rate = o.verbatim_rate
        verbatim = (
            f"{o.verbatim_sentences} of {o.validation_sentences} validation assistant sentences ({rate:.1%}) occur "
            "verbatim in train"
        )
        if t.block_verbatim_sentence_rate is not None and rate > t.block_verbatim_sentence_rate:
            blocking.append(f"{verbatim} (blocking above {t.block_verbatim_sentence_rate:.1%})")
        elif t.warn_verbatim_sentence_rate is not None and rate > t.warn_verbatim_sentence_rate:
            warnings.append(f"{verbatim} (warning above {t.warn_verbatim_sentence_rate:.1%})")
        if t.warn_near_duplicate_turn_rate is not None and o.near_duplicate_rate > t.warn_near_duplicate_turn_rate:
            warnings.append(
                f"{o.near_duplicate_turns} of {o.validation_turns} validation assistant turns ({o.near_duplicate_rate:.1%}) "
                f"near-duplicate a train turn (MinHash Jaccard ≥ {o.near_duplicate_jaccard:g}; warning above "
                f"{t.warn_near_duplicate_turn_rate:.1%}){examples(o.near_examples)}"
            )

        d = self.diversity
        if t.min_template_rate is not None and d.sentences and d.template_rate < t.min_template_rate:
            warnings.append(
                f"template rate {d.template_rate:.2f} ({d.distinct_templates} distinct masked sentences of "
                f"{d.sentences}) is below {t.min_template_rate:g}: answers are fill-in-the-blanks copies"
            )
        if (
            t.max_top_template_share is not None
            and d.sentences
            and d.top_template_count >= t.min_top_template_count
            and d.top_template_count / d.sentences > t.max_top_template_share
        ):
            warnings.append(
                f"one template makes up {d.top_template_count / d.sentences:.1%} of assistant sentences "
                f"({d.top_template_count}×): {d.top_template!r}"
            )
        if t.min_distinct_2 is not None and d.assistant_words and d.distinct_2 < t.min_distinct_2:
            warnings.append(f"distinct-2 {d.distinct_2:.3f} is below {t.min_distinct_2:g}")
        if t.min_cell_template_rate is not None:
            low = sorted(
                (c for c in self.cells if c.sentences >= t.min_cell_sentences and c.template_rate < t.min_cell_template_rate),
                key=lambda c: (c.template_rate, c.persona, c.arc, c.topic),
            )
            if low:
                shown = ", ".join(f"{c.persona} × {c.arc} × {c.topic} ({c.template_rate:.2f})" for c in low[:EXAMPLES_KEPT])
                more = f" and {len(low) - EXAMPLES_KEPT} more" if len(low) > EXAMPLES_KEPT else ""
                warnings.append(
                    f"{len(low)} persona × arc × topic cell(s) have a template rate below {t.min_cell_template_rate:g}: "
                    f"{shown}{more}"
                )
        return blocking, warnings


# --------------------------------------------------------------------------------------------
# Accumulators


def _check_split(split: str) -> None:
    if split not in ("train", "validation"):
        raise ValueError(f"split {split!r}: must be 'train' or 'validation'")


@dataclass(frozen=True)
class ExampleMeasure:
    """What one example adds to its split (`LeakageStats.measure`, then `record`): the digests
    of its sentences long enough to compare, its compared turns (index, digest) with their MinHash
    signatures (one row each), and how many turns were too short to compare."""

    sentences: bytes  # 16-byte digests back to back
    turns: list[tuple[int, bytes]]
    #: The compared turns' shingle hashes back to back (uint32 each; bytes, not an array: a build
    #: spools a measure per member, and pickling an array costs several times its size), and how
    #: many each turn has: their MinHash signatures are computed in `record`, many turns at once.
    shingle_hashes: bytes
    shingle_counts: tuple[int, ...]
    short_turns: int


class _Vocabulary(dict[str, int]):
    """Word → id, a new word getting the next id when it is first looked up: a known word costs
    one lookup in C (most words of a member are known), only a new one a Python call."""

    def __missing__(self, word: str) -> int:
        self[word] = new = len(self)
        return new


class _PendingTurns:
    """Shingle hashes of recorded turns waiting for their signatures (one numpy pass per block of
    turns instead of one per example)."""

    def __init__(self) -> None:
        self.hashes = bytearray()
        self.counts = array("q")

    def add(self, measured: ExampleMeasure) -> None:
        self.hashes += measured.shingle_hashes
        self.counts.extend(measured.shingle_counts)

    def __len__(self) -> int:
        return len(self.counts)

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, bounds) of the pending turns, which are then no longer pending."""
        hashes = np.frombuffer(bytes(self.hashes), dtype=np.uint32)
        bounds = np.zeros(len(self.counts) + 1, dtype=np.intp)
        np.cumsum(np.frombuffer(self.counts, dtype=np.int64), out=bounds[1:])
        self.hashes, self.counts = bytearray(), array("q")
        return hashes, bounds


class _Spool:
    """The temporary files of a `LeakageStats`: train signatures and template texts, appended."""

    def __init__(self) -> None:
        self.signatures = tempfile.TemporaryFile(prefix="lora-leakage-")
        self.templates = tempfile.TemporaryFile(prefix="lora-templates-")

    def close(self) -> None:
        self.signatures.close()
        self.templates.close()


class LeakageStats:
    """Streaming leakage and diversity accumulator: `add(messages, split, conversation_id=…,
    cell=(persona, arc, topic))` per example, in any order of splits; `result()` at the end."""

    def __init__(
        self,
        *,
        near_duplicate_jaccard: float = 0.8,
        num_perm: int = 64,
        shingle_size: int = 3,
        min_sentence_words: int = 4,
        min_turn_words: int = 8,
        seed: int = 1,
    ) -> None:
        if not 0.0 < near_duplicate_jaccard <= 1.0:
            raise ValueError(f"near_duplicate_jaccard {near_duplicate_jaccard!r} must be in (0, 1]")
        self.near_duplicate_jaccard = near_duplicate_jaccard
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.min_sentence_words = min_sentence_words
        # Matches a text of at least min_sentence_words `\w+` runs, stopping at the last one needed
        # (possessive: a run is never split to make up the count).
        self._enough_words = re.compile(r"(?:\W*+\w++){%d}" % min_sentence_words)
        self.min_turn_words = min_turn_words
        self.seed = seed
        # datasketch's MinHash(num_perm, seed, hashfunc=zlib.crc32), in numpy: CRC-32 instead of
        # the default SHA-1 per shingle is deterministic too, and several times cheaper.
        self._hasher = MinHasher(num_perm, seed, crc32_hashes)
        if num_perm % _BAND_ROWS:
            raise ValueError(f"num_perm {num_perm!r} must be a multiple of {_BAND_ROWS}")
        # Train signatures back to back (num_perm uint32 each: 256 bytes a turn at 64) in a temporary
        # file: the LSH index is built over the much smaller validation side in `result`, and the
        # train side is read back block by block, so it takes no memory however large the file.
        self._spool: _Spool | None = None
        self._train_turns = 0
        # Recorded turns whose signatures are not computed yet, by split (`_flush_signatures`).
        self._pending: dict[str, _PendingTurns] = {"train": _PendingTurns(), "validation": _PendingTurns()}
        self._train_turn_owner: list[str] = []
        # Validation turns: owner, 1-based turn index, digest (16 bytes each), signature.
        self._validation_owner: list[str] = []
        self._validation_turn = array("I")
        self._validation_digests = bytearray()
        self._validation_signatures = array("I")
        # Train sentence digests and train turn digests (aligned with `_train_turn_owner`) back to
        # back, 16 bytes each: a set of bytes objects took ≈ 90 bytes a digest, most of a build's
        # memory per member. Looked up once, in `result`.
        self._train_sentences = bytearray()
        self._validation_sentences = bytearray()
        self._train_turn_digests = bytearray()
        self._short_turns = 0
        self._examples: Counter[str] = Counter()
        self._vocabulary = _Vocabulary()
        self._cell_index: dict[tuple[str, str, str], int] = {}
        self._cells = CellCounters()
        # Every sentence's template, in order: its 64-bit hash and its cell; its text goes to the
        # spool (`_template_lengths` say where), so memory is 12 bytes a sentence, not a dict entry
        # per distinct template.
        self._template_hashes = array("Q")
        self._template_cells = array("I")
        self._template_lengths = array("I")

    def _flush_signatures(self, split: Split) -> None:
        """The pending turns' signatures of `split`: train ones to the spool, validation ones to
        memory (in the order they were recorded)."""
        pending = self._pending[split]
        if not len(pending):
            return
        signatures = self._hasher.signatures_of_hashes(*pending.take()).tobytes()
        if split == "train":
            self._files().signatures.write(signatures)
        else:
            self._validation_signatures.frombytes(signatures)

    def _files(self) -> _Spool:
        if self._spool is None:
            self._spool = _Spool()
        return self._spool

    def close(self) -> None:
        """Remove the temporary files now (they go when the accumulator is collected anyway)."""
        self._cells.close()
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def add(
        self,
        messages: Sequence[Mapping[str, str]],
        split: Split,
        *,
        conversation_id: str,
        cell: Sequence[str | None] | None = None,
    ) -> None:
        """Take one example's assistant turns into account. `cell` is its (persona, arc, topic)
        keys; None or None keys count as the legacy cell. The same as `record(measure(…), …)`."""
        _check_split(split)
        self.record(self.measure(messages, cell=cell), split, conversation_id=conversation_id)

    def measure(self, messages: Sequence[Mapping[str, str]], *, cell: Sequence[str | None] | None = None,
                known: Mapping[str, tuple[str, list[str]]] | None = None,
                targets: TargetTexts | None = None) -> ExampleMeasure:
        """The first half of `add`, which needs no split: the example's diversity and templates
        are counted now, and what goes to its split is returned, for `record` once the split is
        known (a build measures while it reads its members, then splits). Examples must be
        recorded in the order they were measured. `known`: raw answer → (normalised, words) for
        answers the caller has normalised already (`dedup.TargetTexts.known`); `targets`: the
        caller's `TargetTexts` of the answers (normalised, split into words and shingled once
        for dedup and this check)."""
        key = _cell_key(cell)
        cell_id = self._cell_index.setdefault(key, len(self._cell_index))
        position = targets.index() if targets is not None else {}
        if targets is not None and known is None:
            known = dict(zip(targets.raw, zip(targets.normalised, targets.words, strict=True), strict=True))

        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        words_all: list[str] = []  # every answer's words back to back (diversity)
        ends: list[int] = []  # where each answer's words end in `words_all`
        sentences: list[str] = []
        compared: list[tuple[int, bytes]] = []  # (turn index, digest) of the turns long enough to compare
        hashed: list[np.ndarray] = []  # each compared turn's shingles' CRC-32s
        short = 0
        for turn_index, content in enumerate(answers, start=1):
            done = known.get(content) if known is not None else None
            if done is None:
                text = normalise_text(content)
                words = _WORD.findall(text)
            else:
                text, words = done
            words_all.extend(words)
            ends.append(len(words_all))
            sentences.extend(split_sentences(content))
            if len(words) < self.min_turn_words:
                short += 1
                continue
            compared.append((turn_index, _digest(text)))
            at = position.get(content)
            if at is not None:  # the hashes dedup made, sliced
                hashed.append(targets.turn_hashes(at, self.shingle_size))  # type: ignore[union-attr]
            else:
                hashed.append(shingle_hashes(words, self.shingle_size))
        self._add_templates(sentences, cell_id)
        # Sentences long enough to compare, as digests (all of the example's in one normalisation).
        enough = self._enough_words.match
        counted = [_digest(text) for text in normalise_texts(sentences) if enough(text)]
        # Every compared turn of the example in one numpy pass.
        # The input hashes of `self._hasher` (CRC-32); `record` makes the signatures from them.
        hashes = np.concatenate(hashed).astype(np.uint32, copy=False).tobytes() if compared else b""
        counts = tuple(len(h) for h in hashed)
        self._cells.add_words(cell_id, self._word_ids(words_all), np.array(ends, dtype=np.intp))
        return ExampleMeasure(b"".join(counted), compared, hashes, counts, short)

    def record(self, measured: ExampleMeasure, split: Split, *, conversation_id: str) -> None:
        """The second half of `add`: the measured example's sentences and turns go to `split`."""
        _check_split(split)
        self._examples[split] += 1
        if split == "train":
            self._train_sentences += measured.sentences
            self._pending["train"].add(measured)
            if len(self._pending["train"]) >= _QUERY_BLOCK:
                self._flush_signatures("train")
            for _, digest in measured.turns:
                self._train_turn_digests += digest
                self._train_turn_owner.append(conversation_id)
            self._train_turns += len(measured.turns)
        else:
            self._validation_sentences += measured.sentences
            self._short_turns += measured.short_turns
            for turn_index, digest in measured.turns:
                self._validation_owner.append(conversation_id)
                self._validation_turn.append(turn_index)
                self._validation_digests += digest
            self._pending["validation"].add(measured)
            if len(self._pending["validation"]) >= _QUERY_BLOCK:
                self._flush_signatures("validation")

    def _word_ids(self, words: list[str]) -> np.ndarray:
        """`words` as ids of the vocabulary (a new word gets the next id)."""
        return np.fromiter(map(self._vocabulary.__getitem__, words), dtype=np.uint32, count=len(words))

    def _add_templates(self, sentences: list[str], cell_id: int) -> None:
        """The example's sentences' templates: hashes, cells and lengths in memory, the text to
        the spool (one write per example)."""
        if not sentences:
            return
        encoded = [template.encode() for template in mask_templates(sentences)]
        # 8-byte BLAKE2b digests back to back are the hashes (little-endian uint64 each).
        hashes = array("Q", b"".join([hashlib.blake2b(e, digest_size=8).digest() for e in encoded]))
        if sys.byteorder != "little":
            hashes.byteswap()
        self._template_hashes.extend(hashes)
        self._template_cells.extend([cell_id] * len(encoded))
        self._template_lengths.extend(map(len, encoded))
        self._files().templates.write(b"".join(encoded))

    def _template_texts(self, wanted: set[int]) -> dict[int, str]:
        """The text of the templates at sentence positions `wanted` (read back from the spool)."""
        if not wanted:
            return {}
        ends = np.cumsum(np.frombuffer(self._template_lengths, dtype=np.uint32), dtype=np.int64)
        spool = self._files()
        spool.templates.flush()
        fd = spool.templates.fileno()
        return {int(i): os.pread(fd, int(self._template_lengths[i]), int(ends[i]) - int(self._template_lengths[i])).decode()
                for i in wanted}

    def _near_matches(self) -> dict[int, tuple[float, int]]:
        """Validation turn index → (similarity, train turn index) of its most similar train turn
        at or above the threshold (the earliest train turn among equals).

        LSH banding: a pair is a candidate when all rows of one band agree. Bands of 4 rows (16
        at 64 permutations) make a pair with Jaccard 0.7 a candidate with p ≈ 0.98, one at 0.3
        with p ≈ 0.12; the signature comparison then decides. The index holds the validation
        turns; every train signature is looked up once.
        """
        self._flush_signatures("train")
        self._flush_signatures("validation")
        if not self._validation_owner or not self._train_turns:
            return {}
        index = BandIndex(self.num_perm // _BAND_ROWS, _BAND_ROWS, self.num_perm)
        validation = np.array(self._validation_signatures, dtype=np.uint32).reshape(-1, self.num_perm)
        index.insert_many(validation)
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (validation turn, similarity, train turn)
        for start, block in self._train_blocks():
            rows, candidates = index.pairs(block)
            similarity = np.count_nonzero(validation[candidates] == block[rows], axis=1) / self.num_perm
            close = similarity >= self.near_duplicate_jaccard
            found.append((candidates[close], similarity[close], rows[close] + start))
        if not found:
            return {}
        turn, similarity, owner = (np.concatenate(parts) for parts in zip(*found, strict=True))
        # Per validation turn the most similar train turn; among equals the earliest.
        order = np.lexsort((owner, -similarity, turn))
        firsts = order[np.flatnonzero(np.r_[True, np.diff(turn[order]) != 0])] if len(order) else order
        return {int(turn[i]): (float(similarity[i]), int(owner[i])) for i in firsts}

    def _train_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first train turn, their signatures) `_QUERY_BLOCK` train turns at a time, from the spool."""
        spool = self._files()
        spool.signatures.flush()
        fd = spool.signatures.fileno()
        row = self.num_perm * 4
        for start in range(0, self._train_turns, _QUERY_BLOCK):
            rows = min(_QUERY_BLOCK, self._train_turns - start)
            data = os.pread(fd, rows * row, start * row)
            yield start, np.frombuffer(data, dtype=np.uint32).reshape(rows, self.num_perm)

    def _first_train_owners(self, wanted: set[bytes]) -> dict[bytes, str]:
        """Of the turn digests `wanted`, those some train turn has → the conversation of the first
        such train turn (in the order they were recorded)."""
        owners: dict[bytes, str] = {}
        digests = self._train_turn_digests
        for index in range(len(self._train_turn_owner)):
            digest = bytes(digests[16 * index : 16 * index + 16])
            if digest in wanted and digest not in owners:
                owners[digest] = self._train_turn_owner[index]
        return owners

    def result(self) -> LeakageReport:
        """The report over everything added so far."""
        exact = near = 0
        exact_examples: list[DuplicateTurn] = []
        near_examples: list[DuplicateTurn] = []
        best_match = self._near_matches()
        digests = [bytes(self._validation_digests[16 * i : 16 * i + 16]) for i in range(len(self._validation_owner))]
        train_owner = self._first_train_owners(set(digests))
        for index, (cid, turn, digest) in enumerate(zip(self._validation_owner, self._validation_turn, digests,
                                                        strict=True)):
            owner = train_owner.get(digest)
            if owner is not None:
                exact += 1
                if len(exact_examples) < EXAMPLES_KEPT:
                    exact_examples.append(DuplicateTurn(validation_conversation_id=cid, validation_turn=turn, train_conversation_id=owner))
                continue
            best = best_match.get(index)
            if best is not None:
                near += 1
                if len(near_examples) < EXAMPLES_KEPT:
                    near_examples.append(
                        DuplicateTurn(
                            validation_conversation_id=cid,
                            validation_turn=turn,
                            train_conversation_id=self._train_turn_owner[best[1]],
                            similarity=round(best[0], 3),
                        )
                    )
        verbatim = 0
        if self._validation_sentences and self._train_sentences:
            verbatim = _digests_found(bytes(self._validation_sentences), bytes(self._train_sentences))
        templates = template_figures(np.array(self._template_hashes, dtype=np.uint64),
                                     np.array(self._template_cells, dtype=np.uint32), len(self._cell_index),
                                     self._template_texts)
        cell_ids = self._cell_index
        cell_figures = self._cells.figures()
        return LeakageReport(
            train_examples=self._examples["train"],
            validation_examples=self._examples["validation"],
            min_sentence_words=self.min_sentence_words,
            min_turn_words=self.min_turn_words,
            overlap=Overlap(
                validation_sentences=len(self._validation_sentences) // 16,
                verbatim_sentences=verbatim,
                validation_turns=len(self._validation_owner),
                short_turns_skipped=self._short_turns,
                exact_duplicate_turns=exact,
                near_duplicate_turns=near,
                near_duplicate_jaccard=self.near_duplicate_jaccard,
                exact_examples=exact_examples,
                near_examples=near_examples,
            ),
            diversity=Diversity(**self._cells.overall(templates.overall)),
            cells=[
                CellDiversity(persona=p, arc=a, topic=t, **cell_figures[cell], **templates.cells[cell])
                for (p, a, t), cell in sorted(cell_ids.items())
            ],
        )
