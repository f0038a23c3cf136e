"""The durable spool: whole answers only, one file per item, unreadable files set aside, not lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_assets.generation.spool import Spool, SpoolError
from lora_assets.schemas import GenerationRecord, Usage


def record(item_id: str, message_id: str = "msg_1") -> GenerationRecord:
    return GenerationRecord(batch_item_id=item_id, model="claude-haiku-5-5", generator="simulator",
                            stop_reason="end_turn", usage=Usage(input_tokens=10, output_tokens=5), cost_usd=0.001,
                            response={"id": message_id, "content": []})


def test_put_pending_remove_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "batch-1")
    spool.put("item-a", record("item-a"))
    spool.put("item-b", record("item-b", "msg_2"))
    assert [(i, r.response["id"]) for i, r in spool.pending()] == [("item-a", "msg_1"), ("item-b", "msg_2")]
    spool.remove("item-a")
    assert spool.item_ids() == ["item-b"] and len(spool) == 1
    assert not list(spool.dir.glob(".tmp-*")), "no temp file left behind"


def test_scopes_are_separate(tmp_path: Path) -> None:
    Spool(tmp_path, "batch-1").put("x", record("x"))
    assert Spool(tmp_path, "batch-2").item_ids() == []


def test_an_unreadable_file_is_set_aside_not_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "s")
    spool.put("good", record("good"))
    (spool.dir / "torn.json").write_bytes(b'{"batch_item_id": "to')
    assert [i for i, _ in spool.pending()] == ["good"]
    assert (spool.dir / "torn.bad").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 200, "a b"])
def test_hostile_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpoolError, match="only letters"):
        Spool(tmp_path, "s").put(name, record("i"))
    with pytest.raises(SpoolError):
        Spool(tmp_path, name)
