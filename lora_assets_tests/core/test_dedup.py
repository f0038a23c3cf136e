"""Exact and near-duplicate detection, and the quality filter."""

from __future__ import annotations

import random

import pytest

from lora_assets.core.aggregate import DuplicateMemberError, MemberSummary
from lora_assets.core.dedup import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    Deduplicator,
    normalise_text,
    quality_filter,
    word_shingles,
)
from lora_assets_tests.core.test_aggregate import make_conversation

_VOCAB = (
    "mortgage rate budget savings retirement roth account emergency fund debt payoff invest index "
    "risk tolerance goal timeline family college tax bracket income expense insurance estate will "
    "trust beneficiary allocation bond stock cash flow inflation pension annuity credit score loan "
    "refinance equity home rent lease car child care health plan deductible premium"
).split()


def _text(seed: int, words: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_VOCAB) for _ in range(words)) + "."


def _answers(seed: int, n: int = 3) -> list[str]:
    return [_text(seed * 100 + i) for i in range(n)]


def test_exact_duplicate_after_normalisation_detected_first_kept() -> None:
    answers = _answers(1)
    noisy = ["  " + a.upper().replace(" ", "\n  ") + " " for a in answers]
    dedup = Deduplicator()
    assert dedup.check(make_conversation("a", answers=answers)).keep
    decision = dedup.check(make_conversation("b", answers=noisy, persona="anxious_planner"))
    assert not decision.keep
    assert decision.reason == EXACT_DUPLICATE
    assert decision.duplicate_of == "a"
    s = dedup.stats
    assert (s.checked, s.kept, s.exact_duplicates, s.near_duplicates, s.removed) == (2, 1, 1, 0, 1)


def test_same_user_text_different_answers_are_not_duplicates() -> None:
    questions = ["Same question?"] * 3
    dedup = Deduplicator()
    assert dedup.check(make_conversation("a", answers=_answers(1), questions=questions)).keep
    assert dedup.check(make_conversation("b", answers=_answers(2), questions=questions)).keep


def test_near_duplicate_detected_with_its_original() -> None:
    answers = _answers(3)
    words = answers[1].split()
    words[10] = "completely"
    words[60] = "different"
    near = [answers[0], " ".join(words), answers[2]]
    dedup = Deduplicator()
    assert dedup.check(make_conversation("orig", answers=answers)).keep
    decision = dedup.check(make_conversation("copy", answers=near))
    assert not decision.keep
    assert decision.reason == NEAR_DUPLICATE
    assert decision.duplicate_of == "orig"
    assert decision.similarity is not None and decision.similarity >= 0.85
    assert dedup.stats.near_duplicates == 1


def test_distinct_texts_are_all_kept() -> None:
    dedup = Deduplicator()
    decisions = [dedup.check(make_conversation(f"c{i}", answers=_answers(i + 10))) for i in range(40)]
    assert all(d.keep for d in decisions)
    assert dedup.stats.kept == 40 and dedup.stats.removed == 0


def test_deterministic_across_instances() -> None:
    convs = []
    for i in range(12):
        base = _answers(i % 4 + 50)
        words = base[0].split()
        words[i] = "tweak"
        convs.append(make_conversation(f"c{i}", answers=[" ".join(words), *base[1:]]))
    runs = []
    for _ in range(2):
        dedup = Deduplicator()
        runs.append([dedup.check(c) for c in convs])
    assert runs[0] == runs[1]
    assert [d.keep for d in runs[0]][:4] == [True] * 4
    assert not any(d.keep for d in runs[0][4:])


def test_threshold_parameter_controls_near_duplicates() -> None:
    answers = _answers(7)
    words = answers[0].split()
    for i in range(0, len(words), 8):  # ~12% of words changed
        words[i] = "changed"
    near = [" ".join(words), *answers[1:]]
    strict = Deduplicator(threshold=0.99)
    strict.check(make_conversation("a", answers=answers))
    assert strict.check(make_conversation("b", answers=near)).keep
    loose = Deduplicator(threshold=0.5)
    loose.check(make_conversation("a", answers=answers))
    assert not loose.check(make_conversation("b", answers=near)).keep
    with pytest.raises(ValueError, match="threshold"):
        Deduplicator(threshold=0)


def test_conversation_without_answers_kept_and_counted() -> None:
    dedup = Deduplicator()
    assert dedup.check(make_conversation("e1", pairs=1, unanswered_last=True)).keep
    assert dedup.check(make_conversation("e2", pairs=1, unanswered_last=True)).keep
    assert dedup.stats.without_target_text == 2


def test_same_id_twice_is_a_caller_error() -> None:
    dedup = Deduplicator()
    dedup.check(make_conversation("x"))
    with pytest.raises(DuplicateMemberError, match="'x'"):
        dedup.check(make_conversation("x", answers=_answers(99)))


def test_helpers() -> None:
    assert normalise_text("  Ａ\tB\n\nc ") == "a b c"
    assert word_shingles("one two", 3) == {"one two"}
    assert word_shingles("a b c d", 3) == {"a b c", "b c d"}
    assert word_shingles("...", 3) == set()


def test_quality_filter_on_summary_and_conversation() -> None:
    conv = make_conversation("q", pairs=2, quality=[3.0, 4.0])  # mean 3.5
    assert quality_filter(conv, 3.5)
    assert not quality_filter(conv, 3.6)
    assert quality_filter(conv, None)
    summary = MemberSummary(conversation_id="q", quality_score=2.9)
    assert not quality_filter(summary, 3.0)
    assert quality_filter(summary, 2.9)
    unscored = MemberSummary(conversation_id="u")
    assert quality_filter(unscored, None)
    assert not quality_filter(unscored, 0.0)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_band_index_returns_exactly_what_datasketch_lsh_returns(threshold: float) -> None:
    """`BandIndex` (compact numpy arrays) replaces datasketch's MinHashLSH index: for the same
    bands, every query returns the same kept signatures, across merges of its sorted part."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from lora_assets.core.dedup import BandIndex

    num_perm = 64
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    index = BandIndex(lsh.b, lsh.r, num_perm)
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**32, size=(40, num_perm), dtype=np.uint64)
    for i in range(700):  # > 2 merges of 256; near copies of 40 bases share some bands
        sig = base[i % 40].copy()
        sig[rng.random(num_perm) < rng.uniform(0.05, 0.9)] = rng.integers(0, 2**32, dtype=np.uint64)
        mh = MinHash(num_perm=num_perm, hashvalues=sig, scheme=MinHash(num_perm=num_perm).scheme)
        expected = sorted(int(k) for k in lsh.query(mh))
        assert index.candidates(sig.astype(np.uint32)) == expected, i
        if i % 3:  # keep two in three, as a deduplicator keeps only non-duplicates
            lsh.insert(str(index.insert(sig.astype(np.uint32))), mh)


def _mixed_corpus(n: int) -> list:
    """Conversations with exact, near and no duplicates, some without answers, some very short."""
    rng = random.Random(11)
    convs = []
    given: list[list[str]] = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.2 and given:
            answers = list(rng.choice(given))  # a copy of an earlier one's answers
        elif kind < 0.4 and given:
            answers = list(rng.choice(given))
            words = answers[1].split()
            for _ in range(rng.randint(1, 12)):
                words[rng.randrange(len(words))] = rng.choice(_VOCAB)
            answers[1] = " ".join(words)
        elif kind < 0.45:
            answers = [rng.choice(_VOCAB)] * 3  # fewer words than a shingle, answer by answer
        else:
            answers = _answers(1000 + i)
        given.append(answers)
        if kind > 0.95:
            convs.append(make_conversation(f"c{i}", pairs=1, unanswered_last=True))
        else:
            convs.append(make_conversation(f"c{i}", answers=answers))
    return convs


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_prepared_checks_decide_as_plain_checks(batch: int) -> None:
    """`prepare` + `check(prepared=…)` over batches gives the decisions of `check` alone, also when
    a batch is interrupted by an unprepared check (its remaining prepared checks then fall back)."""
    from lora_assets.core.dedup import TargetTexts

    convs = _mixed_corpus(300)
    plain = Deduplicator()
    expected = [plain.check(c) for c in convs]
    assert sum(not d.keep for d in expected) > 30  # the corpus has duplicates of both kinds
    assert {d.reason for d in expected} >= {EXACT_DUPLICATE, NEAR_DUPLICATE}
    prepared_dedup = Deduplicator()
    got = []
    for start in range(0, len(convs), batch):
        chunk = convs[start : start + batch]
        targets = [TargetTexts.of(c) for c in chunk]
        prepared = prepared_dedup.prepare(targets)
        for i, (conv, t, p) in enumerate(zip(chunk, targets, prepared, strict=True)):
            if start % 5 == 0 and i == 2:
                got.append(prepared_dedup.check(conv, targets=t))  # out of turn: the rest fall back
            else:
                got.append(prepared_dedup.check(conv, targets=t, prepared=p))
    assert got == expected
    assert prepared_dedup.stats == plain.stats
