"""S3 requests per conversation, counted at the HTTP layer (a proxy in front of the real S3 API
of moto), not inside our code: generate 1 PUT; parse 1 GET + 1 PUT; enrich 1 PUT, and 1 GET
only when parse ran in another run or process (in one run it reads parse's local copies); their
checks none; the training-file build 1 GET per member: 5 per conversation end to end on the
path production takes, 6 with parse and enrich in separate runs. A re-run after a crash looks
only for the blobs of items a run had claimed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize

from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import tables as t
from lora_assets.store import training_files as tfq
from lora_assets_tests.defs import helpers as h

ROOT = Path(__file__).resolve().parents[2]


class CountingProxy:
    """bench/latency_proxy.py (delay 0) in front of moto: HTTP requests by method."""

    def __init__(self, upstream_port: int, stats: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.stats = stats
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "latency_proxy.py"), "--listen-port", str(self.port),
             "--upstream-port", str(upstream_port), "--delay-ms", "0", "--stats-file", str(stats)])
        deadline = time.monotonic() + 10
        while not stats.exists():
            assert time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.05)

    def counts(self) -> dict[str, int]:
        """Requests so far, by method (a fresh snapshot: asked for and waited on)."""
        before = json.loads(self.stats.read_text())["seq"]
        os.kill(self.proc.pid, signal.SIGUSR1)
        while (snap := json.loads(self.stats.read_text()))["seq"] <= before:
            time.sleep(0.02)
        return dict(snap["requests"]) | {"expect_100": snap["expect_100"]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def proxy(moto_endpoint: str, tmp_path: Path) -> Iterator[CountingProxy]:
    p = CountingProxy(int(moto_endpoint.rsplit(":", 1)[1]), tmp_path / "stats.json")
    yield p
    p.stop()


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def _through_proxy(proxy: CountingProxy, s3_bucket: tuple[str, str], sim: ClaudeSimulator,
                   tmp_path: Path) -> tuple[str, Any, BlobStoreResource, Any]:
    """A SQLite domain DB under `tmp_path` and the moto bucket reached through the counting proxy:
    (database url, engine, blob store resource, definitions)."""
    _, bucket = s3_bucket
    url = f"sqlite:///{tmp_path / 'lora.db'}"
    engine = h.setup_store(url)
    blobs = BlobStoreResource(s3_bucket=bucket, s3_endpoint_url=f"http://127.0.0.1:{proxy.port}", concurrency=8)
    return url, engine, blobs, h.make_defs(url, blobs, sim)


def test_five_s3_requests_per_conversation_end_to_end(proxy: CountingProxy, s3_bucket: tuple[str, str],
                                                     sim: ClaudeSimulator, tmp_path: Path) -> None:
    url, engine, blobs, defs = _through_proxy(proxy, s3_bucket, sim, tmp_path)
    batch_id = h.plan(engine, 2, 2, 3)  # 12 conversations
    n = 12
    with DagsterInstance.ephemeral() as instance:
        steps: dict[str, dict[str, int]] = {}
        before = proxy.counts()
        assert h.run_assets(defs, instance, batch_id, ["raw_conversations"], with_checks=False).success
        steps["generate"], before = _delta(after := proxy.counts(), before), after
        result = h.run_assets(defs, instance, batch_id, ["parsed_conversations", "enriched_conversations"])
        assert result.success and all(ev.passed for ev in result.get_asset_check_evaluations())
        steps["parse+enrich+checks"], before = _delta(after := proxy.counts(), before), after

        with engine.connect() as conn:
            ids = tfq.conversations_of_batches(conn, [batch_id])
        tfq.create_training_file(engine, name="io-count", conversation_ids=ids, created_by="tests")
        from lora_assets.defs.training_files import OUTPUTS, training_files

        instance.add_dynamic_partitions("training_files", ["io-count"])
        built = materialize([training_files], partition_key="io-count", instance=instance,
                            resources={"db": DomainDB(database_url=url), "blobs": blobs}, raise_on_error=False)
        assert built.success
        steps["training-file build"] = _delta(proxy.counts(), before)

    assert steps["generate"] == {"PUT": n}, steps  # no HEAD pass on a fresh partition
    # Parse reads each raw.json; enrich, in the same run, reads what parse wrote from its local
    # copies, not from S3; the checks read nothing.
    assert steps["parse+enrich+checks"] == {"GET": n, "PUT": 2 * n}, steps
    assert h.metadata(result, "enriched_conversations")["read_from_this_runs_parse"] == n
    build = steps["training-file build"]
    # Each member once (the JSON is made from the build's local copy of the JSONL, not read
    # back), plus the sample conversations shown in its metadata (a constant 3, not per member);
    # the version's files written and sized once each, not per member.
    assert build.get("GET") == n + min(n, 3), steps
    assert build.get("PUT", 0) <= len(OUTPUTS) and build.get("HEAD", 0) <= len(OUTPUTS), steps
    per_conversation = (sum(v for k, v in steps["generate"].items() if k != "expect_100")
                        + sum(v for k, v in steps["parse+enrich+checks"].items() if k != "expect_100")
                        + build["GET"] - min(n, 3)) / n
    assert per_conversation == 5
    assert all(s.get("expect_100", 0) == 0 for s in (steps["generate"], steps["parse+enrich+checks"])), steps


def test_enrich_in_its_own_run_reads_the_parsed_files_from_s3(proxy: CountingProxy, s3_bucket: tuple[str, str],
                                                              sim: ClaudeSimulator, tmp_path: Path) -> None:
    """Parse's local copies serve only the run that made them: enrich launched on its own (the
    asset's Materialize button, an automation tick, a re-enrichment) reads every parsed file from
    S3, and writes byte for byte what enrich wrote from the copies."""
    _, engine, blobs, defs = _through_proxy(proxy, s3_bucket, sim, tmp_path)
    batch_id = h.plan(engine, 2, 3, 1)
    n = 6
    store = blobs.store()
    with DagsterInstance.ephemeral() as instance:
        assert h.run_assets(defs, instance, batch_id, ["raw_conversations"], with_checks=False).success
        assert h.run_assets(defs, instance, batch_id, ["parsed_conversations", "enriched_conversations"]).success
        from_copies = {r["id"]: store.get_bytes(r["enriched_file_path"]) for r in h.conversations(engine, batch_id)}
        job = defs.resolve_job_def("batch_pipeline").get_subset(asset_selection={AssetKey("enriched_conversations")})
        before = proxy.counts()
        again = job.execute_in_process(
            partition_key=batch_id, instance=instance, raise_on_error=False,
            run_config={**h.QUIET, "ops": {"enriched_conversations": {"config": {"re_enrich": True}}}})
        io = _delta(proxy.counts(), before)
    assert again.success
    assert io == {"GET": n, "PUT": n}, io
    assert h.metadata(again, "enriched_conversations")["read_from_this_runs_parse"] == 0
    from_s3 = {r["id"]: store.get_bytes(r["enriched_file_path"]) for r in h.conversations(engine, batch_id)}
    assert len(from_s3) == n and from_s3 == from_copies


def test_rerun_after_a_crash_looks_only_for_claimed_items(proxy: CountingProxy, s3_bucket: tuple[str, str],
                                                          sim: ClaudeSimulator, tmp_path: Path) -> None:
    """The state a crash between raw.json and its row leaves (blob stored, row missing, item
    pending, its lease row expired): the re-run HEADs exactly those items and buys nothing."""
    _, engine, _, defs = _through_proxy(proxy, s3_bucket, sim, tmp_path)
    batch_id = h.plan(engine, 2, 2, 3)
    with DagsterInstance.ephemeral() as instance:
        assert h.run_assets(defs, instance, batch_id, ["raw_conversations"], with_checks=False).success
        cut = [i["id"] for i in h.items(engine, batch_id)][:3]
        with engine.begin() as conn:
            conn.execute(sa.delete(t.conversations).where(t.conversations.c.batch_item_id.in_(cut)))
            conn.execute(sa.update(t.batch_items).where(t.batch_items.c.id.in_(cut))
                         .values(status="pending", conversation_id=None))
        sim.reset_stats()
        before = proxy.counts()
        again = h.run_assets(defs, instance, batch_id, ["raw_conversations"], with_checks=False)
        io: dict[str, Any] = _delta(proxy.counts(), before)
    assert again.success
    assert h.metadata(again, "raw_conversations")["recovered_from_raw"] == 3
    assert io == {"HEAD": 3, "GET": 3}, io  # found, and read back for its row; nothing written
    assert sim.stats.snapshot()["requests_total"] == 0
