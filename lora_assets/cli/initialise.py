"""`lora-assets init`: the domain DB schema, the scaffolding, and the Claude pool, in one go."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from lora_assets.cli.common import engine as domain_engine
from lora_assets.errors import StoreSetupError
from lora_assets.settings import Settings

CLAUDE_POOL = "claude_api"


@click.command()
@click.option("--scaffolding-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Directory with personas.json, emotional_arcs.json, training_topics.json, "
              "prompt_templates.json, consultant_profile.json (default: LORA_SCAFFOLDING_DIR, a directory "
              "or s3://bucket/prefix; else the bundled set).")
def init(scaffolding_dir: Path | None) -> None:
    """Create the domain DB schema (idempotent) and upsert the scaffolding by key, in one transaction.

    Everything a run needs later is checked first, and nothing is written when anything is wrong:
    every record valid, keys unique, no key twice in one JSON object, no NUL character, records
    and templates within their size limits, exactly one template per tier, every template
    placeholder resolvable, and no explicit `id` that would change an existing row's id. Safe to
    run several times at once (serialised by a lock file in the data dir)."""
    from lora_assets.cli.common import load_settings_scaffolding
    from lora_assets.store.db import init_schema, load_scaffolding

    settings = Settings.from_env()
    # The same source the scaffolding assets load (LORA_SCAFFOLDING_DIR), unless overridden here.
    bundle, source = load_settings_scaffolding(settings, scaffolding_dir)
    _refuse_incomplete(bundle, source)
    with _init_lock(settings):
        engine = domain_engine(settings, initialised=False)
        applied = init_schema(engine)
        counts = load_scaffolding(engine, bundle)
        pool = _init_claude_pool(settings)
    click.echo(f"scaffolding: {source}")
    click.echo(f"database: {engine.url.render_as_string(hide_password=True)}")
    if pool:
        click.echo(pool)
    click.echo(f"schema migrations applied now: {', '.join(applied) or 'none (up to date)'}")
    for table, c in counts.items():
        click.echo(f"  {table:<20} inserted {c['inserted']:>3}  updated {c['updated']:>3}  unchanged {c['unchanged']:>3}")


def _refuse_incomplete(bundle: Any, directory: object) -> None:
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

    embedded = settings.resolved_database_url.startswith("sqlite") or settings.dagster_home is None
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
