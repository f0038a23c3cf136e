"""`lora-assets`: init, batches, runs, training files, and one-file tools.

Exit codes (README "Errors and limits"): 0 the command did what it was asked; 1 the work failed
(a run failed, every item failed, a blocking check failed, a document is invalid); 2 bad input
(an argument, a setting, a file, or a store that is not initialised). Every failure is one
`error: …` line naming the thing and the reason; a traceback only with `--debug`.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from lora_assets.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    ConflictError,
    InputFileError,
    LimitExceededError,
    LoraError,
    NotFoundError,
    NotInitialisedError,
    RunFailedError,
    SettingsError,
    StoreSetupError,
    UserInputError,
    WorkFailedError,
)
from lora_assets.settings import Settings, env_var


#: In-process runs log warnings and errors only; the full event log is in the instance (UI).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _first_line(text: str, limit: int = 300) -> str:
    line = next((x.strip() for x in str(text).splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe(exc: BaseException) -> tuple[int, list[str]]:
    """(exit code, message lines) of an exception escaping a command."""
    if isinstance(exc, LoraError):
        lines = [x for x in str(exc).splitlines() if x.strip()] or [type(exc).__name__]
        return exc.exit_code, lines
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, (sa_exc.OperationalError, sa_exc.ProgrammingError)):
        reason = _first_line(str(exc.orig) if exc.orig is not None else str(exc))
        if "no such table" in reason or ("relation" in reason and "does not exist" in reason):
            return EXIT_BAD_INPUT, [str(NotInitialisedError(reason))]
        if isinstance(exc, sa_exc.OperationalError):
            return EXIT_FAILED, [f"the domain database cannot be used: {reason}"]
    if isinstance(exc, PermissionError):
        return EXIT_BAD_INPUT, [f"{exc.filename or 'a file'}: permission denied"]
    return EXIT_FAILED, [f"{type(exc).__name__}: {_first_line(str(exc))}", "run with --debug for the traceback"]


class LoraGroup(click.Group):
    """Reports every exception of a command as `error: <message>` and its exit code (no
    traceback), unless `--debug` was given."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place every failure becomes a message
            if ctx.params.get("debug"):
                raise
            code, lines = _describe(exc)
            click.echo(f"error: {lines[0]}", err=True)
            for line in lines[1:]:
                click.echo(f"  {line}", err=True)
            ctx.exit(code)


def _engine(settings: Settings | None = None, *, initialised: bool = True) -> Any:
    """The domain DB engine; with `initialised`, NotInitialisedError (nothing created) unless
    `init` has made the schema."""
    import sqlalchemy.exc as sa_exc

    from lora_assets.store.db import make_engine, require_schema

    url = (settings or Settings.from_env()).resolved_database_url
    if initialised and url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise NotInitialisedError(f"no database file at {url[len('sqlite:///'):]}")
    try:
        engine = make_engine(url)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError):
        # The URL may hold a password: never echoed.
        raise SettingsError("LORA_DATABASE_URL", "is not a SQLAlchemy URL this installation can use (the value is "
                            "not shown); e.g. postgresql+psycopg2://user@host:5432/db") from None
    if initialised:
        require_schema(engine)
    return engine


def _read_input(path: Path, settings: Settings) -> str:
    """The text of a file given to a one-file tool, refused (naming the file and the reason,
    never quoting it) when it is not a regular file, unreadable, over the size limit, not UTF-8,
    binary, or nested deeper than the JSON depth limit."""
    from lora_assets.core.parse import json_nesting_depth

    limit = settings.max_input_file_bytes
    try:
        # Checked before opening too: opening a FIFO would wait for a writer.
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputFileError(path, "is not a regular file")
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise InputFileError(path, "is not a regular file")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputFileError(path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:
        size = path.stat().st_size
        raise LimitExceededError(str(path), f"{max(size, len(data)):,} bytes", limit, "bytes",
                                 env_var("max_input_file_bytes"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"is not UTF-8 text (a binary file?): invalid byte at offset {exc.start}") from None
    if "\x00" in text:
        raise InputFileError(path, "contains NUL characters (a binary file?)")
    depth = json_nesting_depth(text)
    if depth > settings.max_json_depth:
        raise LimitExceededError(str(path), f"JSON nested {depth:,} levels deep", settings.max_json_depth, "levels",
                                 env_var("max_json_depth"))
    return text


def _turn_limit(path: Path, settings: Settings, exc: Exception) -> LimitExceededError:
    return LimitExceededError(str(path), str(exc).split(", over the limit")[0], settings.max_turns,
                              "turns per conversation", env_var("max_turns"))


@click.group(cls=LoraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="LORA_DEBUG", help="Show the Python traceback of a failure.")
def main(debug: bool) -> None:
    """Turn scaffolding (personas × emotional arcs × topics) into LoRA training data with Claude.

    Settings come from the environment (LORA_DATA_DIR, LORA_DATABASE_URL, LORA_S3_BUCKET,
    ANTHROPIC_API_KEY, …; see the README). Without an API key, the loopback simulator is used.

    \b
    Exit codes: 0 done; 1 the work failed (a run, every item, a blocking check,
    an invalid document); 2 bad input (argument, setting, file, store not initialised).
    """


# --- setup ---------------------------------------------------------------------------------


@main.command()
@click.option("--scaffolding-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Directory with personas.json, emotional_arcs.json, training_topics.json, "
              "prompt_templates.json, consultant_profile.json (default: the bundled set).")
def init(scaffolding_dir: Path | None) -> None:
    """Create the domain DB schema (idempotent) and upsert the scaffolding by key, in one transaction.

    Everything a run needs later is checked first, and nothing is written when anything is wrong:
    every record valid, keys unique, no key twice in one JSON object, no NUL character, records
    and templates within their size limits, exactly one template per tier, every template
    placeholder resolvable, and no explicit `id` that would change an existing row's id. Safe to
    run several times at once (serialised by a lock file in the data dir)."""
    from lora_assets.store.db import init_schema, load_scaffolding
    from lora_assets.store.scaffolding_files import BUNDLED_DIR, ScaffoldingLimits, load_bundle

    settings = Settings.from_env()
    directory = scaffolding_dir or BUNDLED_DIR
    bundle = load_bundle(directory, ScaffoldingLimits(
        max_record_bytes=settings.max_scaffolding_record_bytes, max_template_chars=settings.max_template_chars,
        max_file_bytes=settings.max_input_file_bytes))
    _refuse_incomplete(bundle, directory)
    with _init_lock(settings):
        engine = _engine(settings, initialised=False)
        applied = init_schema(engine)
        counts = load_scaffolding(engine, bundle)
        pool = _init_claude_pool(settings)
    click.echo(f"database: {engine.url.render_as_string(hide_password=True)}")
    if pool:
        click.echo(pool)
    click.echo(f"schema migrations applied now: {', '.join(applied) or 'none (up to date)'}")
    for table, c in counts.items():
        click.echo(f"  {table:<20} inserted {c['inserted']:>3}  updated {c['updated']:>3}  unchanged {c['unchanged']:>3}")


def _refuse_incomplete(bundle: Any, directory: Path) -> None:
    """ScaffoldingFileError listing what a run would fail on later (the completeness check's
    findings: one template per tier, resolvable placeholders, required fields)."""
    from lora_assets.core.completeness import completeness_report
    from lora_assets.store.scaffolding_files import RECORD_FILES, ScaffoldingFileError

    report = completeness_report(bundle.personas, bundle.emotional_arcs, bundle.training_topics,
                                 bundle.prompt_templates, bundle.consultant_profile)
    if report.passed:
        return
    files = {spec[3]: spec[0] for spec in RECORD_FILES.values()} | {"consultant_profile": "consultant_profile.json"}
    problems = []
    for p in report.problems:
        where = files.get(p.kind, p.kind) + (f": {p.key!r}" if p.key else "") + (f": field {p.field!r}" if p.field else "")
        problems.append(f"{where}: {p.reason}")
    raise ScaffoldingFileError([f"scaffolding in {directory} is not usable by a run:", *problems])


@contextmanager
def _init_lock(settings: Settings) -> Iterator[None]:
    """An exclusive lock on `<data_dir>/.init.lock` for the whole of `init` when anything embedded
    is set up (the SQLite DB, or the Dagster instance under the data dir): concurrent inits on a
    fresh data dir would otherwise race creating them. PostgreSQL with an external DAGSTER_HOME
    needs no file (init_schema takes an advisory lock) and leaves the data dir untouched."""
    import fcntl

    embedded = settings.resolved_database_url.startswith("sqlite") or not os.environ.get("DAGSTER_HOME")
    if not embedded:
        yield
        return
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fh = (settings.data_dir / ".init.lock").open("a")
    except OSError as exc:
        raise StoreSetupError(f"data directory {settings.data_dir} cannot be used: "
                              f"{exc.strerror or type(exc).__name__} (set LORA_DATA_DIR)") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
        raise NotFoundError(f"unknown schema {name!r}; known: {', '.join(SCHEMAS)}")
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
            raise WorkFailedError("sql/001_schema.sql is out of date: run `lora-assets sql > sql/001_schema.sql`")
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
@click.option("--per-combination", type=click.IntRange(min=1), default=1, show_default=True,
              help="Conversations per persona×arc×topic.")
@click.option("--tier", type=click.Choice(["template", "scenario", "edge_case"]), default="template", show_default=True)
@click.option("--model", default=None, help="Claude model (default LORA_CLAUDE_MODEL or claude-haiku-5-5); one "
              "with a known price, so the spend can be accounted.")
@click.option("--mode", type=click.Choice(["messages", "batches"]), default="messages", show_default=True,
              help="batches = Message Batches API, 50% cheaper, results within 24 h.")
@click.option("--name", default=None, help="A readable name for the batch.")
@click.option("--run", "run_now", is_flag=True, help="Run the batch pipeline in this process right away.")
def batch_create(personas, arcs, topics, per_combination, tier, model, mode, name, run_now) -> None:
    """Plan a batch: write batch_jobs + batch_items (scaffolding IDs fixed now) and register the
    batch id as a `batch_jobs` partition. Refused before anything is written: an unknown key
    (named), a model without a price, or more items than LORA_MAX_ITEMS_PER_BATCH."""
    from pydantic import ValidationError

    from lora_assets.defs.partitions import batch_jobs_partitions
    from lora_assets.generation.pricing import UnknownModelError, price_for
    from lora_assets.instance import get_instance
    from lora_assets.schemas import BatchSelection
    from lora_assets.store.queries import EmptySelectionError, UnknownScaffoldingKeyError, plan_batch

    settings = Settings.from_env()
    model = model or settings.model
    try:
        price_for(model)
    except UnknownModelError as exc:
        raise UserInputError(f"--model {model!r}: {exc}") from None
    engine = _engine(settings)
    _refuse_oversized_plan(engine, settings, personas, arcs, topics, per_combination)
    try:
        selection = BatchSelection(
            persona_keys=list(personas), arc_keys=list(arcs), topic_keys=list(topics),
            conversations_per_combination=per_combination, tier=tier,
        )
        batch_id, n = plan_batch(
            engine, selection=selection, model=model, mode=mode, created_by=settings.user_id, name=name,
        )
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise UserInputError(f"batch selection: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None
    except (UnknownScaffoldingKeyError, EmptySelectionError) as exc:
        raise UserInputError(str(exc)) from None
    get_instance(settings).add_dynamic_partitions(batch_jobs_partitions.name, [batch_id])
    click.echo(f"batch {batch_id}: {n} item(s) planned ({mode} mode)")
    if run_now:
        _run_batch(batch_id)


def _refuse_oversized_plan(engine: Any, settings: Settings, personas: tuple[str, ...], arcs: tuple[str, ...],
                           topics: tuple[str, ...], per_combination: int) -> None:
    """LimitExceededError when the selection would plan more than LORA_MAX_ITEMS_PER_BATCH items,
    counted (not planned) first: keys given count as given, an empty selection as every row."""
    import sqlalchemy as sa

    from lora_assets.store import tables as t

    with engine.connect() as conn:
        def count(keys: tuple[str, ...], table: sa.Table) -> int:
            return len(set(keys)) if keys else conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0

        p, a, x = count(personas, t.personas), count(arcs, t.emotional_arcs), count(topics, t.training_topics)
    n = p * a * x * per_combination
    if n > settings.max_items_per_batch:
        raise LimitExceededError(
            "batch create", f"the selection plans {n:,} items ({p} personas × {a} arcs × {x} topics × "
            f"{per_combination} per combination)", settings.max_items_per_batch, "items per batch",
            env_var("max_items_per_batch"))


@batch.command("list")
def batch_list() -> None:
    """List batch jobs, newest first."""
    from lora_assets.store.queries import list_batches

    with _engine().connect() as conn:
        rows = list_batches(conn, with_snapshot=False)
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
            raise NotFoundError(f"batch job {batch_id!r} not found (see `lora-assets batch list`)")
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


def _known_batch(batch_id: str) -> dict[str, Any]:
    """The batch row, with its id registered as a `batch_jobs` partition; NotFoundError for an
    empty or unknown id (before Dagster sees it)."""
    from lora_assets.defs.partitions import batch_jobs_partitions
    from lora_assets.instance import get_instance
    from lora_assets.store.queries import get_batch

    if not batch_id.strip():
        raise UserInputError("the batch id is empty (see `lora-assets batch list`)")
    with _engine().connect() as conn:
        row = get_batch(conn, batch_id)
    if row is None:
        raise NotFoundError(f"batch job {batch_id!r} not found (see `lora-assets batch list`)")
    instance = get_instance()
    if not instance.has_dynamic_partition(batch_jobs_partitions.name, batch_id):
        instance.add_dynamic_partitions(batch_jobs_partitions.name, [batch_id])
    return row


def _run_batch(batch_id: str) -> None:
    """Execute the batch pipeline for one partition in-process on the persistent instance and
    print check results. RunFailedError when the run failed, a blocking check failed, or every
    item of the batch failed."""
    from lora_assets.definitions import defs
    from lora_assets.instance import get_instance
    from lora_assets.store.queries import batch_progress

    _known_batch(batch_id)
    job = defs.resolve_job_def("batch_pipeline")
    result = job.execute_in_process(partition_key=batch_id, instance=get_instance(), raise_on_error=False,
                                    run_config=QUIET)
    evaluations = result.get_asset_check_evaluations()
    _print_checks(evaluations)
    with _engine().connect() as conn:
        items = batch_progress(conn, batch_id)["items"]
    blocking = [f"{ev.asset_key.to_user_string()}:{ev.check_name}" for ev in evaluations if ev.blocking and not ev.passed]
    total, failed = sum(items.values()), items.get("failed", 0)
    reasons = ([] if result.success else ["the run failed"]) + \
        ([f"blocking check(s) failed: {', '.join(blocking)}"] if blocking else []) + \
        ([f"every item failed ({failed} of {total}; see `lora-assets batch status {batch_id}`)"]
         if total and failed == total else [])
    click.echo(f"run {result.run_id}: {'FAILED' if reasons else 'success'}")
    if reasons:
        raise RunFailedError(f"batch {batch_id}: {'; '.join(reasons)}")


def _print_checks(evaluations: list[Any]) -> None:
    for ev in evaluations:
        mark = "PASS" if ev.passed else "FAIL"
        desc = ev.description or ""
        click.echo(f"  check {mark}  {ev.asset_key.to_user_string()}:{ev.check_name}  {desc}")


@main.command("run")
@click.argument("batch_id")
def run_batch(batch_id: str) -> None:
    """Run generate → parse → enrich (with checks) for BATCH_ID in this process. Exits 1 when the
    run fails, a blocking check fails, or every item failed."""
    _run_batch(batch_id)


@main.command("judge")
@click.argument("batch_id")
def judge_batch(batch_id: str) -> None:
    """Score BATCH_ID's enriched conversations with the Claude judge (optional; stored per conversation)."""
    from lora_assets.definitions import defs
    from lora_assets.instance import get_instance

    _known_batch(batch_id)
    result = defs.resolve_job_def("judge_batch").execute_in_process(
        partition_key=batch_id, instance=get_instance(), raise_on_error=False, run_config=QUIET
    )
    judged = failed = 0
    for mat in result.get_asset_materialization_events():
        md = mat.materialization.metadata
        judged, failed = md["judged_this_run"].value, md["failed_this_run"].value
        click.echo(f"judged {judged}, failed {failed}, avg overall {md['avg_judge_overall'].value}, "
                   f"cost ${md['cost_usd_this_run'].value}")
    everything_failed = failed and not judged
    click.echo(f"run {result.run_id}: {'success' if result.success and not everything_failed else 'FAILED'}")
    if not result.success:
        raise RunFailedError(f"judge run of batch {batch_id} failed")
    if everything_failed:
        raise RunFailedError(f"batch {batch_id}: every judged conversation failed ({failed}); see judge_scores")


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
                raise NotFoundError(f"unknown {label} key {key!r} (see the scaffolding loaded by `lora-assets init`)")
            out[label] = model.model_validate({k: v for k, v in row.items() if k not in ("created_at", "updated_at")})
    return ResolvedScaffolding(persona=out["persona"], emotional_arc=out["emotional arc"], training_topic=out["training topic"])


@main.command("parse")
@click.argument("raw_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--persona", required=True, help="Persona key of the conversation.")
@click.option("--arc", required=True, help="Emotional arc key.")
@click.option("--topic", required=True, help="Training topic key.")
def parse_cmd(raw_file: Path, persona: str, arc: str, topic: str) -> None:
    """Parse one raw response file (raw.json, an API Message, or model text) and print the parsed
    JSON. Exit 1 when the response cannot be parsed (the reason, never the file's content)."""
    from lora_assets.core.parse import ParseError, TooManyTurnsError, parse_conversation

    settings = Settings.from_env()
    text = _read_input(raw_file, settings)
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError:
        raw = text
    stop_reason = None
    if isinstance(raw, dict) and "response" in raw and isinstance(raw.get("generation"), dict):
        stop_reason = raw["generation"].get("stop_reason")
        raw = raw["response"]
    scaffolding = _scaffolding_by_keys(persona, arc, topic)
    try:
        parsed = parse_conversation(raw, conversation_id=raw_file.parent.name or raw_file.stem,
                                    scaffolding=scaffolding, stop_reason=stop_reason, max_turns=settings.max_turns)
    except TooManyTurnsError as exc:
        raise _turn_limit(raw_file, settings, exc) from None
    except ParseError as exc:
        raise WorkFailedError(f"{raw_file}: {exc}") from None
    click.echo(parsed.model_dump_json(indent=2))


@main.command("enrich")
@click.argument("parsed_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def enrich_cmd(parsed_file: Path) -> None:
    """Enrich one parsed conversation file and print the v4.0 enriched JSON (scaffolding looked up
    in the store by its input_parameters, when present)."""
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from lora_assets.core.enrich import EnrichError, enrich_conversation
    from lora_assets.core.parse import TooManyTurnsError
    from lora_assets.core.validate import check_turn_limit
    from lora_assets.schemas import ParsedConversation
    from lora_assets.store import db as dbq

    settings = Settings.from_env()
    text = _read_input(parsed_file, settings)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(parsed_file, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        check_turn_limit(doc, settings.max_turns)
    except TooManyTurnsError as exc:
        raise _turn_limit(parsed_file, settings, exc) from None
    try:
        parsed = ParsedConversation.model_validate(doc)
    except ValidationError as exc:
        from lora_assets.core.parse import json_path

        error = exc.errors(include_url=False)[0]
        raise InputFileError(parsed_file, f"not a parsed conversation: {json_path(error['loc'])}: {error['msg']}") from None
    _refuse_quadratic_history(parsed_file, parsed, settings)
    persona = topic = None
    with _engine(settings).connect() as conn:
        consultant = dbq.read_consultant_profile(conn)
        if consultant is None:
            raise NotInitialisedError("no consultant profile in the store")
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
        raise WorkFailedError(f"{parsed_file}: {exc}") from None
    click.echo(enriched.model_dump_json(indent=2))


def _refuse_quadratic_history(path: Path, parsed: Any, settings: Settings) -> None:
    """Every training pair repeats the history before it, so the enriched output grows with the
    square of the turns: refuse (before enriching) when it would exceed the input size limit."""
    history = prefix = 0
    for turn in parsed.turns:
        if turn.role == "user":
            history += prefix
        prefix += len(turn.content)
    if history > settings.max_input_file_bytes:
        raise LimitExceededError(str(path), f"enriching it would repeat {history:,} characters of history in its "
                                 "training pairs", settings.max_input_file_bytes, "characters (the input size limit)",
                                 env_var("max_input_file_bytes"))


@main.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["raw", "parsed", "enriched", "training_file", "jsonl"]), default=None,
              help="Skip detection and validate as this kind.")
def validate_cmd(file: Path, kind: str | None) -> None:
    """Validate FILE (raw / parsed / enriched / training file / JSONL, detected; raw includes the
    pipeline's own raw.json); exit 0 when valid, else 1 with one line per problem and where it is
    (at most LORA_MAX_VALIDATION_LINES of them, then a note that there are more)."""
    from lora_assets.core.parse import TooManyTurnsError
    from lora_assets.core.validate import DocumentKindError, detect_kind, validate_text

    settings = Settings.from_env()
    text = _read_input(file, settings)
    try:
        kind = kind or detect_kind(text)
    except DocumentKindError as exc:
        raise InputFileError(file, str(exc)) from None
    try:
        problems = validate_text(text, kind, max_turns=settings.max_turns, max_depth=settings.max_json_depth,
                                 max_problems=settings.max_validation_lines)
    except TooManyTurnsError as exc:
        raise _turn_limit(file, settings, exc) from None
    if not problems:
        click.echo(f"{file}: valid {kind}")
        return
    shown = settings.max_validation_lines
    for p in problems[:shown]:
        click.echo(f"{file}: {p.where}: {p.message}", err=True)
    if len(problems) > shown:
        # Validation stops soon after the limit (memory stays bounded), so the rest is not counted.
        click.echo(f"{file}: … more problems not shown (only the first {shown:,} are listed; raise "
                   f"{env_var('max_validation_lines')} to see more)", err=True)
    count = f"more than {shown:,}" if len(problems) > shown else f"{len(problems):,}"
    raise WorkFailedError(f"{file}: not a valid {kind}: {count} problem(s)")


# --- training files -------------------------------------------------------------------------


@main.group("training-file")
def training_file() -> None:
    """Create, extend, build, inspect and download versioned training files."""


def _selection(conn: Any, batches: tuple[str, ...], conversations: tuple[str, ...], skip_ineligible: bool, name: str) -> list[str]:
    from lora_assets.store.training_files import conversations_of_batches, eligible_subset

    if bool(batches) == bool(conversations):
        raise UserInputError("give either --batch or --conversation (one of them, at least once)")
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
        raise UserInputError(str(exc)) from None
    _register_training_file(name)
    click.echo(f"training file {name!r}: {len(ids)} conversation(s)")
    if build:
        _build(name)


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
        raise UserInputError(str(exc)) from None
    click.echo(f"training file {name!r}: {n} conversation(s) added")


def _build(name: str) -> None:
    """Build the next version of NAME in this process; RunFailedError when the build fails."""
    from lora_assets.core.aggregate import TrainingFileNameError, validate_training_file_name
    from lora_assets.definitions import defs
    from lora_assets.instance import get_instance
    from lora_assets.store.training_files import get_training_file

    # Refuse before registering anything: a bogus name must not become a Dagster partition.
    try:
        validate_training_file_name(name)
    except TrainingFileNameError as exc:
        raise UserInputError(str(exc)) from None
    with _engine().connect() as conn:
        if get_training_file(conn, name) is None:
            raise NotFoundError(f"no training file named {name!r} (create it with `lora-assets training-file create`)")
    _register_training_file(name)
    job = defs.resolve_job_def("training_file_build")
    result = job.execute_in_process(partition_key=name, instance=get_instance(), raise_on_error=False, run_config=QUIET)
    for ev in result.all_events:
        if ev.is_failure and ev.step_key and ev.event_specific_data and getattr(ev.event_specific_data, "error", None):
            click.echo(f"  {ev.step_key}: {ev.event_specific_data.error.message.strip().splitlines()[-1]}", err=True)
    _print_checks(result.get_asset_check_evaluations())
    blocking = [f"{ev.check_name}" for ev in result.get_asset_check_evaluations() if ev.blocking and not ev.passed]
    failed = not result.success or bool(blocking)
    click.echo(f"run {result.run_id}: {'FAILED' if failed else 'success'}")
    if failed:
        reason = f"blocking check(s) failed: {', '.join(blocking)}" if blocking else "the build failed (see above)"
        raise RunFailedError(f"training file {name!r}: {reason}")


@training_file.command("build")
@click.argument("name")
def tf_build(name: str) -> None:
    """Build the next version of NAME (materialise its partition) in this process. Exits 1 when
    the build or a blocking check fails."""
    _build(name)


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
            raise NotFoundError(f"no training file named {name!r}")
        v = get_version(conn, name, version)
        all_versions = [x["version"] for x in versions(conn, tf["id"])]
    if v is None:
        raise NotFoundError(f"training file {name!r} has no version {version if version else '(not built yet)'}; "
                            f"versions: {all_versions}")
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
@click.option("--force", is_flag=True, help="With --dest: replace a file of the same name already there.")
def tf_download(name: str, version: int | None, fmt: str, dest: Path | None, force: bool) -> None:
    """Where to get one output of a version: a local path, a presigned S3 URL, or a copy in --dest
    (written whole or not at all; an existing file is kept unless --force)."""
    from lora_assets.defs.resources import build_resources
    from lora_assets.store.training_files import get_version

    with _engine().connect() as conn:
        v = get_version(conn, name, version)
    if v is None:
        raise NotFoundError(f"training file {name!r} has no built version {version or ''}".rstrip())
    outputs = v["outputs"] or {}
    if fmt not in outputs:
        raise NotFoundError(f"unknown format {fmt!r}; available: {', '.join(outputs)}")
    store = build_resources()["blobs"].store()
    key = outputs[fmt]["path"]
    if dest is None:
        click.echo(store.url(key))
        return
    click.echo(str(_download(store, key, dest / key.rsplit("/", 1)[1], force=force)))


def _download(store: Any, key: str, target: Path, *, force: bool) -> Path:
    """Copy blob `key` to `target` through a temporary file in the same directory, then move it
    into place: an interrupted copy never leaves a partial file, and an existing file is only
    replaced with `force` (ConflictError otherwise). An unwritable place is a UserInputError."""
    import tempfile

    from lora_assets.store.blobs import copy_blob

    where = f"--dest {target.parent}"
    if target.parent.exists() and not target.parent.is_dir():
        raise UserInputError(f"{where}: not a directory")
    if target.exists() and not force:
        raise ConflictError(f"{target} already exists; pass --force to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise UserInputError(f"{where}: cannot write there: {exc.strerror or type(exc).__name__}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        copy_blob(store, key, tmp)
        if force:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if a file appeared meanwhile: never replaced silently
            except FileExistsError:
                raise ConflictError(f"{target} already exists; pass --force to replace it") from None
            except OSError:  # a file system without hard links
                os.replace(tmp, target)
    except OSError as exc:
        raise UserInputError(f"{where}: cannot write {target.name}: {exc.strerror or type(exc).__name__}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


from lora_assets.demo import demo  # noqa: E402

main.add_command(demo)

if __name__ == "__main__":
    main()
