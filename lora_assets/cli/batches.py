"""`batch create | approve | cancel | list | status`, `run` and `judge`: plan batch jobs (one `batch_jobs` partition
each) and run their jobs in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from lora_assets.cli.common import engine
from lora_assets.cli.runs import blocking_failures, print_checks, run_failure, run_job
from lora_assets.errors import BatchCancelledError, NotFoundError, RunFailedError, UserInputError
from lora_assets.settings import DEFAULT_MODEL, Settings


@click.group()
def batch() -> None:
    """Plan and inspect batch jobs (one Dagster partition each)."""


@batch.command("create")
@click.option("--persona", "personas", multiple=True, help="Persona key (repeat), or '*' for every persona.")
@click.option("--arc", "arcs", multiple=True, help="Emotional arc key (repeat), or '*' for every arc.")
@click.option("--topic", "topics", multiple=True, help="Training topic key (repeat), or '*' for every topic.")
@click.option("--per-combination", type=click.IntRange(min=1, max=1000), default=1, show_default=True,
              help="Conversations per persona×arc×topic.")
@click.option("--tier", type=click.Choice(["template", "scenario", "edge_case"]), default="template", show_default=True)
@click.option("--model", default=None, help=f"Claude model (default LORA_CLAUDE_MODEL or {DEFAULT_MODEL}); one "
              "with a known price, so the spend can be accounted.")
@click.option("--mode", type=click.Choice(["messages", "batches"]), default="messages", show_default=True,
              help="batches = Message Batches API, 50% cheaper, results within 24 h.")
@click.option("--name", default=None, help="A readable name for the batch; its slug becomes the partition key.")
@click.option("--estimate", "estimate_only", is_flag=True,
              help="Only print the cost estimate (input tokens counted by the API's count_tokens); plan nothing.")
@click.option("--max-cost", "max_cost_usd", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Refuse to plan above this estimate (USD); default LORA_MAX_BATCH_COST_USD. A cap always applies.")
@click.option("--pilot", "pilot_items", type=click.IntRange(min=1), default=None,
              help="Generate this many items first (with their actual cost and a re-estimate); the rest waits for "
              "`batch approve`.")
@click.option("--run", "run_now", is_flag=True, help="Run the batch pipeline in this process right away (a batch "
              "waiting for approval is not run).")
@click.option("--effort", type=click.Choice(["off", "low", "medium", "high", "xhigh", "max"]), default="low",
              show_default=True, help="Thinking effort of every request (adaptive thinking; off disables it). "
              "Thinking tokens are billed as output; low is the cheapest with thinking on.")
def batch_create(personas, arcs, topics, per_combination, tier, model, mode, name, estimate_only, max_cost_usd,
                 pilot_items, run_now, effort) -> None:
    """Plan a batch (the `plan_batch` job's work): write batch_jobs + batch_items (scaffolding fixed
    now) and register its slug as a `batch_jobs` partition. Every key list must name keys or be
    '*' (nothing is selected implicitly). Refused before anything is written: an unknown key
    (named, with the valid ones), a model without a price, more items than
    LORA_MAX_ITEMS_PER_BATCH, or an estimate above the cap (--max-cost, else
    LORA_MAX_BATCH_COST_USD). Above LORA_AUTO_APPROVE_USD the batch waits as `planned` until
    `batch approve`."""
    from lora_assets import planning

    settings = Settings.from_env()
    request = planning.PlanRequest(name=name, personas=list(personas), arcs=list(arcs), topics=list(topics),
                                   per_combination=per_combination, tier=tier, mode=mode,
                                   model=model or settings.model, max_cost_usd=max_cost_usd, pilot_items=pilot_items,
                                   effort=effort)
    limits = planning.PlanLimits(max_items=settings.max_items_per_batch, max_cost_usd=settings.max_batch_cost_usd,
                                 auto_approve_usd=settings.auto_approve_usd)
    domain = engine(settings)
    # The model and the item limit first, with COUNT queries only: before the SDK loads or a
    # prompt is rendered, whatever the size of the scaffolding.
    planning.check_model(request, "--model")
    planning.check_size(domain, request, limits.max_items)
    with _claude() as claude:
        counter = claude.token_counter(request.model)
        if estimate_only:
            estimate = planning.estimate(domain, request, counter, concurrency=claude.max_concurrency,
                                         max_items=limits.max_items)
            cap, source = planning.cost_cap(request, limits)
            click.echo(f"estimate: {estimate.summary()}")
            click.echo(f"  cap ${cap:,.2f} from {source}" + ("; above it the plan is refused"
                                                             if estimate.total_usd > cap else ""))
            for line in estimate.assumptions:
                click.echo(f"  - {line}")
            return
        planned = planning.plan(domain, request, created_by=settings.user_id, limits=limits, counter=counter,
                                concurrency=claude.max_concurrency, model_label="--model")
    _register(planned.key)
    click.echo(f"{planned.summary()}; id {planned.batch_id}, {mode} mode")
    if run_now:
        if planned.status == "planned":
            click.echo(f"  not run: it waits for `lora-assets batch approve {planned.key}`")
            return
        _run_batch(planned.key)


def _register(key: str) -> None:
    from lora_assets.defs.partitions import batch_jobs_partitions
    from lora_assets.instance import get_instance

    get_instance().add_dynamic_partitions(batch_jobs_partitions.name, [key])


@batch.command("approve")
@click.argument("batch_key")
def batch_approve(batch_key: str) -> None:
    """Approve BATCH_KEY (the `approve_batch` job's work): a batch waiting as `planned` (over the
    auto-approve threshold, or after its pilot) becomes `queued`; the queued-batch sensor of a
    running `make ui` starts it, or run it here with `lora-assets run BATCH_KEY`."""
    from lora_assets import planning

    click.echo(planning.approve(engine(), batch_key).summary())


@contextmanager
def _claude() -> Iterator[Any]:
    """The code location's Claude resource, initialised (EnvVar resolved) and torn down after."""
    from lora_assets.cli.runs import defs_resource

    with defs_resource("claude").process_config_and_initialize_cm() as claude:
        try:
            yield claude
        finally:
            claude.teardown_after_execution(None)


@batch.command("cancel")
@click.argument("batch_key")
def batch_cancel(batch_key: str) -> None:
    """Cancel BATCH_KEY (the `cancel_batch` job's work): status `cancelled`, open Message Batches
    cancelled at the provider, live runs of its partition cancelled; nothing more is requested and
    stored conversations stay usable. Cancelling twice is harmless."""
    from lora_assets import cancel
    from lora_assets.instance import get_instance

    with _claude() as claude:
        result = cancel.cancel_batch(engine(), batch_key, provider=claude.provider_batches(), instance=get_instance())
    # Printed once the status is `cancelled`: a live run sees it within about a second.
    click.echo(result.summary())


@batch.command("list")
def batch_list() -> None:
    """List batch jobs, newest first."""
    from lora_assets.store import batches as store_batches

    with engine().connect() as conn:
        rows = store_batches.list_batches(conn, with_snapshot=False)
    if not rows:
        click.echo("no batch jobs")
    for r in rows:
        click.echo(f"{r['slug'] or r['id']:<40} {r['status']:<10} {r['mode']:<8} {r['total_items']:>5} items  "
                   f"{r['model']:<18} {r['name']}  (id {r['id']})")


@batch.command("status")
@click.argument("batch_key")
def batch_status(batch_key: str) -> None:
    """Progress of one batch (its partition key or id): items by status, parse and enrichment
    counts, tokens, the cost beside the estimate made before planning."""
    from lora_assets.store.batches import batch_for_key, batch_progress, item_failures

    with engine().connect() as conn:
        b = batch_for_key(conn, batch_key)
        if b is None:
            raise NotFoundError(f"batch job {batch_key!r} not found (see `lora-assets batch list`)")
        batch_id = b["id"]
        p = batch_progress(conn, batch_id)
        failures = item_failures(conn, batch_id)
    click.echo(f"batch {b['slug'] or batch_id} ({b['name']}): {b['status']}, {b['total_items']} items, {b['mode']} mode, {b['model']}")
    for stage in ("items", "parse", "enrichment"):
        click.echo(f"  {stage:<11} " + "  ".join(f"{k}={v}" for k, v in p[stage].items()))
    click.echo(f"  tokens      in={p['input_tokens']} out={p['output_tokens']} cache_read={p['cache_read_input_tokens']}")
    click.echo(f"  cost        ${p['cost_usd']:.6f} for {p['paid_responses']} paid response(s): "
               f"${p['stored_cost_usd']:.6f} stored, ${p['duplicate_cost_usd']:.6f} in {p['duplicate_responses']} "
               f"duplicate(s), ${p['wasted_cost_usd']:.6f} in failed attempts")
    if b.get("estimate"):
        click.echo(f"  estimate    ${b['estimate']['total_usd']:.6f} before planning ({b['estimate']['items']} items)")
    for f in failures[:20]:
        click.echo(f"  failed item {f['position']}: {f['error']}")


def _known_batch(batch_id: str) -> dict[str, Any]:
    """The batch row, with its id registered as a `batch_jobs` partition; NotFoundError for an
    empty or unknown id (before Dagster sees it)."""
    from lora_assets.defs.partitions import batch_jobs_partitions
    from lora_assets.instance import get_instance
    from lora_assets.store.batches import batch_for_key

    if not batch_id.strip():
        raise UserInputError("the batch id is empty (see `lora-assets batch list`)")
    with engine().connect() as conn:
        row = batch_for_key(conn, batch_id)
    if row is None:
        raise NotFoundError(f"batch job {batch_id!r} not found (see `lora-assets batch list`)")
    instance = get_instance()
    if not instance.has_dynamic_partition(batch_jobs_partitions.name, batch_id):
        instance.add_dynamic_partitions(batch_jobs_partitions.name, [batch_id])
    return row


def _run_batch(batch_id: str) -> None:
    """Execute the batch pipeline for one partition in-process on the persistent instance and
    print check results. BatchCancelledError (exit 3) when the batch was cancelled while it ran;
    RunFailedError when the run failed, a blocking check failed, or every item of the batch
    failed."""
    from lora_assets.store.batches import batch_for_key, batch_progress

    row = _known_batch(batch_id)
    if row["status"] == "planned":
        raise UserInputError(f"batch {batch_id!r} waits for approval (status planned): "
                             f"`lora-assets batch approve {batch_id}` first")
    result = run_job("batch_pipeline", batch_id)
    evaluations = result.get_asset_check_evaluations()
    print_checks(evaluations)
    with engine().connect() as conn:
        items = batch_progress(conn, row["id"])["items"]
        status = batch_for_key(conn, row["id"])["status"]
    if status == "cancelled" and not result.success:
        click.echo(f"run {result.run_id}: CANCELLED")
        raise BatchCancelledError(
            f"batch {batch_id} was cancelled during the run: {items.get('generated', 0)} conversation(s) stored, "
            f"{items.get('failed', 0)} failed, {items.get('pending', 0) + items.get('submitted', 0)} not generated; "
            f"`lora-assets run {batch_id}` again parses and enriches what it kept (it requests nothing)")
    blocking = blocking_failures(evaluations)
    total, failed = sum(items.values()), items.get("failed", 0)
    reasons = ([] if result.success else [f"the run failed: {run_failure(result)}"]) + \
        ([f"blocking check(s) failed: {', '.join(blocking)}"] if blocking else []) + \
        ([f"every item failed ({failed} of {total}; see `lora-assets batch status {batch_id}`)"]
         if total and failed == total else [])
    click.echo(f"run {result.run_id}: {'FAILED' if reasons else 'success'}")
    if reasons:
        raise RunFailedError(f"batch {batch_id}: {'; '.join(reasons)}")


@click.command("run")
@click.argument("batch_id")
def run_batch(batch_id: str) -> None:
    """Run generate → parse → enrich (with checks) for BATCH_ID in this process. Exits 1 when the
    run fails, a blocking check fails, or every item failed."""
    _run_batch(batch_id)


@click.command("judge")
@click.argument("batch_id")
def judge_batch(batch_id: str) -> None:
    """Score BATCH_ID's enriched conversations with the Claude judge (optional; stored per conversation)."""
    _known_batch(batch_id)
    result = run_job("judge_batch", batch_id, )
    judged = failed = 0
    for mat in result.get_asset_materialization_events():
        md = mat.materialization.metadata
        judged, failed = md["judged_this_run"].value, md["failed_this_run"].value
        click.echo(f"judged {judged}, failed {failed}, avg overall {md['avg_judge_overall'].value}, "
                   f"cost ${md['cost_usd_this_run'].value}")
    everything_failed = failed and not judged
    click.echo(f"run {result.run_id}: {'success' if result.success and not everything_failed else 'FAILED'}")
    if not result.success:
        raise RunFailedError(f"judge run of batch {batch_id} failed: {run_failure(result)}")
    if everything_failed:
        raise RunFailedError(f"batch {batch_id}: every judged conversation failed ({failed}); see judge_scores")
