"""Shared fixtures: real PostgreSQL (throwaway database), real S3 API (moto server on loopback),
the loopback Claude simulator. In CI (CI=true) a missing service fails; locally it skips."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("LORA_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --- parallel runs: `make test` is `pytest -n 3 --dist loadscope` -----------------------------------

#: Modules that take minutes (a real deployment, a production scenario, subprocess runs killed
#: mid-batch). Under xdist they are handed out first, so the short tests fill in around them
#: instead of one long module starting last.
SLOW_FIRST = (
    "lora_assets_tests/ui/test_restart.py",
    "lora_assets_tests/ui/test_purse.py",
    "lora_assets_tests/ui/test_front_door.py",
    "lora_assets_tests/test_production.py",
    "lora_assets_tests/ui/test_ui.py",
    "lora_assets_tests/defs/test_crash.py",
    "lora_assets_tests/generation/test_outages.py",
)
#: Slow modules whose fixtures are all per test (or per session, i.e. per worker): their tests are
#: handed out one by one. Every other module is one unit on one worker, so a module-scoped fixture
#: (database, bucket, deployment, scenario) is built once. A module-scoped fixture added to one of
#: these would be built once per worker that runs its tests: slower, never wrong.
SPREAD_BY_TEST = (
    "lora_assets_tests/ui/test_ui.py",
    "lora_assets_tests/defs/test_crash.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope`, with SPREAD_BY_TEST modules split per test and SLOW_FIRST units first.
    (Not `--dist loadgroup` + xdist_group marks: pytest-xdist 3.8 tags the group onto
    `item._nodeid`, which pytest 9 no longer reads, so the marks are silently ignored.)
    Only which worker runs a test, and when, changes; never what a test does."""
    if config.getoption("dist", "no") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SlowFirstScheduling(LoadScopeScheduling):
        _ordered = False

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module in SPREAD_BY_TEST else module

        def _assign_work_unit(self, node: Any) -> None:
            if not self._ordered:
                self._ordered = True
                first_seen = {scope: i for i, scope in reversed(list(enumerate(
                    self._split_scope(nodeid) for nodeid in self.collection or [])))}

                def rank(scope: str) -> tuple[int, int]:
                    module = scope.split("::", 1)[0]
                    slow = SLOW_FIRST.index(module) if module in SLOW_FIRST else len(SLOW_FIRST)
                    return slow, first_seen.get(scope, 0)

                for scope in sorted(self.workqueue, key=rank):
                    self.workqueue.move_to_end(scope)
            super()._assign_work_unit(node)

    return SlowFirstScheduling(config, log)


def service_missing(what: str) -> None:
    """Fail in CI, skip elsewhere: a missing service is never a silent pass in CI."""
    if IN_CI:
        pytest.fail(f"{what} is not available (CI=true requires it)")
    pytest.skip(f"{what} is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_admin_engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        engine.dispose()
        service_missing(f"PostgreSQL at {PG_ADMIN_URL} ({exc.__class__.__name__})")
    yield engine
    engine.dispose()


@contextmanager
def throwaway_database(admin: sa.Engine, prefix: str = "lora_test") -> Iterator[str]:
    """Create a PostgreSQL database, yield its URL, then dispose cached engines and drop it."""
    from lora_assets.defs.resources import _ENGINES

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        engine = _ENGINES.pop(url, None)
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def throwaway_bucket(endpoint: str, prefix: str = "lora-test") -> Iterator[tuple[str, str]]:
    """Create a bucket on the moto server, yield (endpoint, bucket), then empty and remove it."""
    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"{prefix}-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    try:
        yield endpoint, bucket
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)


@pytest.fixture
def pg_url(pg_admin_engine: sa.Engine) -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped afterwards."""
    with throwaway_database(pg_admin_engine) as url:
        yield url


@pytest.fixture(scope="module")
def module_pg_url(pg_admin_engine: sa.Engine) -> Iterator[str]:
    """A throwaway PostgreSQL database shared by one test module."""
    with throwaway_database(pg_admin_engine, "lora_mod") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'lora.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on SQLite AND on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lora.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto in server mode) on loopback for the whole session, started through
    `lora_assets_tests.s3_server` (moto's app with per-host dispatch memoised, served by uvicorn
    with HTTP/1.1 keep-alive as S3 does, no access log: the same answers for about half of stock
    `moto_server`'s CPU per request)."""
    import importlib.util

    # The launcher needs moto's server extra (Flask) and uvicorn (dagster-webserver's); without them,
    # as without the executable before.
    if any(importlib.util.find_spec(m) is None for m in ("moto", "flask", "flask_cors", "werkzeug", "uvicorn")):
        service_missing("moto server (moto[server])")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_assets_tests.s3_server", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1],
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            service_missing(f"moto server (exited with {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        service_missing("moto server did not start")
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> Iterator[tuple[str, str]]:
    """A fresh bucket on the moto server; yields (endpoint_url, bucket)."""
    with throwaway_bucket(moto_endpoint) as pair:
        yield pair


@pytest.fixture(scope="module")
def module_s3_bucket(moto_endpoint: str) -> Iterator[tuple[str, str]]:
    """A bucket shared by one test module."""
    with throwaway_bucket(moto_endpoint, "lora-mod") as pair:
        yield pair
