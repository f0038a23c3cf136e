"""raw_conversations: one Claude response per batch item, stored as-is before any parsing."""


import asyncio
from collections.abc import Callable
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    asset,
    asset_check,
)

from lora_assets.core.prompt import render_user_prompt, system_prompt, template_variables, turn_count_for
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.report import failures_table, items_table
from lora_assets.defs.resources import BlobStoreResource, ClaudeResource, DomainDB
from lora_assets.defs.scaffolding import SCAFFOLDING_KEYS
from lora_assets.schemas import BatchJobStatus, ItemStatus
from lora_assets.store.batches import (
    batch_generators,
    batch_progress,
    get_batch,
    item_failures,
    items_held_by_live_runs,
    items_to_generate,
    set_batch_status,
)
from lora_assets.store.claims import SqlLedger
from lora_assets.store.scaffolding import batch_consultant, resolve_items


@asset(
    partitions_def=batch_jobs_partitions,
    pool="claude_api",
    deps=[AssetKey(k) for k in SCAFFOLDING_KEYS],
    group_name="generation",
    kinds={"anthropic", "sql"},
)
def raw_conversations(
    context: AssetExecutionContext, db: DomainDB, blobs: BlobStoreResource, claude: ClaudeResource
) -> MaterializeResult:
    """Generate every item of the batch not yet generated (fan-out inside the run: asyncio in
    Messages mode, or the Message Batches API at half price). Each response is stored as-is in
    `raw.json` together with its conversations row (scaffolding IDs + snapshot) in one step;
    failures are recorded per item with their reason. A re-run skips stored items, recovers raw
    blobs a crash left without a row, and in Batches mode polls submitted batches again instead
    of resubmitting."""
    # Imported here: the anthropic SDK costs ~2 s to import, which every process that merely
    # loads the code location (code server, CLI, other steps) would otherwise pay.
    from lora_assets.generation.runner import RunAbortedError, generate_batches, generate_messages

    batch_id = db.batch_id(context.partition_key)
    engine = db.engine()
    store = blobs.store()
    with engine.begin() as conn:
        batch = get_batch(conn, batch_id)
        if batch is None:
            raise Failure(f"batch job {batch_id!r} does not exist in the domain DB (plan it with the `plan_batch` "
                          "job or `lora-assets batch create`)")
        # A cancelled batch requests nothing new; answers already paid for (spooled, or in a
        # provider batch finished before the cancel) are still stored below.
        cancelled = batch["status"] == BatchJobStatus.CANCELLED
        if not cancelled:
            set_batch_status(conn, batch_id, BatchJobStatus.PROCESSING)
    mode = batch["mode"]
    ledger = SqlLedger(engine, store, batch_id, blobs.user_id)
    with engine.connect() as conn:
        todo = items_to_generate(conn, batch_id, include_submitted=(mode == "messages"))
    recovered = set(ledger.recover_stored_raw([i.id for i in todo], workers=blobs.concurrency))
    todo = [i for i in todo if i.id not in recovered]
    requests = [] if cancelled else _requests(engine, batch, todo, ledger)
    context.log.info(
        f"batch {batch_id}: {len(requests)} item(s) to generate ({mode} mode, model {batch['model']}), "
        f"{len(recovered)} recovered from stored raw responses"
    )
    config = claude.run_config(model=batch["model"], run_id=context.run_id, spool_scope=batch_id,
                               **_thinking_options(engine, batch))
    runner = generate_batches if mode == "batches" else generate_messages
    try:
        stats = asyncio.run(runner(requests, ledger, config))
    except RunAbortedError as exc:
        # The reason is the whole story (rejected key, endpoint not answering, ...): one line,
        # no traceback of our own code; unprocessed items stay pending for a re-run.
        _close_batch(engine, batch_id, cancelled=cancelled)
        raise Failure(description=str(exc), allow_retries=False) from None
    if stats.claimed_elsewhere:
        context.log.warning(
            f"batch {batch_id}: {stats.claimed_elsewhere} item(s) were claimed by another run of this batch and not "
            f"requested here while it held them (not paid twice); {stats.taken_over} taken over after its claims "
            f"lapsed, {stats.left_to_other_runs} left to it")

    progress, failures, generators = _close_batch(engine, batch_id, cancelled=cancelled)
    return MaterializeResult(metadata=_run_metadata(batch, progress, failures, generators, stats,
                                                    skipped=batch["total_items"] - len(todo) - len(recovered),
                                                    recovered=len(recovered)))


def _thinking_options(engine: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's thinking effort (planned with it; the engine's default for older batches) and
    the output expected per item, thinking included (the tier's history, else the planning
    default), from which the engine sizes max_tokens."""
    from lora_assets.core.estimate import expected_output
    from lora_assets.generation.client import DEFAULT_EFFORT
    from lora_assets.store.batches import output_token_history

    effort = (batch.get("selection") or {}).get("effort") or DEFAULT_EFFORT
    with engine.connect() as conn:
        history = output_token_history(conn, tier=batch["tier"], model=batch["model"])
    return {"effort": effort,
            "expected_output_tokens": expected_output(batch["tier"], history, effort=effort).tokens_per_item}


def _requests(engine: Any, batch: dict[str, Any], todo: list[Any], ledger: Any) -> list[Any]:
    """The generation requests of `todo`, from the scaffolding as it was when the batch was
    planned (whatever the tables say now); the ledger is told that scaffolding too."""
    from lora_assets.generation.runner import GenerationRequest  # see raw_conversations

    with engine.connect() as conn:
        resolved = resolve_items(conn, todo)
        consultant = batch_consultant(conn, batch)
    ledger.scaffolding.update(resolved)
    if consultant is None:
        raise Failure("no consultant profile in the domain DB: materialise the scaffolding assets first")
    system = system_prompt(consultant)

    def prompt_of(s: Any, turns: int) -> Callable[[], str]:
        # Rendered when the request is sent: a 10,000-item run holds no 10,000 prompts.
        return lambda: render_user_prompt(
            s.prompt_template, template_variables(s.persona, s.emotional_arc, s.training_topic, consultant, turns))

    return [GenerationRequest.lazy(item.id, system, prompt_of(resolved[item.id], turn_count_for(item.id)))
            for item in todo]


def _close_batch(engine: Any, batch_id: str, *, cancelled: bool = False
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Set the batch's status from its items (completed, failed when nothing was generated, else
    still processing; a cancelled batch stays cancelled); returns its progress, item failures and
    generators."""
    with engine.begin() as conn:
        progress = batch_progress(conn, batch_id)
        failures = item_failures(conn, batch_id)
        generators = batch_generators(conn, batch_id)
        items = progress["items"]
        done = items[ItemStatus.PENDING] == 0 and items[ItemStatus.SUBMITTED] == 0
        status = BatchJobStatus.COMPLETED if done and not failures else BatchJobStatus.PROCESSING
        if done and failures and items[ItemStatus.GENERATED] == 0:
            status = BatchJobStatus.FAILED
        if not cancelled:
            set_batch_status(conn, batch_id, status)
    return progress, failures, generators


def _run_metadata(batch: dict[str, Any], progress: dict[str, Any], failures: list[dict[str, Any]],
                  generators: list[str], stats: Any, *, skipped: int, recovered: int) -> dict[str, Any]:
    """raw_conversations' materialisation metadata: the batch's totals and this run's figures."""
    items = progress["items"]
    cache_in = progress["cache_read_input_tokens"] + progress["cache_creation_input_tokens"] + progress["input_tokens"]
    return {
        "batch_name": batch["name"],
        "mode": batch["mode"],
        "model": batch["model"],
        # From the stored responses (message ids), not from configuration: what really answered.
        "generator": " + ".join(generators) or "none yet",
        "items_total": batch["total_items"],
        "items_generated": items[ItemStatus.GENERATED],
        "items_failed": items[ItemStatus.FAILED],
        "generated_this_run": stats.done,
        "failed_this_run": stats.failed,
        "skipped_already_stored": skipped,
        "recovered_from_raw": recovered,
        "claimed_by_another_run": stats.claimed_elsewhere,
        "taken_over_from_dead_runs": stats.taken_over,
        "left_to_other_runs": stats.left_to_other_runs,
        "recovered_from_spool": stats.recovered_from_spool,
        "provider_batches_adopted": stats.provider_batches_adopted,
        "api_requests": stats.requests,
        "retries": stats.retries,
        "rate_limited": stats.rate_limited,
        # Refusals are sent again without using up an item's attempts; unreadable 200s are paid.
        "overloaded": stats.overloaded,
        "unknown_cost_responses": stats.unknown_cost_responses,
        "max_in_flight": stats.max_in_flight,
        "effort": (batch.get("selection") or {}).get("effort") or "low",
        "input_tokens": progress["input_tokens"],
        "output_tokens": progress["output_tokens"],
        "cache_read_input_tokens": progress["cache_read_input_tokens"],
        "cache_hit_rate": round(progress["cache_read_input_tokens"] / cache_in, 4) if cache_in else 0.0,
        # Everything paid for this batch, duplicates and failed attempts included.
        "cost_usd": round(progress["cost_usd"], 6),
        # The estimate made before planning (plan_batch / batch create --max-cost), beside the actual.
        "estimated_cost_usd": round(batch["estimate"]["total_usd"], 6) if batch.get("estimate") else "not estimated",
        "paid_responses": progress["paid_responses"],
        "duplicate_responses": progress["duplicate_responses"],
        "cost_usd_this_run": round(stats.cost_usd, 6),
        "wasted_cost_usd_this_run": round(stats.wasted_cost_usd, 6),
        "throughput_per_s": round(stats.throughput_per_s, 3),
        "elapsed_s": round(stats.elapsed_s, 3),
        "summary": items_table(progress),
        "failures": failures_table(failures),
    }


@asset_check(
    asset=raw_conversations,
    partitions_def=batch_jobs_partitions,
    description="Every item of the batch is generated, or failed with a stated reason; none is lost.",
)
def items_accounted_for(context, db: DomainDB) -> AssetCheckResult:
    """No item is pending after generation; failures carry a reason (WARN: they never reach training files)."""
    batch_id = db.batch_id(context.partition_key)
    with db.engine().connect() as conn:
        progress = batch_progress(conn, batch_id)
        failures = item_failures(conn, batch_id)
        in_progress = items_held_by_live_runs(conn, batch_id)
    items = progress["items"]
    unexplained = [f for f in failures if not f["error"]]
    unfinished = items[ItemStatus.PENDING] + items[ItemStatus.SUBMITTED]
    lost = unfinished - in_progress  # not being generated by anyone
    elsewhere = f", {in_progress} being generated by another live run" if in_progress else ""
    return AssetCheckResult(
        passed=unfinished == 0 and not failures,
        severity=AssetCheckSeverity.ERROR if lost or unexplained else AssetCheckSeverity.WARN,
        description=f"{items[ItemStatus.GENERATED]} generated, {len(failures)} failed with a reason, "
                    f"{lost} not processed{elsewhere}",
        metadata={"failures": failures_table(failures), "failed": len(failures), "not_processed": lost,
                  "in_progress_elsewhere": in_progress},
    )
