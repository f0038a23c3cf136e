"""What a batch will cost before it spends: counted input tokens, expected output tokens per
tier, the pricing table, and the batch and prompt-cache discounts.

Pure: the caller counts tokens (the API's count_tokens endpoint) and looks up history; this
module only does the arithmetic, through `generation.pricing.cost_usd` so an estimate and a
bill can never use two different price rules.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from lora_assets.generation.pricing import cost_usd
from lora_assets.schemas.rows import Usage

#: Expected answer (text) tokens per conversation by tier when no history exists yet, measured
#: on the loopback simulator (bench/bench_estimate.py: ~24 conversations per tier, 4-10 turns);
#: nothing has been measured on Claude yet. Once `HISTORY_MIN` conversations of the same tier and
#: model are stored, their mean output (thinking included) replaces default and thinking alike.
DEFAULT_OUTPUT_TOKENS: dict[str, int] = {"template": 730, "scenario": 710, "edge_case": 735}
HISTORY_MIN = 20

#: Expected thinking tokens: `EFFORT_THINKING[effort] x (THINKING_BASE + THINKING_PER_ANSWER_TOKEN
#: x answer tokens)`. Adaptive thinking grows with the task and the effort; Anthropic publishes no
#: per-effort figures, so this is the simulator's model (SIM_CONTRACT: low 0.25 / medium 1 /
#: high 2 / xhigh 3 / max 4). Thinking tokens count toward max_tokens and are billed as output.
EFFORT_THINKING: dict[str, float] = {"off": 0.0, "low": 0.25, "medium": 1.0, "high": 2.0, "xhigh": 3.0, "max": 4.0}
THINKING_BASE = 200
THINKING_PER_ANSWER_TOKEN = 0.35


def thinking_tokens(answer_tokens: int, effort: str) -> int:
    """Thinking tokens expected before an answer of `answer_tokens` at `effort`."""
    scale = EFFORT_THINKING.get(effort, max(EFFORT_THINKING.values()))
    return math.ceil(scale * (THINKING_BASE + THINKING_PER_ANSWER_TOKEN * answer_tokens))


#: The 5.5 models cache no prompt prefix below this many tokens.
CACHE_MIN_TOKENS = 512

#: How many distinct prompts are counted at most; the rest are extrapolated from their mean.
#: count_tokens is free but rate limited, and prompts of one batch differ only in scaffolding.
MAX_COUNTED_PROMPTS = 64


class OutputExpectation(BaseModel):
    """Expected output tokens per conversation and where the figure comes from."""

    tokens_per_item: int = Field(ge=0)
    source: str


class CostEstimate(BaseModel):
    """The expected cost of a planned batch, with the figures it was computed from."""

    model: str
    mode: Literal["messages", "batches"]
    items: int
    counted_prompts: int = Field(description="Prompts whose input tokens the API counted.")
    distinct_prompts: int = Field(description="Distinct scaffolding combinations of the batch.")
    system_tokens: int = Field(description="The shared system prompt (cached in Messages mode).")
    mean_prompt_tokens: float = Field(description="Mean input tokens per request, system included.")
    output: OutputExpectation
    input_usd: float
    output_usd: float
    total_usd: float
    assumptions: list[str]

    def summary(self) -> str:
        """One line a person reads before spending."""
        return (f"{self.items:,} item(s) on {self.model} ({self.mode}): ≈ ${self.total_usd:,.4f} "
                f"(input ${self.input_usd:,.4f} from {self.counted_prompts} counted prompt(s) of "
                f"{self.distinct_prompts}, mean {self.mean_prompt_tokens:,.0f} tokens; output ${self.output_usd:,.4f} "
                f"at {self.output.tokens_per_item:,} tokens/item, {self.output.source})")


class OverBudgetError(ValueError):
    """The estimate is above the budget the user set; nothing was planned."""


def expected_output(tier: str, history: tuple[int, float] | None, *, effort: str = "low") -> OutputExpectation:
    """Output tokens per item, thinking included: the observed mean when `history` (count, mean)
    has at least HISTORY_MIN conversations of this tier and model (their usage counts the
    thinking they did), else the tier's planning default plus the thinking expected at `effort`."""
    if history is not None and history[0] >= HISTORY_MIN:
        return OutputExpectation(tokens_per_item=math.ceil(history[1]),
                                 source=f"mean of {history[0]:,} stored {tier} conversation(s) of this model, "
                                        "thinking included")
    visible = DEFAULT_OUTPUT_TOKENS.get(tier, max(DEFAULT_OUTPUT_TOKENS.values()))
    thinking = thinking_tokens(visible, effort)
    return OutputExpectation(tokens_per_item=visible + thinking,
                             source=f"planning default for tier {tier!r} (no history yet): {visible:,} answer + "
                                    f"{thinking:,} thinking at effort {effort!r}")


def sample_for_counting(n: int, limit: int = MAX_COUNTED_PROMPTS, seed: int = 0) -> list[int]:
    """Indexes of the prompts to count: all when there are at most `limit`, else a seeded
    sample (the same plan always counts the same prompts)."""
    if n <= limit:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def estimate_cost(*, model: str, mode: Literal["messages", "batches"], items: int, distinct_prompts: int,
                  system_tokens: int, counted_prompt_tokens: Sequence[int], output: OutputExpectation,
                  concurrency: int) -> CostEstimate:
    """The cost of `items` requests whose input tokens (system prompt included) were counted for
    `counted_prompt_tokens` (a sample of the distinct prompts).

    Messages mode: the system prompt is one cache_control block, so up to `concurrency` requests
    (those in flight before the first answer) write the cache at 1.25x and the rest read it at
    0.1x; a system prompt below the model's cache minimum (CACHE_MIN_TOKENS) is not cached at
    all. Batches mode: 50% off everything; cache hits in a batch are best effort, so none are
    assumed (an upper bound). Output includes the expected thinking tokens (`output`)."""
    if not counted_prompt_tokens:
        raise ValueError("no prompt was counted")
    mean = sum(counted_prompt_tokens) / len(counted_prompt_tokens)
    per_item_uncached = max(0, round(mean) - system_tokens)
    batch = mode == "batches"
    cacheable = system_tokens >= CACHE_MIN_TOKENS
    if batch or not cacheable:
        writers, readers = 0, 0
        plain = Usage(input_tokens=round(mean), output_tokens=0)
        input_usd = items * cost_usd(model, plain, batch=batch)
    else:
        writers = min(items, max(1, concurrency))
        readers = items - writers
        write = Usage(input_tokens=per_item_uncached, cache_creation_input_tokens=system_tokens, output_tokens=0)
        read = Usage(input_tokens=per_item_uncached, cache_read_input_tokens=system_tokens, output_tokens=0)
        input_usd = writers * cost_usd(model, write, batch=False) + readers * cost_usd(model, read, batch=False)
    output_usd = items * cost_usd(model, Usage(input_tokens=0, output_tokens=output.tokens_per_item), batch=batch)
    assumptions = [
        f"input tokens counted by the API for {len(counted_prompt_tokens)} of {distinct_prompts} distinct prompt(s)"
        + ("" if len(counted_prompt_tokens) >= distinct_prompts else "; the others assumed at their mean"),
        f"output: {output.tokens_per_item:,} tokens per item ({output.source})",
        "Message Batches: 50% off; no cache hits assumed (best effort in a batch)" if batch else
        f"prompt cache: {writers:,} request(s) write the system prompt (1.25x), {readers:,} read it (0.1x)"
        if cacheable else f"prompt cache: none (system prompt {system_tokens:,} tokens, below the "
                          f"{CACHE_MIN_TOKENS}-token minimum)",
        "retries of failed, truncated or malformed answers are not included",
    ]
    return CostEstimate(
        model=model, mode=mode, items=items, counted_prompts=len(counted_prompt_tokens),
        distinct_prompts=distinct_prompts, system_tokens=system_tokens, mean_prompt_tokens=round(mean, 1),
        output=output, input_usd=round(input_usd, 6), output_usd=round(output_usd, 6),
        total_usd=round(input_usd + output_usd, 6), assumptions=assumptions,
    )


def refuse_over_budget(estimate: CostEstimate, max_cost_usd: float | None) -> None:
    """OverBudgetError naming the estimate and the budget when the estimate is above it."""
    if max_cost_usd is not None and estimate.total_usd > max_cost_usd:
        raise OverBudgetError(
            f"estimated cost ${estimate.total_usd:,.4f} is above max_cost_usd ${max_cost_usd:,.4f} "
            f"({estimate.summary()}); nothing was planned — raise max_cost_usd, choose fewer keys or "
            "per_combination, or use mode 'batches' (50% off)")
