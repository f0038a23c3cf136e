"""Train/validation split: by conversation, seeded, deterministic, stratified."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_assets.core.aggregate import DuplicateMemberError, MemberSummary
from lora_assets.core.split import (
    SplitFractionError,
    split_counts,
    train_validation_split,
    validation_count,
)


def _members(spec: dict[tuple[str | None, str | None, str | None], int]) -> list[MemberSummary]:
    out = []
    for (persona, arc, topic), n in spec.items():
        for i in range(n):
            out.append(
                MemberSummary(
                    conversation_id=f"{persona}-{arc}-{topic}-{i}",
                    persona_key=persona,
                    arc_key=arc,
                    topic_key=topic,
                    quality_score=4.0,
                    pair_count=3,
                    turn_count=6,
                )
            )
    return out


SPEC = {
    ("p1", "a1", "t1"): 40,
    ("p1", "a2", "t1"): 30,
    ("p2", "a1", "t2"): 20,
    ("p2", "a2", "t2"): 10,
}


def test_covers_all_and_disjoint() -> None:
    members = _members(SPEC)
    split = train_validation_split(members, validation_fraction=0.2, seed=3)
    assert set(split) == {m.conversation_id for m in members}
    train = {cid for cid, side in split.items() if side == "train"}
    validation = {cid for cid, side in split.items() if side == "validation"}
    assert not train & validation
    assert len(validation) == 20
    assert split_counts(split) == {"train": 80, "validation": 20}


def test_deterministic_and_independent_of_input_order() -> None:
    members = _members(SPEC)
    a = train_validation_split(members, seed=7)
    shuffled = list(members)
    random.Random(1).shuffle(shuffled)
    assert train_validation_split(shuffled, seed=7) == a
    assert train_validation_split(members, seed=8) != a  # the seed matters


def test_stratified_proportionally() -> None:
    members = _members(SPEC)
    split = train_validation_split(members, validation_fraction=0.1, seed=0)
    by_stratum = Counter(
        (m.persona_key, m.arc_key, m.topic_key) for m in members if split[m.conversation_id] == "validation"
    )
    assert by_stratum == {("p1", "a1", "t1"): 4, ("p1", "a2", "t1"): 3, ("p2", "a1", "t2"): 2, ("p2", "a2", "t2"): 1}


def test_largest_remainder_with_small_strata() -> None:
    # 7 strata of 3 and fraction 0.1 of 21 -> 2 validation places: every stratum has the same
    # remainder, so the seeded stratum order decides; exactly 2 strata give one each.
    spec = {(f"p{i}", "a", "t"): 3 for i in range(7)}
    members = _members(spec)
    split = train_validation_split(members, validation_fraction=0.1, seed=5)
    validation = [m for m in members if split[m.conversation_id] == "validation"]
    assert len(validation) == 2
    assert len({m.persona_key for m in validation}) == 2


def test_at_least_one_each_side_with_two_or_more_members() -> None:
    assert split_counts(train_validation_split(_members({("p", "a", "t"): 2}), validation_fraction=0.01)) == {
        "train": 1,
        "validation": 1,
    }
    assert split_counts(train_validation_split(_members({("p", "a", "t"): 3}), validation_fraction=0.99)) == {
        "train": 1,
        "validation": 2,
    }
    assert train_validation_split(_members({("p", "a", "t"): 1})) == {"p-a-t-0": "train"}
    assert train_validation_split([]) == {}
    # An explicit 0 opts out of validation.
    assert split_counts(train_validation_split(_members({("p", "a", "t"): 5}), validation_fraction=0.0)) == {
        "train": 5,
        "validation": 0,
    }


def test_legacy_members_form_their_own_stratum() -> None:
    members = _members({(None, None, None): 10, ("p", "a", "t"): 10})
    split = train_validation_split(members, validation_fraction=0.2)
    legacy_validation = sum(1 for m in members if m.topic_key is None and split[m.conversation_id] == "validation")
    assert legacy_validation == 2


def test_errors() -> None:
    with pytest.raises(SplitFractionError, match="1.0"):
        train_validation_split(_members({("p", "a", "t"): 3}), validation_fraction=1.0)
    with pytest.raises(SplitFractionError):
        validation_count(10, -0.1)
    members = _members({("p", "a", "t"): 2})
    with pytest.raises(DuplicateMemberError, match="p-a-t-0"):
        train_validation_split([*members, members[0]])


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=8),
    fraction=st.floats(min_value=0.01, max_value=0.9),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_properties(sizes: list[int], fraction: float, seed: int) -> None:
    members = _members({(f"p{i}", "a", "t"): n for i, n in enumerate(sizes)})
    split = train_validation_split(members, validation_fraction=fraction, seed=seed)
    total = len(members)
    counts = split_counts(split)
    assert set(split) == {m.conversation_id for m in members}
    assert counts["validation"] == validation_count(total, fraction)
    if total >= 2:
        assert counts["train"] >= 1 and counts["validation"] >= 1
    # Each stratum gets floor or ceil of its proportional quota.
    v = counts["validation"]
    for i, n in enumerate(sizes):
        got = sum(1 for j in range(n) if split[f"p{i}-a-t-{j}"] == "validation")
        quota = v * n / total
        assert int(quota) <= got <= int(quota) + 1
