"""Curation of a training file: exact and near-duplicate removal, and the quality filter.

Duplicates are judged on what a model learns from: the assistant (target) responses of a
conversation. Two conversations are

* **exact duplicates** when their normalised target responses are identical (SHA-256 of the
  normalised text), and
* **near duplicates** when the MinHash estimate of the Jaccard similarity of their word
  shingles reaches `threshold` (default 0.85); MinHash LSH finds the candidates, so each check
  costs about the same however many conversations came before.

The first conversation seen is kept; later ones are reported with the id they duplicate.
Everything is deterministic: the MinHash is datasketch's scheme (fixed seed; each shingle's input
hash is its CRC-32, as datasketch's `hashfunc=zlib.crc32` gives, not Python's salted `hash`),
computed in numpy by `core.minhash`, and ties are broken by arrival order. The shingles' CRC-32s
are computed once per member (`TargetTexts.hashes`) and shared with the leakage check, which
slices each turn's out of them. (Builds before December 2026 hashed with SHA-1's first four
bytes, datasketch's default: ≈ 0.07 ms a member more for the same estimate of similarity, so a
rebuild of an older version may judge a borderline pair differently.)
The text itself is not retained:
the state per kept conversation is a 32-byte digest (in a bytearray), its signature (4 bytes ×
num_perm, one row of a numpy array) and its LSH band keys (12 bytes a band in numpy arrays,
`BandIndex`): ≈ 0.7 KB at 128 permutations, where datasketch's own index took ≈ 6 KB.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict

from lora_assets.core.aggregate import (
    DuplicateMemberError,
    MemberSummary,
    conversation_id_of,
    conversation_quality,
)
from lora_assets.core.diversity import sorted_unique
from lora_assets.core.minhash import MinHasher, crc32_hashes, optimal_bands
from lora_assets.schemas.training import EnrichedConversation

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"

_WORD = re.compile(r"\w+")


class DedupDecision(BaseModel):
    """Whether to keep a conversation; if not, why and which kept conversation it duplicates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep: bool
    reason: str | None = None
    duplicate_of: str | None = None
    similarity: float | None = None


#: The decision of most members (a frozen model: one instance serves them all).
_KEEP = DedupDecision(keep=True)


class DedupStats(BaseModel):
    """Counts of a deduplication pass."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checked: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    without_target_text: int = 0
    threshold: float = 0.85

    @property
    def removed(self) -> int:
        """Conversations dropped as duplicates."""
        return self.exact_duplicates + self.near_duplicates


def normalise_text(text: str) -> str:
    """Text as compared for exact duplicates: Unicode NFKC, case-folded, whitespace collapsed."""
    # str.split() splits on the characters `\s` matches (both use Py_UNICODE_ISSPACE) and drops
    # the empty ends: the same text as `re.sub(r"\s+", " ", …).strip()`, without the regex engine.
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


#: Joins texts for one `normalise_texts` pass: U+0000 is no whitespace and no word character, has no
#: decomposition and composes with nothing, so NFKC, casefold and every pattern here treat each
#: side of it as they treat a text's end.
_SEP = "\x00"


def normalise_texts(texts: Sequence[str]) -> list[str]:
    """`normalise_text` of each text (the same strings; tested), with one NFKC and one casefold
    call for all of them: a member's sentences are many short texts."""
    joined = _SEP.join(texts)
    if joined.count(_SEP) != len(texts) - 1:  # a text holds the separator itself
        return [normalise_text(t) for t in texts]
    folded = unicodedata.normalize("NFKC", joined).casefold()
    return [" ".join(part.split()) for part in folded.split(_SEP)] if texts else []


def target_text(conv: EnrichedConversation) -> str:
    """The conversation's normalised assistant text: its pairs' targets in turn order, one per
    line (targets of unanswered turns are absent)."""
    return TargetTexts.of(conv).text


@dataclass(frozen=True)
class TargetTexts:
    """A conversation's answered targets in turn order, each as given, normalised and split into
    words: computed once per member and shared by dedup (the whole text) and the leakage check
    (turn by turn), so a build goes over each answer's text once."""

    raw: tuple[str, ...]
    normalised: tuple[str, ...]
    words: tuple[list[str], ...]
    #: Word shingles over all the targets' words, by size (`shingles`), and their CRC-32s (`hashes`).
    _shingles: dict[int, list[bytes]] = field(default_factory=dict, compare=False, repr=False)
    _hashes: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, conv: EnrichedConversation) -> TargetTexts:
        raw = tuple(p.target_response for p in sorted(conv.training_pairs, key=lambda p: p.turn_number)
                    if p.target_response is not None)
        normalised = tuple(map(normalise_text, raw))
        return cls(raw, normalised, tuple(_WORD.findall(t) for t in normalised))

    def shingles(self, size: int) -> list[bytes]:
        """The word `size`-grams of `all_words` (one per position, UTF-8; so a set of them is
        `word_shingles(text)` encoded), made once: dedup takes all of them, the leakage check each
        target's own (`turn_shingles`)."""
        made = self._shingles.get(size)
        if made is None:
            words = self.all_words()
            made = self._shingles[size] = list(map(str.encode, map(" ".join, zip(*(words[i:] for i in range(size))))))
        return made

    def hashes(self, size: int) -> np.ndarray:
        """The CRC-32 of each of `shingles(size)` (uint32, one per position), computed once: the
        input hashes of dedup's MinHash (of all of them) and of the leakage check's (each
        target's own, `turn_hashes`)."""
        made = self._hashes.get(size)
        if made is None:
            made = self._hashes[size] = crc32_hashes(self.shingles(size))
        return made

    def turn_hashes(self, turn: int, size: int) -> np.ndarray:
        """`crc32_hashes(turn_shingles(turn, size))`, sliced out of `hashes` when it can be."""
        words = self.words[turn]
        if len(words) <= size:
            return shingle_hashes(words, size)
        start = sum(len(w) for w in self.words[:turn])
        return self.hashes(size)[start : start + len(words) - size + 1]

    def turn_shingles(self, turn: int, size: int) -> list[bytes]:
        """`word_shingles` of target `turn` (encoded, in word order, repeats kept: a MinHash does
        not see them), sliced out of `shingles`."""
        words = self.words[turn]
        if len(words) <= size:
            return [" ".join(words).encode()] if words else []
        start = sum(len(w) for w in self.words[:turn])
        return self.shingles(size)[start : start + len(words) - size + 1]

    @property
    def text(self) -> str:
        """`target_text`: the normalised targets, one per line."""
        return "\n".join(self.normalised)

    def all_words(self) -> list[str]:
        """The words of `text` (a line break is not a word character, so no word spans two targets)."""
        return [w for words in self.words for w in words]

    def known(self) -> dict[str, tuple[str, list[str]]]:
        """Raw target → (normalised, words), for a caller that meets the same answers again."""
        return dict(zip(self.raw, zip(self.normalised, self.words, strict=True), strict=True))

    def index(self) -> dict[str, int]:
        """Raw target → its position (the first, for a target given twice)."""
        found: dict[str, int] = {}
        for i, text in enumerate(self.raw):
            found.setdefault(text, i)
        return found


def word_shingles(text: str, size: int) -> set[str]:
    """Word `size`-grams of `text` (punctuation ignored); a text shorter than `size` words is one
    shingle, so short answers still compare."""
    return shingles_of_words(_WORD.findall(text), size)


def shingle_hashes(words: list[str], size: int) -> np.ndarray:
    """The CRC-32s of `shingles_of_words(words, size)`, UTF-8 encoded: the MinHash input of a text
    not already shingled in a `TargetTexts`."""
    return crc32_hashes(list(map(str.encode, shingles_of_words(words, size))))


def shingles_of_words(words: list[str], size: int) -> set[str]:
    """`word_shingles` of text already split into words (`\\w+` runs, in order)."""
    if not words:
        return set()
    if len(words) <= size:
        return {" ".join(words)}
    # zip of the shifted lists: the same n-grams as slicing, without a slice per position.
    return set(map(" ".join, zip(*(words[i:] for i in range(size)))))


class BandIndex:
    """The LSH index of the kept signatures: which kept conversations share at least one band
    (`rows` consecutive values of `bands`) with a query signature — the candidates datasketch's
    MinHashLSH returns for the same bands, exactly.

    A band is looked up by a 64-bit key mixed from its values, held in numpy arrays (key, kept
    index): a sorted part searched by bisection, plus the latest inserts (one row of keys per
    kept conversation) compared directly and merged into the sorted part every `_MERGE_EVERY`
    inserts. A key only proposes: a candidate is confirmed by comparing the band itself with the
    stored signature, so key collisions cannot change the result. 12 bytes a band, where
    datasketch keeps the band's bytes and a Python set per band of every kept conversation.
    """

    _MERGE_EVERY = 256

    def __init__(self, bands: int, rows: int, num_perm: int) -> None:
        self.bands, self.rows = bands, rows
        self._signatures = np.empty((self._MERGE_EVERY, num_perm), dtype=np.uint32)
        self._count = 0
        rng = np.random.default_rng(0)
        self._mix = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)  # odd multipliers
        self._salt = rng.integers(0, 2**63, size=bands, dtype=np.uint64)
        self._sorted_keys = np.empty(0, dtype=np.uint64)
        self._sorted_index = np.empty(0, dtype=np.uint32)
        self._recent_keys = np.empty((self._MERGE_EVERY, bands), dtype=np.uint64)
        self._recent_from = 0  # kept index of the first row of `_recent_keys`

    def signature(self, index: int) -> np.ndarray:
        return self._signatures[index]

    def keys(self, signature: np.ndarray) -> np.ndarray:
        """The band keys of `signature` (what `candidate_array` and `insert` look up and store:
        a caller that does both computes them once)."""
        values = signature[: self.bands * self.rows].reshape(self.bands, self.rows).astype(np.uint64)
        return (values * self._mix).sum(axis=1, dtype=np.uint64) ^ self._salt  # wraps mod 2**64

    def keys_of(self, signatures: np.ndarray) -> np.ndarray:
        """`keys` of each row of `signatures` (one row of keys each), in one numpy pass."""
        m = len(signatures)
        values = signatures[:, : self.bands * self.rows].reshape(m, self.bands, self.rows).astype(np.uint64)
        return (values * self._mix).sum(axis=2, dtype=np.uint64) ^ self._salt

    def proposes(self, keys: np.ndarray) -> np.ndarray:
        """For each row of band keys (`keys_of`), whether some key held now equals one of its keys:
        False means `candidate_array` finds nothing for it (a candidate shares a whole band, hence
        that band's key). Sorted keys are matched whatever their band: a superset, which is safe."""
        proposed = np.zeros(len(keys), dtype=bool)
        if len(self._sorted_keys):
            flat = keys.ravel()
            found = (np.searchsorted(self._sorted_keys, flat, side="right")
                     > np.searchsorted(self._sorted_keys, flat, side="left"))
            proposed |= found.reshape(keys.shape).any(axis=1)
        recent = self._count - self._recent_from
        if recent:
            proposed |= (self._recent_keys[None, :recent] == keys[:, None]).any(axis=(1, 2))
        return proposed

    def candidates(self, signature: np.ndarray) -> list[int]:
        """Kept indexes (ascending) sharing at least one whole band with `signature`."""
        return self.candidate_array(signature).tolist()

    def candidate_array(self, signature: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """`candidates` as an ascending int64 array, in one numpy pass: text that shares many
        bands with what came before (a simulator's grammar, a templated corpus) proposes
        hundreds of candidates per conversation, which a Python loop paid for one by one.
        `keys`: `keys(signature)`, when the caller has them."""
        if keys is None:
            keys = self.keys(signature)
        kept_parts: list[np.ndarray] = []
        band_parts: list[np.ndarray] = []
        if len(self._sorted_keys):
            lo = np.searchsorted(self._sorted_keys, keys, side="left")
            counts = np.searchsorted(self._sorted_keys, keys, side="right") - lo
            total = int(counts.sum())
            if total:
                band = np.repeat(np.arange(self.bands), counts)
                first = np.cumsum(counts) - counts
                kept_parts.append(self._sorted_index[lo[band] + (np.arange(total) - first[band])].astype(np.int64))
                band_parts.append(band)
        recent = self._count - self._recent_from
        if recent:
            rows, bands = np.nonzero(self._recent_keys[:recent] == keys)
            if len(rows):
                kept_parts.append(rows.astype(np.int64) + self._recent_from)
                band_parts.append(bands)
        if not kept_parts:  # no key proposes anything (most queries of a varied corpus)
            return np.empty(0, dtype=np.int64)
        kept, band = np.concatenate(kept_parts), np.concatenate(band_parts)
        # A key only proposes: the band's values decide.
        columns = band[:, None] * self.rows + np.arange(self.rows)
        same = (self._signatures[kept[:, None], columns] == signature[columns]).all(axis=1)
        return sorted_unique(kept[same])

    def similarities(self, indexes: np.ndarray, signature: np.ndarray) -> np.ndarray:
        """Share of equal values between `signature` and each kept signature of `indexes`."""
        return np.count_nonzero(self._signatures[indexes] == signature, axis=1) / self._signatures.shape[1]

    def pairs(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (query row, kept index) pair sharing at least one whole band, for a matrix of
        query signatures at once (`candidates` of each row, in one numpy pass): two int64 arrays,
        sorted by query row, then kept index."""
        empty = np.empty(0, dtype=np.int64)
        if self._count > self._recent_from:
            self._merge()  # everything into the sorted part: one bisection per (query, band)
        if not len(queries) or not self._count:
            return empty, empty
        m = len(queries)
        values = queries[:, : self.bands * self.rows].reshape(m, self.bands, self.rows).astype(np.uint64)
        keys = ((values * self._mix).sum(axis=2, dtype=np.uint64) ^ self._salt).ravel()  # as `keys`, per row
        lo = np.searchsorted(self._sorted_keys, keys, side="left")
        counts = np.searchsorted(self._sorted_keys, keys, side="right") - lo
        total = int(counts.sum())
        if not total:
            return empty, empty
        slot = np.repeat(np.arange(len(keys)), counts)  # (query, band) of each proposal
        first = np.cumsum(counts) - counts
        kept = self._sorted_index[lo[slot] + (np.arange(total) - first[slot])].astype(np.int64)
        query, band = slot // self.bands, slot % self.bands
        # A key only proposes: the band's values decide (as in `candidates`).
        columns = band[:, None] * self.rows + np.arange(self.rows)
        same = (self._signatures[kept[:, None], columns] == queries[query[:, None], columns]).all(axis=1)
        code = sorted_unique(query[same] * self._count + kept[same])
        return code // self._count, code % self._count

    def insert(self, signature: np.ndarray, keys: np.ndarray | None = None) -> int:
        """Remember `signature` as the next kept index (returned); `keys`: `keys(signature)`,
        when the caller has them."""
        index = self._count
        if index == len(self._signatures):
            # ×1.5, not ×2: the slack of a large index is at most a third of it.
            grown = np.empty((len(self._signatures) + max(64, len(self._signatures) // 2), self._signatures.shape[1]),
                             dtype=np.uint32)
            grown[:index] = self._signatures
            self._signatures = grown
        self._signatures[index] = signature
        self._recent_keys[index - self._recent_from] = self.keys(signature) if keys is None else keys
        self._count += 1
        if self._count - self._recent_from == self._MERGE_EVERY:
            self._merge()
        return index

    def insert_many(self, signatures: np.ndarray) -> None:
        """`insert` each row of `signatures`, in order, in one numpy pass (their keys go straight
        to the sorted part)."""
        if self._count > self._recent_from:
            self._merge()
        start, end = self._count, self._count + len(signatures)
        if end > len(self._signatures):
            grown = np.empty((end, self._signatures.shape[1]), dtype=np.uint32)
            grown[:start] = self._signatures[:start]
            self._signatures = grown
        self._signatures[start:end] = signatures
        keys = np.concatenate([self._sorted_keys, self.keys_of(signatures).ravel()])
        index = np.concatenate([self._sorted_index, np.repeat(np.arange(start, end, dtype=np.uint32), self.bands)])
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_index = keys[order], index[order]
        self._count = self._recent_from = end

    def _merge(self) -> None:
        recent = self._count - self._recent_from
        keys = np.concatenate([self._sorted_keys, self._recent_keys[:recent].ravel()])
        index = np.concatenate([self._sorted_index,
                                np.repeat(np.arange(self._recent_from, self._count, dtype=np.uint32), self.bands)])
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_index = keys[order], index[order]
        self._recent_from = self._count


@dataclass(frozen=True)
class PreparedCheck:
    """What `Deduplicator.check` computes for a conversation before it looks at the index, made
    for many conversations at once by `Deduplicator.prepare`."""

    #: MinHash signature and LSH band keys (None: the conversation has no answer text).
    signature: np.ndarray | None
    keys: np.ndarray | None
    #: No band key of it matched the index when prepared, nor one of an earlier conversation of
    #: its batch: it can have no candidate if checked in its turn (see `ticket`).
    unproposed: bool
    #: (batch number, position in the batch): `unproposed` holds only when the conversations of the
    #: batch are checked in order with no other check in between; otherwise it is ignored.
    ticket: tuple[int, int]


class Deduplicator:
    """Streaming duplicate detector: `check(conv)` one conversation at a time, in the order the
    training file should prefer (the first of a duplicate group is kept). A caller that reads
    many conversations ahead can `prepare` them in one numpy pass (signatures, band keys, whether
    the index can propose anything) and hand each its `PreparedCheck`: the same decisions."""

    def __init__(
        self,
        *,
        threshold: float = 0.85,
        num_perm: int = 128,
        shingle_size: int = 3,
        seed: int = 1,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold {threshold!r} must be in (0, 1]")
        if shingle_size < 1:
            raise ValueError(f"shingle_size {shingle_size!r} must be at least 1")
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        # LSH only proposes candidates; the decision is the signature comparison in `check`.
        # So the index is tuned for recall: banded for 0.1 below the threshold with false
        # negatives weighing 4x false positives (at 0.85 and 128 permutations a pair with
        # Jaccard 0.85 becomes a candidate with p ~ 0.99; one at 0.5 with p ~ 0.06), capped at
        # 0.9, above which datasketch cannot form two bands.
        lsh_threshold = min(max(threshold - 0.1, threshold / 2), 0.9)
        # datasketch's band choice for that threshold (`MinHashLSH(threshold, num_perm, weights=(0.2,
        # 0.8))`), computed without importing it (it pulls in scipy); its index is not used either
        # (see `BandIndex`).
        bands, rows = optimal_bands(lsh_threshold, num_perm, 0.2, 0.8)
        if bands < 2:
            raise ValueError(f"num_perm {num_perm!r} is too small for LSH at threshold {threshold!r} (fewer than 2 bands)")
        self._index = BandIndex(bands, rows, num_perm)
        # datasketch's MinHash(num_perm, seed, hashfunc=zlib.crc32), in numpy.
        self._hasher = MinHasher(num_perm, seed, crc32_hashes)
        # SHA-256 of each indexed conversation's text, by kept index (32 bytes each, back to back):
        # identical text means identical shingles, so an exact duplicate is always among the LSH
        # candidates, and its digest is compared there (a dict of digests took ≈ 150 bytes each).
        self._digests = bytearray()
        self._kept_ids: list[str] = []  # by kept index: arrival order
        self._seen: set[str] = set()
        self._checked = 0
        self._kept = 0
        self._exact_dups = 0
        self._near_dups = 0
        self._empty = 0
        self._batches = 0
        self._next_ticket: tuple[int, int] | None = None

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature (num_perm uint32) of the word shingles of normalised `text`."""
        return self._signature_of_words(_WORD.findall(text))

    def _signature_of_words(self, words: list[str]) -> np.ndarray:
        return self._hasher.signature_of_hashes(shingle_hashes(words, self.shingle_size))

    def _shingle_hashes(self, targets: TargetTexts) -> np.ndarray:
        # The input hashes of `_signature_of_words(targets.all_words())`, from the shingles' hashes
        # the targets made once (the leakage check slices its own out of them). Repeats are kept:
        # a minimum does not see them, so the signature is the shingle set's.
        if sum(len(w) for w in targets.words) <= self.shingle_size:
            return shingle_hashes(targets.all_words(), self.shingle_size)
        return targets.hashes(self.shingle_size)

    def prepare(self, targets: Sequence[TargetTexts]) -> list[PreparedCheck]:
        """`PreparedCheck`s of conversations about to be checked in this order (their
        `TargetTexts`): every signature in one numpy pass (per conversation, the fixed cost of a
        dozen small numpy calls was most of it) and, against the index as it is now and each
        other, whether anything can be proposed for each."""
        texts = [i for i, t in enumerate(targets) if t.text.strip()]
        hashes = [self._shingle_hashes(targets[i]) for i in texts]
        bounds = np.concatenate(([0], np.cumsum([len(h) for h in hashes], dtype=np.intp)))
        flat = np.concatenate(hashes) if hashes else np.empty(0, np.uint32)
        signatures = self._hasher.signatures_of_hashes(flat, bounds)
        keys = self._index.keys_of(signatures)
        proposed = self._index.proposes(keys)
        # ... or by an earlier conversation of the batch (the same band's key), once kept.
        same = (keys[:, None, :] == keys[None, :, :]).any(axis=2)
        proposed |= np.tril(same, -1).any(axis=1)
        self._batches += 1
        self._next_ticket = (self._batches, 0)
        at = dict(zip(texts, range(len(texts)), strict=True))
        out = []
        for position in range(len(targets)):
            row = at.get(position)
            ticket = (self._batches, position)
            if row is None:
                out.append(PreparedCheck(None, None, False, ticket))
            else:
                out.append(PreparedCheck(signatures[row], keys[row], not proposed[row], ticket))
        return out

    def check(self, conv: EnrichedConversation, *, conversation_id: str | None = None,
              targets: TargetTexts | None = None, prepared: PreparedCheck | None = None) -> DedupDecision:
        """Decide on `conv` and, when kept, remember it for later checks (`targets`: its
        `TargetTexts`, when the caller has them already; `prepared`: its `prepare`d check, made
        from those targets). Raises `DuplicateMemberError` if the same conversation id is checked
        twice (a caller bug, not a content duplicate)."""
        # `prepared.unproposed` holds only for the next conversation of the batch prepared last.
        unproposed = False
        if prepared is not None and prepared.ticket == self._next_ticket:
            unproposed = prepared.unproposed
            self._next_ticket = (prepared.ticket[0], prepared.ticket[1] + 1)
        else:
            self._next_ticket = None
        cid = conversation_id_of(conv, conversation_id)
        if cid in self._seen:
            raise DuplicateMemberError(cid)
        self._seen.add(cid)
        self._checked += 1
        targets = targets if targets is not None else TargetTexts.of(conv)
        text = targets.text
        if not text.strip():
            # No assistant text: nothing to compare, and nothing that could collide with it.
            self._empty += 1
            self._kept += 1
            return _KEEP

        digest = hashlib.sha256(text.encode()).digest()
        if prepared is not None and prepared.signature is not None and prepared.keys is not None:
            signature, keys = prepared.signature, prepared.keys
        else:
            signature = self._hasher.signature_of_hashes(self._shingle_hashes(targets))
            keys = self._index.keys(signature)
            unproposed = False
        if unproposed:
            candidates = np.empty(0, dtype=np.int64)
        else:
            candidates = self._index.candidate_array(signature, keys)
        for kept in candidates.tolist():
            if self._digests[32 * kept : 32 * kept + 32] == digest:  # at most one: a second is never kept
                self._exact_dups += 1
                return DedupDecision(keep=False, reason=EXACT_DUPLICATE, duplicate_of=self._kept_ids[kept],
                                     similarity=1.0)
        if len(candidates):  # none for most members of a varied corpus: nothing to compare
            similarity = self._index.similarities(candidates, signature)
            close = similarity >= self.threshold
            if close.any():
                # Most similar wins; among equals, the earliest kept conversation (candidates ascend).
                best = float(similarity[close].max())
                first = int(candidates[close][similarity[close] == best][0])
                self._near_dups += 1
                return DedupDecision(keep=False, reason=NEAR_DUPLICATE, duplicate_of=self._kept_ids[first],
                                     similarity=best)

        self._digests += digest
        self._index.insert(signature, keys)
        self._kept_ids.append(cid)
        self._kept += 1
        return _KEEP

    @property
    def stats(self) -> DedupStats:
        """Counts so far."""
        return DedupStats(
            checked=self._checked,
            kept=self._kept,
            exact_duplicates=self._exact_dups,
            near_duplicates=self._near_dups,
            without_target_text=self._empty,
            threshold=self.threshold,
        )


def quality_filter(summary_or_conv: MemberSummary | EnrichedConversation, min_quality: float | None) -> bool:
    """True when the conversation may enter a training file under `min_quality`.

    Quality is the conversation's mean pair quality (`MemberSummary.quality_score` carries the
    same figure from the DB). No threshold keeps everything; with a threshold, a conversation
    without a score is excluded, since it cannot be shown to pass.
    """
    if min_quality is None:
        return True
    if isinstance(summary_or_conv, MemberSummary):
        quality = summary_or_conv.quality_score
    else:
        quality = conversation_quality(summary_or_conv)
    return quality is not None and quality >= min_quality
