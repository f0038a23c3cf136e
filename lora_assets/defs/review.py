"""Human review from the Dagster UI: `review_export` writes a batch's or a training file's review
CSV to the blob store (a path or link in the metadata), `review_import` applies an edited one.

The CSV (`core.review`) is opened in a spreadsheet; a person fills in `decision` (approve /
reject / empty) and `notes`. The import is all or nothing: a tampered or malformed row, or an
unknown conversation, fails the run naming every bad row, and nothing is written. The training
file's next build leaves rejected conversations out and marks approved ones human_reviewed.
"""


import io
import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dagster import Config, Failure, MetadataValue, OpExecutionContext, Output, job, op
from pydantic import Field

from lora_assets.core.review import ReviewFileError, read_review_csv
from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.errors import NotFoundError
from lora_assets.store.blobs import BlobKeyError, LocalBlobStore
from lora_assets.store.reviews import apply_review, resolve_target, write_export

#: Presigned S3 links to an exported CSV stay valid this long.
LINK_TTL = timedelta(days=1)
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


class ReviewExportConfig(Config):
    """What to export: exactly one of `batch` or `training_file`."""

    batch: str | None = Field(default=None, description="Batch job: its partition key (slug) or id.")
    training_file: str | None = Field(default=None, description="Training file name: its current members.")


class ReviewImportConfig(Config):
    """Where the edited CSV is: exactly one of `csv_key` or `csv_path`."""

    csv_key: str | None = Field(default=None, description="Key of the CSV in the blob store (e.g. reviews/…/….csv, "
                                "as written by review_export and edited in place).")
    csv_path: str | None = Field(default=None, description="Path of the CSV on the machine running the code location.")


def export_key(kind: str, label: str, when: datetime) -> str:
    """Blob key of an export: reviews/<batch|training-file>-<label>/<UTC timestamp>.csv."""
    safe = _UNSAFE.sub("-", label).strip("-.") or "unnamed"
    return f"reviews/{kind.replace('_', '-')}-{safe}/{when.strftime('%Y%m%dT%H%M%S%fZ')}.csv"


@op(name="review_export_op", description="Write the review CSV of a batch or training file to the blob store (path or link in the metadata).")
def review_export(context: OpExecutionContext, config: ReviewExportConfig, db: DomainDB,
                  blobs: BlobStoreResource) -> Output[str]:
    """Export one row per conversation (scaffolding keys, quality, judge scores, transcript) to
    `reviews/…` in the blob store, streaming; the output metadata links the file and lists the
    conversations whose pairs the enrichment proposes as seed examples."""
    if bool(config.batch) == bool(config.training_file):
        raise Failure(description="review_export: give exactly one of `batch` or `training_file` in the run config")
    engine, store = db.engine(), blobs.store()
    try:
        target = resolve_target(engine, batch=config.batch, training_file=config.training_file)
    except NotFoundError as exc:
        raise Failure(description=f"review_export: {exc}") from None
    key = export_key(target.kind, target.label, datetime.now(UTC))
    with blobs.pool() as pool, store.writer(key) as raw:
        # utf-8-sig: Excel reads non-ASCII text correctly; newline="" as the csv module wants.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        summary = write_export(engine, store, target, text, pool=pool, window=2 * blobs.concurrency)
        text.flush()
        text.detach()  # the store's writer closes the underlying file
    if isinstance(store, LocalBlobStore):
        where: Any = MetadataValue.path(store.url(key))
    else:
        where = MetadataValue.url(store.url(key, expires_in=int(LINK_TTL.total_seconds())))
    context.log.info(f"review CSV of {target.kind} {target.key!r}: {summary.rows} row(s) at {key}")
    return Output(key, metadata={
        "csv": where,
        "csv_key": key,
        "target": f"{target.kind} {target.key}",
        "rows": summary.rows,
        "seed_example_conversations": summary.seed_example_conversations,
        "seed_examples": MetadataValue.json(summary.seed_examples),
        "next_step": "edit `decision` (approve/reject) and `notes`, then launch review_import with csv_key or csv_path",
    })


@op(name="review_import_op", description="Apply an edited review CSV to the conversations (all or nothing).")
def review_import(context: OpExecutionContext, config: ReviewImportConfig, db: DomainDB,
                  blobs: BlobStoreResource) -> Output[dict[str, int]]:
    """Read and check the whole CSV, then set review_decision, reviewer_notes, reviewed_at and
    human_reviewed in one transaction. A refusal fails the run naming each bad row; nothing is
    written."""
    if bool(config.csv_key) == bool(config.csv_path):
        raise Failure(description="review_import: give exactly one of `csv_key` or `csv_path` in the run config")
    where = config.csv_key or config.csv_path or ""
    try:
        if config.csv_key and not blobs.store().exists(config.csv_key):
            raise Failure(description=f"review_import: no object {config.csv_key!r} in the blob store")
        if config.csv_key:
            # Spooled to a local temp file first: an S3 body closes itself at its end, which a
            # text wrapper reading ahead trips over; the spool also keeps memory flat.
            with blobs.store().open_read(config.csv_key) as raw, tempfile.TemporaryFile() as spool:
                shutil.copyfileobj(raw, spool)
                spool.seek(0)
                decisions = read_review_csv(io.TextIOWrapper(spool, encoding="utf-8-sig", newline=""))
        else:
            with Path(where).open(encoding="utf-8-sig", newline="") as handle:
                decisions = read_review_csv(handle)
        outcome = apply_review(db.engine(), decisions, db.user_id)
    except ReviewFileError as exc:
        raise Failure(description=f"review_import: {where}: {exc}",
                      metadata={"problems": MetadataValue.md("\n".join(f"- {p}" for p in exc.problems))}) from None
    except (OSError, UnicodeDecodeError, BlobKeyError) as exc:
        raise Failure(description=f"review_import: {where} cannot be read: {type(exc).__name__}: {exc}") from None
    context.log.info(f"review {where}: {outcome.approved} approved, {outcome.rejected} rejected, "
                     f"{outcome.undecided} undecided, by {outcome.reviewer}")
    counts = outcome.model_dump(exclude={"reviewer"})
    return Output(counts, metadata={**counts, "reviewer": outcome.reviewer, "csv": where,
                                    "next_step": "rebuild the training files: rejected conversations are left out"})


@job(name="review_export", description="Export a batch's or training file's conversations as a review CSV (run config: batch or "
     "training_file).")
def review_export_job() -> None:
    """One op: `review_export`."""
    # Step key `review_export`; the op def needs its own name (a job and an op may not share one).
    review_export.alias("review_export")()


@job(name="review_import", description="Import an edited review CSV (run config: csv_key or csv_path); all or nothing.")
def review_import_job() -> None:
    """One op: `review_import`."""
    review_import.alias("review_import")()
