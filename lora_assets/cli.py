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
    click.echo(f"schema migrations applied now: {', '.join(applied) or 'none (up to date)'}")
    for table, c in counts.items():
        click.echo(f"  {table:<20} inserted {c['inserted']:>3}  updated {c['updated']:>3}  unchanged {c['unchanged']:>3}")


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
    click.echo(f"  cost        ${p['cost_usd']:.6f}")
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


from lora_assets.demo import demo  # noqa: E402

main.add_command(demo)

if __name__ == "__main__":
    main()
