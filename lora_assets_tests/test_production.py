"""Production mode end to end, with real parts only:

- the Dagster instance on PostgreSQL through the repo's `dagster.yaml` (copied into a temp
  DAGSTER_HOME, DAGSTER_PG_* pointing at a throwaway database),
- the domain DB on another throwaway PostgreSQL database (LORA_DATABASE_URL),
- the blob store on a moto S3 server (LORA_S3_*),
- Claude = the loopback simulator over HTTP (ANTHROPIC_BASE_URL), with latency,
- the user's commands as subprocesses: `lora-assets init`, `dagster asset materialize`,
  `lora-assets batch create`, two `dagster job execute -j batch_pipeline` at the same time with the
  multiprocess executor, `lora-assets training-file create --build`.

Plus a small check of the Helm deployment files in `deploy/`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import yaml

from lora_assets_tests import check_names

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCAFFOLDING_ASSETS = check_names.SCAFFOLDING_KEYS
BATCH_CHECKS = set(check_names.PIPELINE_CHECKS)
TRAINING_FILE_CHECKS = set(check_names.TRAINING_FILE_CHECKS)
#: What a storage lock problem looks like in an event log or a process's output (SQLite and PostgreSQL).
LOCK_ERRORS = re.compile(
    r"database is locked|deadlock detected|could not obtain lock|LockNotAvailable|lock timeout|"
    r"database table is locked|could not serialize access",
    re.IGNORECASE,
)
#: Generous on purpose (never an assertion about speed): every step of a multiprocess run is its own
#: Python process importing Dagster, which takes minutes on a loaded 2-CPU machine.
SUBPROCESS_TIMEOUT_S = int(os.environ.get("LORA_TEST_SUBPROCESS_TIMEOUT_S", "900"))
#: The batch runs' executor: a process per step, forked from a forkserver that preloaded the code
#: location (`-m lora_assets.definitions`).
MULTIPROCESS = {"max_concurrent": 4, "start_method": {"forkserver": {}}}
#: The module's scenario fixture runs once, inside the first test that needs it: room for it.
pytestmark = pytest.mark.timeout(3 * SUBPROCESS_TIMEOUT_S)


# --- the repo's dagster.yaml ------------------------------------------------------------------------


def repo_dagster_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dagster.yaml").read_text())


def _pg_env(admin_url: str, db_name: str) -> dict[str, str]:
    u = sa.make_url(admin_url)
    return {
        "DAGSTER_PG_HOST": u.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(u.port or 5432),
        "DAGSTER_PG_USER": u.username or "postgres",
        # Trust auth on the test server: an empty password is what an operator would set.
        "DAGSTER_PG_PASSWORD": u.password or "",
        "DAGSTER_PG_DB": db_name,
    }


@contextmanager
def throwaway_database(pg_admin_engine: sa.Engine, prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database (created with the admin engine), dropped afterwards; yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with pg_admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with pg_admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def dagster_pg_db(pg_admin_engine: sa.Engine) -> Iterator[str]:
    """A throwaway PostgreSQL database for a Dagster instance; yields its name."""
    with throwaway_database(pg_admin_engine, "lora_dagster") as name:
        yield name


def test_repo_dagster_yaml_loads_as_is(
    tmp_path: Path, dagster_pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repo's dagster.yaml, verbatim in DAGSTER_HOME, gives a PostgreSQL-backed instance."""
    from dagster import DagsterInstance
    from dagster_postgres import PostgresRunStorage

    from lora_assets_tests.conftest import PG_ADMIN_URL

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for k, v in _pg_env(PG_ADMIN_URL, dagster_pg_db).items():
        monkeypatch.setenv(k, v)
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 4


# --- a gate in front of the simulator ------------------------------------------------------------


_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "date", "server",
}


class OverlapGate:
    """A loopback HTTP proxy in front of the Claude simulator. It holds each `POST /v1/messages`
    of a known batch item until requests of `need` different batches have arrived (or `timeout_s`
    passed), then forwards everything unchanged. So the two runs' generation steps cannot finish
    apart: if they did not run at the same time, the gate times out and the test says so.
    It also records the largest number of batches with requests in flight at one moment."""

    def __init__(self, upstream: str, *, need: int = 2, timeout_s: float = 90.0) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.need = need
        self.timeout_s = timeout_s
        self.item_batch: dict[str, str] = {}
        self.open = threading.Event()
        self.timed_out = False
        self.arrived: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_batches_in_flight = 0
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                gate._proxy(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                gate._proxy(self, "POST")

            def do_DELETE(self) -> None:  # noqa: N802
                gate._proxy(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> OverlapGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.open.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _enter(self, batch: str) -> None:
        with self._lock:
            self.arrived[batch] += 1
            self.in_flight[batch] += 1
            self.max_batches_in_flight = max(self.max_batches_in_flight, sum(1 for n in self.in_flight.values() if n))
            if len(self.arrived) >= self.need:
                self.open.set()
        if not self.open.wait(self.timeout_s):
            with self._lock:
                self.timed_out = True
            self.open.set()

    def _leave(self, batch: str) -> None:
        with self._lock:
            self.in_flight[batch] -= 1

    def _proxy(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        batch = None
        if method == "POST" and urlsplit(h.path).path.rstrip("/") == "/v1/messages":
            with self._lock:
                batch = self.item_batch.get(h.headers.get("x-lora-item-id") or "")
        if batch is not None:
            self._enter(batch)
        try:
            conn = http.client.HTTPConnection(*self.upstream, timeout=300)
            try:
                headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(method, h.path, body=body if body else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status, resp_headers = resp.status, resp.getheaders()
            finally:
                conn.close()
        finally:
            if batch is not None:
                self._leave(batch)
        h.send_response(status)
        for k, v in resp_headers:
            if k.lower() not in _HOP_BY_HOP:
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


# --- the production stack, driven like a user would ----------------------------------------------


def _run(cmd: list[str], env: dict[str, str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _kill_group(p: subprocess.Popen[str]) -> None:
    """Kill a process started with start_new_session=True and everything it started."""
    try:
        os.killpg(p.pid, signal.SIGKILL)  # also step processes a finished leader may have left behind
    except ProcessLookupError:
        pass
    p.wait()


@dataclass
class RunInfo:
    run_id: str
    job: str
    partition: str | None
    status: str
    start: float | None
    end: float | None
    run_config: dict[str, Any]
    checks: list[tuple[str, bool, str]]  # (check name, passed, description) from the event log
    materializations: dict[str, dict[str, Any]]  # asset -> metadata values
    lock_errors: list[str]
    step_failures: list[str]


@dataclass
class Scenario:
    """Everything the production run produced, read back from the instance, the DBs, S3 and the
    simulator while they were up (the tests below only look at this)."""

    bucket: str
    prefix: str
    endpoint: str
    instance_kind: dict[str, Any]
    batch_ids: list[str]
    batch_keys: list[str]  # their partition keys (slugs of their names)
    item_batch: dict[str, str]
    runs: list[RunInfo]
    batch_outputs: dict[str, str]
    gate_arrived: dict[str, int]
    gate_max_batches_in_flight: int
    gate_timed_out: bool
    sim_stats: dict[str, Any]
    conversations: list[tuple[str, str]]  # (batch_item_id, batch_job_id)
    tf_name: str
    tf_proc: subprocess.CompletedProcess[str]
    tf_version: dict[str, Any] | None
    s3_objects: dict[str, int]  # key -> size
    broken_proc: subprocess.CompletedProcess[str]
    leftovers: list[str] = field(default_factory=list)

    def runs_of(self, job: str, partition: str | None = None) -> list[RunInfo]:
        return [r for r in self.runs if r.job == job and (partition is None or r.partition == partition)]


def _read_runs(instance: Any) -> list[RunInfo]:
    from dagster import DagsterEventType, RunsFilter
    from dagster._serdes import serialize_value

    out = []
    for rec in instance.get_run_records(RunsFilter()):
        run = rec.dagster_run
        checks, mats, locks, failures = [], {}, [], []
        for entry in instance.all_logs(run.run_id):
            text = serialize_value(entry)
            if LOCK_ERRORS.search(text):
                locks.append(text[:2000])
            ev = entry.dagster_event
            if ev is None:
                continue
            if ev.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                e = ev.event_specific_data
                checks.append((e.check_name, e.passed, e.description or ""))
            elif ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                m = ev.event_specific_data.materialization
                mats[m.asset_key.to_user_string()] = {k: v.value for k, v in m.metadata.items()}
            elif ev.event_type == DagsterEventType.STEP_FAILURE:
                err = ev.event_specific_data.error
                failures.append(f"{ev.step_key}: {err.to_string() if err else entry.message}")
        out.append(RunInfo(
            run_id=run.run_id, job=run.job_name, partition=run.tags.get("dagster/partition"), status=run.status.value,
            start=rec.start_time, end=rec.end_time, run_config=dict(run.run_config), checks=checks,
            materializations=mats, lock_errors=locks, step_failures=failures,
        ))
    return out


@pytest.fixture(scope="module")
def scenario(pg_admin_engine: sa.Engine, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """The whole production flow, once for the module:

    instance = the repo's dagster.yaml in a temp DAGSTER_HOME on a throwaway PostgreSQL database;
    domain DB = another throwaway PostgreSQL database; blobs = a moto S3 bucket under a prefix;
    Claude = the simulator (0.25 s latency) behind an overlap gate, reached via ANTHROPIC_BASE_URL.
    `lora-assets init` → `dagster asset materialize` (scaffolding) → 2 × `lora-assets batch create`
    → 2 × `dagster job execute -j batch_pipeline` started together (multiprocess executor) →
    `lora-assets training-file create … --build` from both batches → one more training file whose
    member's enriched.json was deleted from S3, built the same way (must fail)."""
    import boto3
    from dagster import DagsterInstance

    from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
    from lora_assets.store import tables as t
    from lora_assets.store.training_files import get_version
    from lora_assets_tests.conftest import PG_ADMIN_URL

    tmp = tmp_path_factory.mktemp("production")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # verbatim: the production instance config
    bucket, prefix = f"lora-prod-{uuid.uuid4().hex[:10]}", "prod"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)

    with throwaway_database(pg_admin_engine, "lora_dagster") as dagster_db, \
            throwaway_database(pg_admin_engine, "lora_domain") as domain_db, \
            pytest.MonkeyPatch.context() as mp:
        domain_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{domain_db}"
        sim = ClaudeSimulator(FaultConfig(latency_s=0.25)).start()
        gate = OverlapGate(sim.base_url).start()
        domain = sa.create_engine(domain_url)
        procs: dict[str, subprocess.Popen[str]] = {}
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "LORA_", "DAGSTER_", "AWS_"))}
            env.update(_pg_env(PG_ADMIN_URL, dagster_db))
            env.update({
                "DAGSTER_HOME": str(home),
                "LORA_DATA_DIR": str(tmp / "lora_data"),  # nothing may land here: all storage is remote
                # The durable spool (a persistent volume in production): empty once all is stored.
                "LORA_SPOOL_DIR": str(tmp / "spool"),
                "LORA_DATABASE_URL": domain_url,
                "LORA_S3_BUCKET": bucket,
                "LORA_S3_PREFIX": prefix,
                "LORA_S3_ENDPOINT_URL": moto_endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "ANTHROPIC_BASE_URL": gate.base_url,
                "PYTHONUNBUFFERED": "1",
            })
            for k, v in env.items():
                if k.startswith("DAGSTER_"):
                    mp.setenv(k, v)  # this process reads the same instance afterwards
            lora, dagster = str(BIN / "lora-assets"), str(BIN / "dagster")

            # 1. domain schema + scaffolding rows
            out = _run([lora, "init"], env, tmp).stdout
            assert "postgresql" in out and "schema migrations applied now: 001" in out, out

            # 2. the scaffolding assets (and their check), materialised on the PostgreSQL instance
            quiet = tmp / "quiet.yaml"
            quiet.write_text(yaml.safe_dump({"loggers": {"console": {"config": {"log_level": "WARNING"}}}}))
            _run([dagster, "asset", "materialize", "-m", "lora_assets.definitions",
                  "--select", ",".join(SCAFFOLDING_ASSETS), "-c", str(quiet)], env, tmp)

            # 3. two batches of 8 items (2 personas × 2 arcs × 2 topics; different personas)
            batch_ids, batch_keys = [], []
            for name, personas in (("prod-a", ["pragmatic_optimist", "anxious_planner"]),
                                   ("prod-b", ["overwhelmed_avoider", "late_starter"])):
                cmd = [lora, "batch", "create", "--name", name, "--arc", "confusion_to_clarity", "--arc",
                       "fear_to_confidence", "--topic", "mortgage_payoff_strategy", "--topic", "emergency_fund"]
                for p in personas:
                    cmd += ["--persona", p]
                m = re.search(r"batch (\S+): (\d+) item\(s\) planned.*; id ([0-9a-f-]{36})", _run(cmd, env, tmp).stdout)
                assert m and int(m.group(2)) == 8 and m.group(1) == name
                batch_keys.append(m.group(1))
                batch_ids.append(m.group(3))
            with domain.connect() as conn:
                item_batch = {r.id: r.batch_job_id for r in conn.execute(sa.select(t.batch_items.c.id, t.batch_items.c.batch_job_id))}
            gate.item_batch.update(item_batch)

            # 4. both partitions at once: `dagster job execute` each, multiprocess executor (each step
            #    its own process), partition given as the dagster/partition tag.
            run_config = tmp / "run_config.yaml"
            run_config.write_text(yaml.safe_dump({
                # forkserver: each step forks from a server that imported the code location once,
                # instead of a fresh interpreter importing Dagster per step (README "Executors").
                "execution": {"config": {"multiprocess": MULTIPROCESS}},
                "loggers": {"console": {"config": {"log_level": "WARNING"}}},
            }))
            for b in batch_keys:
                procs[b] = subprocess.Popen(
                    [dagster, "job", "execute", "-m", "lora_assets.definitions", "-j", "batch_pipeline",
                     "--tags", json.dumps({"dagster/partition": b}), "-c", str(run_config)],
                    env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    start_new_session=True,  # own process group: its step processes die with it
                )
            batch_outputs: dict[str, str] = {}
            try:
                for b, p in procs.items():
                    batch_outputs[b] = p.communicate(timeout=SUBPROCESS_TIMEOUT_S)[0]
            except subprocess.TimeoutExpired:
                for b, p in procs.items():
                    _kill_group(p)
                    batch_outputs[b] = p.communicate()[0]
                pytest.fail(
                    f"batch runs still running after {SUBPROCESS_TIMEOUT_S} s; gate arrivals {dict(gate.arrived)}\n"
                    + "\n".join(f"--- {b}:\n{o[-5000:]}" for b, o in batch_outputs.items())
                )
            for b, p in procs.items():
                assert p.returncode == 0, f"batch_pipeline for {b} exited {p.returncode}:\n{batch_outputs[b][-6000:]}"

            # 5. a training file from both batches, built (in the CLI's process, on the same instance)
            tf_name = "prod-both-batches"
            cmd = [lora, "training-file", "create", tf_name, "--build"]
            for b in batch_keys:
                cmd += ["--batch", b]
            tf_proc = _run(cmd, env, tmp, check=False)
            with domain.connect() as conn:
                conversations = [(r.batch_item_id, r.batch_job_id) for r in conn.execute(
                    sa.select(t.conversations.c.batch_item_id, t.conversations.c.batch_job_id, t.conversations.c.enriched_file_path))]
                tf_version = get_version(conn, tf_name)
                victim = conn.execute(sa.select(t.conversations.c.id, t.conversations.c.enriched_file_path)
                                      .where(t.conversations.c.batch_job_id == batch_ids[0])
                                      .order_by(t.conversations.c.id).limit(1)).one()
            s3_objects = {
                o["Key"]: o["Size"]
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])
            }

            # 6. a build that must fail: a member's enriched.json is gone from S3
            s3.delete_object(Bucket=bucket, Key=f"{prefix}/{victim.enriched_file_path}")
            broken_proc = _run([lora, "training-file", "create", "prod-broken-member", "--conversation", victim.id,
                                "--build"], env, tmp, check=False)
            sim_stats = sim.stats.snapshot()

            with DagsterInstance.from_config(str(home)) as instance:
                instance_kind = {
                    "run_storage": type(instance.run_storage).__name__,
                    "event_log_storage": type(instance.event_log_storage).__name__,
                    "schedule_storage": type(instance.schedule_storage).__name__,
                    "run_coordinator": type(instance.run_coordinator).__name__,
                    "default_pool_limit": instance.get_concurrency_config().pool_config.default_pool_limit,
                    "max_concurrent_runs": instance.get_concurrency_config().run_queue_config.max_concurrent_runs,
                }
                runs = _read_runs(instance)
            data_dir = tmp / "lora_data"
            leftovers = [str(p) for p in data_dir.rglob("*")] if data_dir.exists() else []
            leftovers += [str(p) for p in (tmp / "spool").rglob("*.jsonl")]
            yield Scenario(
                bucket=bucket, prefix=prefix, endpoint=moto_endpoint, instance_kind=instance_kind,
                batch_ids=batch_ids, batch_keys=batch_keys, item_batch=item_batch, runs=runs, batch_outputs=batch_outputs,
                gate_arrived=dict(gate.arrived), gate_max_batches_in_flight=gate.max_batches_in_flight,
                gate_timed_out=gate.timed_out, sim_stats=sim_stats, conversations=conversations,
                tf_name=tf_name, tf_proc=tf_proc, tf_version=tf_version, s3_objects=s3_objects,
                broken_proc=broken_proc, leftovers=leftovers,
            )
        finally:
            for p in procs.values():
                _kill_group(p)
            domain.dispose()
            gate.stop()
            sim.stop()
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for o in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=o["Key"])
            s3.delete_bucket(Bucket=bucket)


# --- what the production run proves ----------------------------------------------------------------


def test_instance_is_the_repo_dagster_yaml_on_postgres(scenario: Scenario) -> None:
    cfg = repo_dagster_yaml()
    assert scenario.instance_kind == {
        "run_storage": "PostgresRunStorage",
        "event_log_storage": "PostgresEventLogStorage",
        "schedule_storage": "PostgresScheduleStorage",
        "run_coordinator": "QueuedRunCoordinator",
        "default_pool_limit": cfg["concurrency"]["pools"]["default_limit"],
        "max_concurrent_runs": cfg["concurrency"]["runs"]["max_concurrent_runs"],
    }
    # Nothing fell back to the embedded defaults (SQLite, local blobs, a local instance).
    assert scenario.leftovers == []


def test_both_batch_runs_succeeded_at_the_same_time(scenario: Scenario) -> None:
    runs = {r.partition: r for r in scenario.runs_of("batch_pipeline")}
    assert set(runs) == set(scenario.batch_keys) and len(scenario.runs_of("batch_pipeline")) == 2
    assert {r.status for r in runs.values()} == {"SUCCESS"}, {p: (r.status, r.step_failures) for p, r in runs.items()}
    for r in runs.values():
        assert r.run_config["execution"] == {"config": {"multiprocess": MULTIPROCESS}}
    # Run start/end timestamps from the run storage: each started before the other ended.
    starts = [r.start for r in runs.values()]
    ends = [r.end for r in runs.values()]
    assert None not in starts and None not in ends
    assert max(starts) < min(ends), f"batch runs did not overlap: starts {starts}, ends {ends}"
    # Their generation steps waited on Claude at the same moment: the gate was opened by the
    # second batch's requests, not by its timeout.
    assert not scenario.gate_timed_out
    assert scenario.gate_max_batches_in_flight == 2
    assert scenario.gate_arrived == {b: 8 for b in scenario.batch_ids}
    print(f"\nbatch runs overlapped {min(ends) - max(starts):.2f} s "
          f"(run lengths {[round(e - s, 2) for s, e in zip(starts, ends, strict=True)]} s)")


def test_no_lock_errors_in_any_run_or_process(scenario: Scenario) -> None:
    assert scenario.runs, "no runs recorded"
    for r in scenario.runs:
        assert not r.lock_errors, f"lock error in run {r.run_id} ({r.job}): {r.lock_errors[0]}"
    for b, text in scenario.batch_outputs.items():
        assert not LOCK_ERRORS.search(text), f"lock error in the output of batch {b}'s run:\n{text[-4000:]}"
    for proc in (scenario.tf_proc, scenario.broken_proc):
        assert not LOCK_ERRORS.search(proc.stdout + proc.stderr)


def test_every_item_generated_exactly_once(scenario: Scenario) -> None:
    items = scenario.item_batch
    assert len(items) == 16 and Counter(items.values()) == {b: 8 for b in scenario.batch_ids}
    # At the API: one request and one delivered conversation per item, nothing else.
    assert scenario.sim_stats["attempts_by_key"] == {i: 1 for i in items}
    assert scenario.sim_stats["delivered_by_key"] == {i: 1 for i in items}
    # In the domain DB: one conversation per item, in the item's own batch.
    assert Counter(i for i, _ in scenario.conversations) == {i: 1 for i in items}
    assert dict(scenario.conversations) == items
    # In each run's raw_conversations metadata: its 8 items, 8 requests, no retries, no failures.
    for r in scenario.runs_of("batch_pipeline"):
        assert set(r.materializations) == {"raw_conversations", "parsed_conversations", "enriched_conversations"}
        raw = r.materializations["raw_conversations"]
        assert (raw["items_total"], raw["items_generated"], raw["generated_this_run"], raw["items_failed"],
                raw["api_requests"], raw["retries"]) == (8, 8, 8, 0, 8, 0)
    print(f"\n{len(items)} items, {sum(scenario.sim_stats['attempts_by_key'].values())} Claude requests, "
          f"{len(scenario.conversations)} conversation rows")


def test_every_check_of_the_scaffolding_and_batch_runs_passed(scenario: Scenario) -> None:
    """Read from the instance's event log: each expected check evaluated once per run, all passed."""
    (scaffolding_run,) = scenario.runs_of("__ASSET_JOB")
    assert scaffolding_run.status == "SUCCESS"
    assert scaffolding_run.checks == [("scaffolding_completeness", True, scaffolding_run.checks[0][2])]
    assert set(scaffolding_run.materializations) == set(SCAFFOLDING_ASSETS)
    for r in scenario.runs_of("batch_pipeline"):
        assert Counter(name for name, _, _ in r.checks) == {name: 1 for name in BATCH_CHECKS}, r.run_id
        assert [(n, d) for n, ok, d in r.checks if not ok] == []


def test_training_file_version_blobs_are_in_the_bucket(scenario: Scenario) -> None:
    v = scenario.tf_version
    assert "training file 'prod-both-batches': 16 conversation(s)" in scenario.tf_proc.stdout, scenario.tf_proc.stdout
    assert v is not None and v["version"] == 1
    assert v["conversation_count"] == 16 and v["total_training_pairs"] > 0
    outputs = v["outputs"] or {}
    assert {"json", "jsonl", "parquet", "messages-train", "card"} <= set(outputs), sorted(outputs)
    for fmt, o in outputs.items():
        assert o["path"].startswith(f"training-files/{scenario.tf_name}/v1/"), (fmt, o["path"])
        key = f"{scenario.prefix}/{o['path']}"
        assert scenario.s3_objects.get(key) == o["bytes"], (fmt, key)
    assert outputs["jsonl"]["lines"] == v["total_training_pairs"]
    print(f"\ntraining file v{v['version']}: {v['conversation_count']} conversations, {v['total_training_pairs']} pairs, "
          f"{len(outputs)} blobs in s3://{scenario.bucket}/{scenario.prefix}/training-files/{scenario.tf_name}/v1/")


def test_training_file_build_run_succeeded_with_all_checks_passed(scenario: Scenario) -> None:
    (run,) = scenario.runs_of("training_file_build", scenario.tf_name)
    errors = [ln.strip()[:200] for f in run.step_failures for ln in f.splitlines() if "UnsupportedOperation" in ln]
    print(f"\ntraining_file_build {run.status}; errors: {errors[:2]}; "
          f"checks {[(n, ok) for n, ok, _ in run.checks]}")
    assert run.status == "SUCCESS", run.step_failures
    assert Counter(name for name, _, _ in run.checks) == {name: 1 for name in TRAINING_FILE_CHECKS}
    # The simulator's templated answers overlap across the split: the leakage check says so as a
    # WARN (never blocking), which is the finding it exists for; every other check passes.
    failed = [(n, d) for n, ok, d in run.checks if not ok]
    assert [n for n, _ in failed] in ([], ["training_file_leakage"]), failed
    assert all("WARN" in d or "warning" in d.lower() for _, d in failed), failed
    assert re.search(r"^run \S+: success$", scenario.tf_proc.stdout, re.MULTILINE)
    assert scenario.tf_proc.returncode == 0


def test_a_build_with_a_missing_member_file_fails_naming_it(scenario: Scenario) -> None:
    """Deleting a member's enriched.json from S3 makes the build fail, naming the file, writing nothing."""
    proc = scenario.broken_proc
    assert "training file 'prod-broken-member': 1 conversation(s)" in proc.stdout, proc.stdout + proc.stderr
    (run,) = scenario.runs_of("training_file_build", "prod-broken-member")
    assert run.status == "FAILURE"
    assert any("enriched.json cannot be read" in f for f in run.step_failures), run.step_failures
    assert re.search(r"^run \S+: FAILED$", proc.stdout, re.MULTILINE), proc.stdout


def test_training_file_create_build_exits_nonzero_when_the_build_fails(scenario: Scenario) -> None:
    """The same failed build as above must not look like success to a script or CI."""
    assert scenario.broken_proc.returncode != 0


# --- deploy/ -----------------------------------------------------------------------------------------


DEPLOY = REPO / "deploy"


def test_deploy_values_parse_and_match_the_code_location() -> None:
    """deploy/values.yaml (dagster/dagster Helm chart) and secrets.example.yaml parse; the values
    run this code location, on external PostgreSQL, with K8sRunLauncher, the daemon, a run queue
    limit that does not clash with the concurrency block, and a limit for the asset's own pool."""
    from lora_assets.defs.generation import raw_conversations

    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    secrets = list(yaml.safe_load_all((DEPLOY / "secrets.example.yaml").read_text()))

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment.get("codeServerArgs") or deployment.get("dagsterApiGrpcArgs")
    assert args[args.index("-m") + 1] == "lora_assets.definitions"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["dagsterDaemon"]["enabled"] is True
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    # The chart (like Dagster itself) refuses a run limit in both places.
    assert values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"].get("maxConcurrentRuns") is None
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] >= 1
    assert values["concurrency"]["pools"]["defaultLimit"] >= 1

    # The pool the values limit is the pool the asset uses.
    pool = raw_conversations.op.pool
    assert pool == "claude_api"
    assert set(values["loraAssets"]["poolLimits"]) == {pool}
    assert values["loraAssets"]["poolLimits"][pool] >= 1

    # Env from the secret, in the code server and in every run pod.
    secret_names = {s["metadata"]["name"] for s in secrets if s.get("kind") == "Secret"}
    app_secret = next(s for s in secrets if s.get("kind") == "Secret" and "ANTHROPIC_API_KEY" in s.get("stringData", {}))
    assert {"ANTHROPIC_API_KEY", "LORA_DATABASE_URL", "LORA_S3_BUCKET"} <= set(app_secret["stringData"])
    assert {e["name"] for e in deployment["envSecrets"]} == {app_secret["metadata"]["name"]}
    assert {e["name"] for e in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]} <= secret_names
    assert values["global"]["postgresqlSecretName"] in secret_names

    # The image: python 3.11 slim, the project's pinned install, dagster-k8s of the same library
    # release as the dagster-postgres the project pins, serving the same module.
    from importlib.metadata import version

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE) == ["${PYTHON_IMAGE}"] * 2
    assert f"ARG DAGSTER_K8S_VERSION={version('dagster-postgres')}" in dockerfile
    assert re.search(r"pip install --no-index --find-links /wheels lora_assets", dockerfile)
    assert '"-m", "lora_assets.definitions"]' in dockerfile
