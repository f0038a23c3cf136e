"""Token lengths: tokenizer-backed and estimated counts, percentiles, recommendations, truncation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from lora_assets.core.export import ExportWriter
from lora_assets.core.tokens import (
    ESTIMATE_METHOD,
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


def test_estimate_is_chars_over_four_and_labelled() -> None:
    counter = token_counter(None)
    assert isinstance(counter, TokenCounter)
    assert counter.method == ESTIMATE_METHOD == "estimate: chars/4"
    assert counter.count_many(["", "abcd", "abcde", "x" * 400]) == [0, 1, 2, 100]


def test_tokenizer_counter_counts_real_tokens(tokenizer_dir: Path) -> None:
    counter = token_counter(tokenizer_dir)  # a directory holding tokenizer.json
    assert isinstance(counter, TokenizerCounter)
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


def test_example_length_includes_template_overhead_and_positions_assistant_spans() -> None:
    stats = LengthStats(CharEstimateCounter())
    # system 8 chars = 2 tokens, user 4 = 1, assistant 40 = 10
    length = stats.add(_messages("s" * 8, "u" * 4, "a" * 40))
    assert length == 2 + 1 + 10 + 3 * MESSAGE_OVERHEAD_TOKENS == 28
    # Assistant content sits at positions [3+2+2 + 3+1+2 + 3, +10) = [16, 26).
    assert stats.over(28).assistant_tokens_cut == 0 and stats.over(28).examples_over == 0
    assert stats.over(27).examples_over == 1 and stats.over(27).assistant_tokens_cut == 0  # only the footer is cut
    assert stats.over(20).assistant_tokens_cut == 6
    assert stats.over(16).assistant_tokens_cut == 10
    assert stats.over(5).assistant_tokens_cut == 10
    assert stats.over(20).assistant_tokens_total == 10
    assert stats.over(20).assistant_cut_rate == pytest.approx(0.6)
    with pytest.raises(ValueError):
        stats.over(0)


def test_percentiles_nearest_rank_and_recommendations() -> None:
    p = percentiles(list(range(1, 101)))
    assert (p.count, p.p50, p.p95, p.p99, p.max, p.mean) == (100, 50, 95, 99, 100, 50.5)
    assert percentiles([]).count == 0
    assert round_up(1) == 64 and round_up(64) == 64 and round_up(65) == 128 and round_up(0) == 64

    stats = LengthStats()
    for i in range(1, 101):
        # One message of 4*k characters: k + 5 tokens of template.
        stats.add([{"role": "assistant", "content": "a" * (4 * i * 10)}])
    report = stats.result(max_length=512)
    assert report.method == ESTIMATE_METHOD
    assert report.examples.p99 == 990 + MESSAGE_OVERHEAD_TOKENS
    assert report.examples.max == 1000 + MESSAGE_OVERHEAD_TOKENS
    assert report.recommended_sequence_len == 1024  # 995 → next multiple of 64
    assert report.recommended_max_length == 1024
    assert report.recommended_sequence_len % 64 == 0
    assert report.truncation is not None and report.truncation.max_length == 512
    # Examples of 10*i + 5 tokens longer than 512: i ≥ 51 → 50 examples.
    assert report.truncation.examples_over == 50
    # Each of them loses content tokens after 512 (content starts at position 3).
    assert report.truncation.assistant_tokens_cut == sum(10 * i + 3 - 512 for i in range(51, 101))
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
    assert report.assistant_turns.count == 2
    assert report.assistant_turns.max == 20 + MESSAGE_OVERHEAD_TOKENS
    assert report.examples.max == 100 + 10 + 20 + 1 + 2 + 5 * MESSAGE_OVERHEAD_TOKENS


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
