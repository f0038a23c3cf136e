"""What a Claude response cost, from its token usage and a pricing table kept in code.

Prices are USD per million tokens (MTok), from the public model pages (Nov 2026). Prompt-cache
writes (5-minute TTL, the only one we use) cost 1.25x the input price, cache reads 0.1x, and the
Message Batches API halves everything. A model missing from the table is an error, never "free":
cost is how we notice runaway spend, so a guess of zero would hide exactly that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from lora_assets.schemas.rows import Usage

CACHE_WRITE_MULTIPLIER = 1.25
CACHE_READ_MULTIPLIER = 0.1
BATCH_MULTIPLIER = 0.5


@dataclass(frozen=True)
class ModelPrice:
    """Per-MTok list prices of one model.

    `long_context_threshold`: prompts (input + cache write + cache read tokens) above this many
    tokens are billed at `long_context_multiplier` x every rate (Haiku 5.5 charges 5x over 100K).
    """

    input_per_mtok: float
    output_per_mtok: float
    long_context_threshold: int | None = None
    long_context_multiplier: float = 1.0


#: Model id -> list price. Dated snapshot ids (`claude-haiku-5-5-20261007`) resolve to their alias.
PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        "claude-haiku-5-5": ModelPrice(0.10, 0.50, long_context_threshold=100_000, long_context_multiplier=5.0),
        "claude-sonnet-5-5": ModelPrice(2.00, 10.00),
        "claude-opus-5-5": ModelPrice(4.00, 20.00),
        "claude-opus-5": ModelPrice(5.00, 25.00),
    }
)

_SNAPSHOT_SUFFIX = re.compile(r"-\d{8}$")


class UnknownModelError(ValueError):
    """A model has no entry in the pricing table, so its cost cannot be computed."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"no price known for model {model!r}; known models: {', '.join(sorted(PRICES))}")


def price_for(model: str) -> ModelPrice:
    """The list price of `model` (an alias or a dated snapshot id); UnknownModelError otherwise."""
    price = PRICES.get(model) or PRICES.get(_SNAPSHOT_SUFFIX.sub("", model))
    if price is None:
        raise UnknownModelError(model)
    return price


def cost_usd(model: str, usage: Usage, *, batch: bool) -> float:
    """USD cost of one response with `usage`; `batch=True` for a Message Batches result (50% off)."""
    price = price_for(model)
    prompt_tokens = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    multiplier = BATCH_MULTIPLIER if batch else 1.0
    if price.long_context_threshold is not None and prompt_tokens > price.long_context_threshold:
        multiplier *= price.long_context_multiplier
    input_rate = price.input_per_mtok
    total = (
        usage.input_tokens * input_rate
        + usage.cache_creation_input_tokens * input_rate * CACHE_WRITE_MULTIPLIER
        + usage.cache_read_input_tokens * input_rate * CACHE_READ_MULTIPLIER
        + usage.output_tokens * price.output_per_mtok
    )
    return total * multiplier / 1_000_000
