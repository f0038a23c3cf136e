"""raw_conversations: one Claude response per batch item, stored as-is before any parsing."""


import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from lora_assets.core.prompt import render_user_prompt, system_prompt, template_variables, turn_count_for
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.report import failures_table, items_table
from lora_assets.defs.resources import BlobStoreResource, ClaudeResource, DomainDB
from lora_assets.defs.samples import SAMPLES, sample_markdown
from lora_assets.defs.scaffolding import SCAFFOLDING_KEYS
from lora_assets.schemas import BatchJobStatus, ItemStatus
from lora_assets.store.batches import (
    batch_generators,
    batch_progress,
    batch_status,
    get_batch,
    item_failures,
    items_held_by_live_runs,
    items_to_generate,
    set_batch_status,
    update_batch_plan,
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
            raise Failure(description=f"batch job {context.partition_key!r} does not exist in the domain DB (plan it "
                          "with the `plan_batch` job or `lora-assets batch create`)", allow_retries=False)
        if batch["status"] == BatchJobStatus.PLANNED:
            raise Failure(description=f"batch {context.partition_key!r} waits for approval (status planned): approve "
                          "it with the `approve_batch` job or `lora-assets batch approve` first", allow_retries=False)
        # A cancelled batch requests nothing new; answers already paid for (spooled, or in a
        # provider batch finished before the cancel) are still stored below.
        cancelled = batch["status"] == BatchJobStatus.CANCELLED
        if not cancelled:
            set_batch_status(conn, batch_id, BatchJobStatus.PROCESSING)
    mode = batch["mode"]
    selection = batch["selection"] or {}
    # A pilot not yet approved: only its first items (by position) are generated in this run.
    pilot = int(selection["pilot_items"]) if selection.get("pilot_items") and not selection.get("approved") else None
    ledger = _SamplingLedger(engine, store, batch_id, blobs.user_id)
    with engine.connect() as conn:
        todo = items_to_generate(conn, batch_id, include_submitted=(mode == "messages"))
        generated_before = batch_progress(conn, batch_id)["items"][ItemStatus.GENERATED]
    recovered = set(ledger.recover_stored_raw([i.id for i in todo], workers=blobs.concurrency))
    todo = [i for i in todo if i.id not in recovered]
    skipped = batch["total_items"] - len(todo) - len(recovered)
    if pilot is not None:
        todo = todo[:max(0, pilot - generated_before - len(recovered))]
    requests = [] if cancelled else _requests(engine, batch, todo, ledger)
    del todo  # its rows (≈ 1 KB an item) are not needed while the run goes on: peak memory stays flat in N
    context.log.info(
        f"batch {batch_id}: {len(requests)} item(s) to generate ({mode} mode, model {batch['model']}"
        + (f", pilot of {pilot}" if pilot is not None else "") + f"), {len(recovered)} recovered from stored raw responses"
    )
    from lora_assets.generation.progress import RunWatch

    watch = RunWatch(total=len(requests))
    config = claude.run_config(model=batch["model"], run_id=context.run_id, spool_scope=batch_id,
                               **_thinking_options(engine, batch))
    config = config.model_copy(update={"watch": watch})
    runner = generate_batches if mode == "batches" else generate_messages
    try:
        with watching(context, engine, batch_id, watch):
            stats = asyncio.run(runner(requests, ledger, config))
    except RunAbortedError as exc:
        # The reason is the whole story (rejected key, endpoint not answering, ...): one line,
        # no traceback of our own code; unprocessed items stay pending for a re-run.
        _close_batch(engine, batch_id, cancelled=cancelled or watch.stop_requested)
        raise Failure(description=str(exc), allow_retries=False) from None
    if stats.claimed_elsewhere:
        context.log.warning(
            f"batch {batch_id}: {stats.claimed_elsewhere} item(s) were claimed by another run of this batch and not "
            f"requested here while it held them (not paid twice); {stats.taken_over} taken over after its claims "
            f"lapsed, {stats.left_to_other_runs} left to it")

    cancelled_now = watch.stop_requested and not cancelled
    progress, failures, generators = _close_batch(engine, batch_id, cancelled=cancelled or cancelled_now,
                                                  pilot=pilot is not None)
    metadata = _run_metadata(batch, progress, failures, generators, stats, skipped=skipped, recovered=len(recovered))
    # What a person looks for first (a cancel's or a pilot's outcome, sample conversations) leads.
    first: dict[str, Any] = {}
    if cancelled or cancelled_now:
        first |= _cancelled_metadata(context.partition_key, progress)
    if pilot is not None and not (cancelled or cancelled_now):
        first |= _pilot_metadata(engine, batch, pilot, progress)
        context.log.info(first["pilot"].value.splitlines()[0])
    # The first answers this run bought, from memory: no blob is read back (a run that bought
    # nothing shows none; the materialization that bought them has them).
    samples = sample_markdown(engine, store, batch_id=batch_id, responses=ledger.samples) if ledger.samples else ""
    if samples:
        first["sample_conversations"] = MetadataValue.md(samples)
    metadata = first | metadata
    if cancelled_now:
        # The cancel landed while this run was generating: record what it kept (a materialization
        # of the partition, so it is visible), then end the run with one line that says so.
        log_materialization_now(context, metadata)
        raise Failure(description=metadata["cancelled"], metadata={"items_generated": progress["items"]["generated"]},
                      allow_retries=False)
    return MaterializeResult(metadata=metadata)


#: How often a live run reads its batch's status (a cancel is seen within about this).
POLL_S = 0.5


class _SamplingLedger(SqlLedger):
    """The SQL ledger, keeping the first few answers it stores in memory: the run's sample
    conversations come from them instead of reading their blobs back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.samples: dict[str, dict[str, Any]] = {}
        self._samples_lock = threading.Lock()

    def record_success(self, item_id: str, record: Any) -> bool:
        stored = super().record_success(item_id, record)
        if stored:
            with self._samples_lock:
                if len(self.samples) < SAMPLES:
                    self.samples[item_id] = record.response
        return stored


#: Progress reports: every 10 s or every 5% of the items, never more often than every 2 s.
PROGRESS_PACE: dict[str, float] = {"every_s": 10.0, "every_fraction": 0.05, "min_interval_s": 2.0}


@contextmanager
def watching(context: AssetExecutionContext, engine: Any, batch_id: str, watch: Any,
             poll_s: float = POLL_S) -> Iterator[None]:
    """While the body runs, a thread polls the batch's status every `poll_s` (a cancel from the
    CLI, the UI or another process is seen within about that) and reports progress at a bounded
    rate: a log line and an asset observation with items done / failed, cost so far and an ETA."""
    from lora_assets.generation.progress import ProgressPacer

    done = threading.Event()
    pacer = ProgressPacer(watch.total, **PROGRESS_PACE)

    def loop() -> None:
        seen_cancel = False
        while not done.wait(poll_s):
            try:
                with engine.connect() as conn:
                    status = batch_status(conn, batch_id)
            except Exception as exc:  # noqa: BLE001 - the next poll tries again; generation goes on
                context.log.warning(f"could not read the batch's status ({exc.__class__.__name__}); retrying")
                continue
            if status == BatchJobStatus.CANCELLED and not seen_cancel:
                seen_cancel = True
                watch.request_stop("cancelled")
                seen = (f"batch {context.partition_key!r} was cancelled: no new request starts; answers already in "
                        "flight are stored")
                context.log.warning(seen)
                # Also on the process's own logger: `lora-assets run` shows it at once (its Dagster
                # console is quiet and prints the run's warnings only when the run ends).
                logging.getLogger(__name__).warning(seen)
            if watch.stats is not None and watch.total and pacer.due(watch.stats.done + watch.stats.failed):
                report = pacer.progress(watch.stats)
                context.log.info(f"progress: {report.line()}")
                log_observation_now(context, report.metadata())

    thread = threading.Thread(target=loop, name="batch-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _step_context(context: AssetExecutionContext) -> Any:
    # Events built on the step context are written to the event log at once (a user event passed
    # to context.log_event waits until the step ends): progress must show while the run is live.
    return context.op_execution_context._step_execution_context  # noqa: SLF001


def log_observation_now(context: AssetExecutionContext, metadata: dict[str, Any]) -> None:
    """An AssetObservation of this step's partition, written to the event log now."""
    from dagster._core.events import DagsterEvent

    DagsterEvent.asset_observation(_step_context(context), AssetObservation(
        asset_key=context.asset_key, partition=context.partition_key, metadata=metadata))


def log_materialization_now(context: AssetExecutionContext, metadata: dict[str, Any]) -> None:
    """An AssetMaterialization of this step's partition, written to the event log now (before the
    step ends in a failure that would otherwise leave the partition "missing")."""
    from dagster._core.events import DagsterEvent

    DagsterEvent.asset_materialization(_step_context(context), AssetMaterialization(
        asset_key=context.asset_key, partition=context.partition_key, metadata=metadata))


def _cancelled_metadata(key: str, progress: dict[str, Any]) -> dict[str, Any]:
    """A cancelled batch's figures: what was stored, failed and never generated, and the spend."""
    items = progress["items"]
    stored, failed = items[ItemStatus.GENERATED], items[ItemStatus.FAILED]
    not_generated = items[ItemStatus.PENDING] + items[ItemStatus.SUBMITTED]
    return {
        "cancelled": f"batch {key!r} cancelled: {stored} conversation(s) stored, {failed} failed, {not_generated} "
                     f"not generated, ${progress['cost_usd']:.4f} spent. To parse and enrich what it kept, run "
                     f"`batch_pipeline` for partition {key!r} again (or `lora-assets run {key}`): it requests nothing.",
        "stored": stored, "failed": failed, "not_generated": not_generated,
    }


def _pilot_metadata(engine: Any, batch: dict[str, Any], pilot: int, progress: dict[str, Any]) -> dict[str, Any]:
    """The pilot's figures (actual cost per item, re-estimate of the rest), also kept in the batch's
    estimate; the batch now waits for approval."""
    from lora_assets.planning import pilot_report

    items = progress["items"]
    estimate = dict(batch.get("estimate") or {})
    report = pilot_report(estimate, pilot_items=pilot, stored=items[ItemStatus.GENERATED],
                          cost_usd=progress["cost_usd"], items_left=items[ItemStatus.PENDING] + items[ItemStatus.SUBMITTED])
    with engine.begin() as conn:
        update_batch_plan(conn, batch["id"], estimate=estimate | {"pilot": report})
    per_item = "n/a" if report["cost_per_item_usd"] is None else f"${report['cost_per_item_usd']:.6f}"
    text = (f"Pilot done: {report['stored']} of {pilot} item(s) stored for ${report['cost_usd']:.6f} "
            f"({per_item} per item; estimated ${report['estimated_per_item_usd'] or 0:.6f}). Re-estimate for the "
            f"{report['items_left']} item(s) left: ${report['reestimate_usd'] or 0:.4f}. The batch waits for approval: "
            "launch `approve_batch` or run `lora-assets batch approve`.")
    return {"pilot": MetadataValue.md(text), "pilot_cost_per_item_usd": report["cost_per_item_usd"] or 0.0,
            "pilot_reestimate_usd": report["reestimate_usd"] or 0.0, "pilot_items": pilot}


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


def _close_batch(engine: Any, batch_id: str, *, cancelled: bool = False, pilot: bool = False
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Set the batch's status from its items (completed, failed when nothing was generated, else
    still processing; after a pilot, planned: it waits for approval). A cancelled batch stays
    cancelled (also when the cancel lands now: set_batch_status never overwrites it). Returns its
    progress, item failures and generators."""
    with engine.begin() as conn:
        progress = batch_progress(conn, batch_id)
        failures = item_failures(conn, batch_id)
        generators = batch_generators(conn, batch_id)
        items = progress["items"]
        done = items[ItemStatus.PENDING] == 0 and items[ItemStatus.SUBMITTED] == 0
        status = BatchJobStatus.COMPLETED if done and not failures else BatchJobStatus.PROCESSING
        if done and failures and items[ItemStatus.GENERATED] == 0:
            status = BatchJobStatus.FAILED
        if pilot and not done:
            status = BatchJobStatus.PLANNED
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
