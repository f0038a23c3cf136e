"""Dataset card (Hugging Face README.md) of a training-file version."""

from __future__ import annotations

import io

import yaml

from lora_assets.core.aggregate import AggregateWriter
from lora_assets.core.card import SIMULATOR_NOTE, SourceBatch, dataset_card, size_category
from lora_assets.core.dedup import Deduplicator
from lora_assets.core.export import ExportWriter
from lora_assets_tests.core.test_aggregate import make_conversation


def _inputs():
    convs = [
        make_conversation("c1", pairs=3, quality=4.2, human_reviewed=True),
        make_conversation("c2", pairs=2, persona="anxious_planner", quality=3.1),
        make_conversation("c3", pairs=2, persona="anxious_planner", arc="fear_to_confidence", quality=4.9),
        make_conversation("c4", pairs=2, legacy=True, quality=2.4),
    ]
    dedup = Deduplicator()
    for conv in convs:
        dedup.check(conv)
    agg = AggregateWriter(io.BytesIO())
    exp = ExportWriter(messages_train=io.BytesIO(), messages_validation=io.BytesIO())
    for conv, split in zip(convs, ["train", "train", "validation", "train"], strict=True):
        agg.add(conv)
        exp.add(conv, split)
    return agg.stats, exp.close(), dedup.stats


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    end = card.index("\n---\n", 4)
    return yaml.safe_load(card[4:end])


CLAUDE = SourceBatch(
    batch_id="b-1", name="December run", model="claude-haiku-5-5", generator="claude",
    created="2025-12-01T10:00:00Z", conversations=3, cost_usd=0.0421,
)
SIM = SourceBatch(
    batch_id="b-2", name="demo | sim", model="claude-haiku-5-5", generator="simulator",
    created="2025-12-02T09:00:00Z", conversations=1, cost_usd=0.0,
)


def test_front_matter_is_hugging_face_metadata() -> None:
    stats, export, dedup = _inputs()
    card = dataset_card(name="prod_batch_001", stats=stats, export=export, dedup=dedup, sources=[CLAUDE])
    meta = _front_matter(card)
    assert meta["task_categories"] == ["text-generation"]
    assert meta["language"] == ["en"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "train.messages.jsonl"},
                {"split": "validation", "path": "validation.messages.jsonl"},
            ],
        }
    ]
    assert meta["pretty_name"] == "prod_batch_001"


def test_body_has_counts_quality_distributions_cost_curation_split_provenance() -> None:
    stats, export, dedup = _inputs()
    card = dataset_card(
        name="prod_batch_001",
        version=3,
        stats=stats,
        export=export,
        dedup=dedup,
        min_quality=2.0,
        quality_filtered_out=5,
        validation_fraction=0.25,
        split_seed=7,
        sources=[CLAUDE],
    )
    assert "# prod_batch_001 (v3)" in card
    assert "| conversations | 4 |" in card
    assert f"| training pairs (JSONL lines) | {stats.total_training_pairs} |" in card
    assert f"{stats.estimated_tokens:,}" in card
    q = stats.quality_summary
    assert f"| {q.avg_quality_score:.2f} | {q.min_quality_score:.2f} | {q.max_quality_score:.2f} | 1 |" in card
    assert "[4.5, 5.0] " in card and "█" in card  # text histogram
    assert "| anxious_planner | 2 | 50.0% |" in card
    assert "| fear_to_confidence | 1 | 25.0% |" in card
    assert "| (legacy) | 1 | 25.0% |" in card
    assert "Claude (claude-haiku-5-5)" in card
    assert "$0.0421" in card
    assert "| excluded below quality 2 | 5 |" in card
    assert "| exact duplicates removed | 0 |" in card
    assert "| train | 3 | 7 |" in card and "| validation | 1 | 2 |" in card
    assert "validation fraction 0.25, seed 7" in card
    assert "| b-1 | December run | claude-haiku-5-5 | Claude | 2025-12-01T10:00:00Z | 3 | 0.0421 |" in card
    assert SIMULATOR_NOTE not in card


def test_card_mentions_simulator_when_generator_is_simulator() -> None:
    stats, export, dedup = _inputs()
    card = dataset_card(name="demo", stats=stats, export=export, dedup=dedup, sources=[SIM])
    assert "simulator — not real Claude output" in card
    assert "Warning" in card
    assert "simulated" in _front_matter(card)["tags"]
    assert "demo \\| sim" in card  # a pipe in a batch name does not break the table

    mixed = dataset_card(name="demo", stats=stats, export=export, sources=[CLAUDE, SIM])
    assert "mixed: Claude (claude-haiku-5-5)" in mixed
    assert SIMULATOR_NOTE in mixed


def test_card_without_export_or_sources() -> None:
    stats, _, _ = _inputs()
    card = dataset_card(name="bare", stats=stats, sources=[], validation_file=None)
    meta = _front_matter(card)
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "train.messages.jsonl"}]
    assert "unknown (no source batches were recorded)" in card
    assert "| deduplication | not run |" in card
    assert "Total generation cost:** unknown" in card


def test_size_categories() -> None:
    assert size_category(0) == "n<1K"
    assert size_category(999) == "n<1K"
    assert size_category(1000) == "1K<n<10K"
    assert size_category(250_000) == "100K<n<1M"


def _length_and_leakage():
    """Token-length and leakage reports of the `_inputs` conversations, as a build streams them."""
    from lora_assets.core.aggregate import scaffolding_keys
    from lora_assets.core.export import chat_example
    from lora_assets.core.leakage import LeakageStats
    from lora_assets.core.tokens import LengthStats

    lengths, leakage = LengthStats(), LeakageStats()
    convs = [
        make_conversation("c1", pairs=3),
        make_conversation("c2", pairs=2, persona="anxious_planner"),
        make_conversation("c3", pairs=2, persona="anxious_planner", arc="fear_to_confidence"),
    ]
    for conv, split in zip(convs, ["train", "train", "validation"], strict=True):
        example = chat_example(conv)
        assert example is not None
        lengths.add(example.messages)
        leakage.add(example.messages, split, conversation_id=example.conversation_id, cell=scaffolding_keys(conv))
    return lengths.result(max_length=128), leakage.result()


def test_card_token_lengths_overlap_diversity_and_filters_sections() -> None:
    stats, export, dedup = _inputs()
    plain = dataset_card(name="x", stats=stats, export=export, sources=[CLAUDE])
    assert "## Token lengths" not in plain and "## Overlap and diversity" not in plain
    assert "Filters that ran" not in plain

    lengths, leakage = _length_and_leakage()
    card = dataset_card(
        name="x", stats=stats, export=export, dedup=dedup, sources=[CLAUDE],
        lengths=lengths, leakage=leakage, filters_run=["dedup", "quality ≥ 3.5"],
    )
    # Token lengths: method labelled as an estimate, percentiles, recommendations, truncation.
    assert "## Token lengths" in card
    assert "`estimate: chars/4 + 10%` — an **estimate** (characters / 4 plus a 10% margin)" in card
    assert "plus 11 chat-template tokens per message; an assistant turn trains its content and its turn-end token" in card
    e = lengths.examples
    assert f"| examples | 3 | {e.p50} | {e.p95} | {e.p99} | {e.max} |" in card
    a = lengths.assistant_turns
    assert f"| trained tokens per assistant turn (turn end included) | 7 | {a.p50} | {a.p95} | {a.p99} | {a.max} |" in card
    assert f"**Trained (assistant) tokens:** {lengths.assistant_tokens:,} (turn-end tokens included)" in card
    assert lengths.recommended_sequence_len == lengths.recommended_max_length >= e.max
    assert (f"Recommended Axolotl `sequence_len`:** {lengths.recommended_sequence_len} (the longest example rounded "
            "up to a multiple of 64: drops or truncates nothing by this count)") in card
    assert f"Recommended TRL `max_length`:** {lengths.recommended_max_length}" in card
    t = lengths.truncation
    assert t is not None and t.examples_over == 3  # every example is longer than 128 tokens
    assert t.assistant_tokens_total == lengths.assistant_tokens
    assert (f"At max_length 128:** 3 example(s) exceed it; {t.assistant_tokens_cut:,} of {t.assistant_tokens_total:,}"
            in card)
    # Word counts say words: the diversity figures are not tokenizer tokens.
    assert f"| assistant words (not tokens) | {leakage.diversity.assistant_words:,} |" in card
    assert "| assistant tokens |" not in card
    # Overlap and diversity figures and the per-cell table.
    assert "## Overlap and diversity" in card
    assert "| validation assistant turns identical to a train turn (≥ 8 words) | 0 of 2 (0.0%) |" in card
    assert f"{leakage.diversity.distinct_1:.3f} / {leakage.diversity.distinct_2:.3f}" in card
    assert "| anxious_planner | fear_to_confidence | mortgage_payoff_strategy | 1 |" in card
    assert "most repeated template" in card
    # Filters, under Curation.
    assert "Filters that ran: `dedup`, `quality ≥ 3.5`." in card
    assert card.index("## Token lengths") < card.index("## Quality") < card.index("## Overlap and diversity") < card.index("## Source batches")


def test_card_names_the_tokenizer_when_one_counted(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from lora_assets.core.tokens import LengthStats, TokenizerCounter

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["a small corpus of words"] * 5, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    lengths = LengthStats(TokenizerCounter(tmp_path))
    lengths.add([{"role": "user", "content": "a small question"}, {"role": "assistant", "content": "a small answer"}])
    stats, export, _ = _inputs()
    card = dataset_card(name="x", stats=stats, export=export, sources=[CLAUDE], lengths=lengths.result(), filters_run=[])
    assert f"Counted with the tokenizer `{tmp_path / 'tokenizer.json'}` (no chat template next to it)" in card
    assert "plus 5 chat-template tokens per message" in card
    assert "estimate" not in card.split("## Token lengths")[1].split("## Quality")[0]
    assert "At max_length" not in card
    assert "Filters that ran: none." in card


def test_card_counts_review_rejections_only_when_given() -> None:
    stats, export, dedup = _inputs()
    card = dataset_card(name="reviewed", stats=stats, export=export, dedup=dedup, sources=[CLAUDE],
                        review_rejected_out=2, filters_run=["review-rejected", "dedup"])
    assert "| excluded: rejected in human review | 2 |" in card
    assert card.index("rejected in human review") < card.index("| quality filter | none |")
    assert "Filters that ran: `review-rejected`, `dedup`." in card
    assert "rejected in human review" not in dataset_card(name="plain", stats=stats, export=export, sources=[CLAUDE])
