"""Training-file membership and versions in the domain DB (lora_assets.store.training_files), on
SQLite AND PostgreSQL, with conversations generated and enriched for real (loopback simulator,
local directory / moto S3): names, eligibility and duplicate rules of the seed (refuse, listing
every offending id with its reason, and write nothing), and the version API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from sqlalchemy.engine import Engine

from lora_assets.core.aggregate import TrainingFileNameError
from lora_assets.defs.resources import _ENGINES
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import tables as t
from lora_assets.store import training_files as tfq
from lora_assets.store.training_files import MembershipError, TrainingFileError
from lora_assets_tests.defs import helpers as h


@dataclass
class Store:
    engine: Engine
    batch_id: str
    good: list[str]  # enriched
    failed: str  # enrichment_status=failed, with an error
    no_file: str  # enrichment_status=completed but no enriched file recorded


@pytest.fixture(scope="module", params=["sqlite+local", "postgresql+s3"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A batch of 4 conversations generated and enriched through the real pipeline; then one
    marked failed and one without its enriched file path (ineligible members)."""
    root = tmp_path_factory.mktemp(request.param.replace("+", "_"))
    if request.param == "sqlite+local":
        db_url, blobs = f"sqlite:///{root / 'lora.db'}", h.local_blobs(root / "blobs")
    else:
        db_url, blobs = request.getfixturevalue("module_pg_url"), h.s3_blobs(request.getfixturevalue("module_s3_bucket"))
    engine = h.setup_store(db_url)
    with ClaudeSimulator() as sim, DagsterInstance.ephemeral() as instance:
        batch_id = h.plan(engine, 2, 1, 2, name="store-batch")
        assert h.run_batch(h.make_defs(db_url, blobs, sim), instance, batch_id).success
    ids = [r["id"] for r in h.conversations(engine, batch_id)]
    assert len(ids) == 4 and all(r["enrichment_status"] == "completed" for r in h.conversations(engine, batch_id))
    h.update_row(engine, ids[2], enrichment_status="failed", enrichment_error="scorer crashed on turn 3")
    h.update_row(engine, ids[3], enriched_file_path=None)
    yield Store(engine, batch_id, ids[:2], ids[2], ids[3])
    if request.param == "sqlite+local":
        _ENGINES.pop(db_url, None)
        engine.dispose()


def unique(prefix: str = "tf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            tbl.name: conn.execute(sa.select(sa.func.count()).select_from(tbl)).scalar_one()
            for tbl in (t.training_files, t.training_file_conversations, t.training_file_versions)
        }


def members(engine: Engine, name: str) -> list[str]:
    with engine.connect() as conn:
        tf = tfq.get_training_file(conn, name)
        return [m["id"] for m in tfq.member_rows(conn, tf["id"])]


# --- names ------------------------------------------------------------------------------------

HOSTILE_NAMES = {
    "../x": "contains a path separator",
    "a/b": "contains a path separator",
    "a\\b": "contains a path separator",
    "..": "contains '..'",
    ".hidden": "starts with a dot",
    "": "is empty",
    "x" * 200: "is 200 characters long (at most 128)",
    "new\nline": "contains control character U+000A",
    "tab\there": "contains control character U+0009",
    "sp ace": "may only contain letters, digits",
}


@pytest.mark.parametrize("name", list(HOSTILE_NAMES), ids=[repr(n)[:20] for n in HOSTILE_NAMES])
def test_hostile_name_is_refused_before_touching_storage(name: str, store: Store, tmp_path: Path) -> None:
    # An engine whose database cannot even be opened: any DB access would raise OperationalError.
    unreachable = sa.create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    with pytest.raises(TrainingFileNameError) as refused:
        tfq.create_training_file(unreachable, name=name, conversation_ids=store.good, created_by="tests")
    assert f"training file name {name!r} {HOSTILE_NAMES[name]}" in str(refused.value)
    assert not (tmp_path / "no-such-dir").exists()
    unreachable.dispose()

    before = counts(store.engine)
    with pytest.raises(TrainingFileNameError, match="training file name"):
        tfq.create_training_file(store.engine, name=name, conversation_ids=store.good, created_by="tests")
    assert counts(store.engine) == before


def test_longest_allowed_name_is_accepted(store: Store) -> None:
    name = "n" * 120 + uuid.uuid4().hex[:8]
    assert len(name) == 128
    tfq.create_training_file(store.engine, name=name, conversation_ids=store.good[:1], created_by="tests")
    assert members(store.engine, name) == store.good[:1]


# --- create / add: membership rules -------------------------------------------------------------


def test_create_records_the_file_and_its_members(store: Store) -> None:
    name = unique()
    file_id = tfq.create_training_file(
        store.engine, name=name, conversation_ids=store.good, created_by="alice", description="two good ones", min_quality=3.5
    )
    with store.engine.connect() as conn:
        tf = tfq.get_training_file(conn, name)
        assert tfq.get_version(conn, name) is None  # nothing built yet
        assert tfq.versions(conn, file_id) == []
        listed = [r["name"] for r in tfq.list_training_files(conn)]
    assert tf["id"] == file_id and tf["description"] == "two good ones" and tf["min_quality"] == 3.5
    assert tf["status"] == "active" and tf["current_version"] == 0 and tf["created_by"] == "alice"
    assert tf["conversation_count"] == 0 and tf["total_training_pairs"] == 0
    assert sorted(members(store.engine, name)) == sorted(store.good)
    assert name in listed and listed == sorted(listed)
    # A member row reads like the dict it was (a tuple underneath: a build holds one per member).
    with store.engine.connect() as conn:
        row = tfq.member_rows(conn, file_id)[0]
    assert list(row) == list(tfq.MEMBER_COLUMNS) and dict(row)["id"] == row["id"] in store.good
    assert row.get("review_decision") is None and row.get("no_such_column", "x") == "x" and "persona_key" in row
    with pytest.raises(KeyError):
        row["no_such_column"]

    before = counts(store.engine)
    with pytest.raises(TrainingFileError, match=f"training file '{name}' already exists"):
        tfq.create_training_file(store.engine, name=name, conversation_ids=store.good, created_by="bob")
    assert counts(store.engine) == before


def test_create_refuses_every_offending_id_with_its_reason_and_writes_nothing(store: Store) -> None:
    name = unique()
    unknown = str(uuid.uuid4())
    good, twice = store.good
    request = [good, unknown, twice, store.failed, twice, store.no_file]
    before = counts(store.engine)
    with pytest.raises(MembershipError) as refused:
        tfq.create_training_file(store.engine, name=name, conversation_ids=request, created_by="tests")
    problems = refused.value.problems
    assert problems == {
        unknown: "no such conversation",
        twice: "listed twice in this request",
        store.failed: "not enriched (parse_status=parsed, enrichment_status=failed): scorer crashed on turn 3",
        store.no_file: "not enriched (parse_status=parsed, enrichment_status=completed)",
    }
    message = str(refused.value)
    assert f"training file {name!r}: 4 conversation(s) refused, nothing was added" in message
    for cid, reason in problems.items():
        assert f"{cid}: {reason}" in message
    assert good not in problems
    assert counts(store.engine) == before  # not even the good one, and no training_files row
    with store.engine.connect() as conn:
        assert tfq.get_training_file(conn, name) is None


@pytest.mark.parametrize("bad", ["unknown", "failed", "no_file"])
def test_one_ineligible_conversation_refuses_the_whole_create(store: Store, bad: str) -> None:
    cid = {"unknown": str(uuid.uuid4()), "failed": store.failed, "no_file": store.no_file}[bad]
    before = counts(store.engine)
    with pytest.raises(MembershipError) as refused:
        tfq.create_training_file(store.engine, name=unique(), conversation_ids=[*store.good, cid], created_by="tests")
    assert list(refused.value.problems) == [cid]
    assert counts(store.engine) == before


def test_add_members_blocks_duplicates_and_is_all_or_none(store: Store) -> None:
    first, second = store.good
    name = unique()
    tfq.create_training_file(store.engine, name=name, conversation_ids=[first], created_by="tests")

    before = counts(store.engine)
    with pytest.raises(MembershipError) as refused:
        tfq.add_members(store.engine, name=name, conversation_ids=[second, first], added_by="tests")
    assert refused.value.problems == {first: "already a member of this training file"}
    assert f"{first}: already a member of this training file" in str(refused.value)
    assert counts(store.engine) == before and members(store.engine, name) == [first]  # second not added either

    with pytest.raises(MembershipError) as refused:
        tfq.add_members(store.engine, name=name, conversation_ids=[second, second], added_by="tests")
    assert refused.value.problems == {second: "listed twice in this request"}
    with pytest.raises(MembershipError) as refused:
        tfq.add_members(store.engine, name=name, conversation_ids=[second, store.failed], added_by="tests")
    assert list(refused.value.problems) == [store.failed]
    assert counts(store.engine) == before

    assert tfq.add_members(store.engine, name=name, conversation_ids=[second], added_by="tests") == 1
    assert sorted(members(store.engine, name)) == sorted([first, second])


def test_empty_selection_unknown_file_unknown_batch_and_bad_threshold(store: Store) -> None:
    name = unique()
    before = counts(store.engine)
    with pytest.raises(TrainingFileError, match=f"training file '{name}': the selection is empty"):
        tfq.create_training_file(store.engine, name=name, conversation_ids=[], created_by="tests")
    with pytest.raises(TrainingFileError, match="must be between 0 and 5"):
        tfq.create_training_file(store.engine, name=name, conversation_ids=store.good, created_by="tests", min_quality=7)
    with pytest.raises(TrainingFileError, match=f"no training file named '{name}'"):
        tfq.add_members(store.engine, name=name, conversation_ids=store.good, added_by="tests")
    assert counts(store.engine) == before

    tfq.create_training_file(store.engine, name=name, conversation_ids=store.good[:1], created_by="tests")
    with pytest.raises(TrainingFileError, match=f"training file '{name}': the selection is empty"):
        tfq.add_members(store.engine, name=name, conversation_ids=[], added_by="tests")

    missing = str(uuid.uuid4())
    with store.engine.connect() as conn:
        with pytest.raises(TrainingFileError, match=missing):
            tfq.conversations_of_batches(conn, [store.batch_id, missing])
        assert sorted(tfq.conversations_of_batches(conn, [store.batch_id])) == sorted(
            [*store.good, store.failed, store.no_file]
        )
        eligible, problems = tfq.eligible_subset(conn, tfq.conversations_of_batches(conn, [store.batch_id]))
    assert sorted(eligible) == sorted(store.good)
    assert set(problems) == {store.failed, store.no_file}


# --- versions -----------------------------------------------------------------------------------


def _values(version: int, name: str, pairs: int) -> dict[str, Any]:
    key = f"training-files/{name}/v{version}"
    return {
        "version": version, "status": "active", "json_file_path": f"{key}/{name}.json", "jsonl_file_path": f"{key}/{name}.jsonl",
        "conversation_count": version, "total_training_pairs": pairs, "json_file_size": 10 * pairs, "jsonl_file_size": 9 * pairs,
        "avg_quality_score": 3.5, "min_quality_score": 3.25, "max_quality_score": 3.75, "human_reviewed_count": 0,
        "scaffolding_distribution": {"personas": {"p": version}, "emotional_arcs": {}, "training_topics": {}},
        "outputs": {}, "stats": {}, "conversation_ids": [], "split": {},
    }


def test_versions_are_claimed_in_order_and_only_recorded_ones_are_visible(store: Store) -> None:
    name = unique()
    file_id = tfq.create_training_file(store.engine, name=name, conversation_ids=store.good, created_by="tests")

    row1, n1 = tfq.claim_version(store.engine, file_id, name)
    assert n1 == 1
    with store.engine.connect() as conn:
        assert tfq.get_version(conn, name) is None and tfq.versions(conn, file_id) == []  # building: invisible
    with store.engine.begin() as conn:
        tfq.record_version(conn, file_id, row1, _values(1, name, 5))
    row2, n2 = tfq.claim_version(store.engine, file_id, name)
    assert n2 == 2
    with store.engine.begin() as conn:
        tfq.record_version(conn, file_id, row2, _values(2, name, 9))
    row3, n3 = tfq.claim_version(store.engine, file_id, name)
    assert n3 == 3
    tfq.release_version(store.engine, row3)  # a failed build gives its claim back

    with store.engine.connect() as conn:
        assert [v["version"] for v in tfq.versions(conn, file_id)] == [1, 2]
        assert tfq.get_version(conn, name)["version"] == 2
        assert tfq.get_version(conn, name, 1)["total_training_pairs"] == 5
        assert tfq.get_version(conn, name, 3) is None
        assert tfq.get_version(conn, unique("nope")) is None
        tf = tfq.get_training_file(conn, name)
        left = conn.execute(sa.select(sa.func.count()).select_from(t.training_file_versions)
                            .where(t.training_file_versions.c.training_file_id == file_id)).scalar_one()
    assert left == 2
    assert tf["current_version"] == 2 and tf["total_training_pairs"] == 9
    assert tf["json_file_path"] == f"training-files/{name}/v2/{name}.json"
    assert float(tf["min_quality_score"]) == 3.25 and tf["scaffolding_distribution"]["personas"] == {"p": 2}

    # the UNIQUE(training_file_id, version) guard under the claim
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.insert(t.training_file_versions).values(
            id=str(uuid.uuid4()), training_file_id=file_id, version=2, status="building"))


def test_a_version_recorded_late_never_moves_current_version_back(store: Store) -> None:
    """Two builds: v1 claimed first, v2 recorded first (it finished sooner). v1's record keeps
    its own row but leaves the file's current version (and its metadata) at v2."""
    name = unique()
    file_id = tfq.create_training_file(store.engine, name=name, conversation_ids=store.good, created_by="tests")
    row1, n1 = tfq.claim_version(store.engine, file_id, name)
    row2, n2 = tfq.claim_version(store.engine, file_id, name)
    assert (n1, n2) == (1, 2)
    with store.engine.begin() as conn:
        tfq.record_version(conn, file_id, row2, _values(2, name, 9))
    with store.engine.begin() as conn:
        tfq.record_version(conn, file_id, row1, _values(1, name, 5))
    with store.engine.connect() as conn:
        tf = tfq.get_training_file(conn, name)
        assert [v["version"] for v in tfq.versions(conn, file_id)] == [1, 2]
        assert tfq.get_version(conn, name)["version"] == 2
    assert tf["current_version"] == 2 and tf["total_training_pairs"] == 9
    assert tf["json_file_path"] == f"training-files/{name}/v2/{name}.json"


def test_concurrent_builders_in_real_processes_keep_current_version_the_highest(store: Store, tmp_path: Path) -> None:
    """Two processes claim and record versions of one file at once (random pauses between claim
    and record, so they finish out of order): every number is claimed once, none is lost, and
    after every record `current_version` equals the highest recorded version."""
    name = unique()
    file_id = tfq.create_training_file(store.engine, name=name, conversation_ids=store.good, created_by="tests")
    rounds = 10
    codes, outputs = _race(store, tmp_path, [["versions", _url(store), file_id, name, str(rounds), "{go}", str(seed)]
                                             for seed in range(2)])
    assert codes == [0, 0], outputs
    with store.engine.connect() as conn:
        assert [v["version"] for v in tfq.versions(conn, file_id)] == list(range(1, 2 * rounds + 1))
        assert tfq.get_training_file(conn, name)["current_version"] == 2 * rounds


def _url(store: Store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


def _race(store: Store, tmp_path: Path, commands: list[list[str]]) -> tuple[list[int], list[str]]:
    """Run `race_worker` once per command, released together once every one is imported and
    connected; (exit codes, outputs)."""
    import subprocess
    import sys
    import time

    go = tmp_path / f"go-{uuid.uuid4().hex[:6]}"
    procs = [subprocess.Popen([sys.executable, "-m", "lora_assets_tests.store.race_worker",
                               *[a.replace("{go}", str(go)) for a in args]],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for args in commands]
    while len(list(tmp_path.glob(f"{go.name}.ready.*"))) < len(procs) and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    return [p.returncode for p in procs], outputs


def _verdicts(outputs: list[str], step: str, name: str) -> list[str]:
    """Each worker's line about `step` (create / add) of `name`: `done` or `refused: …`."""
    prefix = f"{step} {name} "
    return sorted(line[len(prefix):] for out in outputs for line in out.splitlines() if line.startswith(prefix))


def test_concurrent_creates_and_adds_write_once_and_refuse_the_other_clearly(store: Store, tmp_path: Path) -> None:
    """Two processes create the same 10 files at once, then add the same conversation to each at
    once: each file is made once and gets the conversation once; the other process gets the
    refusal a user understands (exists / already a member), never a constraint error."""
    names = [unique() for _ in range(10)]
    codes, outputs = _race(store, tmp_path, [["members", _url(store), ",".join(names), "{go}", *store.good]] * 2)
    assert codes == [0, 0], outputs
    for name in names:
        assert _verdicts(outputs, "create", name) == [
            "done", f"refused: training file {name!r} already exists (use `training-file add`)"], outputs
        added = _verdicts(outputs, "add", name)
        assert added[0] == "done" and "already a member of this training file" in added[1], added
        assert sorted(members(store.engine, name)) == sorted(store.good)
