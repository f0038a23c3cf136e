"""Token lengths: tokenizer-backed and estimated counts, percentiles, recommendations, truncation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from lora_assets.core.export import ExportWriter
from lora_assets.core.tokens import (
    BATCH,
    ESTIMATE_METHOD,
    ESTIMATE_OVERHEAD_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    CharEstimateCounter,
    LengthStats,
    TokenCounter,
    TokenizerCounter,
    TokenizerLoadError,
    percentiles,
    round_up,
    token_counter,
)
from lora_assets_tests.core.test_aggregate import make_conversation

CORPUS = [
    "It makes sense to feel unsure about paying off the mortgage early.",
    "Let us look at your emergency fund and the interest rate before deciding.",
    "Should I invest the difference or pay down the loan?",
] * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level BPE tokenizer trained here on a few sentences (no downloads), saved as
    an HF tokenizer directory."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=1000, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|im_start|>", "<|im_end|>"]),
    )
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _messages(system: str, *turns: str) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}]
    out += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return out


def test_estimate_is_chars_over_four_plus_its_margin_and_labelled() -> None:
    counter = token_counter(None)
    assert isinstance(counter, TokenCounter)
    assert counter.method == ESTIMATE_METHOD == "estimate: chars/4 + 10%"
    assert counter.counting == "message_overhead" and counter.chat_template is None
    assert counter.message_overhead_tokens == ESTIMATE_OVERHEAD_TOKENS == 11
    # ceil(chars × 1.1 / 4), exact at multiples (no float rounding: 400 chars → 110, not 111).
    assert counter.count_many(["", "abcd", "abcde", "x" * 400, "x" * 40]) == [0, 2, 2, 110, 11]


def test_tokenizer_counter_counts_real_tokens(tokenizer_dir: Path) -> None:
    counter = token_counter(tokenizer_dir)  # a directory holding tokenizer.json, no chat template
    assert isinstance(counter, TokenizerCounter)
    assert counter.counting == "message_overhead" and counter.message_overhead_tokens == MESSAGE_OVERHEAD_TOKENS
    assert counter.method == str(tokenizer_dir / "tokenizer.json")
    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text = "Let us look at your emergency fund."
    [n] = counter.count_many([text])
    assert n == len(raw.encode(text, add_special_tokens=False).ids)
    # Trained on this vocabulary, BPE merges words: far fewer tokens than bytes.
    assert 0 < n < len(text) / 2
    # Unseen text falls back to (nearly) bytes: more tokens per character than trained phrases.
    unseen_text = "Zygomorphic quixotry"
    [unseen] = counter.count_many([unseen_text])
    assert unseen / len(unseen_text) > n / len(text)
    assert TokenizerCounter(tokenizer_dir / "tokenizer.json").count_many([text]) == [n]


def test_tokenizer_path_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerLoadError, match="no tokenizer.json"):
        TokenizerCounter(tmp_path)
    with pytest.raises(TokenizerLoadError, match="does not exist"):
        TokenizerCounter(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerLoadError, match="cannot be loaded"):
        TokenizerCounter(bad)


def test_example_length_includes_template_overhead_and_positions_trained_spans(tokenizer_dir: Path) -> None:
    stats = LengthStats(TokenizerCounter(tokenizer_dir))
    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    system, user, answer = "Let us look", "Should I invest", "It makes sense to feel unsure"
    s, u, a = (len(raw.encode(t, add_special_tokens=False).ids) for t in (system, user, answer))
    stats.add(_messages(system, user, answer))
    [length] = stats.lengths
    assert length == s + u + a + 3 * MESSAGE_OVERHEAD_TOKENS
    # The assistant content starts after two framed messages and its header; its turn end (1) is trained.
    start = (3 + s + 2) + (3 + u + 2) + 3
    trained = a + 1
    assert stats.over(length).assistant_tokens_cut == 0 and stats.over(length).examples_over == 0
    assert stats.over(length - 1).examples_over == 1 and stats.over(length - 1).assistant_tokens_cut == 0  # "\n"
    assert stats.over(start + trained - 1).assistant_tokens_cut == 1  # only the turn end is cut
    assert stats.over(start + 2).assistant_tokens_cut == trained - 2
    assert stats.over(start).assistant_tokens_cut == trained
    assert stats.over(5).assistant_tokens_cut == trained
    assert stats.over(start + 2).assistant_tokens_total == trained == stats.result().assistant_tokens
    assert stats.over(start + 2).assistant_cut_rate == pytest.approx((trained - 2) / trained)
    with pytest.raises(ValueError):
        stats.over(0)


def test_percentiles_nearest_rank_and_recommendations() -> None:
    p = percentiles(list(range(1, 101)))
    assert (p.count, p.p50, p.p95, p.p99, p.max, p.mean) == (100, 50, 95, 99, 100, 50.5)
    assert percentiles([]).count == 0
    assert round_up(1) == 64 and round_up(64) == 64 and round_up(65) == 128 and round_up(0) == 64

    stats = LengthStats()
    for i in range(1, 101):
        # One message of 40*i characters: 11*i estimated tokens (chars/4 + 10%) + 11 of template.
        stats.add([{"role": "assistant", "content": "a" * (40 * i)}])
    report = stats.result(max_length=512)
    assert report.method == ESTIMATE_METHOD and report.estimate_margin == 0.1
    assert report.message_overhead_tokens == ESTIMATE_OVERHEAD_TOKENS
    assert report.examples.p99 == 1089 + ESTIMATE_OVERHEAD_TOKENS
    assert report.examples.max == 1100 + ESTIMATE_OVERHEAD_TOKENS
    # Both recommendations keep the longest example whole: 1108 → next multiple of 64.
    assert report.recommended_sequence_len == report.recommended_max_length == 1152
    assert report.truncation is not None and report.truncation.max_length == 512
    # Examples of 11*i + 8 tokens longer than 512: i ≥ 46 → 55 examples.
    assert report.truncation.examples_over == 55
    # Each loses its trained tokens (content from position 6, then the turn end) at positions ≥ 512.
    assert report.truncation.assistant_tokens_cut == sum(9 + 11 * i + 1 - 512 for i in range(46, 101))  # header 9 + content + turn end
    assert report.assistant_tokens == sum(11 * i + 1 for i in range(1, 101))
    assert stats.result().truncation is None


def test_empty_stats_default_sequence_len() -> None:
    report = LengthStats().result()
    assert report.examples.count == 0
    assert report.recommended_sequence_len == 2048


def test_turn_stats_split_by_role_and_system_excluded() -> None:
    stats = LengthStats()
    stats.add(_messages("s" * 400, "u" * 40, "a" * 80, "u" * 4, "a" * 8))
    report = stats.result()
    assert report.turns.count == 4
    assert report.turns.max == 22 + ESTIMATE_OVERHEAD_TOKENS
    assert report.assistant_turns.count == 2
    assert report.assistant_turns.max == 22 + 1  # trained: content + turn end
    assert report.examples.max == 110 + 11 + 22 + 2 + 3 + 5 * ESTIMATE_OVERHEAD_TOKENS


def test_examples_are_counted_in_batches_in_the_order_added() -> None:
    """Buffered for one tokenizer call per batch: every example counted once, none lost at the
    end, and the same figures as one at a time."""
    stats = LengthStats()
    sizes = [(i * 37) % 301 + 1 for i in range(BATCH * 2 + 7)]
    for n in sizes:
        stats.add(_messages("system", "q" * n, "a" * (2 * n)))
    assert stats.result().examples.count == len(sizes)
    one = []
    for n in sizes[:20]:
        single = LengthStats()
        single.add(_messages("system", "q" * n, "a" * (2 * n)))
        one.append(single.result().examples.max)
    assert stats.lengths[:20] == one


def test_exported_messages_with_tokenizer_and_estimate(tokenizer_dir: Path) -> None:
    """The accumulators read exactly what the messages export writes."""
    buf = io.BytesIO()
    with ExportWriter(messages_train=buf) as writer:
        for i in range(5):
            writer.add(make_conversation(f"c{i}", pairs=i + 1), "train")
    examples = [json.loads(line)["messages"] for line in buf.getvalue().splitlines()]
    real, estimate = LengthStats(TokenizerCounter(tokenizer_dir)), LengthStats()
    for messages in examples:
        real.add(messages)
        estimate.add(messages)
    r, e = real.result(max_length=256), estimate.result(max_length=256)
    assert r.method.endswith("tokenizer.json") and e.method == ESTIMATE_METHOD
    assert r.examples.count == e.examples.count == 5
    assert r.assistant_turns.count == 1 + 2 + 3 + 4 + 5
    # Longest example is the 5-pair conversation; both methods agree on the ordering.
    assert r.examples.max > r.examples.p50 and e.examples.max > e.examples.p50
    assert r.truncation is not None and r.truncation.assistant_tokens_total > 0
    assert r.recommended_sequence_len >= r.examples.p99 and r.recommended_sequence_len % 64 == 0


def test_reports_recorded_before_the_chat_template_still_load() -> None:
    """A version row's `stats` from before: no counting / template / trained-token fields."""
    from lora_assets.core.tokens import LengthReport

    old = {"method": "estimate: chars/4", "message_overhead_tokens": 5,
           "examples": {"count": 2, "p50": 10, "p95": 12, "p99": 12, "max": 12, "mean": 11.0},
           "turns": {"count": 4}, "assistant_turns": {"count": 2}, "recommended_sequence_len": 64,
           "recommended_max_length": 64, "truncation": None}
    report = LengthReport.model_validate(old)
    assert report.counting == "message_overhead" and report.chat_template is None and report.assistant_tokens == 0
