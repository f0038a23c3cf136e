"""One-file tools: `schema`, `sql`, `parse`, `enrich`, `validate` — each reads one document (or
prints one), so a person can check a file without running a pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lora_assets.cli.common import engine, read_input, turn_limit
from lora_assets.errors import (
    InputFileError,
    LimitExceededError,
    NotFoundError,
    NotInitialisedError,
    RunFailedError,
    UserInputError,
    WorkFailedError,
)
from lora_assets.settings import Settings, env_var


@click.command()
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


@click.command()
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


def _scaffolding_by_keys(persona: str, arc: str, topic: str) -> Any:
    """The current scaffolding rows with these keys; NotFoundError naming the first unknown one."""
    from lora_assets.store.scaffolding import UnknownScaffoldingKeyError, scaffolding_by_keys

    with engine().connect() as conn:
        try:
            return scaffolding_by_keys(conn, persona, arc, topic)
        except UnknownScaffoldingKeyError as exc:
            raise NotFoundError(f"{exc} (see the scaffolding loaded by `lora-assets init`)") from None


@click.command("parse")
@click.argument("raw_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--persona", required=True, help="Persona key of the conversation.")
@click.option("--arc", required=True, help="Emotional arc key.")
@click.option("--topic", required=True, help="Training topic key.")
def parse_cmd(raw_file: Path, persona: str, arc: str, topic: str) -> None:
    """Parse one raw response file (raw.json, an API Message, or model text) and print the parsed
    JSON. Exit 1 when the response cannot be parsed (the reason, never the file's content)."""
    from lora_assets.core.parse import ParseError, TooManyTurnsError, parse_conversation

    settings = Settings.from_env()
    text = read_input(raw_file, settings)
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
        raise turn_limit(raw_file, settings, exc) from None
    except ParseError as exc:
        raise WorkFailedError(f"{raw_file}: {exc}") from None
    click.echo(parsed.model_dump_json(indent=2))


@click.command("enrich")
@click.argument("parsed_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", "batch_key", default=None, metavar="KEY",
              help="Enrich a whole batch (its partition key or id) in this process, through the "
              "enriched_conversations asset and its checks, instead of one file.")
@click.option("--re-enrich", is_flag=True,
              help="With --batch: enrich again every parsed conversation, also those already enriched (after the "
              "enrichment logic changed). No Claude request. Training files holding them are stale until rebuilt.")
def enrich_cmd(parsed_file: Path | None, batch_key: str | None, re_enrich: bool) -> None:
    """Enrich one parsed conversation file and print the v4.0 enriched JSON (scaffolding looked up
    in the store by its input_parameters, when present); or, with --batch KEY, enrich a batch's
    conversations in the store (with --re-enrich: all of them again, from their stored parsed files).

    \b
    lora-assets enrich conversation.json
    lora-assets enrich --batch my-batch --re-enrich
    """
    if (parsed_file is None) == (batch_key is None):
        raise UsageError("give either PARSED_FILE or --batch KEY (one of them)")
    if re_enrich and batch_key is None:
        raise UsageError("--re-enrich works on a batch: give --batch KEY")
    if batch_key is not None:
        _enrich_batch(batch_key, re_enrich)
        return
    assert parsed_file is not None
    _enrich_file(parsed_file)


def _enrich_batch(batch_key: str, re_enrich: bool) -> None:
    """Materialise `enriched_conversations` (with its checks) for one batch partition in this
    process, on the persistent instance; print what it did and the stale training files.
    RunFailedError when the run or a blocking check failed."""
    from dagster import AssetKey

    from lora_assets import definitions
    from lora_assets.cli.batches import _known_batch
    from lora_assets.cli.runs import QUIET, blocking_failures, print_checks, print_warnings, run_failure
    from lora_assets.instance import get_instance

    _known_batch(batch_key)
    keys = {AssetKey("enriched_conversations")}
    checks = {k for k in definitions.defs.resolve_asset_graph().asset_check_keys if k.asset_key in keys}
    job = definitions.defs.resolve_job_def("batch_pipeline").get_subset(asset_selection=keys,
                                                                        asset_check_selection=checks)
    run_config = {**QUIET, "ops": {"enriched_conversations": {"config": {"re_enrich": re_enrich}}}}
    instance = get_instance()
    result = job.execute_in_process(partition_key=batch_key, instance=instance, raise_on_error=False,
                                    run_config=run_config)
    print_warnings(instance, result.run_id)
    for mat in result.get_asset_materialization_events():
        md = mat.materialization.metadata
        click.echo(f"enriched {md['enriched_this_run'].value}, failed {md['failed_this_run'].value} "
                   f"(enrichment version {md['enrichment_version'].value})")
        if "stale_training_files" in md:
            for rec in md["stale_training_files"].value.records:
                click.echo(f"  stale until rebuilt: training file {rec.data['training_file']} "
                           f"(v{rec.data['current_version']}, {rec.data['members_from_this_batch']} member(s) "
                           "from this batch): run `lora-assets training-file build`")
    evaluations = result.get_asset_check_evaluations()
    print_checks(evaluations)
    blocking = blocking_failures(evaluations)
    reasons = ([] if result.success else [f"the run failed: {run_failure(result)}"]) + (
        [f"blocking check(s) failed: {', '.join(blocking)}"] if blocking else [])
    click.echo(f"run {result.run_id}: {'FAILED' if reasons else 'success'}")
    if reasons:
        raise RunFailedError(f"enrich batch {batch_key}: {'; '.join(reasons)}")


def _enrich_file(parsed_file: Path) -> None:
    """Enrich one parsed conversation file and print the enriched JSON."""
    from datetime import UTC, datetime

    from lora_assets.core.enrich import EnrichError, enrich_conversation
    from lora_assets.store import db as dbq

    settings = Settings.from_env()
    parsed = _read_parsed(parsed_file, settings)
    _refuse_quadratic_history(parsed_file, parsed, settings)
    persona = topic = None
    with engine(settings).connect() as conn:
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


class UsageError(UserInputError):
    """Arguments that do not go together (exit 2)."""


def _read_parsed(path: Path, settings: Settings) -> Any:
    """The ParsedConversation in `path`; InputFileError (or the turn limit) naming what is wrong."""
    from pydantic import ValidationError

    from lora_assets.core.parse import TooManyTurnsError, json_path
    from lora_assets.core.validate import check_turn_limit
    from lora_assets.schemas import ParsedConversation

    text = read_input(path, settings)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        check_turn_limit(doc, settings.max_turns)
    except TooManyTurnsError as exc:
        raise turn_limit(path, settings, exc) from None
    try:
        return ParsedConversation.model_validate(doc)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise InputFileError(path, f"not a parsed conversation: {json_path(error['loc'])}: {error['msg']}") from None


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


@click.command("validate")
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
    text = read_input(file, settings)
    try:
        kind = kind or detect_kind(text)
    except DocumentKindError as exc:
        raise InputFileError(file, str(exc)) from None
    try:
        problems = validate_text(text, kind, max_turns=settings.max_turns, max_depth=settings.max_json_depth,
                                 max_problems=settings.max_validation_lines)
    except TooManyTurnsError as exc:
        raise turn_limit(file, settings, exc) from None
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
