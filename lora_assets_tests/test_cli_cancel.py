"""The CLI as a user holding the purse meets it (issue 21), as separate processes:

- `lora-assets batch cancel KEY` while `lora-assets run KEY` is generating: the run sees the
  cancel, starts no new request (counted at the simulator's HTTP layer), stores the answers in
  flight, ends with exit 3 ("cancelled"), and the batch stays `cancelled`;
- `lora-assets batch create --estimate` over the item limit on 1,000 personas × 1,000 topics is
  refused (exit 2) with COUNT queries only: peak RSS stays far below what resolving 8 million
  combinations would take.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import tables as t
from lora_assets.store.db import make_engine

PERSONA, ARC = "pragmatic_optimist", "confusion_to_clarity"
LORA = [sys.executable, "-m", "lora_assets.cli"]


def _env(root: Path, **extra: str) -> dict[str, str]:
    (root / "dh").mkdir(parents=True, exist_ok=True)
    (root / "dh" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORA_", "ANTHROPIC_", "DAGSTER_"))}
    return env | {"LORA_DATA_DIR": str(root / "data"), "DAGSTER_HOME": str(root / "dh")} | extra


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LORA, *args], env=env, capture_output=True, text=True, timeout=300)


def _wait_for(predicate, what: str, deadline_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    """Poll for an event; the deadline guards against a hang only (no timing is asserted)."""
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.05)


def test_batch_cancel_during_run_stops_requests_keeps_answers_and_exits_cancelled(tmp_path: Path) -> None:
    with ClaudeSimulator() as sim:
        env = _env(tmp_path, ANTHROPIC_BASE_URL=sim.base_url, LORA_MAX_CONCURRENCY="2")
        assert _cli(env, "init").returncode == 0
        created = _cli(env, "batch", "create", "--persona", PERSONA, "--arc", ARC, "--topic", "*", "--name", "cli cancel")
        assert created.returncode == 0, created.stderr
        assert "starts now" in created.stdout  # within the auto-approve threshold

        sim.hold()  # answers wait (after being counted): the run is mid-batch for as long as needed
        run = subprocess.Popen([*LORA, "run", "cli-cancel"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        # Both pipes read by threads: communicate() would race the stderr reader for lines.
        err: list[str] = []
        outs: list[str] = []
        readers = [threading.Thread(target=lambda: err.extend(run.stderr), daemon=True),  # type: ignore[arg-type]
                   threading.Thread(target=lambda: outs.extend(run.stdout), daemon=True)]  # type: ignore[arg-type]
        for reader in readers:
            reader.start()
        try:
            attempts = lambda: sum(sim.stats.snapshot()["attempts_by_key"].values())  # noqa: E731
            _wait_for(lambda: attempts() >= 2, "two requests in flight")
            cancelled = _cli(env, "batch", "cancel", "cli-cancel")
            assert cancelled.returncode == 0, cancelled.stderr
            assert "batch 'cli-cancel' cancelled (was processing)" in cancelled.stdout
            at_cancel = attempts()
            # The run says it saw the cancel (a WARNING on its console) before the held answers go out.
            _wait_for(lambda: any("was cancelled: no new request starts" in line for line in err), "the run sees it")
        finally:
            sim.release()
            run.wait(timeout=300)
            for reader in readers:
                reader.join()
        out = "".join(outs)
        after = attempts() - at_cancel
        assert after <= 2 and after == 0, f"{after} request(s) after the cancel returned"
        assert run.returncode == 3, (out, "".join(err)[-2000:])
        assert "run " in out and ": CANCELLED" in out
        assert re.search(r"error: batch cli-cancel was cancelled during the run: 2 conversation\(s\) stored, 0 failed, "
                         r"12 not generated", "".join(err)), "".join(err)[-2000:]
        status = _cli(env, "batch", "status", "cli-cancel")
        assert ": cancelled, 14 items" in status.stdout
        assert "generated=2" in status.stdout
        # The documented action parses and enriches what it kept, without a request; still cancelled.
        sim.reset_stats()
        again = _cli(env, "run", "cli-cancel")
        assert again.returncode == 0, again.stderr
        assert sim.stats.snapshot()["requests_total"] == 0
        status = _cli(env, "batch", "status", "cli-cancel")
        assert ": cancelled, 14 items" in status.stdout and "parsed=2" in status.stdout


def _thousands(url: str, n: int = 1000) -> None:
    """Copy the first persona and topic until there are `n` of each (1,000 × 8 × 1,000 = 8 million
    combinations)."""
    engine = make_engine(url)
    with engine.begin() as conn:
        for table, key in ((t.personas, "persona_key"), (t.training_topics, "topic_key")):
            first = dict(conn.execute(sa.select(table).limit(1)).mappings().one())
            have = conn.scalar(sa.select(sa.func.count()).select_from(table))
            conn.execute(sa.insert(table), [first | {"id": str(uuid.uuid4()), key: f"{first[key]}_{i}"}
                                            for i in range(n - have)])
    engine.dispose()


def test_estimate_over_the_item_limit_is_refused_by_counting_in_flat_memory(tmp_path: Path) -> None:
    env = _env(tmp_path, ANTHROPIC_BASE_URL="http://127.0.0.1:9")  # never reached: refused before
    assert _cli(env, "init").returncode == 0
    _thousands(f"sqlite:///{tmp_path / 'data' / 'lora.db'}")
    # Peak RSS of the child, from the kernel (ru_maxrss in KiB on Linux).
    script = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
              "sys.stderr.write(p.stderr)")
    measured = subprocess.run([sys.executable, "-c", script, *LORA, "batch", "create", "--persona", "*", "--arc", "*",
                               "--topic", "*", "--estimate"], env=env, capture_output=True, text=True, timeout=300)
    code, rss_kib = map(int, measured.stdout.split())
    assert code == 2, measured.stderr
    assert "8,000,000 items (1000 personas × 8 arcs × 1000 topics × 1 per combination)" in measured.stderr
    assert "LORA_MAX_ITEMS_PER_BATCH" in measured.stderr
    assert rss_kib < 500 * 1024, f"peak RSS {rss_kib / 1024:.0f} MiB"
