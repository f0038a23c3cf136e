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


# --- duplicate groups: conversations sharing an assistant turn never straddle the split -------

from lora_assets.core.leakage import LeakageStats  # noqa: E402
from lora_assets.core.split import (  # noqa: E402
    duplicate_groups,
    grouped_split,
    turn_keys,
)

SHARED = "It makes sense to keep three months of expenses in an easy access savings account first."


def _answers(members: list[MemberSummary], shared_by: set[str]) -> dict[str, list[str]]:
    """Two assistant turns per member: one of its own, plus `SHARED` for the ids in `shared_by`."""
    return {
        m.conversation_id: [f"Your own situation {m.conversation_id} deserves a plan we build together step by step.",
                            SHARED if m.conversation_id in shared_by else f"A second answer only for {m.conversation_id} here."]
        for m in members
    }


def _straddling(split: dict[str, str], answers: dict[str, list[str]]) -> list[str]:
    """Assistant turns that occur on both sides (the leakage check's exact duplicates)."""
    sides: dict[str, set[str]] = {}
    for cid, turns in answers.items():
        for turn in turns:
            sides.setdefault(" ".join(turn.lower().split()), set()).add(split[cid])
    return [t for t, s in sides.items() if len(s) == 2]


def test_turn_keys_normalise_and_skip_short_turns() -> None:
    assert turn_keys([SHARED]) == turn_keys(["  " + SHARED.upper().replace(" ", "\n ")])
    assert turn_keys(["I understand.", None]) == frozenset()
    assert len(turn_keys([SHARED, SHARED, SHARED + " Really."])) == 2


def test_union_find_groups_transitively() -> None:
    keys = {"a": {b"1"}, "b": {b"1", b"2"}, "c": {b"2"}, "d": {b"3"}}
    assert duplicate_groups(["d", "c", "b", "a", "e"], keys) == [["a", "b", "c"], ["d"], ["e"]]


def test_conversations_sharing_a_turn_never_straddle_the_split() -> None:
    members = _members(SPEC)
    # Every fifth conversation of every stratum shares one answer (20 of 100, across strata).
    shared_by = {m.conversation_id for m in members if int(m.conversation_id.rsplit("-", 1)[1]) % 5 == 0}
    answers = _answers(members, shared_by)
    keys = {cid: turn_keys(turns) for cid, turns in answers.items()}
    for seed in range(20):
        result = grouped_split(members, validation_fraction=0.2, seed=seed, keys=keys)
        assert _straddling(result.sides, answers) == []
        assert len({result.sides[cid] for cid in shared_by}) == 1
        # The 20-member group fits the 20 validation places only alone; otherwise it costs nothing.
        assert result.report.shared_turn_groups == 1 and result.report.grouped_conversations == 20
        assert result.report.validation == split_counts(result.sides)["validation"]
        assert result.report.validation_wanted == 20
        assert result.report.line() is None
    # The leakage check, fed the same turns, finds no exact duplicate across the split.
    stats = LeakageStats()
    for cid, turns in answers.items():
        stats.add([{"role": "user", "content": "?"}, {"role": "assistant", "content": turns[0]},
                   {"role": "user", "content": "?"}, {"role": "assistant", "content": turns[1]}],
                  result.sides[cid], conversation_id=cid)
    assert stats.result().overlap.exact_duplicate_turns == 0


def test_when_every_conversation_shares_one_turn_nothing_goes_to_validation() -> None:
    members = _members(SPEC)
    answers = _answers(members, {m.conversation_id for m in members})
    keys = {cid: turn_keys(turns) for cid, turns in answers.items()}
    result = grouped_split(members, validation_fraction=0.1, seed=0, keys=keys)
    assert split_counts(result.sides) == {"train": 100, "validation": 0}
    assert _straddling(result.sides, answers) == []
    assert result.report.groups == 1 and result.report.largest_group == 100
    assert result.report.validation_lost == 10
    line = result.report.line()
    assert line is not None and line.startswith("no validation set") and "\n" not in line


def test_groups_keep_stratification_where_they_can() -> None:
    # Pairs of conversations within one stratum share a turn: groups of 2 fit every quota.
    members = _members(SPEC)
    keys = {m.conversation_id: {m.conversation_id.rsplit("-", 1)[0].encode() + bytes([int(m.conversation_id.rsplit("-", 1)[1]) // 2])}
            for m in members}
    result = grouped_split(members, validation_fraction=0.1, seed=0, keys=keys)
    by_stratum = Counter(
        (m.persona_key, m.arc_key, m.topic_key) for m in members if result.sides[m.conversation_id] == "validation"
    )
    assert sum(by_stratum.values()) == 10
    assert by_stratum[("p1", "a1", "t1")] == 4 and by_stratum[("p1", "a2", "t1")] in (2, 3, 4)
    for a, b in zip(members[::2], members[1::2], strict=True):
        assert result.sides[a.conversation_id] == result.sides[b.conversation_id]


def test_grouping_is_deterministic_and_order_free() -> None:
    members = _members(SPEC)
    answers = _answers(members, {m.conversation_id for m in members[::7]})
    keys = {cid: turn_keys(turns) for cid, turns in answers.items()}
    shuffled = list(members)
    random.Random(2).shuffle(shuffled)
    assert grouped_split(shuffled, seed=4, keys=keys) == grouped_split(members, seed=4, keys=keys)
    # Without shared turns it is exactly the ungrouped split.
    assert train_validation_split(members, seed=4, keys={}) == train_validation_split(members, seed=4)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=6),
    links=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 4)), max_size=40),
    fraction=st.floats(min_value=0.01, max_value=0.9),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_groups_never_straddle_properties(sizes: list[int], links: list[tuple[int, int]], fraction: float,
                                          seed: int) -> None:
    members = _members({(f"p{i}", "a", "t"): n for i, n in enumerate(sizes)})
    ids = [m.conversation_id for m in members]
    keys: dict[str, set[bytes]] = {}
    for member, key in links:
        keys.setdefault(ids[member % len(ids)], set()).add(bytes([key]))
    result = grouped_split(members, validation_fraction=fraction, seed=seed, keys=keys)
    for key in {k for ks in keys.values() for k in ks}:
        assert len({result.sides[cid] for cid, ks in keys.items() if key in ks}) == 1
    counts = split_counts(result.sides)
    assert counts["validation"] <= validation_count(len(members), fraction)
    assert counts["validation"] == result.report.validation
    if not keys:
        assert counts["validation"] == validation_count(len(members), fraction)


def test_card_reports_the_groups_and_their_cost() -> None:
    # Kept here rather than in test_card.py: it is the split's report the card renders.
    from lora_assets.core.card import dataset_card
    from lora_assets_tests.core.test_card import _inputs

    stats, export, dedup = _inputs()
    members = _members(SPEC)
    answers = _answers(members, {m.conversation_id for m in members})
    report = grouped_split(members, keys={c: turn_keys(t) for c, t in answers.items()}).report
    card = dataset_card(name="grouped", stats=stats, sources=[], export=export, dedup=dedup, split_report=report)
    assert "1 group(s) of 100 conversation(s) (largest 100); validation 0 of 10 wanted (10 place(s) lost" in card
    assert "**no validation set: the 100 conversations form 1 group(s)" in card
    assert "sharing an identical assistant turn" not in dataset_card(name="plain", stats=stats, sources=[])


def test_shared_turns_by_position_split_as_the_mapping_does() -> None:
    """`SharedTurns` (flat digests by member position, what a build holds) gives the same sides
    and report as the mapping of ids to digest sets, groups of every size included."""
    import hashlib

    from lora_assets.core.split import SharedTurns, grouped_split

    rng = random.Random(5)
    cells = [(f"p{i % 3}", f"a{i % 2}", f"t{i % 4}") for i in range(24)]
    for trial in range(20):
        members = [MemberSummary(conversation_id=f"c{trial}-{i:03d}", persona_key=p, arc_key=a, topic_key=t)
                   for i, (p, a, t) in enumerate(rng.choices(cells, k=rng.randint(2, 120)))]
        pool = [hashlib.blake2b(str(k).encode(), digest_size=16).digest() for k in range(rng.randint(1, 60))]
        mapping = {m.conversation_id: frozenset(rng.sample(pool, min(len(pool), rng.randint(0, 2)))) for m in members}
        flat = SharedTurns()
        for position, m in enumerate(members):
            flat.add(position, mapping[m.conversation_id])
        for fraction in (0.1, 0.3):
            by_mapping = grouped_split(members, validation_fraction=fraction, seed=trial, keys=mapping)
            by_position = grouped_split(members, validation_fraction=fraction, seed=trial, keys=flat)
            assert by_position.sides == by_mapping.sides and by_position.report == by_mapping.report
    with pytest.raises(ValueError, match="16 bytes"):
        SharedTurns().add(0, [b"short"])
