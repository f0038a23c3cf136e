"""Cost estimates: the arithmetic of counted tokens, tier outputs and discounts (no I/O)."""

import pytest

from lora_assets.core.estimate import (
    DEFAULT_OUTPUT_TOKENS,
    HISTORY_MIN,
    EFFORT_THINKING,
    thinking_tokens,
    OverBudgetError,
    estimate_cost,
    expected_output,
    refuse_over_budget,
    sample_for_counting,
)
from lora_assets.generation.pricing import cost_usd
from lora_assets.schemas.rows import Usage


def _estimate(mode: str = "messages", items: int = 100, concurrency: int = 8, **kw):
    return estimate_cost(model="claude-haiku-5-5", mode=mode, items=items, distinct_prompts=10, system_tokens=1000,
                         counted_prompt_tokens=[1200, 1400], output=expected_output("template", None),
                         concurrency=concurrency, **kw)


def test_messages_mode_writes_the_cache_once_per_concurrent_request_and_reads_it_after() -> None:
    est = _estimate(items=100, concurrency=8)
    write = cost_usd("claude-haiku-5-5", Usage(input_tokens=300, cache_creation_input_tokens=1000), batch=False)
    read = cost_usd("claude-haiku-5-5", Usage(input_tokens=300, cache_read_input_tokens=1000), batch=False)
    assert est.input_usd == pytest.approx(8 * write + 92 * read, rel=1e-6)
    per_item = expected_output("template", None).tokens_per_item
    assert est.output_usd == pytest.approx(100 * per_item * 0.50 / 1e6, rel=1e-6)
    assert est.total_usd == pytest.approx(est.input_usd + est.output_usd, abs=1e-6)
    assert any("8 request(s) write" in a and "92 read" in a for a in est.assumptions)


def test_batches_mode_is_half_price_without_cache_hits() -> None:
    messages, batches = _estimate("messages", concurrency=100), _estimate("batches")
    # All 100 write the cache in messages mode at concurrency 100: batches must be cheaper than half of that.
    full = cost_usd("claude-haiku-5-5", Usage(input_tokens=1300), batch=False)
    assert batches.input_usd == pytest.approx(100 * full / 2, rel=1e-6)
    assert batches.output_usd == pytest.approx(messages.output_usd / 2, rel=1e-6)
    assert any("50% off" in a for a in batches.assumptions)


def test_output_expectation_uses_history_only_when_there_is_enough() -> None:
    default = expected_output("scenario", None, effort="off").tokens_per_item
    assert default == DEFAULT_OUTPUT_TOKENS["scenario"]
    assert expected_output("scenario", (HISTORY_MIN - 1, 10.0), effort="off").tokens_per_item == default
    observed = expected_output("scenario", (HISTORY_MIN, 1234.2))
    assert observed.tokens_per_item == 1235 and "mean of 20 stored" in observed.source


def test_sampling_counts_everything_small_and_a_stable_sample_of_large_plans() -> None:
    assert sample_for_counting(5) == [0, 1, 2, 3, 4]
    big = sample_for_counting(1568)
    assert len(big) == 64 and big == sorted(set(big)) and big == sample_for_counting(1568)
    est = _estimate()
    assert "2 of 10 distinct prompt(s); the others assumed at their mean" in est.assumptions[0]


def test_over_budget_is_refused_naming_both_figures() -> None:
    est = _estimate()
    refuse_over_budget(est, None)
    refuse_over_budget(est, est.total_usd)
    with pytest.raises(OverBudgetError, match=r"estimated cost \$0\.\d+ is above max_cost_usd \$0\.0001"):
        refuse_over_budget(est, 0.0001)


def test_an_unknown_model_is_an_error_not_free() -> None:
    with pytest.raises(ValueError, match="no price known for model 'gpt-9'"):
        estimate_cost(model="gpt-9", mode="messages", items=1, distinct_prompts=1, system_tokens=1,
                      counted_prompt_tokens=[2], output=expected_output("template", None), concurrency=1)


def test_the_default_output_includes_the_thinking_tokens_of_the_effort() -> None:
    visible = DEFAULT_OUTPUT_TOKENS["template"]
    totals = []
    for effort in ("off", "low", "medium", "high", "xhigh", "max"):
        out = expected_output("template", None, effort=effort)
        assert out.tokens_per_item == visible + thinking_tokens(visible, effort)
        assert f"effort {effort!r}" in out.source
        totals.append(out.tokens_per_item)
    # Higher effort thinks more: the estimate grows with it; `off` adds nothing.
    assert totals == sorted(totals) and totals[0] == visible and EFFORT_THINKING["off"] == 0


def test_a_system_prompt_below_the_cache_minimum_is_estimated_uncached() -> None:
    est = estimate_cost(model="claude-haiku-5-5", mode="messages", items=10, distinct_prompts=2, system_tokens=361,
                        counted_prompt_tokens=[900], output=expected_output("template", None), concurrency=4)
    full = cost_usd("claude-haiku-5-5", Usage(input_tokens=900), batch=False)
    assert est.input_usd == pytest.approx(10 * full, rel=1e-6)
    assert any("prompt cache: none" in a and "512-token minimum" in a for a in est.assumptions)
