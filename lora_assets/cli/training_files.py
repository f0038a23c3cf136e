"""`training-file create | add | build | list | show | download`: versioned training files (one
`training_files` partition each), built in this process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from lora_assets.cli.common import engine
from lora_assets.cli.runs import blocking_failures, defs_resource, print_checks, run_failure, run_job
from lora_assets.errors import ConflictError, NotFoundError, RunFailedError, UserInputError
from lora_assets.settings import Settings


@click.group("training-file")
def training_file() -> None:
    """Create, extend, build, inspect and download versioned training files."""


def _selection(conn: Any, batches: tuple[str, ...], conversations: tuple[str, ...], skip_ineligible: bool) -> list[str]:
    """The conversation ids given (or every conversation of the batches given), without the
    ineligible ones (each listed with its reason) when `skip_ineligible`: the selection rule
    shared with the launch config (`select_conversations`), in the CLI's option names."""
    from lora_assets.store.training_files import SelectionError, select_conversations

    try:
        selection = select_conversations(conn, batches=batches, conversations=conversations,
                                         skip_ineligible=skip_ineligible, labels=("--batch", "--conversation"))
    except SelectionError as exc:
        raise UserInputError(str(exc)) from None
    for cid, reason in selection.skipped.items():
        click.echo(f"skipped {cid}: {reason}", err=True)
    return selection.conversation_ids


def _build_options(tokenizer: str | None, max_length: int | None) -> dict[str, Any]:
    """The `training_files` launch config for the build options, checked before anything runs:
    a tokenizer that cannot be loaded is a UserInputError naming the path and the reason."""
    from lora_assets.core.tokens import TokenizerLoadError, token_counter

    if tokenizer is not None:
        try:
            token_counter(tokenizer)
        except TokenizerLoadError as exc:
            raise UserInputError(f"--tokenizer: {exc}") from None
    return {k: v for k, v in (("tokenizer", tokenizer), ("max_length", max_length)) if v is not None}


#: The build options of `create --build` and `build`.
_TOKENIZER = click.option("--tokenizer", "tokenizer", type=click.Path(path_type=str), default=None,
                          help="Count tokens with this local tokenizer.json (or HF tokenizer directory) instead "
                          "of the chars/4 estimate.")
_MAX_LENGTH = click.option("--max-length", "max_length", type=click.IntRange(min=1), default=None,
                           help="Training max_length: the lengths check warns when examples exceed it "
                           "(default: the recommended one).")


def _register_training_file(name: str) -> None:
    """Add NAME as a `training_files` partition (once)."""
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
@_TOKENIZER
@_MAX_LENGTH
def tf_create(name, description, batches, conversations, min_quality, skip_ineligible, build, tokenizer,
              max_length) -> None:
    """Create training file NAME from batches or conversations. A duplicate, unknown or
    unenriched conversation is refused (each listed with its reason) and nothing is written."""
    from lora_assets.core.aggregate import TrainingFileNameError
    from lora_assets.store.training_files import TrainingFileError, create_training_file

    options = _build_options(tokenizer, max_length) if build else {}
    settings = Settings.from_env()
    domain = engine(settings)
    try:
        with domain.connect() as conn:
            ids = _selection(conn, batches, conversations, skip_ineligible)
        create_training_file(domain, name=name, conversation_ids=ids, created_by=settings.user_id,
                             description=description, min_quality=min_quality)
    except (TrainingFileError, TrainingFileNameError) as exc:
        raise UserInputError(str(exc)) from None
    _register_training_file(name)
    click.echo(f"training file {name!r}: {len(ids)} conversation(s)")
    if build:
        _build(name, options)


@training_file.command("add")
@click.argument("name")
@click.option("--batch", "batches", multiple=True)
@click.option("--conversation", "conversations", multiple=True)
@click.option("--skip-ineligible", is_flag=True)
def tf_add(name, batches, conversations, skip_ineligible) -> None:
    """Add conversations to training file NAME (all or none); build to get a new version."""
    from lora_assets.store.training_files import TrainingFileError, add_members

    settings = Settings.from_env()
    domain = engine(settings)
    try:
        with domain.connect() as conn:
            ids = _selection(conn, batches, conversations, skip_ineligible)
        n = add_members(domain, name=name, conversation_ids=ids, added_by=settings.user_id)
    except TrainingFileError as exc:
        raise UserInputError(str(exc)) from None
    click.echo(f"training file {name!r}: {n} conversation(s) added")


def _run_build(name: str, options: dict[str, Any]) -> Any:
    """Execute the `training_file_build` job for NAME in this process with the build `options`
    as launch config (quietly, never raising on a failed step)."""
    return run_job("training_file_build", name, run_config={"ops": {"training_files": {"config": options}}}
                   if options else None)


def _build(name: str, options: dict[str, Any] | None = None) -> None:
    """Build the next version of NAME in this process; RunFailedError when the build or a blocking
    (ERROR-severity) check fails."""
    from lora_assets.core.aggregate import TrainingFileNameError, validate_training_file_name
    from lora_assets.store.training_files import get_training_file

    # Refuse before registering anything: a bogus name must not become a Dagster partition.
    try:
        validate_training_file_name(name)
    except TrainingFileNameError as exc:
        raise UserInputError(str(exc)) from None
    with engine().connect() as conn:
        if get_training_file(conn, name) is None:
            raise NotFoundError(f"no training file named {name!r} (create it with `lora-assets training-file create`)")
    _register_training_file(name)
    result = _run_build(name, options or {})
    evaluations = result.get_asset_check_evaluations()
    print_checks(evaluations)
    blocking = blocking_failures(evaluations, with_asset=False)
    failed = not result.success or bool(blocking)
    click.echo(f"run {result.run_id}: {'FAILED' if failed else 'success'}")
    if failed:
        reason = "; ".join(([] if result.success else [f"the build failed: {run_failure(result)}"])
                           + ([f"blocking check(s) failed: {', '.join(blocking)}"] if blocking else []))
        raise RunFailedError(f"training file {name!r}: {reason}")


@training_file.command("build")
@click.argument("name")
@_TOKENIZER
@_MAX_LENGTH
def tf_build(name: str, tokenizer: str | None, max_length: int | None) -> None:
    """Build the next version of NAME (materialise its partition) in this process. Exits 1 when
    the build or a blocking check fails; a warning check (token lengths, leakage warnings) is
    shown as WARN and does not."""
    _build(name, _build_options(tokenizer, max_length))


@training_file.command("list")
def tf_list() -> None:
    """List training files with their current version and counts."""
    from lora_assets.store.training_files import list_training_files

    with engine().connect() as conn:
        rows = list_training_files(conn)
    if not rows:
        click.echo("no training files")
    for r in rows:
        click.echo(f"{r['name']:<32} v{r['current_version']:<3} {r['conversation_count']:>6} conversations "
                   f"{r['total_training_pairs']:>7} pairs  avg quality {r['avg_quality_score']}")


_CURATION = ("members", "review_rejected_out", "quality_filtered_out", "exact_duplicates", "near_duplicates",
             "train_conversations", "validation_conversations")


@training_file.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Default: the latest.")
def tf_show(name: str, version: int | None) -> None:
    """Metadata and outputs of one version of NAME."""
    from lora_assets.store.training_files import get_training_file, get_version, versions

    with engine().connect() as conn:
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
    click.echo(f"  curation      {json.dumps({k: v['stats'].get(k) for k in _CURATION})}")
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
    from lora_assets.store.training_files import get_version

    with engine().connect() as conn:
        v = get_version(conn, name, version)
    if v is None:
        raise NotFoundError(f"training file {name!r} has no built version {version or ''}".rstrip())
    outputs = v["outputs"] or {}
    if fmt not in outputs:
        raise NotFoundError(f"unknown format {fmt!r}; available: {', '.join(outputs)}")
    store = defs_resource("blobs").store()
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
