"""Train/validation split of a training file, by conversation.

A conversation is on exactly one side (its turns share context, so splitting by pair would leak
validation answers into training). The split is stratified by scaffolding combination
(persona, arc, topic): each stratum's share of the validation set is allocated with the largest
remainder method, and within a stratum the members whose seeded hash sorts first go to
validation. The result depends only on the member ids, their strata, the fraction and the seed,
not on the order of `members`, nor on Python's salted `hash`.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from lora_assets.core.aggregate import DuplicateMemberError, MemberSummary

SplitName = Literal["train", "validation"]
Stratum = tuple[str | None, str | None, str | None]


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


def validation_count(total: int, validation_fraction: float) -> int:
    """How many of `total` conversations go to validation: `round(total * fraction)` (halves up),
    but at least one on each side when there are two or more and the fraction is above 0."""
    if not 0.0 <= validation_fraction < 1.0 or math.isnan(validation_fraction):
        raise SplitFractionError(f"validation_fraction {validation_fraction!r} must be in [0, 1)")
    if total < 2 or validation_fraction == 0.0:
        return 0
    wanted = math.floor(total * validation_fraction + 0.5)
    return min(max(wanted, 1), total - 1)


def train_validation_split(
    members: Sequence[MemberSummary],
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, SplitName]:
    """Map every member's conversation_id to "train" or "validation".

    Stratified by (persona, arc, topic) as far as group sizes allow: stratum `s` of size `n_s`
    gets `V * n_s / N` validation places rounded by largest remainder (ties broken by a seeded
    hash of the stratum), so the total is exactly `validation_count(N, fraction)`. With two or
    more members (and a fraction above 0) both sides are non-empty; a fraction of 0 puts
    everything in train. Raises `DuplicateMemberError` for an id listed twice and
    `SplitFractionError` for a fraction outside [0, 1).
    """
    total = len(members)
    n_validation = validation_count(total, validation_fraction)

    strata: dict[Stratum, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for member in members:
        if member.conversation_id in seen:
            raise DuplicateMemberError(member.conversation_id)
        seen.add(member.conversation_id)
        strata[stratum_of(member)].append(member.conversation_id)

    # Largest remainder: floor of each quota first, then one more place to the strata with the
    # biggest fractional parts until the total is reached.
    quotas: dict[Stratum, int] = {}
    remainders: list[tuple[float, str, Stratum]] = []
    for stratum, ids in strata.items():
        exact = n_validation * len(ids) / total if total else 0.0
        quotas[stratum] = math.floor(exact)
        remainders.append((exact - quotas[stratum], _rank(seed, _stratum_label(stratum)), stratum))
    missing = n_validation - sum(quotas.values())
    remainders.sort(key=lambda r: (-r[0], r[1]))
    for _, _, stratum in remainders[:missing]:
        quotas[stratum] += 1

    result: dict[str, SplitName] = {}
    for stratum, ids in strata.items():
        ordered = sorted(ids, key=lambda cid: (_rank(seed, cid), cid))
        k = quotas[stratum]
        for index, cid in enumerate(ordered):
            result[cid] = "validation" if index < k else "train"
    return result


def split_counts(split: dict[str, SplitName]) -> dict[SplitName, int]:
    """Number of conversations on each side of a split."""
    counts: dict[SplitName, int] = {"train": 0, "validation": 0}
    for side in split.values():
        counts[side] += 1
    return counts
