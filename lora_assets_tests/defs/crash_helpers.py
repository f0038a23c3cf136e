"""Helpers for the crash / concurrency tests: `lora-assets run` as a real subprocess in its own
process group (so SIGKILL takes the whole run down), a per-run DAGSTER_HOME, waiting for a DB
condition with a deadline, and snapshots of what a batch has stored (rows + raw blobs)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from dagster import DagsterInstance
from sqlalchemy.engine import Engine

from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.settings import DEFAULT_USER_ID
from lora_assets.store import tables as t
from lora_assets.store.blobs import LocalBlobStore
from lora_assets_tests import check_names
from lora_assets.store.common import conversation_id_for, conversation_key

#: The console script of the project's venv (a test must run the product as a user would).
LORA_ASSETS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "lora-assets"

#: Environment variables of the parent that must not leak into a run under test.
_SCRUB = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "DAGSTER_HOME", "LORA_")

#: The checks of the batch_pipeline job (raw / parsed / enriched).
PIPELINE_CHECKS = set(check_names.PIPELINE_CHECKS)

_CHECK_LINE = re.compile(r"^\s*check (PASS|FAIL)\s+(\S+):(\S+)", re.MULTILINE)

T = TypeVar("T")


def make_dagster_home(path: Path, batch_id: str) -> Path:
    """A fresh persistent Dagster instance directory (SQLite storage, telemetry off) with the
    batch registered as a `batch_jobs` partition, as `lora-assets batch create` leaves it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    instance = DagsterInstance.from_config(str(path))
    try:
        instance.add_dynamic_partitions(batch_jobs_partitions.name, [batch_id])
    finally:
        instance.dispose()
    return path


def run_env(*, data_dir: Path, db_url: str, dagster_home: Path, base_url: str, concurrency: int = 4) -> dict[str, str]:
    """The environment of a `lora-assets` subprocess: the test's store, instance and simulator;
    no API key (so the simulator URL is used, never real Claude)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update(
        LORA_DATA_DIR=str(data_dir),
        LORA_DATABASE_URL=db_url,
        DAGSTER_HOME=str(dagster_home),
        ANTHROPIC_BASE_URL=base_url,
        LORA_MAX_CONCURRENCY=str(concurrency),
        # Short leases: a re-run after a kill takes over the dead run's items a few seconds later.
        LORA_CLAIM_TTL_S=str(CLAIM_TTL_S),
        PYTHONUNBUFFERED="1",
    )
    return env


#: Lease length of the runs these tests start (see `wait_claims_expired`).
CLAIM_TTL_S = 3.0


def wait_claims_expired(engine: Engine, timeout: float = 30.0) -> None:
    """Wait until no lease in the domain DB is live: a killed run's claims have lapsed, so a
    re-run takes its items over instead of skipping them as held by a live run."""
    def expired() -> bool:
        with engine.connect() as conn:
            latest = conn.scalar(sa.select(sa.func.max(t.leases.c.expires_at)))
        return latest is None or latest < time.time()

    wait_until(expired, timeout=timeout, what="the killed run's claims to expire")


@dataclass
class RunProcess:
    """One `lora-assets run BATCH_ID` subprocess, leader of its own process group."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    _group_killed: bool = False

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (no cleanup handler runs), then reap the leader.
        Idempotent: the group is signalled once, so a reused id is never hit by a second call."""
        if not self._group_killed:
            self._group_killed = True
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        """Wait for the run to exit on its own; on timeout kill it and fail with its output."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`lora-assets run` did not finish within {timeout}s; output:\n{self.output}") from None


def start_run(batch_id: str, env: dict[str, str], log_path: Path) -> RunProcess:
    """Start `lora-assets run BATCH_ID` in a new session (its own process group)."""
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns the descriptor; closed below
    try:
        proc = subprocess.Popen(
            [str(LORA_ASSETS), "run", batch_id],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()
    return RunProcess(proc, log_path)


def check_results(output: str) -> dict[str, str]:
    """{check name: PASS|FAIL} from the CLI's `check PASS asset:name` lines."""
    return {m.group(3): m.group(1) for m in _CHECK_LINE.finditer(output)}


def assert_run_succeeded(run: RunProcess, rc: int) -> None:
    """Exit 0, `success`, and every check of the pipeline printed as PASS."""
    out = run.output
    assert rc == 0, f"`lora-assets run` exited {rc}:\n{out}"
    assert ": success" in out, out
    checks = check_results(out)
    assert set(checks) == PIPELINE_CHECKS, f"checks reported: {checks}\n{out}"
    assert all(v == "PASS" for v in checks.values()), f"failed checks: {checks}\n{out}"


def wait_until(condition: Callable[[], T | None], *, timeout: float, what: str, poll: float = 0.02,
               run: RunProcess | None = None) -> T:
    """Poll `condition` until it returns something truthy; fail (with the run's output) if the
    deadline passes or `run` exits first. Waiting has a deadline; nothing asserts on time."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if run is not None and not run.alive():
            raise AssertionError(f"the run exited ({run.proc.returncode}) before {what}; output:\n{run.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"; output:\n{run.output}" if run else ""))
        time.sleep(poll)


# --- what a batch has stored -------------------------------------------------------------------


def raw_key(item_id: str, user_id: str = DEFAULT_USER_ID) -> str:
    return conversation_key(user_id, conversation_id_for(item_id), "raw.json")


def stored_raw(blobs: LocalBlobStore, item_ids: list[str], user_id: str = DEFAULT_USER_ID) -> dict[str, bytes]:
    """{item id: raw.json bytes} for the items whose raw blob exists."""
    out = {}
    for item_id in item_ids:
        key = raw_key(item_id, user_id)
        if blobs.exists(key):
            out[item_id] = blobs.get_bytes(key)
    return out


def item_ids(engine: Engine, batch_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(
            sa.select(t.batch_items.c.id).where(t.batch_items.c.batch_job_id == batch_id).order_by(t.batch_items.c.position)
        ))


def conversation_item_ids(engine: Engine, batch_id: str) -> list[str]:
    """batch_item_id of every conversations row of the batch (duplicates kept, to count them)."""
    with engine.connect() as conn:
        return list(conn.scalars(
            sa.select(t.conversations.c.batch_item_id).where(t.conversations.c.batch_job_id == batch_id)
        ))


def count_conversations(engine: Engine, batch_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(
            sa.select(sa.func.count()).select_from(t.conversations).where(t.conversations.c.batch_job_id == batch_id)
        ))


def item_statuses(engine: Engine, batch_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return {s: int(n) for s, n in conn.execute(
            sa.select(t.batch_items.c.status, sa.func.count())
            .where(t.batch_items.c.batch_job_id == batch_id)
            .group_by(t.batch_items.c.status)
        ).all()}


def provider_batches(engine: Engine, batch_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(t.provider_batches).where(t.provider_batches.c.batch_job_id == batch_id)
        ).mappings()]


def pg_lock_waiters(engine: Engine) -> int:
    """PostgreSQL sessions of this database currently waiting for a lock."""
    with engine.connect() as conn:
        return int(conn.scalar(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )))
