"""Plan a batch: check the request, estimate its cost from counted tokens, refuse it above the
budget, write it. One service behind the `plan_batch` job and `lora-assets batch create`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

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
from lora_assets.errors import ConflictError, LimitExceededError, NotFoundError, UserInputError
from lora_assets.generation.pricing import UnknownModelError, price_for
from lora_assets.schemas import BatchJobStatus, BatchSelection
from lora_assets.schemas.rows import Effort
from lora_assets.settings import env_var
from lora_assets.store import batches as q
from lora_assets.store.scaffolding import UnknownScaffoldingKeyError

#: Counts (system tokens, per-prompt tokens) for a system prompt and user prompts.
TokenCounter = Callable[[str, Sequence[str]], tuple[int, list[int]]]

#: Explicit (persona id, arc id, topic id) combinations (a coverage batch) instead of key lists.
Combinations = Sequence[tuple[str, str, str]]


#: The explicit "every key" choice in a key list (`personas: ["*"]`, `--persona '*'`).
ALL = "*"


class PlanRequest(BaseModel):
    """What a user asks for (the `plan_batch` launchpad config and the CLI flags). Each key list
    must name keys, or be `["*"]` for every row: nothing is selected implicitly."""

    name: str | None = None
    personas: list[str] = Field(default_factory=list)
    arcs: list[str] = Field(default_factory=list)
    topics: list[str] = Field(default_factory=list)
    per_combination: int = Field(default=1, ge=1, le=1000)
    tier: Literal["template", "scenario", "edge_case"] = "template"
    mode: Literal["messages", "batches"] = "messages"
    model: str
    max_cost_usd: float | None = Field(default=None, gt=0)
    pilot_items: int | None = Field(default=None, ge=1)
    effort: Effort = Field(default="low", description="Thinking effort of the batch's requests (`off`: none).")


class PlanLimits(BaseModel):
    """The limits every entry point applies (settings: LORA_MAX_ITEMS_PER_BATCH,
    LORA_MAX_BATCH_COST_USD, LORA_AUTO_APPROVE_USD)."""

    max_items: int = 10_000
    max_cost_usd: float = 5.0
    auto_approve_usd: float = 0.25


class PlannedBatch(BaseModel):
    """A written batch: its row id, its partition key (a slug of its name), its estimate, the cap
    that applied, and whether it waits for approval (`status` planned) or starts (queued)."""

    batch_id: str
    key: str
    items: int
    estimate: CostEstimate | None
    status: str = BatchJobStatus.QUEUED
    cost_cap_usd: float = 0.0
    cost_cap_source: str = ""
    pilot_items: int | None = None
    approval: str = ""

    def summary(self) -> str:
        """One line for the log and the CLI."""
        cost = f", estimated ${self.estimate.total_usd:,.4f}" if self.estimate else ""
        return (f"batch {self.key}: {self.items} item(s) planned{cost} (cap ${self.cost_cap_usd:,.2f} from "
                f"{self.cost_cap_source}); {self.approval}")


class PlanRefusedError(UserInputError):
    """The request cannot be planned (unknown key, unknown model, over budget, too large)."""


def _keys(keys: list[str], field: str, noun: str) -> list[str]:
    """Store semantics of a key list: `["*"]` → [] (every row). An empty list is refused: a
    plan that silently covers everything is how a batch runs away."""
    given = [k.strip() for k in keys if k.strip()]
    if not given:
        raise PlanRefusedError(f"{field}: no {noun} keys given; name them, or give [\"{ALL}\"] to choose every "
                               f"{noun} explicitly (nothing is selected implicitly)")
    if ALL in given:
        if len(given) > 1:
            raise PlanRefusedError(f"{field}: \"{ALL}\" (every {noun}) cannot be mixed with keys {given}")
        return []
    return given


def _selection(request: PlanRequest, combinations: Combinations | None = None) -> BatchSelection:
    if combinations is not None:
        # The combinations are the selection: key lists beside them would say two things at once.
        if request.personas or request.arcs or request.topics:
            raise ValueError("a plan of explicit combinations takes no persona, arc or topic keys")
        personas, arcs, topics = [], [], []
    else:
        personas = _keys(request.personas, "personas", "persona")
        arcs = _keys(request.arcs, "arcs", "emotional arc")
        topics = _keys(request.topics, "topics", "training topic")
    try:
        return BatchSelection(persona_keys=personas, arc_keys=arcs, topic_keys=topics,
                              conversations_per_combination=request.per_combination, tier=request.tier,
                              effort=request.effort)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = {"conversations_per_combination": "per_combination"}.get(str(error["loc"][0]), str(error["loc"][0]))
        raise PlanRefusedError(f"{field}: {error['msg']}") from None


def check_model(request: PlanRequest, model_label: str = "model") -> None:
    """PlanRefusedError for a model without a known price (its spend could not be accounted)."""
    try:
        price_for(request.model)
    except UnknownModelError as exc:
        raise PlanRefusedError(f"{model_label} {request.model!r}: {exc}") from None


def check_size(engine: Engine, request: PlanRequest, max_items: int, combinations: Combinations | None = None) -> int:
    """The number of items `request` plans, counted with COUNT queries (no combination is
    resolved, so memory stays flat however large the scaffolding); LimitExceededError above
    `max_items`, then PlanRefusedError for a key list that is not an explicit choice. Every
    entry point (job, CLI, --estimate, the nightly schedule) calls this before anything else
    reads the scaffolding. With explicit `combinations`, those are what is counted."""
    def counted(keys: list[str]) -> list[str]:
        return [] if ALL in keys else [k for k in keys if k.strip()]

    if combinations is not None:
        n = len(combinations) * request.per_combination
        what = f"{len(combinations):,} combinations × {request.per_combination} per combination"
    else:
        with engine.connect() as conn:
            p, a, x = q.selection_size(conn, counted(request.personas), counted(request.arcs), counted(request.topics))
        n = p * a * x * request.per_combination
        what = f"{p} personas × {a} arcs × {x} topics × {request.per_combination} per combination"
    if n > max_items:
        raise LimitExceededError("batch plan", f"the selection plans {n:,} items ({what})", max_items,
                                 "items per batch", env_var("max_items_per_batch"))
    _selection(request, combinations)
    return n


def estimate(engine: Engine, request: PlanRequest, counter: TokenCounter, *, concurrency: int,
             max_items: int, combinations: Combinations | None = None) -> CostEstimate:
    """The expected cost of `request` (over explicit `combinations`, if given), without writing
    anything: the prompts generation would send for a sample of its combinations, counted by
    `counter` (the API's count_tokens). The item limit is checked first (LimitExceededError),
    before any combination is resolved."""
    check_size(engine, request, max_items, combinations)
    selection = _selection(request, combinations)
    with engine.connect() as conn:
        try:
            preview = q.preview_plan(conn, selection, list(combinations) if combinations is not None else None)
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


def cost_cap(request: PlanRequest, limits: PlanLimits) -> tuple[float, str]:
    """The cap that applies to `request` and where it comes from: its own max_cost_usd, else the
    LORA_MAX_BATCH_COST_USD default. There is always one."""
    if request.max_cost_usd is not None:
        return request.max_cost_usd, "max_cost_usd"
    return limits.max_cost_usd, f"the {env_var('max_batch_cost_usd')} default"


def plan(engine: Engine, request: PlanRequest, *, created_by: str, limits: PlanLimits, counter: TokenCounter,
         concurrency: int, model_label: str = "model", combinations: Combinations | None = None) -> PlannedBatch:
    """Check `request`, estimate it, refuse it above its cost cap, then write the batch
    (scaffolding snapshot fixed now) under a unique slug of its name. Above the auto-approve
    threshold it is written `planned` and waits for `approve`; with `pilot_items` the first run
    generates only those, then the batch waits. PlanRefusedError / LimitExceededError name the
    reason (`model_label`: how the caller names the model field, e.g. `--model`); nothing is
    written then. `combinations` (persona, arc, topic ids; the nightly coverage batch) replace
    the key lists, which must then be empty; they are counted against the item limit first."""
    check_model(request, model_label)
    n = check_size(engine, request, limits.max_items, combinations)
    selection = _selection(request, combinations)
    if request.pilot_items is not None and request.pilot_items >= n:
        raise PlanRefusedError(f"pilot_items: {request.pilot_items} is not fewer than the batch's {n} item(s); "
                               "leave it out to plan the batch without a pilot")
    cap, cap_source = cost_cap(request, limits)
    cost = estimate(engine, request, counter, concurrency=concurrency, max_items=limits.max_items,
                    combinations=combinations)
    try:
        refuse_over_budget(cost, cap)
    except OverBudgetError as exc:
        raise PlanRefusedError(f"{exc} (cap from {cap_source})") from None
    first_spend = cost.total_usd * (request.pilot_items or n) / n
    if first_spend <= limits.auto_approve_usd:
        status = BatchJobStatus.QUEUED
        approval = (f"pilot of {request.pilot_items} item(s) starts now; the rest waits for approval"
                    if request.pilot_items else
                    f"starts now (estimate within the auto-approve threshold ${limits.auto_approve_usd:,.2f})")
    else:
        status = BatchJobStatus.PLANNED
        approval = (f"waits for approval: estimate ${first_spend:,.4f} is above the auto-approve threshold "
                    f"${limits.auto_approve_usd:,.2f} ({env_var('auto_approve_usd')}); approve it with the "
                    "`approve_batch` job or `lora-assets batch approve`")
    try:
        batch_id, items = q.plan_batch(engine, selection=selection, model=request.model, mode=request.mode,
                                       created_by=created_by, name=request.name,
                                       estimate=cost.model_dump(mode="json") | {
                                           "cost_cap_usd": cap, "cost_cap_source": cap_source},
                                       status=status, pilot_items=request.pilot_items,
                                       combinations=list(combinations) if combinations is not None else None)
    except (UnknownScaffoldingKeyError, q.EmptySelectionError) as exc:
        raise PlanRefusedError(str(exc)) from None
    with engine.connect() as conn:
        key = q.batch_key(conn, batch_id)
    return PlannedBatch(batch_id=batch_id, key=key, items=items, estimate=cost, status=status, cost_cap_usd=cap,
                        cost_cap_source=cap_source, pilot_items=request.pilot_items, approval=approval)


class ApproveResult(BaseModel):
    """What an approval did."""

    key: str
    batch_id: str
    previous_status: str
    items_left: int
    estimate_usd: float | None

    def summary(self) -> str:
        """One line for the log and the CLI."""
        if self.previous_status == BatchJobStatus.QUEUED:
            return f"batch {self.key!r} was already approved"
        cost = f" (estimated ${self.estimate_usd:,.4f})" if self.estimate_usd is not None else ""
        return (f"batch {self.key!r} approved: {self.items_left} item(s) left to generate{cost}; the queued-batch "
                f"sensor starts it (or `lora-assets run {self.key}`)")


def approve(engine: Engine, ref: str) -> ApproveResult:
    """Approve the batch `ref` (partition key or id) waiting as `planned`: it becomes `queued` and
    the queued-batch sensor starts it. Approving twice is a no-op; NotFoundError for an unknown
    batch, ConflictError for one cancelled, completed or failed."""
    with engine.begin() as conn:
        batch = q.batch_for_key(conn, ref)
        if batch is None:
            raise NotFoundError(f"no batch {ref!r} (give its partition key or id; `lora-assets batch list` shows them)")
        previous = batch["status"]
        key = batch.get("slug") or batch["id"]
        selection = dict(batch["selection"] or {})
        if previous in (BatchJobStatus.CANCELLED, BatchJobStatus.COMPLETED, BatchJobStatus.FAILED):
            raise ConflictError(f"batch {ref!r} is {previous}: there is nothing to approve")
        if previous == BatchJobStatus.PROCESSING and not selection.get("approved", True):
            raise ConflictError(f"batch {ref!r}: its pilot is still running; approve it once the pilot has ended")
        if previous == BatchJobStatus.PLANNED or not selection.get("approved", True):
            q.update_batch_plan(conn, batch["id"], selection=selection | {"approved": True},
                                status=BatchJobStatus.QUEUED)
        progress = q.batch_progress(conn, batch["id"])
    est = batch.get("estimate") or {}
    pilot = est.get("pilot") or {}
    left = progress["items"]["pending"] + progress["items"]["submitted"]
    return ApproveResult(key=key, batch_id=batch["id"], previous_status=previous, items_left=left,
                         estimate_usd=pilot.get("reestimate_usd", est.get("total_usd")))


def pilot_report(estimate: dict[str, Any], *, pilot_items: int, stored: int, cost_usd: float,
                 items_left: int) -> dict[str, Any]:
    """The pilot's figures, kept in the batch's estimate: actual cost per stored item and the
    re-estimate of the items left at that price (beside the estimate made before planning)."""
    per_item = cost_usd / stored if stored else None
    return {"pilot_items": pilot_items, "stored": stored, "cost_usd": round(cost_usd, 6),
            "cost_per_item_usd": round(per_item, 6) if per_item is not None else None,
            "estimated_per_item_usd": round(estimate["total_usd"] / estimate["items"], 6) if estimate.get("items") else None,
            "items_left": items_left,
            "reestimate_usd": round(per_item * items_left, 6) if per_item is not None else None}
