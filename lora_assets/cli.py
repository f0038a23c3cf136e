"""`lora-assets`: init, batches, runs, training files, and one-file tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lora_assets.settings import Settings


#: In-process runs log warnings and errors only; the full event log is in the instance (UI).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _engine(settings: Settings | None = None) -> Any:
    from lora_assets.store.db import make_engine

    return make_engine((settings or Settings.from_env()).resolved_database_url)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Turn scaffolding (personas × emotional arcs × topics) into LoRA training data with Claude.

    Settings come from the environment (LORA_DATA_DIR, LORA_DATABASE_URL, LORA_S3_BUCKET,
    ANTHROPIC_API_KEY, …; see the README). Without an API key, the loopback simulator is used."""


# --- setup ---------------------------------------------------------------------------------


@main.command()
@click.option("--scaffolding-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Directory with personas.json, emotional_arcs.json, training_topics.json, "
              "prompt_templates.json, consultant_profile.json (default: the bundled set).")
def init(scaffolding_dir: Path | None) -> None:
    """Create the domain DB schema (idempotent) and upsert the scaffolding by key, in one transaction."""
    from lora_assets.store.db import init_schema, load_scaffolding
    from lora_assets.store.scaffolding_files import BUNDLED_DIR, ScaffoldingFileError, load_bundle

    settings = Settings.from_env()
    try:
        bundle = load_bundle(scaffolding_dir or BUNDLED_DIR)
    except ScaffoldingFileError as exc:
        _fail(str(exc))
    engine = _engine(settings)
    applied = init_schema(engine)
    counts = load_scaffolding(engine, bundle)
    click.echo(f"database: {engine.url.render_as_string(hide_password=True)}")
    pool = _init_claude_pool(settings)
    if pool:
        click.echo(pool)
    click.echo(f"schema migrations applied now: {', '.join(applied) or 'none (up to date)'}")
    for table, c in counts.items():
        click.echo(f"  {table:<20} inserted {c['inserted']:>3}  updated {c['updated']:>3}  unchanged {c['unchanged']:>3}")


CLAUDE_POOL = "claude_api"


def _init_claude_pool(settings: Settings) -> str | None:
    """Create the `claude_api` pool row in the Dagster instance now, at its configured default.
    Dagster 1.13 creates it lazily on first claim, and on PostgreSQL two runs claiming it for
    the first time at once can crash one of them (IntegrityError, then an aborted transaction)."""
    from lora_assets.instance import get_instance

    instance = get_instance(settings)
    storage = instance.event_log_storage
    limit = instance.global_op_concurrency_default_limit
    if limit is None or not storage.supports_global_concurrency_limits:
        return None  # no pool limit configured (embedded default): the pool is unlimited
    storage.initialize_concurrency_limit_to_default(CLAUDE_POOL)
    return f"dagster pool {CLAUDE_POOL!r}: limit {storage.get_concurrency_info(CLAUDE_POOL).slot_count}"


@main.command()
@click.argument("name", required=False)
def schema(name: str | None) -> None:
    """Print the JSON Schema of NAME (omit NAME to list them)."""
    from lora_assets.schemas import SCHEMAS

    if name is None:
        click.echo("\n".join(SCHEMAS))
        return
    if name not in SCHEMAS:
        _fail(f"unknown schema {name!r}; known: {', '.join(SCHEMAS)}")
    click.echo(json.dumps(SCHEMAS[name].model_json_schema(), indent=2))


@main.command()
@click.option("--check", is_flag=True, help="Exit 1 if sql/001_schema.sql differs from the tables.")
def sql(check: bool) -> None:
    """Print the PostgreSQL DDL generated from the table definitions."""
    from lora_assets.store.db import migration_files, render_postgres_ddl

    ddl = render_postgres_ddl()
    if check:
        current = migration_files()[0].read_text()
        if current != ddl:
            _fail("sql/001_schema.sql is out of date: run `lora-assets sql > sql/001_schema.sql`")
        click.echo("sql/001_schema.sql is up to date")
        return
    click.echo(ddl, nl=False)


# --- batches --------------------------------------------------------------------------------


@main.group()
def batch() -> None:
    """Plan and inspect batch jobs (one Dagster partition each)."""


@batch.command("create")
@click.option("--persona", "personas", multiple=True, help="Persona key (repeat; default all).")
@click.option("--arc", "arcs", multiple=True, help="Emotional arc key (repeat; default all).")
@click.option("--topic", "topics", multiple=True, help="Training topic key (repeat; default all).")
@click.option("--per-combination", default=1, show_default=True, help="Conversations per persona×arc×topic.")
@click.option("--tier", type=click.Choice(["template", "scenario", "edge_case"]), default="template", show_default=True)
@click.option("--model", default=None, help="Claude model (default LORA_CLAUDE_MODEL or claude-haiku-5-5).")
@click.option("--mode", type=click.Choice(["messages", "batches"]), default="messages", show_default=True,
              help="batches = Message Batches API, 50% cheaper, results within 24 h.")
@click.option("--name", default=None, help="A readable name for the batch.")
@click.option("--run", "run_now", is_flag=True, help="Run the batch pipeline in this process right away.")
def batch_create(personas, arcs, topics, per_combination, tier, model, mode, name, run_now) -> None:
    """Plan a batch: write batch_jobs + batch_items (scaffolding IDs fixed now) and register the
    batch id as a `batch_jobs` partition. Unknown keys are refused, naming the key."""
    from lora_assets.defs.partitions import batch_jobs_partitions
    from lora_assets.instance import get_instance
    from lora_assets.schemas import BatchSelection
    from lora_assets.store.queries import EmptySelectionError, UnknownScaffoldingKeyError, plan_batch

    settings = Settings.from_env()
    try:
        selection = BatchSelection(
            persona_keys=list(personas), arc_keys=list(arcs), topic_keys=list(topics),
            conversations_per_combination=per_combination, tier=tier,
        )
        batch_id, n = plan_batch(
            _engine(settings), selection=selection, model=model or settings.model, mode=mode,
            created_by=settings.user_id, name=name,
        )
    except (UnknownScaffoldingKeyError, EmptySelectionError, ValueError) as exc:
        _fail(str(exc))
    get_instance(settings).add_dynamic_partitions(batch_jobs_partitions.name, [batch_id])
    click.echo(f"batch {batch_id}: {n} item(s) planned ({mode} mode)")
    if run_now:
        _run_batch(batch_id)


@batch.command("list")
def batch_list() -> None:
    """List batch jobs, newest first."""
    from lora_assets.store.queries import list_batches

    with _engine().connect() as conn:
        rows = list_batches(conn)
    if not rows:
        click.echo("no batch jobs")
    for r in rows:
        click.echo(f"{r['id']}  {r['status']:<10} {r['mode']:<8} {r['total_items']:>5} items  {r['model']:<18} {r['name']}")


@batch.command("status")
@click.argument("batch_id")
def batch_status(batch_id: str) -> None:
    """Progress of one batch: items by status, parse and enrichment counts, tokens, cost."""
    from lora_assets.store.queries import batch_progress, get_batch, item_failures

    with _engine().connect() as conn:
        b = get_batch(conn, batch_id)
        if b is None:
            _fail(f"batch job {batch_id!r} not found")
        p = batch_progress(conn, batch_id)
        failures = item_failures(conn, batch_id)
    click.echo(f"batch {batch_id} ({b['name']}): {b['status']}, {b['total_items']} items, {b['mode']} mode, {b['model']}")
    for stage in ("items", "parse", "enrichment"):
        click.echo(f"  {stage:<11} " + "  ".join(f"{k}={v}" for k, v in p[stage].items()))
    click.echo(f"  tokens      in={p['input_tokens']} out={p['output_tokens']} cache_read={p['cache_read_input_tokens']}")
    click.echo(f"  cost        ${p['cost_usd']:.6f} for {p['paid_responses']} paid response(s): "
               f"${p['stored_cost_usd']:.6f} stored, ${p['duplicate_cost_usd']:.6f} in {p['duplicate_responses']} "
               f"duplicate(s), ${p['wasted_cost_usd']:.6f} in failed attempts")
    for f in failures[:20]:
        click.echo(f"  failed item {f['position']}: {f['error']}")


def _run_batch(batch_id: str) -> bool:
    """Execute the batch pipeline for one partition in-process on the persistent instance;
    print check results; return success."""
    from lora_assets.definitions import defs
    from lora_assets.instance import get_instance

    instance = get_instance()
    job = defs.resolve_job_def("batch_pipeline")
    result = job.execute_in_process(partition_key=batch_id, instance=instance, raise_on_error=False, run_config=QUIET)
    _print_checks(result.get_asset_check_evaluations())
    click.echo(f"run {result.run_id}: {'success' if result.success else 'FAILED'}")
    return result.success


def _print_checks(evaluations: list[Any]) -> None:
    for ev in evaluations:
        mark = "PASS" if ev.passed else "FAIL"
        desc = ev.description or ""
        click.echo(f"  check {mark}  {ev.asset_key.to_user_string()}:{ev.check_name}  {desc}")


@main.command("run")
@click.argument("batch_id")
def run_batch(batch_id: str) -> None:
    """Run generate → parse → enrich (with checks) for BATCH_ID in this process."""
    if not _run_batch(batch_id):
        sys.exit(1)


@main.command("judge")
@click.argument("batch_id")
def judge_batch(batch_id: str) -> None:
    """Score BATCH_ID's enriched conversations with the Claude judge (optional; stored per conversation)."""
    from lora_assets.definitions import defs
    from lora_assets.instance import get_instance

    result = defs.resolve_job_def("judge_batch").execute_in_process(
        partition_key=batch_id, instance=get_instance(), raise_on_error=False, run_config=QUIET
    )
    for mat in result.get_asset_materialization_events():
        md = mat.materialization.metadata
        click.echo(f"judged {md['judged_this_run'].value}, failed {md['failed_this_run'].value}, "
                   f"avg overall {md['avg_judge_overall'].value}, cost ${md['cost_usd_this_run'].value}")
    click.echo(f"run {result.run_id}: {'success' if result.success else 'FAILED'}")
    if not result.success:
        sys.exit(1)


# --- simulator ------------------------------------------------------------------------------


@main.command("simulate-claude")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--latency", default=0.0, help="Seconds added to each /v1/messages response.")
@click.option("--rpm", default=None, type=int, help="Requests per minute before 429 + retry-after-ms.")
@click.option("--overload-rate", default=0.0, help="Share of requests answered 529.")
@click.option("--error-rate", default=0.0, help="Share of requests answered 500.")
@click.option("--truncation-rate", default=0.0, help="Share of responses cut with stop_reason max_tokens.")
@click.option("--malformed-rate", default=0.0, help="Share of responses with broken JSON.")
@click.option("--refusal-rate", default=0.0, help="Share of responses that refuse.")
def simulate_claude(host, port, latency, rpm, overload_rate, error_rate, truncation_rate, malformed_rate, refusal_rate) -> None:
    """Serve the loopback Claude simulator (Messages, count_tokens, Message Batches)."""
    from lora_assets.generation.simulator import FaultConfig, serve

    config = FaultConfig(
        latency_s=latency, rpm_limit=rpm, overload_rate=overload_rate, server_error_rate=error_rate,
        truncation_rate=truncation_rate, malformed_rate=malformed_rate, refusal_rate=refusal_rate,
    )
    click.echo(f"Claude simulator on http://{host}:{port} (set ANTHROPIC_BASE_URL to use it)")
    serve(host, port, config)


# --- one-file tools -------------------------------------------------------------------------


def _scaffolding_by_keys(persona: str, arc: str, topic: str) -> Any:
    import sqlalchemy as sa

    from lora_assets.schemas import EmotionalArc, Persona, ResolvedScaffolding, TrainingTopic
    from lora_assets.store import tables as t

    out = {}
    with _engine().connect() as conn:
        for label, table, col, key, model in (
            ("persona", t.personas, "persona_key", persona, Persona),
            ("emotional arc", t.emotional_arcs, "arc_key", arc, EmotionalArc),
            ("training topic", t.training_topics, "topic_key", topic, TrainingTopic),
        ):
            row = conn.execute(sa.select(table).where(table.c[col] == key)).mappings().first()
            if row is None:
                _fail(f"unknown {label} key {key!r} (run `lora-assets init`?)")
            out[label] = model.model_validate({k: v for k, v in row.items() if k not in ("created_at", "updated_at")})
    return ResolvedScaffolding(persona=out["persona"], emotional_arc=out["emotional arc"], training_topic=out["training topic"])


@main.command("parse")
@click.argument("raw_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--persona", required=True, help="Persona key of the conversation.")
@click.option("--arc", required=True, help="Emotional arc key.")
@click.option("--topic", required=True, help="Training topic key.")
def parse_cmd(raw_file: Path, persona: str, arc: str, topic: str) -> None:
    """Parse one raw response file (raw.json, an API Message, or model text) and print the parsed JSON."""
    from lora_assets.core.parse import ParseError, parse_conversation

    text = raw_file.read_text()
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError:
        raw = text
    stop_reason = None
    if isinstance(raw, dict) and "response" in raw and "generation" in raw:
        stop_reason = raw["generation"].get("stop_reason")
        raw = raw["response"]
    scaffolding = _scaffolding_by_keys(persona, arc, topic)
    try:
        parsed = parse_conversation(raw, conversation_id=raw_file.parent.name or raw_file.stem,
                                    scaffolding=scaffolding, stop_reason=stop_reason)
    except ParseError as exc:
        _fail(str(exc))
    click.echo(parsed.model_dump_json(indent=2))


@main.command("enrich")
@click.argument("parsed_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def enrich_cmd(parsed_file: Path) -> None:
    """Enrich one parsed conversation file and print the v4.0 enriched JSON (scaffolding looked up
    in the store by its input_parameters, when present)."""
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from lora_assets.core.enrich import EnrichError, enrich_conversation
    from lora_assets.schemas import ParsedConversation
    from lora_assets.store import db as dbq

    try:
        parsed = ParsedConversation.model_validate_json(parsed_file.read_text())
    except ValidationError as exc:
        _fail(f"{parsed_file}: not a parsed conversation: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
    persona = topic = None
    with _engine().connect() as conn:
        consultant = dbq.read_consultant_profile(conn)
        if consultant is None:
            _fail("no consultant profile in the store: run `lora-assets init`")
        if parsed.input_parameters is not None:
            ip = parsed.input_parameters
            persona = dbq.scaffolding_by_id(conn, [ip.persona_id], "personas").get(ip.persona_id)
            topic = dbq.scaffolding_by_id(conn, [ip.training_topic_id], "training_topics").get(ip.training_topic_id)
    try:
        enriched = enrich_conversation(
            parsed, conversation_id=parsed_file.parent.name or parsed_file.stem, consultant=consultant,
            persona=persona, training_topic=topic, created_date=datetime.now(UTC).date().isoformat(),
        )
    except EnrichError as exc:
        _fail(str(exc))
    click.echo(enriched.model_dump_json(indent=2))


@main.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["raw", "parsed", "enriched", "training_file", "jsonl"]), default=None,
              help="Skip detection and validate as this kind.")
def validate_cmd(file: Path, kind: str | None) -> None:
    """Validate FILE (raw / parsed / enriched / training file / JSONL, detected); exit 0 when valid,
    else 1 with one line per problem and where it is."""
    from lora_assets.core.validate import DocumentKindError, detect_kind, validate_text

    try:
        text = file.read_text()
    except UnicodeDecodeError:
        _fail(f"{file}: not UTF-8 text")
    try:
        kind = kind or detect_kind(text)
    except DocumentKindError as exc:
        _fail(f"{file}: {exc}")
    problems = validate_text(text, kind)
    if not problems:
        click.echo(f"{file}: valid {kind}")
        return
    for p in problems:
        click.echo(f"{file}: {p.where}: {p.message}", err=True)
    sys.exit(1)


# --- training files -------------------------------------------------------------------------


@main.group("training-file")
def training_file() -> None:
    """Create, extend, build, inspect and download versioned training files."""


def _selection(conn: Any, batches: tuple[str, ...], conversations: tuple[str, ...], skip_ineligible: bool, name: str) -> list[str]:
    from lora_assets.store.training_files import conversations_of_batches, eligible_subset

    if bool(batches) == bool(conversations):
        _fail("give either --batch or --conversation (one of them, at least once)")
    ids = list(conversations) if conversations else conversations_of_batches(conn, list(batches))
    if skip_ineligible:
        ids, problems = eligible_subset(conn, ids)
        for cid, reason in problems.items():
            click.echo(f"skipped {cid}: {reason}", err=True)
    return ids


def _register_training_file(name: str) -> None:
    from lora_assets.defs.partitions import training_files_partitions
    from lora_assets.instance import get_instance

    instance = get_instance()
    if name not in instance.get_dynamic_partitions(training_files_partitions.name):
        instance.add_dynamic_partitions(training_files_partitions.name, [name])


@training_file.command("create")
@click.argument("name")
@click.option("--description", default=None)
@click.option("--batch", "batches", multiple=True, help="Add every conversation of this batch (repeat).")
@click.option("--conversation", "conversations", multiple=True, help="Add this conversation id (repeat).")
@click.option("--min-quality", type=float, default=None, help="Leave out conversations scoring below this (0-5) at build time.")
@click.option("--skip-ineligible", is_flag=True, help="With --batch: add only enriched conversations, listing the others.")
@click.option("--build", is_flag=True, help="Build version 1 right away.")
def tf_create(name, description, batches, conversations, min_quality, skip_ineligible, build) -> None:
    """Create training file NAME from batches or conversations. A duplicate, unknown or
    unenriched conversation is refused (each listed with its reason) and nothing is written."""
    from lora_assets.core.aggregate import TrainingFileNameError
    from lora_assets.store.training_files import TrainingFileError, create_training_file

    settings = Settings.from_env()
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            ids = _selection(conn, batches, conversations, skip_ineligible, name)
        create_training_file(engine, name=name, conversation_ids=ids, created_by=settings.user_id,
                             description=description, min_quality=min_quality)
    except (TrainingFileError, TrainingFileNameError) as exc:
        _fail(str(exc))
    _register_training_file(name)
    click.echo(f"training file {name!r}: {len(ids)} conversation(s)")
    if build and not _build(name):
        sys.exit(1)


@training_file.command("add")
@click.argument("name")
@click.option("--batch", "batches", multiple=True)
@click.option("--conversation", "conversations", multiple=True)
@click.option("--skip-ineligible", is_flag=True)
def tf_add(name, batches, conversations, skip_ineligible) -> None:
    """Add conversations to training file NAME (all or none); build to get a new version."""
    from lora_assets.store.training_files import TrainingFileError, add_members

    settings = Settings.from_env()
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            ids = _selection(conn, batches, conversations, skip_ineligible, name)
        n = add_members(engine, name=name, conversation_ids=ids, added_by=settings.user_id)
    except TrainingFileError as exc:
        _fail(str(exc))
    click.echo(f"training file {name!r}: {n} conversation(s) added")


def _build(name: str) -> bool:
    from lora_assets.core.aggregate import TrainingFileNameError, validate_training_file_name
    from lora_assets.definitions import defs
    from lora_assets.instance import get_instance
    from lora_assets.store.training_files import get_training_file

    # Refuse before registering anything: a bogus name must not become a Dagster partition.
    try:
        validate_training_file_name(name)
    except TrainingFileNameError as exc:
        _fail(str(exc))
    with _engine().connect() as conn:
        if get_training_file(conn, name) is None:
            _fail(f"no training file named {name!r} (create it with `lora-assets training-file create`)")
    _register_training_file(name)
    job = defs.resolve_job_def("training_file_build")
    result = job.execute_in_process(partition_key=name, instance=get_instance(), raise_on_error=False, run_config=QUIET)
    for ev in result.all_events:
        if ev.is_failure and ev.step_key and ev.event_specific_data and getattr(ev.event_specific_data, "error", None):
            click.echo(f"  {ev.step_key}: {ev.event_specific_data.error.message.strip().splitlines()[-1]}", err=True)
    _print_checks(result.get_asset_check_evaluations())
    click.echo(f"run {result.run_id}: {'success' if result.success else 'FAILED'}")
    return result.success


@training_file.command("build")
@click.argument("name")
def tf_build(name: str) -> None:
    """Build the next version of NAME (materialise its partition) in this process."""
    if not _build(name):
        sys.exit(1)


@training_file.command("list")
def tf_list() -> None:
    """List training files with their current version and counts."""
    from lora_assets.store.training_files import list_training_files

    with _engine().connect() as conn:
        rows = list_training_files(conn)
    if not rows:
        click.echo("no training files")
    for r in rows:
        click.echo(f"{r['name']:<32} v{r['current_version']:<3} {r['conversation_count']:>6} conversations "
                   f"{r['total_training_pairs']:>7} pairs  avg quality {r['avg_quality_score']}")


@training_file.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Default: the latest.")
def tf_show(name: str, version: int | None) -> None:
    """Metadata and outputs of one version of NAME."""
    from lora_assets.store.training_files import get_training_file, get_version, versions

    with _engine().connect() as conn:
        tf = get_training_file(conn, name)
        if tf is None:
            _fail(f"no training file named {name!r}")
        v = get_version(conn, name, version)
        all_versions = [x["version"] for x in versions(conn, tf["id"])]
    if v is None:
        _fail(f"training file {name!r} has no version {version if version else '(not built yet)'}; versions: {all_versions}")
    click.echo(f"{name} v{v['version']} (versions: {all_versions})  {tf['description'] or ''}")
    click.echo(f"  conversations {v['conversation_count']}  pairs {v['total_training_pairs']}  quality "
               f"min/avg/max {v['min_quality_score']}/{v['avg_quality_score']}/{v['max_quality_score']}")
    click.echo(f"  scaffolding   {json.dumps(v['scaffolding_distribution'])}")
    click.echo(f"  curation      {json.dumps({k: v['stats'][k] for k in ('members', 'quality_filtered_out', 'exact_duplicates', 'near_duplicates', 'train_conversations', 'validation_conversations')})}")
    for fmt, o in (v["outputs"] or {}).items():
        click.echo(f"  {fmt:<20} {o['path']}  ({o['bytes']} bytes)")


@training_file.command("download")
@click.argument("name")
@click.option("--version", "version", type=int, default=None)
@click.option("--format", "fmt", default="jsonl", show_default=True,
              help="json, jsonl, messages-train, messages-validation, openai-train, openai-validation, "
              "sharegpt-train, sharegpt-validation, parquet, axolotl, card")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy into this directory (default: print a local path or a presigned URL).")
def tf_download(name: str, version: int | None, fmt: str, dest: Path | None) -> None:
    """Where to get one output of a version: a local path, a presigned S3 URL, or a copy in --dest."""
    from lora_assets.defs.resources import build_resources
    from lora_assets.store.blobs import copy_blob
    from lora_assets.store.training_files import get_version

    with _engine().connect() as conn:
        v = get_version(conn, name, version)
    if v is None:
        _fail(f"training file {name!r} has no built version {version or ''}".rstrip())
    outputs = v["outputs"] or {}
    if fmt not in outputs:
        _fail(f"unknown format {fmt!r}; available: {', '.join(outputs)}")
    store = build_resources()["blobs"].store()
    key = outputs[fmt]["path"]
    if dest is not None:
        click.echo(str(copy_blob(store, key, dest / key.rsplit("/", 1)[1])))
    else:
        click.echo(store.url(key))


from lora_assets.demo import demo  # noqa: E402

main.add_command(demo)

if __name__ == "__main__":
    main()
