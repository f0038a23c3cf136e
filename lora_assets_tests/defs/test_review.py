"""The `review_export` / `review_import` jobs on a real Dagster instance: on PostgreSQL + moto S3
the export lands under reviews/… with a presigned link, an edited copy is imported by key, and a
tampered copy fails the run naming the row with nothing written; on SQLite + a local store the
export's metadata is a path and the import reads a local file (`csv_path`)."""

from __future__ import annotations

import csv
import io
import urllib.request
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from lora_assets.core.review import read_review_csv
from lora_assets.defs.resources import _ENGINES
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import tables as t
from lora_assets_tests.defs import helpers as h


def run(defs: Definitions, instance: DagsterInstance, job: str, op: str, config: dict[str, Any]) -> ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, raise_on_error=False, run_config={**h.QUIET, "ops": {op: {"config": config}}})


def output_metadata(result: ExecuteInProcessResult, op: str) -> dict[str, Any]:
    [event] = [e for e in result.all_events if e.is_successful_output and e.step_key == op]
    return {k: h.plain(v) for k, v in event.event_specific_data.metadata.items()}


def failure_text(result: ExecuteInProcessResult) -> str:
    return "\n".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)


def decide_all(text: str, decision: str) -> str:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    for row in rows[1:]:
        row[rows[0].index("decision")] = decision
        row[rows[0].index("notes")] = f"{decision}d in a test"
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def decisions(engine: sa.Engine, batch_id: str) -> dict[str, Any]:
    c = t.conversations
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(c.c.id, c.c.review_decision).where(c.c.batch_job_id == batch_id)).all())


def test_export_and_import_by_key_on_postgresql_and_s3(pg_url: str, s3_bucket: tuple[str, str], sim: ClaudeSimulator,
                                                       instance: DagsterInstance) -> None:
    blobs = h.s3_blobs(s3_bucket, prefix="lora")
    engine = h.setup_store(pg_url)
    defs = h.make_defs(pg_url, blobs, sim)
    batch_id = h.plan(engine, 1, 1, 2, name="review-s3")
    assert h.run_batch(defs, instance, batch_id).success
    store = blobs.store()

    exported = run(defs, instance, "review_export", "review_export", {"batch": batch_id})
    assert exported.success, failure_text(exported)
    md = output_metadata(exported, "review_export")
    assert md["rows"] == 2 and md["csv_key"].startswith("reviews/batch-") and md["csv_key"].endswith(".csv")
    with urllib.request.urlopen(md["csv"]) as response:  # the presigned link serves the stored CSV
        assert response.read() == store.get_bytes(md["csv_key"])
    text = store.get_bytes(md["csv_key"]).decode("utf-8-sig")

    # A tampered copy: a transcript edited on the first data row. Refused, naming it; nothing written.
    rows = list(csv.reader(io.StringIO(decide_all(text, "approve"), newline="")))
    rows[1][rows[0].index("transcript")] += " (edited)"
    tampered = io.StringIO(newline="")
    csv.writer(tampered, lineterminator="\r\n").writerows(rows)
    store.put_bytes("reviews/tampered.csv", tampered.getvalue().encode("utf-8-sig"))
    refused = run(defs, instance, "review_import", "review_import", {"csv_key": "reviews/tampered.csv"})
    assert not refused.success
    assert "line 2: read-only column 'transcript' was edited" in failure_text(refused)
    assert set(decisions(engine, batch_id).values()) == {None}

    edited = decide_all(text, "reject")
    store.put_bytes("reviews/edited.csv", edited.encode("utf-8-sig"))
    imported = run(defs, instance, "review_import", "review_import", {"csv_key": "reviews/edited.csv"})
    assert imported.success, failure_text(imported)
    md = output_metadata(imported, "review_import")
    assert (md["rejected"], md["approved"], md["undecided"]) == (2, 0, 0)
    assert set(decisions(engine, batch_id).values()) == {"reject"}


def test_export_path_and_import_of_a_local_file_on_sqlite(tmp_path: Path, sim: ClaudeSimulator,
                                                          instance: DagsterInstance) -> None:
    db_url, blobs = f"sqlite:///{tmp_path / 'lora.db'}", h.local_blobs(tmp_path / "blobs")
    engine = h.setup_store(db_url)
    try:
        defs = h.make_defs(db_url, blobs, sim)
        batch_id = h.plan(engine, 1, 1, 2, name="review-local")
        assert h.run_batch(defs, instance, batch_id).success

        both = run(defs, instance, "review_export", "review_export", {"batch": batch_id, "training_file": "x"})
        assert not both.success and "exactly one of `batch` or `training_file`" in failure_text(both)
        missing = run(defs, instance, "review_export", "review_export", {"training_file": "no-such-file"})
        assert not missing.success and "no training file named 'no-such-file'" in failure_text(missing)

        exported = run(defs, instance, "review_export", "review_export", {"batch": batch_id})
        assert exported.success, failure_text(exported)
        md = output_metadata(exported, "review_export")
        path = Path(md["csv"])  # a local store's metadata is the file's path
        assert path.is_file() and path.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM for Excel
        text = path.read_text(encoding="utf-8-sig")
        assert len(read_review_csv(io.StringIO(text, newline=""))) == 2

        local = tmp_path / "edited.csv"
        local.write_text(decide_all(text, "approve"), encoding="utf-8-sig", newline="")
        imported = run(defs, instance, "review_import", "review_import", {"csv_path": str(local)})
        assert imported.success, failure_text(imported)
        assert set(decisions(engine, batch_id).values()) == {"approve"}
        with engine.connect() as conn:
            flags = set(conn.scalars(sa.select(t.conversations.c.human_reviewed)
                                     .where(t.conversations.c.batch_job_id == batch_id)))
        assert flags == {True}
    finally:
        _ENGINES.pop(db_url, None)
        engine.dispose()
