"""`lora-assets demo`: the main job end to end on the embedded default (SQLite, local files,
the simulator unless ANTHROPIC_API_KEY is set), printing what it made and where."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from lora_assets.settings import Settings


@click.command("demo")
@click.option("--personas", default=3, show_default=True, help="How many personas in the demo batch.")
@click.option("--arcs", default=3, show_default=True, help="How many emotional arcs.")
@click.option("--topics", default=2, show_default=True, help="How many training topics.")
def demo(personas: int, arcs: int, topics: int) -> None:
    """Init the store, materialise scaffolding (+ completeness check), plan a small batch and run
    generate → parse → enrich with every check; print counts, tokens, cost and paths."""
    # The CLI package imports this module to register the command: imported here, not above.
    from lora_assets.cli.runs import defs_resource
    from lora_assets.instance import get_instance

    started = time.monotonic()
    settings = Settings.from_env()
    instance = get_instance(settings)
    engine = defs_resource("db").engine()
    click.echo(f"data dir:        {settings.data_dir}")
    click.echo(f"domain DB:       {engine.url.render_as_string(hide_password=True)}")
    click.echo(f"blob store:      {settings.s3_bucket and f's3://{settings.s3_bucket}/{settings.s3_prefix}' or settings.data_dir / 'blobs'}")
    click.echo(f"dagster home:    {instance.root_directory}")
    click.echo(f"claude:          {'simulator (no ANTHROPIC_API_KEY set)' if settings.uses_simulator else settings.model}")

    click.echo("\n1. scaffolding assets + completeness check")
    _scaffolding(instance)
    click.echo(f"\n2. plan a batch: {personas} personas × {arcs} arcs × {topics} topics")
    key, batch_id = _plan(engine, instance, personas, arcs, topics)
    click.echo("\n3. generate → parse → enrich (batch_pipeline job) with checks")
    run = _generate(engine, instance, settings, key, batch_id)
    name = f"demo-{batch_id[:8]}"
    click.echo(f"\n4. training file {name!r} from the batch, version 1, with checks")
    build = _training_file(engine, instance, settings, batch_id, name)
    ok = run.success and build.success
    click.echo(f"\n{'done' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s; see it in the UI: make ui")
    if not ok:
        sys.exit(1)


def _scaffolding(instance: Any) -> None:
    """Materialise the scaffolding assets (and their checks); exit when that fails."""
    from dagster import AssetSelection

    from lora_assets.cli.runs import QUIET, print_checks, run_failure
    from lora_assets.definitions import defs

    scaffold_job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(AssetSelection.groups("scaffolding").resolve(defs.resolve_asset_graph()))
    )
    result = scaffold_job.execute_in_process(instance=instance, raise_on_error=False, run_config=QUIET)
    for i, mat in enumerate(result.get_asset_materialization_events()):
        md = mat.materialization.metadata
        if i == 0 and "source" in md:
            click.echo(f"  scaffolding: {md['source'].value}")
        click.echo(f"  {mat.asset_key.to_user_string():<20} records={md['records'].value} inserted={md['inserted'].value} "
                   f"updated={md['updated'].value} unchanged={md['unchanged'].value}")
    print_checks(result.get_asset_check_evaluations())
    if not result.success:
        sys.exit(f"error: scaffolding failed: {run_failure(result)}")


def _plan(engine: Any, instance: Any, personas: int, arcs: int, topics: int) -> tuple[str, str]:
    """Plan the demo batch from the first scaffolding keys with the `plan_batch` job (what the UI's
    launchpad runs: count_tokens estimate, batch written, partition registered). Returns its
    partition key and its id."""
    from lora_assets.cli.runs import QUIET, run_failure
    from lora_assets.definitions import defs
    from lora_assets.store import db as dbq
    from lora_assets.store.batches import batch_for_key

    with engine.connect() as conn:
        config = {
            "name": "demo",
            "personas": [p.persona_key for p in dbq.read_personas(conn)][:personas],
            "arcs": [a.arc_key for a in dbq.read_emotional_arcs(conn)][:arcs],
            "topics": [x.topic_key for x in dbq.read_training_topics(conn)][:topics],
        }
    result = defs.resolve_job_def("plan_batch").execute_in_process(
        instance=instance, raise_on_error=False, run_config={**QUIET, "ops": {"plan_batch_op": {"config": config}}})
    if not result.success:
        sys.exit(f"error: plan_batch run {result.run_id} FAILED: {run_failure(result)}")
    key = result.output_for_node("plan_batch_op")
    with engine.connect() as conn:
        batch = batch_for_key(conn, key)
    click.echo(f"  batch {key}: {batch['total_items']} items, estimated ${batch['estimate']['total_usd']:.6f} "
               f"before spending (input tokens counted by count_tokens)")
    return key, batch["id"]


def _generate(engine: Any, instance: Any, settings: Settings, key: str, batch_id: str) -> Any:
    """Run the batch pipeline for partition `key` and print its counts, tokens and cost; exit
    when the run failed."""
    from lora_assets.cli.runs import print_checks, run_failure, run_job
    from lora_assets.store.batches import batch_progress
    from lora_assets.store.conversations import batch_conversations

    run = run_job("batch_pipeline", key, instance)
    print_checks(run.get_asset_check_evaluations())
    with engine.connect() as conn:
        p = batch_progress(conn, batch_id)
        rows = batch_conversations(conn, batch_id)
    click.echo(f"  items:      {p['items']}")
    click.echo(f"  parsed:     {p['parse']}")
    click.echo(f"  enriched:   {p['enrichment']}")
    click.echo(f"  tokens:     in={p['input_tokens']} out={p['output_tokens']} "
               f"cache_read={p['cache_read_input_tokens']} cache_write={p['cache_creation_input_tokens']}")
    click.echo(f"  cost:       ${p['cost_usd']:.6f}" + ("  (simulated usage priced as Claude would bill it)" if settings.uses_simulator else ""))
    if rows:
        click.echo(f"  example:    {settings.data_dir / 'blobs' / (rows[0]['enriched_file_path'] or rows[0]['raw_response_path'])}")
    if not run.success:
        sys.exit(f"error: batch run {run.run_id} FAILED: {run_failure(run)}")
    return run


def _training_file(engine: Any, instance: Any, settings: Settings, batch_id: str, name: str) -> Any:
    """Create training file `name` from the batch's eligible conversations, build version 1 and
    print it; exit when nothing was built."""
    from lora_assets.cli.runs import print_checks, run_failure, run_job
    from lora_assets.defs.partitions import training_files_partitions
    from lora_assets.store.training_files import conversations_of_batches, create_training_file, eligible_subset, get_version

    with engine.connect() as conn:
        ids, _ = eligible_subset(conn, conversations_of_batches(conn, [batch_id]))
    create_training_file(engine, name=name, conversation_ids=ids, created_by=settings.user_id, description="made by make demo")
    instance.add_dynamic_partitions(training_files_partitions.name, [name])
    build = run_job("training_file_build", name, instance)
    print_checks(build.get_asset_check_evaluations())
    with engine.connect() as conn:
        v = get_version(conn, name)
    if v is None:
        sys.exit(f"error: training file build {build.run_id} FAILED: {run_failure(build)}")
    st = v["stats"]
    click.echo(f"  v{v['version']}: {v['conversation_count']} conversations, {v['total_training_pairs']} training pairs, "
               f"quality avg {v['avg_quality_score']} (min {v['min_quality_score']}, max {v['max_quality_score']}), "
               f"train/validation {st['train_conversations']}/{st['validation_conversations']}, "
               f"duplicates removed {st['exact_duplicates'] + st['near_duplicates']}")
    base = settings.data_dir / "blobs" if not settings.s3_bucket else f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
    for fmt, o in v["outputs"].items():
        click.echo(f"  {fmt:<20} {base}/{o['path']}")
    return build
