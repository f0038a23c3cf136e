"""Exact distinct-n and sentence-template counts of groups of assistant turns, in a few bytes
per word (the leakage check's diversity figures, per file and per persona × arc × topic cell).

Words are ids of the caller's vocabulary, word pairs one integer code, sentences 64-bit template
hashes counted once at the end (`template_figures`); a Python set took ≈ 90 bytes per code, and
one per cell made a build's memory grow with its members.
"""

from __future__ import annotations

import struct
import tempfile
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

__all__ = ["NARROW_IDS", "CellCounters", "DiversityCounter", "TemplateFigures", "sorted_unique", "template_figures"]

#: Word ids below this fit 16 bits: unigrams are then held as uint16 and bigrams as uint32
#: (first << 16 | second); a vocabulary that outgrows it widens every counter to 32 / 64 bits.
NARROW_IDS = 1 << 16


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """`np.unique(values)` of a 1-D array, by one sort: numpy 2's `np.unique` goes through a hash
    table that measured 10-20x slower here (3.3 ms against 0.2-0.4 ms for 25,000 codes; 7.7 us
    against 3.7 us for 50) and imports numpy.ma on first use."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


#: Codes a counter collects before its first merges: a persona × arc × topic cell gets a few
#: conversations, and a np.unique per conversation per cell was most of its cost (≤ 8 KB a cell).
_MIN_MERGE = 1024


class _DistinctCodes:
    """An exact count of distinct integer codes: a sorted array of the distinct ones plus the
    codes added since, merged in once they are as many as it holds (so amortised O(log n) per
    code, and never more than twice the distinct codes held). A Python set took ≈ 90 bytes per
    code, and one per persona × arc × topic cell made a build's memory grow with its members."""

    __slots__ = ("_distinct", "_pending", "_pending_count")

    def __init__(self, dtype: type[np.unsignedinteger[Any]]) -> None:
        self._distinct = np.empty(0, dtype=dtype)
        self._pending: list[np.ndarray] | None = None
        self._pending_count = 0

    def add(self, codes: list[np.ndarray]) -> None:
        if self._pending is None:
            self._pending = []
        self._pending.extend(codes)
        self._pending_count += sum(len(c) for c in codes)
        if self._pending_count >= max(len(self._distinct), _MIN_MERGE):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._distinct = sorted_unique(np.concatenate([self._distinct, *self._pending]))
        self._pending, self._pending_count = None, 0

    def widen(self, convert: Any) -> None:
        """Re-encode every code held with `convert` (array → array of the wider codes)."""
        self._merge()
        self._distinct = convert(self._distinct)

    def __len__(self) -> int:
        self._merge()
        return len(self._distinct)


def _widen_bigrams(codes: np.ndarray) -> np.ndarray:
    wide = codes.astype(np.uint64)
    return ((wide >> np.uint64(16)) << np.uint64(32)) | (wide & np.uint64(0xFFFF))


class DiversityCounter:
    """Distinct-n and template counts of one group of assistant turns (the whole file, or one
    persona × arc × topic cell): words as ids of the accumulator's vocabulary, word pairs as one
    code (first id, second id), sentences as template ids — exact, and a few bytes each."""

    __slots__ = ("conversations", "tokens", "bigrams_total", "unigrams", "bigrams")

    def __init__(self, *, wide: bool = False) -> None:
        self.conversations = 0
        self.tokens = 0
        self.bigrams_total = 0
        self.unigrams = _DistinctCodes(np.uint32 if wide else np.uint16)
        self.bigrams = _DistinctCodes(np.uint64 if wide else np.uint32)

    def add_turns(self, turns: list[np.ndarray], *, wide: bool) -> None:
        """One example's assistant turns, each its word ids (uint32) in order; bigrams never
        cross a turn boundary. `wide`: some id is ≥ `NARROW_IDS` (after `widen`)."""
        self.tokens += sum(len(ids) for ids in turns)
        self.bigrams_total += sum(max(0, len(ids) - 1) for ids in turns)
        # One array of codes per example (not per turn): what waits for a merge is a few bytes a
        # code, not a numpy object per turn.
        if wide:
            unigrams = turns
            bigrams = [(ids[:-1].astype(np.uint64) << np.uint64(32)) | ids[1:] for ids in turns if len(ids) > 1]
        else:
            unigrams = [ids.astype(np.uint16) for ids in turns]
            bigrams = [(ids[:-1] << np.uint32(16)) | ids[1:] for ids in turns if len(ids) > 1]
        if unigrams:
            self.unigrams.add([np.concatenate(unigrams)])
        if bigrams:
            self.bigrams.add([np.concatenate(bigrams)])

    def widen(self) -> None:
        """From 16-bit word ids to 32-bit ones (the codes held are re-encoded, not re-counted)."""
        self.unigrams.widen(lambda codes: codes.astype(np.uint32))
        self.bigrams.widen(_widen_bigrams)

    def figures(self, templates: dict[str, Any]) -> dict[str, Any]:
        """The group's figures, with its template figures (`template_figures`) merged in."""
        return {
            "conversations": self.conversations,
            "assistant_words": self.tokens,
            "distinct_1": round(len(self.unigrams) / self.tokens, 4) if self.tokens else 0.0,
            "distinct_2": round(len(self.bigrams) / self.bigrams_total, 4) if self.bigrams_total else 0.0,
            **templates,
        }


_RECORD = struct.Struct("<III")  # cell id, word codes, word-pair codes
#: Examples `CellCounters` takes before it makes their word pairs and writes them out.
_PENDING_EXAMPLES = 64


def _narrow_codes(codes: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """64-bit word-pair codes (first id << 32 | second id) mapped one-to-one below 2**32: (first
    << 16 | second) when every id is below 2**16 (a few shifts), else each code's rank among the
    `distinct` codes (a bisection per code: 10x the time for 400,000 codes)."""
    first, second = codes >> np.uint64(32), codes & np.uint64(0xFFFFFFFF)
    if int(first.max()) < NARROW_IDS and int(second.max()) < NARROW_IDS:
        return (first << np.uint64(16)) | second
    return np.searchsorted(distinct, codes)


def _distinct_per_cell(codes: np.ndarray, cells: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """How many distinct codes each cell id has (`cells[i]` owns `codes[i]`), and the distinct
    codes of them all: two sorts of 64-bit keys (cell id, code's rank among the distinct codes),
    several times faster than a lexsort by (cell, code)."""
    distinct = sorted_unique(codes)
    if not len(codes):
        return np.zeros(n_cells, dtype=np.int64), distinct
    ranks = codes if codes.dtype.itemsize <= 4 else _narrow_codes(codes, distinct)  # < 2**32 either way
    keys = sorted_unique((cells.astype(np.uint64) << np.uint64(32)) | ranks.astype(np.uint64))
    return np.bincount((keys >> np.uint64(32)).astype(np.intp), minlength=n_cells), distinct


class CellCounters:
    """`DiversityCounter` figures (conversations, words, distinct-1, distinct-2) of many groups at
    once (the persona × arc × topic cells, by cell id), exact, in a few bytes of memory per cell:
    each example's word ids and word-pair codes go to one of `buckets` temporary files (by cell
    id) and are counted per cell at the end, one file at a time. Held in memory per cell, the
    distinct codes grew with the conversations of every cell (≈ 0.6 KB a conversation)."""

    def __init__(self, buckets: int = 16) -> None:
        self._buckets = buckets
        self._files: list[IO[bytes]] = []
        # Examples added since the last `_flush`: cell, word ids, turn ends (their word pairs are
        # made for many examples in one numpy pass; per example, a dozen small calls cost more).
        self._pending: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.conversations = array("q")
        self.words = array("q")
        self.pairs = array("q")
        self.total_words = 0
        self.total_pairs = 0
        #: Distinct word ids / word-pair codes of all cells together, once `figures` has run.
        self.distinct_words = 0
        self.distinct_pairs = 0

    def _grow(self, cell: int) -> None:
        while len(self.conversations) <= cell:
            for counts in (self.conversations, self.words, self.pairs):
                counts.append(0)

    def add(self, cell: int, turns: list[np.ndarray]) -> None:
        """One example of `cell`: its assistant turns, each its word ids (uint32) in order."""
        ends = np.cumsum([len(ids) for ids in turns], dtype=np.intp)
        words = np.concatenate(turns).astype(np.uint32) if turns else np.empty(0, dtype=np.uint32)
        self.add_words(cell, words, ends)

    def add_words(self, cell: int, words: np.ndarray, ends: np.ndarray) -> None:
        """One example of `cell`: the word ids (uint32) of all its assistant turns back to back,
        turn i ending at `ends[i]` (one array per example: a few numpy calls, not a few per turn)."""
        self._grow(cell)
        self.conversations[cell] += 1
        self.words[cell] += len(words)
        self.total_words += len(words)
        self._pending.append((cell, words, ends))
        if len(self._pending) >= _PENDING_EXAMPLES:
            self._flush()

    def _flush(self) -> None:
        """The pending examples' records to the cells' files, their word-pair codes made for all
        of them at once: (first id << 32) | second id per consecutive pair within a turn (never
        across turns), in word order."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        sizes = np.array([len(words) for _, words, _ in pending], dtype=np.intp)
        starts = np.cumsum(sizes) - sizes
        words = np.concatenate([words for _, words, _ in pending]).astype(np.uint32, copy=False)
        total = len(words)
        # A pair is cut where a turn ends inside its example; the last word of each example ends
        # one too, so no pair spans two examples.
        ends = np.concatenate([ends for _, _, ends in pending]).astype(np.intp, copy=False)
        owner = np.repeat(np.arange(len(pending)), [len(ends) for _, _, ends in pending])
        inside = (ends > 0) & (ends < sizes[owner])
        # keep[p]: the pair of words p, p + 1 counts (none starts at the last word).
        keep = np.ones(total, dtype=bool)
        keep[(starts[owner] + ends)[inside] - 1] = False
        keep[(starts + sizes)[sizes > 0] - 1] = False
        wide = words.astype(np.uint64)
        codes = ((wide[:-1] << np.uint64(32)) | wide[1:])[keep[:-1]]
        # Example i's pairs start at its words [start_i, start_i + size_i).
        kept_before = np.zeros(total + 1, dtype=np.intp)
        np.cumsum(keep, out=kept_before[1:])
        pair_starts = kept_before[starts]
        pair_counts = kept_before[starts + sizes] - pair_starts
        if not self._files:
            self._files = [tempfile.TemporaryFile(prefix="lora-cells-") for _ in range(self._buckets)]
        for (cell, example, _), start, n_pairs in zip(pending, pair_starts.tolist(), pair_counts.tolist(), strict=True):
            self.pairs[cell] += n_pairs
            self.total_pairs += n_pairs
            self._files[cell % self._buckets].write(b"".join(
                (_RECORD.pack(cell, len(example), n_pairs), example.tobytes(), codes[start : start + n_pairs].tobytes())))

    def figures(self) -> list[dict[str, Any]]:
        """Per cell id: conversations, assistant_words, distinct_1, distinct_2 (as `DiversityCounter`).
        Also counts the distinct words and pairs of all cells together (`distinct_words`,
        `distinct_pairs`, `overall`): the union of the cells' distinct codes, so the whole file's
        distinct-n needs no counter fed per example."""
        self._flush()
        cells = len(self.conversations)
        distinct_words = np.zeros(cells, dtype=np.int64)
        distinct_pairs = np.zeros(cells, dtype=np.int64)
        all_words, all_pairs = _DistinctCodes(np.uint32), _DistinctCodes(np.uint64)
        for out in self._files:
            out.flush()
            out.seek(0)
            data = out.read()
            word_parts: list[np.ndarray] = []
            pair_parts: list[np.ndarray] = []
            word_cells: list[int] = []  # (cell, count) of each record, for np.repeat
            word_counts: list[int] = []
            pair_counts: list[int] = []
            at = 0
            while at < len(data):
                cell, n_words, n_pairs = _RECORD.unpack_from(data, at)
                at += _RECORD.size
                word_parts.append(np.frombuffer(data, dtype=np.uint32, count=n_words, offset=at))
                at += 4 * n_words
                pair_parts.append(np.frombuffer(data, dtype=np.uint64, count=n_pairs, offset=at))
                at += 8 * n_pairs
                word_cells.append(cell)
                word_counts.append(n_words)
                pair_counts.append(n_pairs)
            if word_parts:
                # Every cell of the bucket in one sort of (cell, code) keys: a np.unique per cell
                # cost more than its few hundred codes.
                record_cells = np.array(word_cells, dtype=np.int64)
                for parts, counts, distinct, union in ((word_parts, word_counts, distinct_words, all_words),
                                                       (pair_parts, pair_counts, distinct_pairs, all_pairs)):
                    codes = np.concatenate(parts)
                    per_cell, bucket_distinct = _distinct_per_cell(codes, np.repeat(record_cells, counts), cells)
                    distinct += per_cell
                    union.add([bucket_distinct])
            del data, word_parts, pair_parts
        self.distinct_words, self.distinct_pairs = len(all_words), len(all_pairs)
        return [{"conversations": self.conversations[c], "assistant_words": self.words[c],
                 "distinct_1": round(int(distinct_words[c]) / self.words[c], 4) if self.words[c] else 0.0,
                 "distinct_2": round(int(distinct_pairs[c]) / self.pairs[c], 4) if self.pairs[c] else 0.0}
                for c in range(cells)]

    def overall(self, templates: dict[str, Any]) -> dict[str, Any]:
        """`DiversityCounter.figures` of all cells together (after `figures`), with the file's
        template figures merged in."""
        return {
            "conversations": sum(self.conversations),
            "assistant_words": self.total_words,
            "distinct_1": round(self.distinct_words / self.total_words, 4) if self.total_words else 0.0,
            "distinct_2": round(self.distinct_pairs / self.total_pairs, 4) if self.total_pairs else 0.0,
            **templates,
        }

    def close(self) -> None:
        for out in self._files:
            out.close()
        self._files = []


@dataclass(frozen=True)
class TemplateFigures:
    """Template figures of the whole file and of each cell (by cell id): `sentences`,
    `distinct_templates`, `top_template` (its text, or None) and `top_template_count`."""

    overall: dict[str, Any]
    cells: list[dict[str, Any]]


def _figures(sentences: int, distinct: int, top: int | None, count: int, texts: dict[int, str]) -> dict[str, Any]:
    return {"sentences": sentences, "distinct_templates": distinct,
            "top_template": texts.get(top) if top is not None else None, "top_template_count": count}


def template_figures(hashes: np.ndarray, cells: np.ndarray, n_cells: int,
                     texts: Callable[[set[int]], dict[int, str]]) -> TemplateFigures:
    """Template figures from every sentence's template hash and cell id, in sentence order (one
    sort, whatever the number of cells). A group's top template is its most frequent one; among
    equals, the one that occurs first in the group. Its text is given for a template that occurs
    twice or more in the file, and for the file's very first template (so an all-distinct corpus
    still names one); `texts(positions)` reads the text of the templates at those sentence
    positions."""
    n = len(hashes)
    if not n:
        empty = _figures(0, 0, None, 0, {})
        return TemplateFigures(dict(empty), [dict(empty) for _ in range(n_cells)])
    _, first, inverse, counts = np.unique(hashes, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    tied = np.flatnonzero(counts == counts.max())
    top = int(tied[np.argmin(first[tied])])
    # Runs of one template within one cell: (cell, template, position) order.
    order = np.lexsort((np.arange(n), inverse, cells))
    c, u = cells[order], inverse[order]
    starts = np.flatnonzero(np.r_[True, (c[1:] != c[:-1]) | (u[1:] != u[:-1])])
    run_cell, run_template, run_first = c[starts], u[starts], order[starts]
    run_count = np.diff(np.r_[starts, n])
    # Each cell's top run: highest count, then earliest first position.
    ranked = np.lexsort((run_first, -run_count, run_cell))
    heads = ranked[np.flatnonzero(np.r_[True, run_cell[ranked][1:] != run_cell[ranked][:-1]])]
    sentences = np.bincount(cells, minlength=n_cells)
    distinct = np.bincount(run_cell, minlength=n_cells)
    named = {t for t in [top, *run_template[heads].tolist()] if counts[t] >= 2 or t == inverse[0]}
    text_at = texts({int(first[t]) for t in named})
    text = {t: text_at[int(first[t])] for t in named}
    cell_figures = [_figures(0, 0, None, 0, {}) for _ in range(n_cells)]
    for head in heads.tolist():
        cell = int(run_cell[head])
        cell_figures[cell] = _figures(int(sentences[cell]), int(distinct[cell]), int(run_template[head]),
                                      int(run_count[head]), text)
    return TemplateFigures(_figures(n, len(counts), top, int(counts[top]), text), cell_figures)
