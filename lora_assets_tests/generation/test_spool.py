"""The durable spool: one journal per run, group-committed; tombstones for stored answers; a dead
run's journal (its lock released by the kernel) is replayed, a live run's is left alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lora_assets.generation.spool import Spool, SpoolError
from lora_assets.schemas import GenerationRecord, Usage


def record(item_id: str, message_id: str = "msg_1") -> GenerationRecord:
    return GenerationRecord(batch_item_id=item_id, model="claude-haiku-5-5", generator="simulator",
                            stop_reason="end_turn", usage=Usage(input_tokens=10, output_tokens=5), cost_usd=0.001,
                            response={"id": message_id, "content": []})


def test_answers_wait_until_marked_stored_and_a_finished_journal_is_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "batch-1", "run-a")
    spool.put_many([("item-a", record("item-a")), ("item-b", record("item-b", "msg_2"))])
    reader = Spool(tmp_path, "batch-1")
    assert [(i, r.response["id"]) for i, r in reader.pending()] == [("item-a", "msg_1"), ("item-b", "msg_2")]
    spool.mark_stored("item-a")
    assert reader.item_ids() == ["item-b"] and len(reader) == 1
    spool.mark_stored("item-b")
    spool.close()
    assert not (tmp_path / "batch-1").exists(), "a finished scope leaves nothing behind"


def test_a_journal_with_unstored_answers_is_kept_and_replayed_by_the_next_run(tmp_path: Path) -> None:
    first = Spool(tmp_path, "s", "run-1")
    first.put_many([("x", record("x")), ("y", record("y", "msg_2"))])
    first.mark_stored("x")
    first.close()  # the run ended without storing y (blob store down)
    second = Spool(tmp_path, "s", "run-2")
    (orphan,) = list(second.orphans())
    path, fh, pending = orphan
    assert list(pending) == ["y"]
    second.forget(path, fh)
    assert not path.exists() and Spool(tmp_path, "s").item_ids() == []


def test_a_live_runs_journal_is_not_replayed_a_killed_ones_is(tmp_path: Path) -> None:
    """The journal's lock belongs to its process: held while it lives, dropped by the kernel when
    it is killed (SIGKILL included)."""
    code = (
        "import sys, time\n"
        "from lora_assets.generation.spool import Spool\n"
        "from lora_assets.schemas import GenerationRecord, Usage\n"
        "r = GenerationRecord(batch_item_id='z', model='m', generator='simulator', stop_reason='end_turn',"
        " usage=Usage(), cost_usd=0.0, response={'id': 'msg_z'})\n"
        f"spool = Spool({str(tmp_path)!r}, 's', 'run-live')\n"
        "spool.put_many([('z', r)])\n"
        "print('spooled', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"spooled"
        assert list(Spool(tmp_path, "s", "run-other").orphans()) == []  # alive: its own to store
        proc.kill()
        proc.wait(10)
        ((path, fh, pending),) = list(Spool(tmp_path, "s", "run-other").orphans())
        assert list(pending) == ["z"]
        fh.close()
    finally:
        proc.kill()


def test_a_torn_last_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "s", "run-1")
    spool.put_many([("good", record("good"))])
    spool.close()
    with (tmp_path / "s" / "run-1.jsonl").open("ab") as fh:
        fh.write(b'{"item": "torn", "record": {"batch_it')
    assert Spool(tmp_path, "s").item_ids() == ["good"]


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 200, "a b"])
def test_hostile_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpoolError, match="only letters"):
        Spool(tmp_path, "s", "run").put_many([(name, record("i"))])
    with pytest.raises(SpoolError):
        Spool(tmp_path, name)
    with pytest.raises(SpoolError):
        Spool(tmp_path, "s", name)
