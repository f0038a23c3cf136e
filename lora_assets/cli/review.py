"""`review export | import`: human review through a CSV opened in a spreadsheet (the CLI side of
the `review_export` / `review_import` jobs)."""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO

import click

from lora_assets.cli.common import engine
from lora_assets.errors import ConflictError, InputFileError, LimitExceededError, UserInputError
from lora_assets.settings import Settings, env_var


class ReviewRefusedError(UserInputError):
    """A review CSV refused on import: the bad rows with their lines (the first
    LORA_MAX_VALIDATION_LINES, then a count of the rest); nothing was written (exit 2)."""

    def __init__(self, path: Path, problems: list[str], more: int = 0) -> None:
        self.problems, self.more = problems, more
        tail = ([f"… and {more:,} more problem(s) not shown: only the first {len(problems):,} are listed "
                 f"(raise it with {env_var('max_validation_lines')}=<n>)"] if more else [])
        super().__init__(f"{path}: refused, nothing was written ({len(problems) + more:,} problem(s)):\n"
                         + "\n".join([*problems, *tail]))


class _Bounded(io.RawIOBase):
    """A binary file read through a byte budget: LimitExceededError past `limit` bytes (a file
    that grows while it is read is stopped too, not only one that was large when opened)."""

    def __init__(self, raw: BinaryIO, path: Path, limit: int) -> None:
        self._raw, self._path, self._limit, self._read = raw, path, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        self._read += n or 0
        if self._read > self._limit:
            raise _too_large(self._path, self._read, self._limit)
        return n


def _too_large(path: Path, size: int, limit: int) -> LimitExceededError:
    return LimitExceededError(str(path), f"{size:,} bytes", limit, "bytes", env_var("max_review_file_bytes"))


def _open_review_csv(path: Path, limit: int) -> IO[str]:
    """`path` as text for the CSV reader, refused before reading when it is not a regular file
    (a FIFO would wait for a writer) or larger than `limit` bytes, and stopped at `limit`."""
    try:
        info = path.stat()
    except OSError as exc:
        raise InputFileError(path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(path, "is not a regular file")
    if info.st_size > limit:
        raise _too_large(path, info.st_size, limit)
    raw = path.open("rb")
    return io.TextIOWrapper(io.BufferedReader(_Bounded(raw, path, limit)), encoding="utf-8-sig", newline="")


@click.group()
def review() -> None:
    """Human review: export conversations to a CSV, decide in a spreadsheet, import the decisions.

    \b
    lora-assets review export --batch KEY --out review.csv
    lora-assets review export --training-file NAME --out review.csv
    (fill in `decision` = approve / reject / empty, and `notes`)
    lora-assets review import review.csv

    Rejected conversations are left out of the next training-file build; approved ones are marked
    human_reviewed. In the Dagster UI: the `review_export` and `review_import` jobs.
    """


@review.command("export")
@click.option("--batch", "batch_key", default=None, metavar="KEY",
              help="Export every parsed conversation of this batch (its partition key or id).")
@click.option("--training-file", default=None, metavar="NAME",
              help="Export the current members of this training file.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The CSV to write (UTF-8 with a BOM, so Excel reads it correctly).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists (it may hold a reviewer's edits).")
def review_export(batch_key: str | None, training_file: str | None, out: Path, force: bool) -> None:
    """Write the review CSV of a batch (--batch) or a training file (--training-file): one row per
    conversation with its scaffolding keys, quality, judge scores and transcript, and the empty
    `decision` and `notes` columns to fill in. Read-only columns carry a check: an edited one is
    refused on import, naming the row."""
    from lora_assets.cli.runs import defs_resource
    from lora_assets.store.reviews import resolve_target, write_export

    if bool(batch_key) == bool(training_file):
        raise UserInputError("give exactly one of --batch KEY or --training-file NAME")
    if out.exists() and not force:
        raise ConflictError(f"{out}: exists (it may hold a reviewer's edits); use --force to overwrite it")
    domain = engine()
    target = resolve_target(domain, batch=batch_key, training_file=training_file)
    blobs = defs_resource("blobs")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written next to --out and renamed into place: a failed export never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as handle, blobs.pool() as pool:
            summary = write_export(domain, blobs.store(), target, handle, pool=pool, window=2 * blobs.concurrency)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    what = "batch" if target.kind == "batch" else "training file"
    click.echo(f"{out}: {summary.rows} conversation(s) of {what} {target.key}")
    if summary.seed_example_conversations:
        click.echo(f"  {summary.seed_example_conversations} of them propose seed examples (pairs with quality ≥ 4.0): "
                   "worth reviewing first")
    click.echo("  fill in `decision` (approve / reject) and `notes`, then `lora-assets review import` the file")


@review.command("import")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
def review_import(csv_file: Path) -> None:
    """Apply the decisions of an edited review CSV: review_decision, reviewer_notes, reviewed_at and
    human_reviewed on each decided conversation; undecided rows change nothing. All or nothing:
    any bad row (edited read-only column, unknown decision, unknown conversation, …) is listed with
    its line (the first LORA_MAX_VALIDATION_LINES, then a count) and nothing is written (exit 2).
    A file over LORA_MAX_REVIEW_FILE_BYTES or LORA_MAX_REVIEW_ROWS is refused unread (exit 2)."""
    from lora_assets.core.review import ReviewFileError, ReviewRowLimitError, read_review_csv
    from lora_assets.store.reviews import apply_review

    settings = Settings.from_env()
    domain = engine(settings)
    cap = settings.max_validation_lines
    try:
        with _open_review_csv(csv_file, settings.max_review_file_bytes) as handle:
            decisions = read_review_csv(handle, max_rows=settings.max_review_rows, max_problems=cap)
        outcome = apply_review(domain, decisions, settings.user_id, max_problems=cap)
    except ReviewRowLimitError as exc:
        raise LimitExceededError(str(csv_file), f"more than {exc.limit:,} rows (line {exc.line})", exc.limit,
                                 "rows", env_var("max_review_rows")) from None
    except ReviewFileError as exc:
        raise ReviewRefusedError(csv_file, exc.problems, exc.more) from None
    except UnicodeDecodeError as exc:
        raise InputFileError(csv_file, f"is not UTF-8 text: invalid byte at offset {exc.start}") from None
    except OSError as exc:
        raise InputFileError(csv_file, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    click.echo(f"{csv_file}: {outcome.approved} approved, {outcome.rejected} rejected, {outcome.undecided} undecided "
               f"({outcome.rows} row(s)); rebuild the training files to apply them")
