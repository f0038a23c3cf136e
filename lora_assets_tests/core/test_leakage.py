"""Train/validation leakage and diversity figures, and the problems they raise."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest

from lora_assets.core.aggregate import LEGACY_KEY, scaffolding_keys
from lora_assets.core.export import ExportWriter
from lora_assets.core.leakage import (
    LeakageStats,
    LeakageThresholds,
    mask_template,
    split_sentences,
)
from lora_assets_tests.core.test_aggregate import make_conversation

CELL = ("pragmatic_optimist", "confusion_to_clarity", "mortgage_payoff_strategy")

# Long, distinct assistant answers (well above the 8-word minimum for turn comparison).
TRAIN_ANSWERS = [
    "It makes sense to feel uneasy about the mortgage. Your emergency fund covers four months of expenses today.",
    "Paying extra each month shortens the loan considerably. Investing the difference could grow faster over decades.",
    "Before any decision we should write down the goals that matter most to your family this year.",
]
VALIDATION_ANSWERS = [
    "Retirement accounts have contribution limits that reset every January. We can plan the order of savings together.",
    "A budget is a plan for your money rather than a restriction on it. Let us start with fixed costs first.",
]


def _example(*answers: str, system: str = "You are an advisor.") -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}]
    for i, answer in enumerate(answers):
        messages += [{"role": "user", "content": f"Question number {i} please?"}, {"role": "assistant", "content": answer}]
    return messages


def _clean_stats() -> LeakageStats:
    stats = LeakageStats()
    stats.add(_example(*TRAIN_ANSWERS[:2]), "train", conversation_id="t1", cell=CELL)
    stats.add(_example(TRAIN_ANSWERS[2]), "train", conversation_id="t2", cell=CELL)
    stats.add(_example(*VALIDATION_ANSWERS), "validation", conversation_id="v1", cell=CELL)
    return stats


def test_sentences_and_templates() -> None:
    assert split_sentences("One two. Three four?\nFive six! ") == ["One two.", "Three four?", "Five six!"]
    assert split_sentences("   ") == []
    a = mask_template("David, you have $12,500 saved at a 4.5% rate with Fidelity.")
    b = mask_template("Maria, you have $3k saved at a 5% rate with Vanguard.")
    assert a == b == "<name>, you have <money> saved at a <num> rate with <name>."
    # A sentence-initial word without a comma is not a name: different openings stay different.
    assert mask_template("Let us plan.") != mask_template("Consider us plan.")
    assert mask_template("I think your IRA is fine.") == "i think your ira is fine."


def test_clean_split_has_no_problems() -> None:
    report = _clean_stats().result()
    o = report.overlap
    assert (report.train_examples, report.validation_examples) == (2, 1)
    assert o.validation_turns == 2 and o.validation_sentences == 4
    assert o.exact_duplicate_turns == o.near_duplicate_turns == o.verbatim_sentences == 0
    assert o.verbatim_rate == 0.0
    assert report.problems() == ([], [])


def test_exact_duplicate_turn_across_split_is_blocking_and_named() -> None:
    stats = _clean_stats()
    # Same turn modulo case and whitespace: normalised text is identical.
    stats.add(_example("  " + TRAIN_ANSWERS[2].upper() + " "), "validation", conversation_id="v2", cell=CELL)
    report = stats.result()
    assert report.overlap.exact_duplicate_turns == 1
    [dup] = report.overlap.exact_examples
    assert (dup.validation_conversation_id, dup.validation_turn, dup.train_conversation_id) == ("v2", 1, "t2")
    blocking, _ = report.problems()
    assert len(blocking) == 1 and "verbatim in train" in blocking[0] and "v2" in blocking[0] and "t2" in blocking[0]
    # Configurable: allowing one duplicate (or switching the rule off) unblocks it.
    assert report.problems(LeakageThresholds(max_exact_duplicate_turns=1))[0] == []
    assert report.problems(LeakageThresholds(max_exact_duplicate_turns=None))[0] == []


def test_verbatim_sentence_overlap_counts_and_rates() -> None:
    stats = _clean_stats()
    # One sentence copied from train inside an otherwise new turn; one short sentence ("I see.")
    # that is in both splits but below min_sentence_words.
    stats.add(
        _example("I see. Your emergency fund covers four months of expenses today. Next we review insurance policies carefully."),
        "validation", conversation_id="v2",
    )
    stats.add(_example("I see. " + TRAIN_ANSWERS[1].split(". ")[1]), "train", conversation_id="t3")
    report = stats.result()
    o = report.overlap
    assert o.validation_sentences == 4 + 2  # "I see." skipped
    assert o.verbatim_sentences == 1
    assert o.verbatim_rate == pytest.approx(1 / 6)
    assert o.exact_duplicate_turns == 0
    _, warnings = report.problems()
    assert any("1 of 6 validation assistant sentences" in w for w in warnings)
    blocking, _ = report.problems(LeakageThresholds(block_verbatim_sentence_rate=0.1))
    assert any("verbatim in train" in b and "blocking above" in b for b in blocking)
    assert report.problems(LeakageThresholds(warn_verbatim_sentence_rate=0.5)) == ([], [])


def test_near_duplicate_turns_found_regardless_of_order() -> None:
    base = (
        "We can reduce the mortgage balance steadily by adding a modest extra payment each month while keeping "
        "enough cash aside for emergencies and for the holidays you told me about last spring when we first met, "
        "and once the car loan is gone in two years the freed budget can go to the retirement account instead, "
        "which keeps your employer match intact and gives the children a calmer picture of the family finances"
    )
    edited = base.replace("modest", "small")  # one word of ~75 changed: Jaccard ≈ 0.92
    results = []
    for order in ("validation-first", "train-first"):
        stats = LeakageStats()
        items = [(_example(edited), "validation", "v1"), (_example(base), "train", "t1")]
        if order == "train-first":
            items.reverse()
        for messages, split, cid in items:
            stats.add(messages, split, conversation_id=cid)
        results.append(stats.result())
    for report in results:
        o = report.overlap
        assert o.exact_duplicate_turns == 0
        assert o.near_duplicate_turns == 1 and o.near_duplicate_rate == 1.0
        [near] = o.near_examples
        assert near.train_conversation_id == "t1" and 0.8 <= near.similarity < 1.0
        blocking, warnings = report.problems()
        assert blocking == [] and any("near-duplicate a train turn" in w for w in warnings)
    assert results[0].overlap == results[1].overlap


def test_short_turns_are_not_compared() -> None:
    stats = LeakageStats()
    stats.add(_example("You are welcome."), "train", conversation_id="t1")
    stats.add(_example("You are welcome."), "validation", conversation_id="v1")
    o = stats.result().overlap
    assert o.short_turns_skipped == 1 and o.validation_turns == 0 and o.exact_duplicate_turns == 0


def test_distinct_n_and_template_rate() -> None:
    stats = LeakageStats()
    # Tokens: "the cat the dog" → 4 tokens, 3 distinct; bigrams the-cat, cat-the, the-dog → 3 / 3.
    stats.add(_example("the cat the dog"), "train", conversation_id="a", cell=("p", "a", "t"))
    # Two turns: bigrams never cross a turn boundary.
    stats.add(_example("the cat", "the cat"), "train", conversation_id="b", cell=("p", "a", "t"))
    d = stats.result().diversity
    assert d.assistant_words == 8
    assert d.distinct_1 == pytest.approx(3 / 8)
    assert d.distinct_2 == pytest.approx(3 / 5)  # the-cat, cat-the, the-dog, the-cat, the-cat
    assert (d.sentences, d.distinct_templates) == (3, 2)
    assert d.top_template == "the cat" and d.top_template_count == 2
    assert d.template_rate == pytest.approx(2 / 3)


def test_templated_answers_detected_overall_and_per_cell() -> None:
    """The factory's answers differ only in names and numbers: masking shows one template."""
    buf_t, buf_v = io.BytesIO(), io.BytesIO()
    convs = [make_conversation(f"c{i}", pairs=3, topic="budgeting" if i % 2 else "mortgage_payoff_strategy") for i in range(8)]
    stats = LeakageStats()
    with ExportWriter(messages_train=buf_t, messages_validation=buf_v) as writer:
        for i, conv in enumerate(convs):
            writer.add(conv, "validation" if i == 7 else "train")
    examples = [(json.loads(line)["messages"], "train") for line in buf_t.getvalue().splitlines()]
    examples += [(json.loads(line)["messages"], "validation") for line in buf_v.getvalue().splitlines()]
    for (messages, split), conv in zip(examples, convs, strict=True):
        stats.add(messages, split, conversation_id=conv.training_pairs[0].conversation_id, cell=scaffolding_keys(conv))
    report = stats.result()
    d = report.diversity
    assert d.sentences == 8 * 3 * 2  # "Answer n for cX: … unsure here." + "Let us look at …"
    # "Let us look at your mortgage rate, … before deciding anything <num>." in every answer.
    assert d.top_template is not None and d.top_template.endswith("before deciding anything <num>.")
    assert d.top_template_count == 24
    assert d.template_rate < 0.5
    assert {(c.topic, c.conversations) for c in report.cells} == {("budgeting", 4), ("mortgage_payoff_strategy", 4)}
    assert all(c.sentences == 24 and c.template_rate < 0.5 for c in report.cells)
    blocking, warnings = report.problems()
    assert blocking == []
    assert any(w.startswith("template rate") for w in warnings)
    assert any("one template makes up" in w for w in warnings)
    assert any("2 persona × arc × topic cell(s)" in w and "budgeting" in w for w in warnings)
    # Thresholds switch each rule off.
    quiet = LeakageThresholds(min_template_rate=None, max_top_template_share=None, min_cell_template_rate=None,
                              warn_verbatim_sentence_rate=None, warn_near_duplicate_turn_rate=None)
    assert report.problems(quiet) == ([], [])


def test_legacy_cell_and_bad_split() -> None:
    stats = LeakageStats()
    stats.add(_example(TRAIN_ANSWERS[0]), "train", conversation_id="t1", cell=(None, None, None))
    stats.add(_example(TRAIN_ANSWERS[1]), "train", conversation_id="t2")
    [cell] = stats.result().cells
    assert (cell.persona, cell.arc, cell.topic, cell.conversations) == (LEGACY_KEY, LEGACY_KEY, LEGACY_KEY, 2)
    with pytest.raises(ValueError, match="split"):
        stats.add(_example("x"), "test", conversation_id="t3")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LeakageStats(near_duplicate_jaccard=0)
    with pytest.raises(ValueError):
        LeakageThresholds(warn_verbatim_sentence_rate=1.5)


def test_file_diversity_counts_every_cell_together() -> None:
    """The file's distinct-1 / distinct-2 are the distinct words / within-turn word pairs of all
    examples together (the union of the cells' codes), counted exactly, here against plain sets;
    also with more distinct words than 16-bit ids hold."""
    import re

    from lora_assets.core.dedup import normalise_text

    many = " ".join(f"w{i}" for i in range(70_000))  # > 65,536 distinct words
    examples = [(_example(*TRAIN_ANSWERS[: i + 1]), "train", ("p", "a", f"t{i % 2}")) for i in range(3)]
    examples += [(_example(*VALIDATION_ANSWERS), "validation", ("p", "a", "t0")), (_example("the cat the cat"), "train", CELL),
                 (_example(many, "w1 w2 w3"), "train", ("q", "a", "t0")), (_example(""), "train", CELL)]
    stats = LeakageStats()
    words: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    total_words = total_pairs = 0
    for i, (messages, split, cell) in enumerate(examples):
        stats.add(messages, split, conversation_id=f"c{i}", cell=cell)
        for m in messages:
            if m["role"] == "assistant":
                turn = re.findall(r"\w+", normalise_text(m["content"]))
                words.update(turn)
                pairs.update(zip(turn, turn[1:]))
                total_words += len(turn)
                total_pairs += max(0, len(turn) - 1)
    diversity = stats.result().diversity
    assert diversity.conversations == len(examples)
    assert diversity.assistant_words == total_words
    assert diversity.distinct_1 == round(len(words) / total_words, 4)
    assert diversity.distinct_2 == round(len(pairs) / total_pairs, 4)


def test_word_counts_recorded_under_their_old_name_still_load() -> None:
    """Versions recorded before the rename say `assistant_tokens` for what is a word count."""
    from lora_assets.core.leakage import Diversity

    assert Diversity.model_validate({"assistant_tokens": 9}).assistant_words == 9
    assert "assistant_words" in Diversity(assistant_words=9).model_dump()


def test_cell_counters_and_template_figures_match_per_group_counting() -> None:
    """`CellCounters` (codes spilled to temp files, counted per cell at the end) and
    `template_figures` (one sort over every sentence) give what counting each group on its own
    gives: distinct words and word pairs, and the top template with its ties broken by first
    occurrence in the group, its text only when it occurs twice in the file or comes first."""
    import random

    import numpy as np

    from lora_assets.core.diversity import CellCounters, DiversityCounter, template_figures

    rng = random.Random(7)
    cells = CellCounters(buckets=3)
    counters: dict[int, DiversityCounter] = {}
    for _ in range(300):
        cell = rng.randrange(9)
        turns = [np.array([rng.randrange(40) for _ in range(rng.randint(0, 12))], dtype=np.uint32)
                 for _ in range(rng.randint(1, 3))]
        cells.add(cell, turns)
        counters.setdefault(cell, DiversityCounter()).add_turns(turns, wide=False)
        counters[cell].conversations += 1
    for cell, figures in enumerate(cells.figures()):
        expected = counters[cell].figures({}) if cell in counters else None
        if expected is None:
            assert figures["conversations"] == 0
            continue
        assert figures == {k: expected[k] for k in ("conversations", "assistant_words", "distinct_1", "distinct_2")}
    cells.close()

    hashes = np.array([rng.randrange(12) for _ in range(500)], dtype=np.uint64)
    owners = np.array([rng.randrange(6) for _ in range(500)], dtype=np.uint32)
    texts = {i: f"template {int(h)}" for i, h in enumerate(hashes)}
    got = template_figures(hashes, owners, 7, lambda wanted: {i: texts[i] for i in wanted})
    counts_in_file = {int(h): int(n) for h, n in zip(*np.unique(hashes, return_counts=True), strict=True)}

    def expected(positions: list[int]) -> dict[str, object]:
        if not positions:
            return {"sentences": 0, "distinct_templates": 0, "top_template": None, "top_template_count": 0}
        seq = [int(hashes[i]) for i in positions]
        counts = {h: seq.count(h) for h in seq}
        top = min(counts, key=lambda h: (-counts[h], seq.index(h)))
        named = counts_in_file[top] >= 2 or top == int(hashes[0])
        return {"sentences": len(seq), "distinct_templates": len(counts),
                "top_template": f"template {top}" if named else None, "top_template_count": counts[top]}

    assert got.overall == expected(list(range(500)))
    assert got.cells == [expected([i for i in range(500) if owners[i] == c]) for c in range(7)]


def test_sorted_unique_is_np_unique() -> None:
    """The sort-based `sorted_unique` the counters use gives `np.unique`'s array (values, dtype)."""
    import numpy as np

    from lora_assets.core.diversity import sorted_unique

    rng = np.random.default_rng(1)
    for n in range(40):
        for dtype in (np.uint16, np.uint32, np.uint64, np.int64):
            values = rng.integers(0, max(1, n), n).astype(dtype)
            got, expected = sorted_unique(values), np.unique(values)
            assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_signatures_made_in_blocks_give_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded turns get their MinHash signatures a block at a time (`_QUERY_BLOCK` turns): the
    report (near duplicates found, with their examples) is the same whatever the block size."""
    import random

    from lora_assets.core import leakage

    rng = random.Random(8)
    words = [f"w{i}" for i in range(30)]
    base = [" ".join(rng.choices(words, k=12)) for _ in range(12)]
    examples = []
    for i in range(60):
        answers = [" ".join(w if rng.random() > 0.1 else "x" for w in rng.choice(base).split()) for _ in range(3)]
        examples.append((_example(*answers), "validation" if i % 4 == 0 else "train"))

    def report(block: int) -> dict:
        monkeypatch.setattr(leakage, "_QUERY_BLOCK", block)
        stats = LeakageStats()
        for i, (messages, split) in enumerate(examples):
            stats.add(messages, split, conversation_id=f"c{i}", cell=CELL)
        return stats.result().model_dump()

    first = report(1024)
    assert first["overlap"]["near_duplicate_turns"] > 0 and first["overlap"]["exact_duplicate_turns"] >= 0
    assert report(1) == report(7) == first


def test_distinct_per_cell_counts_each_cells_own_codes() -> None:
    """One bucket's per-cell distinct counts (keys of cell and code rank, sorted once) are each
    cell's own set size, for 32-bit word ids and 64-bit word-pair codes (of ids below 2**16 or
    not)."""
    import numpy as np

    from lora_assets.core.diversity import _distinct_per_cell

    rng = np.random.default_rng(2)

    def pairs(first_high: int, second_high: int) -> Callable[[int], np.ndarray]:
        return lambda n: ((rng.integers(0, first_high, n, dtype=np.uint64) << np.uint64(32))
                          | rng.integers(0, second_high, n, dtype=np.uint64))

    for n in (0, 1, 5, 300):
        for draw in (lambda n: rng.integers(0, 50, n, dtype=np.uint64).astype(np.uint32),
                     lambda n: rng.integers(0, 2**63, n, dtype=np.uint64),
                     pairs(40, 40), pairs(2**16, 2**16), pairs(40, 2**17), pairs(2**17, 40)):
            codes = draw(n)
            codes[: n // 2] = codes[n // 2 : 2 * (n // 2)]  # repeats, across and within cells
            cells = rng.integers(0, 7, n).astype(np.int64)
            counts, distinct = _distinct_per_cell(codes, cells, 8)
            assert counts.tolist() == [len({int(c) for c, o in zip(codes, cells, strict=True) if o == cell}) for cell in range(8)]
            assert np.array_equal(distinct, np.unique(codes))


def test_digests_found_counts_what_a_set_finds() -> None:
    """The verbatim count's lookup: every asked digest found in the pool counts (repeats too),
    also among pool digests that share their first 8 bytes."""
    import os
    import random

    from lora_assets.core.leakage import _digests_found

    rng = random.Random(4)
    pool = [os.urandom(16) for _ in range(300)]
    pool += [pool[0][:8] + os.urandom(8) for _ in range(3)] + pool[:40]  # shared first words, repeats
    asked = [rng.choice(pool) for _ in range(200)] + [os.urandom(16) for _ in range(100)]
    asked += [pool[0][:8] + os.urandom(8) for _ in range(5)]
    rng.shuffle(asked)
    expected = sum(1 for d in asked if d in set(pool))
    assert _digests_found(b"".join(asked), b"".join(pool)) == expected
    assert expected >= 200
