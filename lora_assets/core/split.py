"""Train/validation split of a training file, by conversation and by duplicate group.

A conversation is on exactly one side (its turns share context, so splitting by pair would leak
validation answers into training). Conversations that share an identical assistant turn (after
`dedup.normalise_text`, turns of at least `MIN_TURN_WORDS` words: the ones the leakage check
compares) form a **group** (union–find over turn digests), and a group is never split: a
validation turn found verbatim in train would measure memorisation, not generalisation.

The split is stratified by scaffolding combination (persona, arc, topic): each stratum's share of
the validation set is allocated with the largest remainder method. Groups are then taken in a
seeded order; a group goes to validation while it fits the remaining quota of every stratum it
touches, and a second pass fills the places still open with whole groups that fit the total. A
group larger than the validation set stays in train, so grouping can only shrink the validation
side, never grow it; `SplitResult.report` says by how much. Without shared turns this is exactly
the per-stratum split (the members whose seeded hash sorts first go to validation).

The result depends only on the member ids, their strata, their turn digests, the fraction and
the seed, not on the order of `members`, nor on Python's salted `hash`.
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from lora_assets.core.aggregate import DuplicateMemberError, MemberSummary
from lora_assets.core.dedup import normalise_text

SplitName = Literal["train", "validation"]
Stratum = tuple[str | None, str | None, str | None]

#: Turns shorter than this (in words) do not group conversations; the leakage check skips them
#: too (`LeakageStats(min_turn_words=8)`): "I understand." recurs anywhere and leaks nothing.
MIN_TURN_WORDS = 8

_WORD = re.compile(r"\w+")


class SplitFractionError(ValueError):
    """A validation fraction outside [0, 1)."""


def _rank(seed: int, text: str) -> str:
    # A seeded, stable pseudo-random order: the same inputs sort the same on every machine.
    return hashlib.sha256(f"{seed}\x1f{text}".encode()).hexdigest()


def _stratum_label(stratum: Stratum) -> str:
    return "\x1f".join("" if part is None else part for part in stratum)


def stratum_of(member: MemberSummary) -> Stratum:
    """The stratification key of a member: (persona, arc, topic); None parts for legacy."""
    return (member.persona_key, member.arc_key, member.topic_key)


def turn_keys(assistant_turns: Iterable[str | None], *, min_words: int = MIN_TURN_WORDS) -> frozenset[bytes]:
    """Digests of a conversation's normalised assistant turns of at least `min_words` words: two
    conversations sharing a digest share a turn word for word (case and spacing aside)."""
    keys = set()
    for turn in assistant_turns:
        if turn is None:
            continue
        text = normalise_text(turn)
        if len(_WORD.findall(text)) >= min_words:
            keys.add(hashlib.blake2b(text.encode(), digest_size=16).digest())
    return frozenset(keys)


def validation_count(total: int, validation_fraction: float) -> int:
    """How many of `total` conversations go to validation: `round(total * fraction)` (halves up),
    but at least one on each side when there are two or more and the fraction is above 0."""
    if not 0.0 <= validation_fraction < 1.0 or math.isnan(validation_fraction):
        raise SplitFractionError(f"validation_fraction {validation_fraction!r} must be in [0, 1)")
    if total < 2 or validation_fraction == 0.0:
        return 0
    wanted = math.floor(total * validation_fraction + 0.5)
    return min(max(wanted, 1), total - 1)


class _UnionFind:
    """Disjoint sets of member ids; `find` with path halving, `union` by size."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.parent = {i: i for i in ids}
        self.size = dict.fromkeys(self.parent, 1)

    def find(self, x: str) -> str:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def duplicate_groups(ids: Iterable[str], keys: Mapping[str, Iterable[bytes]]) -> list[list[str]]:
    """The members as groups (each sorted; groups sorted by first id): ids sharing any key of
    `keys` (conversation id → turn digests) are in one group, transitively. An id without keys
    is a group of its own."""
    uf = _UnionFind(ids)
    owner: dict[bytes, str] = {}
    for cid in sorted(uf.parent):
        for key in keys.get(cid, ()):
            first = owner.setdefault(key, cid)
            if first != cid:
                uf.union(first, cid)
    groups: dict[str, list[str]] = defaultdict(list)
    for cid in uf.parent:
        groups[uf.find(cid)].append(cid)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


class SharedTurns:
    """Members' turn digests (`turn_keys`) by member position, flat: 20 bytes a digest, where a
    dict of frozensets of bytes took ≈ 250 bytes a member. `grouped_split(keys=…)` takes it as it
    takes a mapping of ids to digests, with positions into its `members`."""

    def __init__(self) -> None:
        self._owners = array("I")
        self._digests = bytearray()

    def add(self, position: int, digests: Iterable[bytes]) -> None:
        """The digests of member `position` (16 bytes each)."""
        for digest in digests:
            if len(digest) != 16:
                raise ValueError(f"a turn digest is 16 bytes, not {len(digest)}")
            self._owners.append(position)
            self._digests += digest

    def groups(self, count: int) -> list[list[int]]:
        """Positions 0..count-1 as groups: positions sharing a digest are in one, transitively."""
        parent = list(range(count))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        if self._owners:
            owners = np.array(self._owners, dtype=np.int64)
            halves = np.frombuffer(bytes(self._digests), dtype="<u8").reshape(-1, 2)
            order = np.lexsort((halves[:, 1], halves[:, 0]))
            sorted_halves, sorted_owners = halves[order], owners[order]
            same = (sorted_halves[1:] == sorted_halves[:-1]).all(axis=1)
            for a, b in zip(sorted_owners[:-1][same].tolist(), sorted_owners[1:][same].tolist(), strict=True):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        groups: dict[int, list[int]] = defaultdict(list)
        for position in range(count):
            groups[find(position)].append(position)
        return list(groups.values())


class SplitReport(BaseModel):
    """What duplicate grouping did to the split, for the card and the version row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversations: int
    groups: int
    shared_turn_groups: int
    grouped_conversations: int
    largest_group: int
    validation_wanted: int
    validation: int
    off_quota_strata: int = 0

    @property
    def validation_lost(self) -> int:
        """Validation places the groups cost (wanted minus placed)."""
        return self.validation_wanted - self.validation

    def line(self) -> str | None:
        """One readable line when grouping left no validation set (None otherwise)."""
        if self.validation or not self.validation_wanted:
            return None
        return (
            f"no validation set: the {self.conversations} conversations form {self.groups} group(s) sharing assistant "
            f"turns (largest {self.largest_group}), and no group fits the {self.validation_wanted} validation place(s) "
            "without leaking into train; every conversation is in train"
        )


@dataclass(frozen=True)
class SplitResult:
    """Each conversation's side, and what duplicate grouping cost."""

    sides: dict[str, SplitName]
    report: SplitReport


def grouped_split(
    members: Sequence[MemberSummary],
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    keys: Mapping[str, Iterable[bytes]] | SharedTurns | None = None,
) -> SplitResult:
    """The split of `members` (see the module docstring) with its `SplitReport`. `keys` maps a
    conversation id to its turn digests (`turn_keys`), or holds them by position in `members`
    (`SharedTurns`); members absent from it share nothing.
    Raises `DuplicateMemberError` for an id listed twice and `SplitFractionError` for a fraction
    outside [0, 1)."""
    total = len(members)
    n_validation = validation_count(total, validation_fraction)

    strata: dict[Stratum, int] = defaultdict(int)
    stratum_by_id: dict[str, Stratum] = {}
    shared: dict[Stratum, Stratum] = {}  # one tuple per stratum, not one per member
    for member in members:
        if member.conversation_id in stratum_by_id:
            raise DuplicateMemberError(member.conversation_id)
        stratum = shared.setdefault(stratum_of(member), stratum_of(member))
        stratum_by_id[member.conversation_id] = stratum
        strata[stratum] += 1

    # Largest remainder: floor of each quota first, then one more place to the strata with the
    # biggest fractional parts until the total is reached.
    quotas: dict[Stratum, int] = {}
    remainders: list[tuple[float, str, Stratum]] = []
    for stratum, size in strata.items():
        exact = n_validation * size / total if total else 0.0
        quotas[stratum] = math.floor(exact)
        remainders.append((exact - quotas[stratum], _rank(seed, _stratum_label(stratum)), stratum))
    missing = n_validation - sum(quotas.values())
    remainders.sort(key=lambda r: (-r[0], r[1]))
    for _, _, stratum in remainders[:missing]:
        quotas[stratum] += 1

    if isinstance(keys, SharedTurns):
        ids = list(stratum_by_id)  # in the order of `members`
        groups = sorted((sorted(ids[i] for i in g) for g in keys.groups(len(ids))), key=lambda g: g[0])
    else:
        groups = duplicate_groups(stratum_by_id, keys or {})
    # A group's place in the seeded order is that of its first-ranked member, so a singleton sorts
    # exactly as the conversation itself would.
    ordered = sorted(groups, key=lambda g: min((_rank(seed, cid), cid) for cid in g))
    result: dict[str, SplitName] = dict.fromkeys(stratum_by_id, "train")
    left = dict(quotas)
    placed = 0
    pending: list[list[str]] = []
    for group in ordered:
        need: dict[Stratum, int] = defaultdict(int)
        for cid in group:
            need[stratum_by_id[cid]] += 1
        if placed + len(group) <= n_validation and all(left[s] >= n for s, n in need.items()):
            for s, n in need.items():
                left[s] -= n
            for cid in group:
                result[cid] = "validation"
            placed += len(group)
        else:
            pending.append(group)
    # Second pass: places a group could not take within its strata go to whole groups that fit.
    for group in pending:
        if placed >= n_validation:
            break
        if placed + len(group) <= n_validation:
            for cid in group:
                result[cid] = "validation"
                left[stratum_by_id[cid]] -= 1
            placed += len(group)

    shared = [g for g in groups if len(g) > 1]
    report = SplitReport(
        conversations=total,
        groups=len(groups),
        shared_turn_groups=len(shared),
        grouped_conversations=sum(len(g) for g in shared),
        largest_group=max((len(g) for g in groups), default=0),
        validation_wanted=n_validation,
        validation=placed,
        off_quota_strata=sum(1 for n in left.values() if n != 0),
    )
    return SplitResult(result, report)


def train_validation_split(
    members: Sequence[MemberSummary],
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    keys: Mapping[str, Iterable[bytes]] | None = None,
) -> dict[str, SplitName]:
    """Map every member's conversation_id to "train" or "validation" (`grouped_split`'s sides).

    Stratified by (persona, arc, topic) as far as group sizes allow: stratum `s` of size `n_s`
    gets `V * n_s / N` validation places rounded by largest remainder (ties broken by a seeded
    hash of the stratum), so without shared turns the total is exactly
    `validation_count(N, fraction)` and, with two or more members (and a fraction above 0), both
    sides are non-empty; a fraction of 0 puts everything in train. Members sharing a turn digest
    in `keys` are on the same side. Raises `DuplicateMemberError` for an id listed twice and
    `SplitFractionError` for a fraction outside [0, 1).
    """
    return grouped_split(members, validation_fraction=validation_fraction, seed=seed, keys=keys).sides


def split_counts(split: dict[str, SplitName]) -> dict[SplitName, int]:
    """Number of conversations on each side of a split."""
    counts: dict[SplitName, int] = {"train": 0, "validation": 0}
    for side in split.values():
        counts[side] += 1
    return counts
