"""store.reviews on SQLite + a local store: export rows of a batch and of a training file (read
from the stored enriched files), and the review round trip up to the DB — export → edit
decisions → import → columns set; a tampered CSV or an unknown conversation refused naming its
row, with nothing written."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from sqlalchemy.engine import Engine

from lora_assets.core.review import ReviewFileError, ReviewRow, read_review_csv, write_review_csv
from lora_assets.defs.resources import _ENGINES
from lora_assets.errors import NotFoundError
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import tables as t
from lora_assets.store import training_files as tfq
from lora_assets.store.blobs import BlobStore
from lora_assets.store.reviews import apply_review, export_rows, resolve_target, write_export
from lora_assets_tests.defs import helpers as h

REVIEW_COLUMNS = ("review_decision", "reviewer_notes", "reviewed_at", "human_reviewed")


@dataclass
class World:
    engine: Engine
    store: BlobStore
    batch_id: str
    ids: list[str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A 1 × 1 × 3 batch generated (simulator), parsed and enriched by the real pipeline."""
    root = tmp_path_factory.mktemp("reviews")
    db_url, blobs = f"sqlite:///{root / 'lora.db'}", h.local_blobs(root / "blobs")
    engine = h.setup_store(db_url)
    with ClaudeSimulator() as sim, DagsterInstance.ephemeral() as instance:
        batch_id = h.plan(engine, 1, 1, 3, name="review-batch")
        assert h.run_batch(h.make_defs(db_url, blobs, sim), instance, batch_id).success
    ids = [r["id"] for r in h.conversations(engine, batch_id)]
    yield World(engine, blobs.store(), batch_id, ids)
    _ENGINES.pop(db_url, None)
    engine.dispose()


def export_csv(w: World, **target: str) -> str:
    out = io.StringIO(newline="")
    with ThreadPoolExecutor(4) as pool:
        write_export(w.engine, w.store, resolve_target(w.engine, **target), out, pool=pool, window=4)
    return out.getvalue()


def decide(text: str, decisions: dict[str, tuple[str, str]]) -> str:
    """The CSV with `decision` / `notes` filled in for the given conversation ids (as a reviewer does)."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = rows[0]
    for row in rows[1:]:
        if row[0] in decisions:
            row[header.index("decision")], row[header.index("notes")] = decisions[row[0]]
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def review_columns(w: World) -> dict[str, dict[str, Any]]:
    c = t.conversations
    with w.engine.connect() as conn:
        rows = conn.execute(sa.select(c.c.id, *(c.c[n] for n in REVIEW_COLUMNS)).where(c.c.id.in_(w.ids))).mappings()
        return {r["id"]: dict(r) for r in rows}


def reset_review(w: World) -> None:
    with w.engine.begin() as conn:
        conn.execute(sa.update(t.conversations).values(review_decision=None, reviewer_notes=None, reviewed_at=None,
                                                       human_reviewed=False))


def test_batch_export_rows_carry_keys_scores_and_the_transcript(world: World) -> None:
    with ThreadPoolExecutor(4) as pool:
        exported = list(export_rows(world.engine, world.store, resolve_target(world.engine, batch=world.batch_id),
                                    pool=pool, window=2))
    assert [e.row.conversation_id for e in exported] == sorted(world.ids)
    rows = {r["id"]: r for r in h.conversations(world.engine, world.batch_id)}
    for e in exported:
        row, enriched = rows[e.row.conversation_id], h.read_json(world.store, rows[e.row.conversation_id]["enriched_file_path"])
        assert e.row.persona and e.row.arc and e.row.topic and e.row.quality == row["quality_score"]
        last = enriched["training_pairs"][-1]
        # The transcript is the whole conversation: system prompt, every turn, the advisor's last answer.
        assert e.row.transcript.startswith("SYSTEM: ") and last["current_user_input"].strip() in e.row.transcript
        assert e.row.transcript.count("CLIENT: ") == len(enriched["training_pairs"])
        seeds = sum(p["training_metadata"]["use_as_seed_example"] for p in enriched["training_pairs"])
        assert e.seed_example_pairs == seeds
    with pytest.raises(NotFoundError, match="no-such-batch"):
        resolve_target(world.engine, batch="no-such-batch")


def test_training_file_export_lists_only_its_members(world: World) -> None:
    name = "review-tf"
    tfq.create_training_file(world.engine, name=name, conversation_ids=world.ids[:2], created_by="tests")
    text = export_csv(world, training_file=name)
    assert sorted(d.conversation_id for d in read_review_csv(io.StringIO(text, newline=""))) == sorted(world.ids[:2])


def test_round_trip_sets_the_review_columns_and_blank_rows_stay_unchanged(world: World) -> None:
    reset_review(world)
    a, b, c = sorted(world.ids)
    edited = decide(export_csv(world, batch=world.batch_id), {a: ("Approve", "clear and kind"), b: ("reject", "")})
    outcome = apply_review(world.engine, read_review_csv(io.StringIO(edited, newline="")), "reviewer-1")
    assert (outcome.approved, outcome.rejected, outcome.undecided, outcome.rows) == (1, 1, 1, 3)
    cols = review_columns(world)
    assert cols[a]["review_decision"] == "approve" and cols[a]["human_reviewed"] is True
    assert cols[a]["reviewer_notes"] == "clear and kind" and cols[a]["reviewed_at"] is not None
    assert cols[b]["review_decision"] == "reject" and cols[b]["human_reviewed"] is False
    assert cols[b]["reviewer_notes"] is None and cols[b]["reviewed_at"] is not None
    assert cols[c] == {"id": c, "review_decision": None, "reviewer_notes": None, "reviewed_at": None,
                       "human_reviewed": False}


def test_tampered_csv_is_refused_naming_the_row_and_nothing_is_written(world: World) -> None:
    reset_review(world)
    ids = sorted(world.ids)
    text = decide(export_csv(world, batch=world.batch_id), {i: ("approve", "") for i in ids})
    # A reviewer "fixes" a quality score on the third data row (its transcript spans many lines).
    third_line = read_review_csv(io.StringIO(text, newline=""))[2].line
    rows = list(csv.reader(io.StringIO(text, newline="")))
    rows[3][rows[0].index("quality")] = "5"
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    with pytest.raises(ReviewFileError) as refused:
        apply_review(world.engine, read_review_csv(io.StringIO(out.getvalue(), newline="")), "reviewer-1")
    assert refused.value.problems == [
        f"line {third_line}: read-only column 'quality' was edited (row_check does not match)"]
    assert all(c["review_decision"] is None for c in review_columns(world).values())


def test_unknown_conversation_is_refused_naming_the_row_and_nothing_is_written(world: World) -> None:
    reset_review(world)
    known = sorted(world.ids)[0]
    rows = [ReviewRow(conversation_id=known, transcript="x"), ReviewRow(conversation_id="not-a-conversation",
                                                                          transcript="y")]
    text = io.StringIO(newline="")
    write_review_csv(rows, text)
    edited = decide(text.getvalue(), {known: ("approve", ""), "not-a-conversation": ("reject", "")})
    with pytest.raises(ReviewFileError) as refused:
        apply_review(world.engine, read_review_csv(io.StringIO(edited, newline="")), "reviewer-1")
    assert refused.value.problems == ["line 3: conversation 'not-a-conversation' is not in the domain database"]
    # (one-line transcripts here: the second data row starts on line 3)
    assert review_columns(world)[known]["review_decision"] is None


def test_unreadable_file_is_said_in_the_transcript(world: World) -> None:
    victim = sorted(world.ids)[0]
    row = next(r for r in h.conversations(world.engine, world.batch_id) if r["id"] == victim)
    saved = world.store.get_bytes(row["enriched_file_path"])
    world.store.delete(row["enriched_file_path"])
    try:
        with ThreadPoolExecutor(2) as pool:
            exported = {e.row.conversation_id: e.row for e in export_rows(
                world.engine, world.store, resolve_target(world.engine, batch=world.batch_id), pool=pool)}
    finally:
        world.store.put_bytes(row["enriched_file_path"], saved)
    assert exported[victim].transcript.startswith("(conversation file cannot be read: FileNotFoundError")
