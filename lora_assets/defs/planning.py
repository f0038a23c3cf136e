"""plan_batch and cancel_batch: the jobs a user launches from the Dagster launchpad to start or
stop a batch. Thin: the work is `lora_assets.planning` and `lora_assets.cancel`."""


from typing import Literal

from dagster import Config, Failure, MetadataValue, OpExecutionContext, job, op
from pydantic import Field

from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.resources import ClaudeResource, DomainDB
from lora_assets.errors import UserInputError


class PlanBatchConfig(Config):
    """A batch to plan. Keys left empty mean "all"; the name becomes the partition key (a slug)."""

    name: str = Field(description="A readable name; its slug is the batch's partition key.")
    personas: list[str] = Field(default_factory=list, description="Persona keys (empty = all).")
    arcs: list[str] = Field(default_factory=list, description="Emotional arc keys (empty = all).")
    topics: list[str] = Field(default_factory=list, description="Training topic keys (empty = all).")
    per_combination: int = Field(default=1, description="Conversations per persona × arc × topic.")
    tier: Literal["template", "scenario", "edge_case"] = "template"
    mode: Literal["messages", "batches"] = Field(default="messages",
                                                 description="batches = Message Batches API, 50% off, within 24 h.")
    model: str = Field(default="", description="Claude model; empty = the code location's default.")
    max_cost_usd: float | None = Field(default=None, description="Refuse to plan above this estimate (USD).")
    effort: Literal["off", "low", "medium", "high", "xhigh", "max"] = Field(
        default="low", description="Thinking effort sent with every request (adaptive thinking; `off` disables it). "
        "`low` is the cheapest with thinking on (README \"Thinking\"); thinking tokens are billed as output.")


@op(description="Check the request, count its prompt tokens (count_tokens), estimate the cost, refuse it "
    "above max_cost_usd, then write the batch, register its partition and queue it: the queued-batch "
    "sensor starts `batch_pipeline` for it once.")
def plan_batch_op(context: OpExecutionContext, config: PlanBatchConfig, db: DomainDB, claude: ClaudeResource) -> str:
    """Plan one batch from the launchpad config; returns its partition key."""
    from lora_assets import planning

    request = planning.PlanRequest(
        name=config.name, personas=config.personas, arcs=config.arcs, topics=config.topics,
        per_combination=config.per_combination, tier=config.tier, mode=config.mode,
        model=config.model or claude.model, max_cost_usd=config.max_cost_usd, effort=config.effort,
    )
    try:
        planned = planning.plan(db.engine(), request, created_by=db.user_id, max_items=db.max_items_per_batch,
                                counter=claude.token_counter(request.model), concurrency=claude.max_concurrency)
    except UserInputError as exc:
        raise Failure(str(exc), allow_retries=False) from None
    context.instance.add_dynamic_partitions(batch_jobs_partitions.name, [planned.key])
    metadata: dict[str, object] = {"batch": planned.key, "batch_id": planned.batch_id, "items": planned.items}
    if planned.estimate is not None:
        est = planned.estimate
        metadata |= {
            "estimated_cost_usd": est.total_usd, "estimated_input_usd": est.input_usd,
            "estimated_output_usd": est.output_usd, "estimate": MetadataValue.md(
                est.summary() + "\n\n" + "\n".join(f"- {a}" for a in est.assumptions)),
        }
    context.add_output_metadata(metadata)
    context.log.info(f"planned batch {planned.key!r}: {planned.items} item(s)"
                     + (f", estimated ${planned.estimate.total_usd:,.4f}" if planned.estimate else ""))
    return planned.key


@job(description="Plan a batch from typed config (keys, tier, mode, model, budget): cost estimate from "
     "counted tokens first, then the batch is written and queued for `batch_pipeline`.")
def plan_batch() -> None:
    """Launch from the launchpad with a `PlanBatchConfig`."""
    plan_batch_op()


class CancelBatchConfig(Config):
    """The batch to cancel: its partition key (slug) or id."""

    batch: str = Field(description="The batch's partition key (slug) or id.")


@op(description="Cancel a batch: status `cancelled`, open Message Batches cancelled at the provider, "
    "runs of its partition terminated; nothing more is requested, stored conversations stay usable.")
def cancel_batch_op(context: OpExecutionContext, config: CancelBatchConfig, db: DomainDB,
                    claude: ClaudeResource) -> None:
    """Cancel one batch from the launchpad."""
    from lora_assets import cancel

    try:
        result = cancel.cancel_batch(db.engine(), config.batch, provider=claude.provider_batches(),
                                     instance=context.instance, exclude_run_id=context.run_id)
    except UserInputError as exc:
        raise Failure(str(exc), allow_retries=False) from None
    context.add_output_metadata(result.metadata())
    context.log.info(result.summary())


@job(description="Cancel a batch (config: batch = its slug or id). The queued-batch sensor never starts it again.")
def cancel_batch() -> None:
    """Launch from the launchpad with a `CancelBatchConfig`."""
    cancel_batch_op()
