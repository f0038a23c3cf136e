"""Pricing: list prices per MTok, cache multipliers, the Batches discount, unknown models."""

from __future__ import annotations

import pytest

from lora_assets.generation.pricing import PRICES, UnknownModelError, cost_usd, price_for
from lora_assets.schemas.rows import Usage


def test_haiku_input_and_output_at_list_price() -> None:
    usage = Usage(input_tokens=100_000, output_tokens=1_000_000)
    assert cost_usd("claude-haiku-5-5", usage, batch=False) == pytest.approx(0.01 + 0.50)


def test_sonnet_input_and_output_at_list_price() -> None:
    usage = Usage(input_tokens=2_000, output_tokens=1_000)
    assert cost_usd("claude-sonnet-5-5", usage, batch=False) == pytest.approx((2_000 * 2 + 1_000 * 10) / 1e6)


def test_cache_write_costs_125_percent_and_cache_read_10_percent_of_input() -> None:
    write = Usage(cache_creation_input_tokens=1_000_000)
    read = Usage(cache_read_input_tokens=1_000_000)
    assert cost_usd("claude-sonnet-5-5", write, batch=False) == pytest.approx(2.0 * 1.25)
    assert cost_usd("claude-sonnet-5-5", read, batch=False) == pytest.approx(2.0 * 0.1)


def test_batches_api_halves_everything() -> None:
    usage = Usage(input_tokens=1234, output_tokens=5678, cache_creation_input_tokens=900, cache_read_input_tokens=4500)
    full = cost_usd("claude-haiku-5-5", usage, batch=False)
    assert cost_usd("claude-haiku-5-5", usage, batch=True) == pytest.approx(full / 2)


def test_haiku_prompts_over_100k_tokens_bill_at_five_times() -> None:
    small = Usage(input_tokens=100_000, output_tokens=1_000)
    large = Usage(input_tokens=100_001, output_tokens=1_000)
    assert cost_usd("claude-haiku-5-5", small, batch=False) == pytest.approx((100_000 * 0.10 + 1_000 * 0.50) / 1e6)
    assert cost_usd("claude-haiku-5-5", large, batch=False) == pytest.approx(5 * (100_001 * 0.10 + 1_000 * 0.50) / 1e6)


def test_cached_tokens_count_towards_the_long_context_threshold() -> None:
    usage = Usage(input_tokens=10, cache_read_input_tokens=100_000)
    assert cost_usd("claude-haiku-5-5", usage, batch=False) == pytest.approx(5 * (10 * 0.10 + 100_000 * 0.01) / 1e6)


def test_dated_snapshot_id_resolves_to_its_alias() -> None:
    assert price_for("claude-haiku-5-5-20261007") == PRICES["claude-haiku-5-5"]


def test_zero_usage_costs_nothing() -> None:
    assert cost_usd("claude-haiku-5-5", Usage(), batch=True) == 0.0


def test_unknown_model_is_a_clear_error_naming_the_known_ones() -> None:
    with pytest.raises(UnknownModelError) as info:
        cost_usd("claude-imaginary-9", Usage(input_tokens=1), batch=False)
    message = str(info.value)
    assert "claude-imaginary-9" in message
    for known in PRICES:
        assert known in message
    assert info.value.model == "claude-imaginary-9"
