"""Exact distinct-n and sentence-template counts of groups of assistant turns, in a few bytes
per word (the leakage check's diversity figures, per file and per persona × arc × topic cell).

Words are ids of the caller's vocabulary, word pairs one integer code, sentences template ids;
a Python set took ≈ 90 bytes per code, and one per cell made a build's memory grow with its
members.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["NARROW_IDS", "DiversityCounter"]

#: Word ids below this fit 16 bits: unigrams are then held as uint16 and bigrams as uint32
#: (first << 16 | second); a vocabulary that outgrows it widens every counter to 32 / 64 bits.
NARROW_IDS = 1 << 16


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
            self._distinct = np.unique(np.concatenate([self._distinct, *self._pending]))
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

    __slots__ = ("conversations", "tokens", "bigrams_total", "unigrams", "bigrams", "templates")

    def __init__(self, *, wide: bool = False) -> None:
        self.conversations = 0
        self.tokens = 0
        self.bigrams_total = 0
        self.unigrams = _DistinctCodes(np.uint32 if wide else np.uint16)
        self.bigrams = _DistinctCodes(np.uint64 if wide else np.uint32)
        self.templates = array("I")  # the template id of every sentence, in order

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

    def figures(self, texts: Mapping[int, str]) -> dict[str, Any]:
        top: int | None = None
        top_count = distinct = 0
        if self.templates:
            ids, first, counts = np.unique(np.frombuffer(self.templates, dtype=np.uint32), return_index=True,
                                           return_counts=True)
            distinct = len(ids)
            # The most frequent; among equals, the one that occurred first in this group.
            best = min(np.flatnonzero(counts == counts.max()).tolist(), key=lambda i: first[i])
            top, top_count = int(ids[best]), int(counts[best])
        return {
            "conversations": self.conversations,
            "assistant_words": self.tokens,
            "distinct_1": round(len(self.unigrams) / self.tokens, 4) if self.tokens else 0.0,
            "distinct_2": round(len(self.bigrams) / self.bigrams_total, 4) if self.bigrams_total else 0.0,
            "sentences": len(self.templates),
            "distinct_templates": distinct,
            "top_template": texts.get(top) if top is not None else None,
            "top_template_count": top_count,
        }
