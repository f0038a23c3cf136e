"""Plan a batch: check the request, estimate its cost from counted tokens, refuse it above the
budget, write it. One service behind the `plan_batch` job and `lora-assets batch create`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine

from lora_assets.core.estimate import (
    CostEstimate,
    OverBudgetError,
    estimate_cost,
    expected_output,
    refuse_over_budget,
    sample_for_counting,
)
from lora_assets.core.prompt import render_user_prompt, system_prompt, template_variables, turn_count_for
from lora_assets.errors import LimitExceededError, UserInputError
from lora_assets.generation.pricing import UnknownModelError, price_for
from lora_assets.schemas import BatchSelection
from lora_assets.schemas.rows import Effort
from lora_assets.settings import env_var
from lora_assets.store import batches as q
from lora_assets.store.scaffolding import UnknownScaffoldingKeyError

#: Counts (system tokens, per-prompt tokens) for a system prompt and user prompts.
TokenCounter = Callable[[str, Sequence[str]], tuple[int, list[int]]]


class PlanRequest(BaseModel):
    """What a user asks for (the `plan_batch` launchpad config and the CLI flags)."""

    name: str | None = None
    personas: list[str] = Field(default_factory=list)
    arcs: list[str] = Field(default_factory=list)
    topics: list[str] = Field(default_factory=list)
    per_combination: int = 1
    tier: Literal["template", "scenario", "edge_case"] = "template"
    mode: Literal["messages", "batches"] = "messages"
    model: str
    max_cost_usd: float | None = Field(default=None, ge=0)
    effort: Effort = Field(default="low", description="Thinking effort of the batch's requests (`off`: none).")


class PlannedBatch(BaseModel):
    """A written batch: its row id, its partition key (a slug of its name) and its estimate."""

    batch_id: str
    key: str
    items: int
    estimate: CostEstimate | None


class PlanRefusedError(UserInputError):
    """The request cannot be planned (unknown key, unknown model, over budget, too large)."""


def _selection(request: PlanRequest) -> BatchSelection:
    try:
        return BatchSelection(persona_keys=request.personas, arc_keys=request.arcs, topic_keys=request.topics,
                              conversations_per_combination=request.per_combination, tier=request.tier,
                              effort=request.effort)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise PlanRefusedError(f"batch selection: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None


def estimate(engine: Engine, request: PlanRequest, counter: TokenCounter, *, concurrency: int) -> CostEstimate:
    """The expected cost of `request`, without writing anything: the prompts generation would send
    for a sample of its combinations, counted by `counter` (the API's count_tokens)."""
    selection = _selection(request)
    with engine.connect() as conn:
        try:
            preview = q.preview_plan(conn, selection)
        except (UnknownScaffoldingKeyError, q.EmptySelectionError) as exc:
            raise PlanRefusedError(str(exc)) from None
        history = q.output_token_history(conn, tier=request.tier, model=request.model)
    consultant = preview.consultant
    system = system_prompt(consultant)
    sample = sample_for_counting(len(preview.scaffolding))
    users = []
    for i in sample:
        s = preview.scaffolding[i]
        # Turn counts are seeded by item id, unknown before planning: the same 4-10 spread.
        turns = turn_count_for(f"estimate-{i}")
        users.append(render_user_prompt(s.prompt_template, template_variables(
            s.persona, s.emotional_arc, s.training_topic, consultant, turns)))
    system_tokens, counted = counter(system, users)
    items = len(preview.scaffolding) * request.per_combination
    return estimate_cost(model=request.model, mode=request.mode, items=items,
                         distinct_prompts=len(preview.scaffolding), system_tokens=system_tokens,
                         counted_prompt_tokens=counted,
                         output=expected_output(request.tier, history, effort=request.effort),
                         concurrency=concurrency)


def plan(engine: Engine, request: PlanRequest, *, created_by: str, max_items: int,
         counter: TokenCounter | None, concurrency: int, model_label: str = "model") -> PlannedBatch:
    """Check `request`, estimate it (when `counter` is given), refuse it above `max_cost_usd`,
    then write the batch (scaffolding snapshot fixed now) under a unique slug of its name.
    PlanRefusedError / LimitExceededError name the reason (`model_label`: how the caller names
    the model field, e.g. `--model`); nothing is written then."""
    try:
        price_for(request.model)
    except UnknownModelError as exc:
        raise PlanRefusedError(f"{model_label} {request.model!r}: {exc}") from None
    selection = _selection(request)
    with engine.connect() as conn:
        p, a, x = q.selection_size(conn, request.personas, request.arcs, request.topics)
    n = p * a * x * request.per_combination
    if n > max_items:
        raise LimitExceededError(
            "batch plan", f"the selection plans {n:,} items ({p} personas × {a} arcs × {x} topics × "
            f"{request.per_combination} per combination)", max_items, "items per batch", env_var("max_items_per_batch"))
    cost = None
    if counter is not None:
        cost = estimate(engine, request, counter, concurrency=concurrency)
        try:
            refuse_over_budget(cost, request.max_cost_usd)
        except OverBudgetError as exc:
            raise PlanRefusedError(str(exc)) from None
    elif request.max_cost_usd is not None:
        raise PlanRefusedError("max_cost_usd needs a cost estimate, and no token counter is available")
    try:
        batch_id, items = q.plan_batch(engine, selection=selection, model=request.model, mode=request.mode,
                                       created_by=created_by, name=request.name,
                                       estimate=cost.model_dump(mode="json") if cost else None)
    except (UnknownScaffoldingKeyError, q.EmptySelectionError) as exc:
        raise PlanRefusedError(str(exc)) from None
    with engine.connect() as conn:
        key = q.batch_key(conn, batch_id)
    return PlannedBatch(batch_id=batch_id, key=key, items=items, estimate=cost)
