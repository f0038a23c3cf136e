"""Crash resilience of a real deployment: kill -9 `dagster dev` (its whole process group: webserver,
daemon, code server, run worker) while a batch run is generating, start them again on the same DAGSTER_HOME and databases, and
lose nothing — no run, no conversation, no training-file version.

The crash happens once per module (`crash` fixture); the tests below each check one promise.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from lora_assets.store import tables as t
from lora_assets.store.blobs import LocalBlobStore
from lora_assets_tests.ui.conftest import batch_of, DagsterServers, dagster_deployment

pytestmark = pytest.mark.timeout(900)

#: Every simulated API call takes 2 s and a run keeps 2 in flight: 8 items take ~8 s to
#: generate — long enough to be killed mid-way (the test polls every 0.2 s). Claims are renewed
#: every third of their TTL, so an 8 s lease outlives any call; the re-run takes over the killed
#: run's items 8 s after the kill instead of production's 60 s.
ENV = {"LORA_SIMULATOR_LATENCY_S": "2", "LORA_MAX_CONCURRENCY": "2", "LORA_CLAIM_TTL_S": "8"}
#: Run monitoring as in the repo's dagster.yaml (enabled, frees a dead run's pool slots), with
#: shorter intervals than production's 30 s poll + 60 s grace so the test does not wait them out.
INSTANCE_OVERRIDES = {"run_monitoring": {"enabled": True, "poll_interval_seconds": 5,
                                         "free_slots_after_run_end_seconds": 5}}
ITEMS = 8
RUN_DEADLINE_S = 420.0
TRAINING_FILE = "restart-tf"


@dataclass
class Crash:
    ui: DagsterServers
    engine: sa.Engine
    blobs: LocalBlobStore
    done_batch: str = ""          # finished before the crash; training file v1 built from it
    batch: str = ""               # generating when the servers were killed
    run_id: str = ""              # the interrupted run
    worker_pid: int = 0
    worker_survived: bool = False
    items_at_kill: dict[str, int] = field(default_factory=dict)
    status_after_restart: str = ""
    rerun_id: str | None = None
    version_before: dict[str, Any] = field(default_factory=dict)


def _items(engine: sa.Engine, batch_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.batch_items.c.status, sa.func.count()).where(
            t.batch_items.c.batch_job_id == batch_of(batch_id)).group_by(t.batch_items.c.status)).all()
    return {str(s): n for s, n in rows}


def _conversations(engine: sa.Engine, batch_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(
            t.conversations.c.id, t.conversations.c.batch_item_id, t.conversations.c.raw_response_path,
            t.conversations.c.enrichment_status,
        ).where(t.conversations.c.batch_job_id == batch_of(batch_id))).mappings()]


def _version_files(engine: sa.Engine, blobs: LocalBlobStore, name: str) -> dict[str, Any]:
    """The latest version of training file `name`: number, outputs, sha256 of every output file."""
    from lora_assets.store.training_files import get_version

    with engine.connect() as conn:
        v = get_version(conn, name)
    assert v is not None, f"training file {name!r} has no built version"
    outputs = v["outputs"] or {}
    return {
        "id": v["id"], "version": v["version"], "conversation_count": v["conversation_count"], "outputs": outputs,
        "sha256": {fmt: hashlib.sha256(blobs.get_bytes(o["path"])).hexdigest() for fmt, o in outputs.items()},
        "sizes": {fmt: blobs.size(o["path"]) for fmt, o in outputs.items()},
    }


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie nobody reaped is dead


def _run_worker_pid(ui: DagsterServers, run_id: str) -> int | None:
    for e in ui.run_events(run_id):
        m = re.search(r"Started process for run \(pid: (\d+)\)", e.get("message") or "")
        if m:
            return int(m.group(1))
    return None


def _create_batch(ui: DagsterServers, name: str, arcs: list[str], topics: list[str]) -> str:
    args = ["batch", "create", "--persona", "pragmatic_optimist", "--name", name]
    for a in arcs:
        args += ["--arc", a]
    for x in topics:
        args += ["--topic", x]
    out = ui.cli(*args).stdout
    assert f"{len(arcs) * len(topics)} item(s) planned" in out, out
    return out.split()[1].rstrip(":")


def _crash_and_restart(c: Crash) -> None:
    ui = c.ui
    ui.stop_sensor("queued_batches_sensor")  # runs are launched here, once each
    assert "personas" in ui.init_output, ui.init_output  # `lora-assets init`, run while the servers started

    # Before the crash: a finished batch and version 1 of a training file built from it.
    c.done_batch = _create_batch(ui, "restart-before", ["confusion_to_clarity"], ["mortgage_payoff_strategy"])
    run = ui.wait_run(ui.launch("batch_pipeline", partition=c.done_batch), RUN_DEADLINE_S)
    assert run["status"] == "SUCCESS", ui.failure_summary(run["runId"])
    out = ui.cli("training-file", "create", TRAINING_FILE, "--batch", c.done_batch, "--build").stdout
    assert "success" in out, out
    c.version_before = _version_files(c.engine, c.blobs, TRAINING_FILE)

    # The run to interrupt.
    c.batch = _create_batch(ui, "restart-during", ["confusion_to_clarity", "fear_to_confidence"],
                            ["mortgage_payoff_strategy", "estate_planning_basics", "retirement_catch_up",
                             "debt_consolidation"])
    c.run_id = ui.launch("batch_pipeline", partition=c.batch)

    def mid_generation() -> bool:
        return 1 <= _items(c.engine, c.batch).get("generated", 0) < ITEMS

    ui.wait_for("the run to be generating (some but not all items stored)", mid_generation, RUN_DEADLINE_S, 0.2)
    c.worker_pid = _run_worker_pid(ui, c.run_id) or 0
    assert c.worker_pid, "no 'Started process for run' event"
    c.items_at_kill = _items(c.engine, c.batch)

    ui.kill9()  # both process groups: their code servers and whatever those launched

    # The run worker is a child of the code server, in dagster dev's process group.
    end = time.monotonic() + 30
    while _alive(c.worker_pid) and time.monotonic() < end:
        time.sleep(0.2)
    c.worker_survived = _alive(c.worker_pid)

    ui.start()  # same DAGSTER_HOME, same databases, same data dir

    stored = ui.run(c.run_id)
    assert stored is not None, f"run {c.run_id} vanished from the instance's run storage"
    c.status_after_restart = stored["status"]
    if c.worker_survived:
        final = ui.wait_run(c.run_id, RUN_DEADLINE_S)
        assert final["status"] == "SUCCESS", ui.failure_summary(c.run_id)
    else:
        # Nothing will ever finish it: re-run the partition, as an operator would from the UI.
        c.rerun_id = ui.launch("batch_pipeline", partition=c.batch)
        rerun = ui.wait_run(c.rerun_id, RUN_DEADLINE_S)
        assert rerun["status"] == "SUCCESS", ui.failure_summary(c.rerun_id)


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory, pg_admin_engine: sa.Engine) -> Iterator[Crash]:
    tmp = tmp_path_factory.mktemp("restart")
    with dagster_deployment("test_restart", tmp, pg_admin_engine, ENV, INSTANCE_OVERRIDES, init=True) as ui:
        engine = sa.create_engine(ui.env["LORA_DATABASE_URL"])
        c = Crash(ui=ui, engine=engine, blobs=LocalBlobStore(Path(ui.env["LORA_DATA_DIR"]) / "blobs"))
        try:
            _crash_and_restart(c)
            print(f"\nkilled with items {c.items_at_kill}; run worker {c.worker_pid} survived: {c.worker_survived}; "
                  f"interrupted run after restart: {c.status_after_restart}; re-run: {c.rerun_id}")
            yield c
        finally:
            engine.dispose()


def test_interrupted_run_is_still_in_run_storage(crash: Crash) -> None:
    """The killed run is not lost: same id, same partition, still listed by the instance."""
    run = crash.ui.run(crash.run_id)
    assert run is not None and run["jobName"] == "batch_pipeline"
    assert run["tags"]["dagster/partition"] == crash.batch
    assert crash.run_id in {r["runId"] for r in crash.ui.runs()}
    assert 1 <= crash.items_at_kill.get("generated", 0) < ITEMS, "the kill did not land mid-generation"
    if not crash.worker_survived:
        # Its worker died with the daemon, so the instance still believes it is running.
        assert run["status"] in ("STARTED", "FAILURE", "CANCELED"), run


def test_every_item_generated_exactly_once(crash: Crash) -> None:
    """After the crash and the re-run, each of the 8 items has one conversation (with its raw
    response stored), all enriched; the batch finished before the crash is untouched."""
    assert _items(crash.engine, crash.batch) == {"generated": ITEMS}
    conversations = _conversations(crash.engine, crash.batch)
    assert len(conversations) == ITEMS
    assert len({c["batch_item_id"] for c in conversations}) == ITEMS
    assert all(crash.blobs.exists(c["raw_response_path"]) for c in conversations)
    assert {c["enrichment_status"] for c in conversations} == {"completed"}
    assert _items(crash.engine, crash.done_batch) == {"generated": 1}
    assert len(_conversations(crash.engine, crash.done_batch)) == 1


def test_training_file_version_built_before_the_crash_is_intact(crash: Crash) -> None:
    before = crash.version_before
    assert before["version"] == 1 and before["sha256"], before
    assert _version_files(crash.engine, crash.blobs, TRAINING_FILE) == before
    assert before["sizes"] == {fmt: o["bytes"] for fmt, o in before["outputs"].items()}
    shown = crash.ui.cli("training-file", "show", TRAINING_FILE).stdout
    assert f"{TRAINING_FILE} v1" in shown, shown


POOL = """{ instance { concurrencyLimit(concurrencyKey: "claude_api") {
             claimedSlots { runId stepKey } } } }"""


def test_interrupted_run_gives_back_its_pool_slot(crash: Crash) -> None:
    """Runs last: the interrupted run's slot must return to the pool once the run has ended —
    canceled by an operator if its worker died (the usual case), or finished if it survived."""
    ui = crash.ui
    if crash.worker_survived:
        # The crash fixture already waited for it to finish: it must not hold its slot either.
        assert ui.run(crash.run_id)["status"] == "SUCCESS"
    else:
        claimed = {s["runId"] for s in ui.graphql(POOL)["instance"]["concurrencyLimit"]["claimedSlots"]}
        assert crash.run_id in claimed, "the interrupted run held no claude_api slot"
        result = ui.graphql(
            """mutation($id: String!) { terminateRun(runId: $id, terminatePolicy: MARK_AS_CANCELED_IMMEDIATELY) {
                 __typename } }""",
            {"id": crash.run_id},
        )["terminateRun"]
        assert result["__typename"] == "TerminateRunSuccess", result
        assert ui.run(crash.run_id)["status"] == "CANCELED"

    # How long the instance may take to free it: run monitoring's poll interval + delay, if any.
    config = yaml.safe_load((Path(ui.env["DAGSTER_HOME"]) / "dagster.yaml").read_text()) or {}
    rm = config.get("run_monitoring") or {}
    monitoring = bool(rm.get("enabled") and rm.get("free_slots_after_run_end_seconds"))
    # Nothing else ever frees it; with monitoring: its poll interval + the delay, plus margin.
    deadline = (rm.get("poll_interval_seconds", 120) + rm.get("free_slots_after_run_end_seconds", 0) + 90
                if monitoring else 45.0)

    def freed() -> bool:
        slots = ui.graphql(POOL)["instance"]["concurrencyLimit"]["claimedSlots"]
        return crash.run_id not in {s["runId"] for s in slots}

    ui.wait_for(f"the canceled run {crash.run_id} to give back its claude_api slot"
                f" (run monitoring slot freeing configured: {monitoring})", freed, deadline, 1.0)
