"""`recorded_checks.verify` on SQLite and PostgreSQL: the database picks the rows a check must
look at (records of another run, to read again; records of this run naming problems), so a check
in the run that parsed costs a few queries; what it reports is what the records and files say."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance

from lora_assets.defs import parsing, recorded_checks
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.schemas import ParsedConversation
from lora_assets.store.common import sibling_key
from lora_assets_tests.defs import helpers as h


def _verify(engine, blobs, batch_id: str, run_id: str):  # noqa: ANN001, ANN202 - test helper
    return recorded_checks.verify(
        engine=engine, blobs=blobs, batch_id=batch_id, run_id=run_id, row_filter={"parse_status": "parsed"},
        column="parse_checks", path_column="file_path", load=ParsedConversation.model_validate_json,
        what="conversation.json", rules=parsing.RULES, check_name="input_parameters_complete",
        summary="{ok} of {n} parsed conversations have complete input_parameters", scaffolding=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_verify_reads_again_only_other_runs_records_and_reports_this_runs_problems(
        backend: str, tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance,
        request: pytest.FixtureRequest) -> None:
    db_url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    engine = h.setup_store(db_url)
    blobs = h.local_blobs(tmp_path / "blobs")
    batch_id = h.plan(engine, 2, 2, 1)
    result = h.run_batch(h.make_defs(db_url, blobs, sim), instance, batch_id)
    assert result.success
    run = result.run_id
    rows = h.conversations(engine, batch_id)
    clean = {"input_parameters_complete": [], "client_persona_matches": []}
    # this run's record naming a problem; another run's record; a record without this check
    h.update_row(engine, rows[0]["id"], parse_checks={
        "run_id": run, "problems": {**clean, "input_parameters_complete": ["input_parameters.persona_id is empty"]}})
    h.update_row(engine, rows[1]["id"], parse_checks={"run_id": "another-run", "problems": clean})
    h.update_row(engine, rows[2]["id"], parse_checks={"run_id": run, "problems": {"client_persona_matches": []}})

    out = _verify(engine, blobs, batch_id, run)

    assert out.passed is False
    assert out.metadata["checked"].value == 4
    assert out.metadata["read_again_from_storage"].value == 2  # rows 1 and 2, from their files
    table = h.plain(out.metadata["problems"])
    assert rows[0]["id"] in table and "persona_id is empty" in table
    assert rows[1]["id"] not in table and rows[2]["id"] not in table
    refreshed = {r["id"]: r["parse_checks"] for r in h.conversations(engine, batch_id)}
    assert refreshed[rows[1]["id"]] == {"run_id": run, "problems": clean}
    assert refreshed[rows[2]["id"]] == {"run_id": run, "problems": clean}
    # Once the problem is gone from the record, the check passes without reading a file.
    h.update_row(engine, rows[0]["id"], parse_checks={"run_id": run, "problems": clean})
    again = _verify(engine, blobs, batch_id, run)
    assert again.passed and again.metadata["read_again_from_storage"].value == 0
    engine.dispose()


def test_a_write_that_fails_leaves_its_row_unstored_and_the_next_run_stores_it(
        tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance, sqlite_url: str) -> None:
    """`stream_stage` hands writes to the pool WRITE_CHUNK at a time: a write that fails (here a
    directory squats where conversation.json must go) fails its own row only, named on the row,
    whatever its place in a chunk; the next run stores exactly those rows, from the raw files."""
    engine = h.setup_store(sqlite_url)
    root = tmp_path / "blobs"
    defs = h.make_defs(sqlite_url, h.local_blobs(root), sim)
    batch_id = h.plan(engine, 3, 3, 1)  # 9 conversations: chunks of 4, 4 and 1
    assert h.run_assets(defs, instance, batch_id, ["raw_conversations"]).success
    rows = h.conversations(engine, batch_id)
    squatted = {rows[i]["id"] for i in (0, 5, 8)}  # first of a chunk, middle of one, the lone last
    for r in rows:
        if r["id"] in squatted:
            (root / sibling_key(r["raw_response_path"], "conversation.json")).mkdir(parents=True)
    requests_before = sim.stats.snapshot()["requests_total"]

    first = h.run_assets(defs, instance, batch_id, ["parsed_conversations"], with_checks=False)

    assert first.success
    meta = h.metadata(first, "parsed_conversations")
    assert (meta["parsed_this_run"], meta["failed_this_run"]) == (6, 3)
    after = {r["id"]: r for r in h.conversations(engine, batch_id)}
    for cid, r in after.items():
        if cid in squatted:
            assert r["parse_status"] == "failed" and r["file_path"] is None
            assert r["parse_error"].startswith("unstored: conversation.json could not be written (IsADirectoryError"), r
        else:
            assert r["parse_status"] == "parsed" and (root / r["file_path"]).is_file()
    for r in rows:
        if r["id"] in squatted:
            (root / sibling_key(r["raw_response_path"], "conversation.json")).rmdir()

    second = h.run_assets(defs, instance, batch_id, ["parsed_conversations"], with_checks=False)

    meta = h.metadata(second, "parsed_conversations")
    assert (meta["parsed_this_run"], meta["failed_this_run"], meta["parsed_total"]) == (3, 0, 9)
    assert all(r["parse_status"] == "parsed" for r in h.conversations(engine, batch_id))
    assert sim.stats.snapshot()["requests_total"] == requests_before, "storing a parsed file again must not ask Claude again"
    engine.dispose()
