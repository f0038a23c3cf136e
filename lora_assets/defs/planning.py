"""plan_batch, approve_batch and cancel_batch: the jobs a user launches from the Dagster launchpad to start,
approve or stop a batch. Thin: the work is `lora_assets.planning` and `lora_assets.cancel`."""


from typing import Literal

from dagster import Config, Failure, MetadataValue, OpExecutionContext, job, op
from pydantic import Field, ValidationError

from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.resources import ClaudeResource, DomainDB
from lora_assets.errors import UserInputError


class PlanBatchConfig(Config):
    """A batch to plan. Each key list names keys, or is ["*"] for every one (an explicit choice:
    nothing is selected implicitly). The name becomes the partition key (a slug)."""

    name: str = Field(description="A readable name; its slug is the batch's partition key.")
    personas: list[str] = Field(description='Persona keys, or ["*"] for every persona.')
    arcs: list[str] = Field(description='Emotional arc keys, or ["*"] for every arc.')
    topics: list[str] = Field(description='Training topic keys, or ["*"] for every topic.')
    # Ranges are checked when the run starts (Dagster's launchpad schema has no numeric ranges):
    # the refusal is one line naming the field, before anything is counted or written.
    per_combination: int = Field(default=1, description="Conversations per persona × arc × topic (1-1000).")
    tier: Literal["template", "scenario", "edge_case"] = "template"
    mode: Literal["messages", "batches"] = Field(default="messages",
                                                 description="batches = Message Batches API, 50% off, within 24 h.")
    model: str = Field(default="", description="Claude model; empty = the code location's default.")
    max_cost_usd: float | None = Field(default=None, description="Refuse to plan above this estimate (USD); "
                                       "unset = the LORA_MAX_BATCH_COST_USD default. A cap always applies.")
    effort: Literal["off", "low", "medium", "high", "xhigh", "max"] = Field(
        default="low", description="Thinking effort sent with every request (adaptive thinking; `off` disables it). "
        "`low` is the cheapest with thinking on (README \"Thinking\"); thinking tokens are billed as output.")
    pilot_items: int | None = Field(default=None, description="Generate this many items first and show them "
                                    "with their actual cost and a re-estimate; the rest waits for approval.")


def _user_failure(exc: Exception) -> Failure:
    """A user's mistake as one plain line on the run page (no retry, no chained traceback)."""
    if isinstance(exc, ValidationError):
        error = exc.errors(include_url=False)[0]
        field = ".".join(map(str, error["loc"])) or "config"
        return Failure(description=f"{field}: {error['msg']} (got {error.get('input')!r})", allow_retries=False)
    return Failure(description=str(exc), allow_retries=False)


@op(description="Check the request, count its prompt tokens (count_tokens), estimate the cost, refuse it "
    "above its cost cap (max_cost_usd or LORA_MAX_BATCH_COST_USD), then write the batch and register its "
    "partition. At or below LORA_AUTO_APPROVE_USD it is queued and the queued-batch sensor starts it; above, "
    "it waits as `planned` until the `approve_batch` job.")
def plan_batch_op(context: OpExecutionContext, config: PlanBatchConfig, db: DomainDB, claude: ClaudeResource) -> str:
    """Plan one batch from the launchpad config; returns its partition key."""
    from lora_assets import planning

    try:
        request = planning.PlanRequest(
            name=config.name, personas=config.personas, arcs=config.arcs, topics=config.topics,
            per_combination=config.per_combination, tier=config.tier, mode=config.mode,
            model=config.model or claude.model, max_cost_usd=config.max_cost_usd, pilot_items=config.pilot_items,
            effort=config.effort,
        )
        planned = planning.plan(db.engine(), request, created_by=db.user_id, limits=db.plan_limits(),
                                counter=claude.token_counter(request.model), concurrency=claude.max_concurrency)
    except (UserInputError, ValidationError) as exc:
        raise _user_failure(exc) from None
    context.instance.add_dynamic_partitions(batch_jobs_partitions.name, [planned.key])
    metadata: dict[str, object] = {
        "batch": planned.key, "batch_id": planned.batch_id, "items": planned.items, "status": planned.status,
        "approval": planned.approval, "cost_cap_usd": planned.cost_cap_usd, "cost_cap_source": planned.cost_cap_source,
    }
    if planned.pilot_items:
        metadata["pilot_items"] = planned.pilot_items
    if planned.estimate is not None:
        est = planned.estimate
        metadata |= {
            "estimated_cost_usd": est.total_usd, "estimated_input_usd": est.input_usd,
            "estimated_output_usd": est.output_usd, "estimate": MetadataValue.md(
                est.summary() + "\n\n" + "\n".join(f"- {a}" for a in est.assumptions)),
        }
    context.add_output_metadata(metadata)
    est = f", estimated ${planned.estimate.total_usd:,.4f}" if planned.estimate else ""
    context.log.info(f"planned batch {planned.key!r}: {planned.items} item(s){est} (cap ${planned.cost_cap_usd:,.2f} "
                     f"from {planned.cost_cap_source}); {planned.approval}")
    return planned.key


@job(description="Plan a batch from typed config (keys or [\"*\"], tier, mode, model, budget, optional pilot): "
     "cost estimate from counted tokens first, a cost cap always, approval above LORA_AUTO_APPROVE_USD.")
def plan_batch() -> None:
    """Launch from the launchpad with a `PlanBatchConfig`."""
    plan_batch_op()


class BatchRefConfig(Config):
    """The batch to approve or cancel: its partition key (slug) or id."""

    batch: str = Field(description="The batch's partition key (slug) or id.")


@op(description="Approve a batch waiting as `planned` (over the auto-approve threshold, or after its pilot): "
    "it becomes `queued` and the queued-batch sensor starts it.")
def approve_batch_op(context: OpExecutionContext, config: BatchRefConfig, db: DomainDB) -> None:
    """Approve one batch from the launchpad."""
    from lora_assets import planning

    try:
        result = planning.approve(db.engine(), config.batch)
    except UserInputError as exc:
        raise _user_failure(exc) from None
    context.add_output_metadata(result.model_dump())
    context.log.info(result.summary())


@job(description="Approve a planned batch (config: batch = its slug or id); the queued-batch sensor then starts it.")
def approve_batch() -> None:
    """Launch from the launchpad with a `BatchRefConfig`."""
    approve_batch_op()


@op(description="Cancel a batch: status `cancelled`, open Message Batches cancelled at the provider, "
    "runs of its partition terminated; nothing more is requested, stored conversations stay usable.")
def cancel_batch_op(context: OpExecutionContext, config: BatchRefConfig, db: DomainDB,
                    claude: ClaudeResource) -> None:
    """Cancel one batch from the launchpad."""
    from lora_assets import cancel

    try:
        result = cancel.cancel_batch(db.engine(), config.batch, provider=claude.provider_batches(),
                                     instance=context.instance, exclude_run_id=context.run_id)
    except UserInputError as exc:
        raise _user_failure(exc) from None
    context.add_output_metadata(result.metadata())
    context.log.info(result.summary())


@job(description="Cancel a batch (config: batch = its slug or id). The queued-batch sensor never starts it again.")
def cancel_batch() -> None:
    """Launch from the launchpad with a `BatchRefConfig`."""
    cancel_batch_op()
