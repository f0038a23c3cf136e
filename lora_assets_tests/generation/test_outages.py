"""Store outages during a generation run: S3 or PostgreSQL goes away (a real TCP outage) while
answers are being stored. Nothing paid for may be lost, and nothing may be bought twice.

Real parts only: the real anthropic SDK over HTTP to the loopback simulator (its per-item
request counters are the bill), a real PostgreSQL database, real S3 (moto server) through
boto3 built the way production builds it (dagster-aws S3Resource), the production SqlLedger,
and the durable spool on a real directory. The outage is `TcpProxy.stop()` between the client
and S3 / PostgreSQL: connects are refused and open connections are cut both ways.

Two shapes per store:
- shorter than `store_retry_s`: the run rides it out (answers wait in the spool) and completes;
- longer: the run aborts with RunAbortedError, the paid-but-unstored answers stay in the spool,
  and a re-run stores them without a request.
Plus Batches mode (S3 down while a provider batch's results are collected: the re-run polls the
same batch, submits nothing) and a PostgreSQL COMMIT whose answer the network loses (the server
committed, the client saw a broken connection).

Waiting has deadlines; nothing asserts on time. Numbers are printed (run with `-s`)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine, make_url

from lora_assets.core.prompt import render_user_prompt, system_prompt, template_variables, turn_count_for
from lora_assets.generation.engine import RunAbortedError, RunConfig, RunStats
from lora_assets.generation.runner import GenerationRequest, generate_batches, generate_messages
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.generation.spool import Spool
from lora_assets.settings import DEFAULT_USER_ID
from lora_assets.store.batches import get_batch, items_to_generate
from lora_assets.store.claims import SqlLedger
from lora_assets.store.common import conversation_id_for, conversation_key
from lora_assets.store.scaffolding import batch_consultant, resolve_items
from lora_assets.store import tables as t
from lora_assets.store.blobs import S3BlobStore
from lora_assets.store.db import make_engine
from lora_assets_tests.defs.helpers import plan, setup_store
from lora_assets_tests.tcp_proxy import TcpProxy

MODEL = "claude-haiku-5-5"
KEY = "sk-ant-test-outages-placeholder"
N_PERSONAS, N_ARCS, N_TOPICS = 2, 3, 5  # 30 items
WAIT_S = 60.0  # deadline of any single wait (a hang fails the test instead of blocking CI)

T = TypeVar("T")


# --- helpers ---------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], T | None], *, what: str, timeout: float = WAIT_S, poll: float = 0.01) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


class Background:
    """A generation run (a coroutine factory) on its own thread with its own event loop."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.result: RunStats | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(make,), daemon=True, name="generation-run")
        self._thread.start()

    def _main(self, make: Callable[[], Any]) -> None:
        try:
            self.result = asyncio.run(make())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float = WAIT_S) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the generation run did not end within {timeout}s (a hang)")


def build_requests(engine: Engine, batch_id: str) -> tuple[list[GenerationRequest], dict[str, Any]]:
    """The requests `raw_conversations` builds for a planned batch (scaffolding from the planning
    snapshot), and each item's resolved scaffolding for the ledger."""
    with engine.connect() as conn:
        batch = get_batch(conn, batch_id)
        todo = items_to_generate(conn, batch_id, include_submitted=True)
        resolved = resolve_items(conn, todo)
        consultant = batch_consultant(conn, batch)
    assert consultant is not None
    system = system_prompt(consultant)
    requests = []
    for item in todo:
        s = resolved[item.id]
        variables = template_variables(s.persona, s.emotional_arc, s.training_topic, consultant, turn_count_for(item.id))
        requests.append(GenerationRequest(item_id=item.id, system=system,
                                          user=render_user_prompt(s.prompt_template, variables)))
    return requests, resolved


def run_config(base_url: str, spool_dir: Path, scope: str, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {
        "model": MODEL,
        "api_key": SecretStr(KEY),
        "base_url": base_url,
        "max_concurrency": 4,
        "timeout_s": 10.0,
        "poll_interval_s": 0.05,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.2,
        "spool_dir": spool_dir,
        "spool_scope": scope,
        "store_threads": 8,
    }
    values.update(overrides)
    return RunConfig(**values)


def s3_client(endpoint_url: str) -> Any:
    """A boto3 S3 client built the way production builds it (dagster-aws S3Resource), with
    botocore's own retries off so every outage reaches the runner's retry (not hidden below it)."""
    from dagster_aws.s3 import S3Resource

    return S3Resource(endpoint_url=endpoint_url, max_attempts=1).get_client()


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def stored_item_ids(engine: Engine, batch_id: str) -> list[str]:
    """batch_item_id of every conversations row (duplicates kept, to be counted)."""
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(t.conversations.c.batch_item_id)
                                 .where(t.conversations.c.batch_job_id == batch_id)))


def count_stored(engine: Engine, batch_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(t.conversations)
                               .where(t.conversations.c.batch_job_id == batch_id)))


def item_statuses(engine: Engine, batch_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return {s: int(n) for s, n in conn.execute(
            sa.select(t.batch_items.c.status, sa.func.count())
            .where(t.batch_items.c.batch_job_id == batch_id).group_by(t.batch_items.c.status)).all()}


def paid_rows(engine: Engine, batch_id: str) -> list[tuple[str, str]]:
    """(item id, outcome) of every paid_requests row of the batch."""
    with engine.connect() as conn:
        return [(i, o) for i, o in conn.execute(
            sa.select(t.paid_requests.c.item_id, t.paid_requests.c.outcome)
            .where(t.paid_requests.c.batch_job_id == batch_id)).all()]


def row_request_id(engine: Engine, item_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.scalar(sa.select(t.conversations.c.request_id).where(t.conversations.c.batch_item_id == item_id))


def provider_batch_rows(engine: Engine, batch_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(t.provider_batches).where(t.provider_batches.c.batch_job_id == batch_id)).mappings()]


def live_leases(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(t.leases)
                               .where(t.leases.c.expires_at >= time.time())))


def requests_added(bill1: dict[str, int], bill2: dict[str, int], ids: list[str]) -> dict[str, int]:
    """Requests per item the second run made (items it did not request are left out)."""
    return {i: bill2.get(i, 0) - bill1.get(i, 0) for i in ids if bill2.get(i, 0) != bill1.get(i, 0)}


def assert_rerun_bought_only_the_unrequested(new: dict[str, int], bill2: dict[str, int], ids: list[str],
                                             spooled: set[str], unrequested: set[str]) -> None:
    """The re-run bought no spooled (paid) answer again, and each never-requested item once."""
    assert {i: new[i] for i in spooled if i in new} == {}, "a spooled (paid) answer was bought again"
    assert new == {i: 1 for i in unrequested}, "the re-run must request exactly the never-requested items, once"
    assert bill2 == {i: 1 for i in ids} and sum(bill2.values()) == len(ids)


def spool_files(spool_dir: Path, scope: str) -> list[str]:
    """Every file in the scope's spool directory (answers, temp files, set-aside .bad files)."""
    d = spool_dir / scope
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def raw_keys_in_s3(client: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(k for k in keys if k.endswith("/raw.json"))


def assert_each_item_stored_once(engine: Engine, batch_id: str, ids: list[str], s3: Any, bucket: str) -> None:
    """One conversations row, one raw.json, one `stored` paid row per item; no duplicates."""
    stored = stored_item_ids(engine, batch_id)
    assert len(stored) == len(set(stored)), "an item has two conversations rows"
    assert sorted(stored) == sorted(ids), f"{len(stored)} conversations rows for {len(ids)} items"
    assert item_statuses(engine, batch_id) == {"generated": len(ids)}
    assert raw_keys_in_s3(s3, bucket) == sorted(conversation_key(DEFAULT_USER_ID, conversation_id_for(i), "raw.json")
                                                 for i in ids)
    paid = paid_rows(engine, batch_id)
    assert sorted(paid) == sorted((i, "stored") for i in ids), "paid_requests must hold one `stored` row per item"


@dataclass
class Store:
    """A planned 30-item batch in a throwaway PostgreSQL database, and a moto bucket."""

    url: str
    engine: Engine  # direct (never through a proxy): what the test reads with
    batch_id: str
    ids: list[str]
    requests: list[GenerationRequest]
    scaffolding: dict[str, Any]
    endpoint: str
    bucket: str
    s3_direct: Any


@pytest.fixture
def sim() -> Iterator[ClaudeSimulator]:
    s = ClaudeSimulator(FaultConfig(latency_s=0.1)).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def slow_sim() -> Iterator[ClaudeSimulator]:
    """Answers in 0.4 s: a run of 30 items at concurrency 4 lasts about 3 s, so an outage that
    starts after its first COMMITs still finds items it has not requested (at 0.1 s, a loaded
    machine let the run request them all before a trap on the next COMMIT had sprung)."""
    s = ClaudeSimulator(FaultConfig(latency_s=0.4)).start()
    try:
        yield s
    finally:
        s.stop()


def _store(pg_url: str, s3_bucket: tuple[str, str], mode: str) -> Store:
    engine = setup_store(pg_url)
    batch_id = plan(engine, N_PERSONAS, N_ARCS, N_TOPICS, mode=mode, name=f"outage-{mode}")
    requests, scaffolding = build_requests(engine, batch_id)
    endpoint, bucket = s3_bucket
    return Store(pg_url, engine, batch_id, [r.item_id for r in requests], requests, scaffolding, endpoint, bucket,
                 s3_client(endpoint))


@pytest.fixture
def messages_store(pg_url: str, s3_bucket: tuple[str, str]) -> Store:
    return _store(pg_url, s3_bucket, "messages")


@pytest.fixture
def s3_proxy(s3_bucket: tuple[str, str]) -> Iterator[TcpProxy]:
    """A proxy in front of the moto server (the S3 the ledger sees)."""
    with TcpProxy("127.0.0.1", port_of(s3_bucket[0])) as proxy:
        yield proxy


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[TcpProxy]:
    """A proxy in front of PostgreSQL (the domain DB the ledger sees)."""
    url = make_url(pg_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


def ledger_over_s3_proxy(store: Store, proxy: TcpProxy) -> SqlLedger:
    blobs = S3BlobStore(s3_client(f"http://127.0.0.1:{proxy.port}"), store.bucket)
    return SqlLedger(store.engine, blobs, store.batch_id, DEFAULT_USER_ID, scaffolding=store.scaffolding)


def proxied_engine(store: Store, proxy: TcpProxy) -> Engine:
    """The production engine (make_engine: pool_pre_ping on) for the domain DB through `proxy`."""
    url = make_url(store.url).set(host="127.0.0.1", port=proxy.port)
    return make_engine(url.render_as_string(hide_password=False))


def ledger_over_pg_proxy(store: Store, engine: Engine) -> SqlLedger:
    blobs = S3BlobStore(store.s3_direct, store.bucket)
    return SqlLedger(engine, blobs, store.batch_id, DEFAULT_USER_ID, scaffolding=store.scaffolding)


def bill(sim: ClaudeSimulator) -> dict[str, Any]:
    return sim.stats.snapshot()


# --- the proxy itself ----------------------------------------------------------------------------------


def test_tcp_proxy_outage_refuses_cuts_and_resumes_on_the_same_port(pg_url: str) -> None:
    """The tool first: through the proxy PostgreSQL answers; stop() cuts an open connection and
    refuses new ones; resume() serves again on the same port."""
    import psycopg2

    pg = make_url(pg_url)
    with TcpProxy(pg.host or "127.0.0.1", pg.port or 5432) as proxy:
        port = proxy.port
        dsn = dict(host="127.0.0.1", port=port, user=pg.username, dbname=pg.database, connect_timeout=5)
        conn = psycopg2.connect(**dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT 41 + 1")
            assert cur.fetchone() == (42,)
        assert proxy.open_connections == 1

        assert proxy.stop() == 1
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")  # the open connection was cut
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(**dsn)  # nothing listens: refused

        proxy.resume()
        assert proxy.port == port
        conn2 = psycopg2.connect(**dsn)
        with conn2.cursor() as cur:
            cur.execute("SELECT 'back'")
            assert cur.fetchone() == ("back",)
        conn2.close()
        conn.close()
    assert proxy.open_connections == 0


# --- a. S3 outage shorter than the store retry --------------------------------------------------------


def test_s3_outage_shorter_than_store_retry_run_completes_nothing_bought_twice(
    messages_store: Store, s3_proxy: TcpProxy, sim: ClaudeSimulator, tmp_path: Path
) -> None:
    st = messages_store
    n = len(st.ids)
    spool_dir = tmp_path / "spool"
    ledger = ledger_over_s3_proxy(st, s3_proxy)
    config = run_config(sim.base_url, spool_dir, st.batch_id, store_retry_s=20.0)
    spool = Spool(spool_dir, st.batch_id)

    run = Background(lambda: generate_messages(st.requests, ledger, config))
    try:
        wait_until(lambda: count_stored(st.engine, st.batch_id) >= 3 or run.done, what="3 stored items")
        assert not run.done, f"the run ended before the outage: {run.error or run.result}"
        cut = s3_proxy.stop()
        stored_at_stop = count_stored(st.engine, st.batch_id)
        outage_end = time.monotonic() + 3.0
        max_spooled = 0
        while time.monotonic() < outage_end:  # the outage lasts ~3 s (not an assertion)
            max_spooled = max(max_spooled, len(spool))
            time.sleep(0.02)
        stored_at_resume = count_stored(st.engine, st.batch_id)
    finally:
        s3_proxy.resume()
    run.join()

    assert run.error is None, f"the run failed: {run.error!r}"
    stats = run.result
    assert stats is not None
    b = bill(sim)
    print(f"\n[S3 outage 3s < store_retry 20s] items={n} stored at stop={stored_at_stop}, at resume={stored_at_resume}; "
          f"connections cut={cut}; max answers waiting in the spool={max_spooled}; requests={sum(b['attempts_by_key'].values())} "
          f"(stats.requests={stats.requests}); done={stats.done} skipped={stats.skipped} failed={stats.failed}; "
          f"spool files after={len(spool_files(spool_dir, st.batch_id))}; {stats.elapsed_s:.1f}s")
    # The outage was real: answers piled up in the spool while nothing reached the store.
    assert stored_at_resume < n and max_spooled > 0
    assert (stats.done, stats.failed, stats.skipped, stats.recovered_from_spool) == (n, 0, 0, 0)
    assert stats.requests == n
    assert b["attempts_by_key"] == {i: 1 for i in st.ids}, "an item was requested twice (or never)"
    assert b["delivered_by_key"] == {i: 1 for i in st.ids}
    assert_each_item_stored_once(st.engine, st.batch_id, st.ids, st.s3_direct, st.bucket)
    assert spool_files(spool_dir, st.batch_id) == [], "the spool must be empty once everything is stored"


# --- b. S3 outage longer than the store retry -------------------------------------------------------------


def test_s3_outage_longer_than_store_retry_aborts_keeps_spool_and_rerun_buys_nothing_again(
    messages_store: Store, s3_proxy: TcpProxy, sim: ClaudeSimulator, tmp_path: Path
) -> None:
    st = messages_store
    n = len(st.ids)
    spool_dir = tmp_path / "spool"
    # At most 6 answers wait for the ledger: sends pause during the outage, so part of the
    # batch is never requested by the first run (the re-run must request exactly those).
    config = run_config(sim.base_url, spool_dir, st.batch_id, store_retry_s=1.0, max_spool_items=6)

    run1 = Background(lambda: generate_messages(st.requests, ledger_over_s3_proxy(st, s3_proxy), config))
    try:
        wait_until(lambda: count_stored(st.engine, st.batch_id) >= 3 or run1.done, what="3 stored items")
        assert not run1.done, f"the run ended before the outage: {run1.error or run1.result}"
        s3_proxy.stop()
        run1.join()  # S3 stays down until the run gave up
    finally:
        s3_proxy.resume()

    err = run1.error
    assert isinstance(err, RunAbortedError), f"expected RunAbortedError, got {err!r} / {run1.result}"
    assert "kept in the local spool" in str(err), str(err)
    bill1 = bill(sim)["attempts_by_key"]
    stored1 = set(stored_item_ids(st.engine, st.batch_id))
    spooled = set(Spool(spool_dir, st.batch_id).item_ids())
    unrequested = set(st.ids) - set(bill1)
    assert all(v == 1 for v in bill1.values()), {i: v for i, v in bill1.items() if v != 1}
    assert stored1 <= set(bill1)
    assert spooled, "the outage left no answer in the spool"
    assert spooled == set(bill1) - stored1, "paid-but-unstored answers must be exactly the spool's content"
    assert len(spool_files(spool_dir, st.batch_id)) == 1  # the aborted run's journal, kept
    assert unrequested, "the first run requested every item (the spool cap should have paused sends)"

    stats2 = asyncio.run(generate_messages(st.requests, ledger_over_s3_proxy(st, s3_proxy), config))
    bill2 = bill(sim)["attempts_by_key"]
    new = requests_added(bill1, bill2, st.ids)
    print(f"\n[S3 outage > store_retry 1s] items={n}; run 1: requests={sum(bill1.values())}, stored={len(stored1)}, "
          f"spooled={len(spooled)}, unrequested={len(unrequested)}; abort: {err}\n"
          f"  run 2: recovered_from_spool={stats2.recovered_from_spool}, new requests={sum(new.values())} "
          f"(for spooled items: {sum(new.get(i, 0) for i in spooled)}), done={stats2.done}, skipped={stats2.skipped}; "
          f"total requests={sum(bill2.values())}")
    assert_rerun_bought_only_the_unrequested(new, bill2, st.ids, spooled, unrequested)
    assert stats2.recovered_from_spool == len(spooled)
    assert (stats2.done, stats2.failed, stats2.requests) == (len(spooled) + len(unrequested), 0, len(unrequested))
    assert stats2.skipped == len(stored1) and stats2.claimed_elsewhere == 0
    assert_each_item_stored_once(st.engine, st.batch_id, st.ids, st.s3_direct, st.bucket)
    assert spool_files(spool_dir, st.batch_id) == []


# --- c. PostgreSQL outage ---------------------------------------------------------------------------------


def test_pg_outage_shorter_than_store_retry_run_completes_nothing_bought_twice(
    messages_store: Store, pg_proxy: TcpProxy, sim: ClaudeSimulator, tmp_path: Path
) -> None:
    st = messages_store
    n = len(st.ids)
    spool_dir = tmp_path / "spool"
    engine = proxied_engine(st, pg_proxy)
    spool = Spool(spool_dir, st.batch_id)
    # Claims (30 s) need no renewal during this run, so the outage only hits the stores.
    config = run_config(sim.base_url, spool_dir, st.batch_id, store_retry_s=20.0, claim_ttl_s=30.0)
    try:
        run = Background(lambda: generate_messages(st.requests, ledger_over_pg_proxy(st, engine), config))
        try:
            wait_until(lambda: count_stored(st.engine, st.batch_id) >= 3 or run.done, what="3 stored items")
            assert not run.done, f"the run ended before the outage: {run.error or run.result}"
            cut = pg_proxy.stop()
            stored_at_stop = count_stored(st.engine, st.batch_id)
            outage_end = time.monotonic() + 3.0
            max_spooled = 0
            while time.monotonic() < outage_end:
                max_spooled = max(max_spooled, len(spool))
                time.sleep(0.02)
            stored_at_resume = count_stored(st.engine, st.batch_id)
        finally:
            pg_proxy.resume()
        run.join()
    finally:
        engine.dispose()

    assert run.error is None, f"the run failed: {run.error!r}"
    stats = run.result
    assert stats is not None
    b = bill(sim)
    print(f"\n[PG outage 3s < store_retry 20s] items={n} stored at stop={stored_at_stop}, at resume={stored_at_resume}; "
          f"connections cut={cut}; max answers waiting in the spool={max_spooled}; requests={sum(b['attempts_by_key'].values())}; "
          f"done={stats.done} skipped={stats.skipped} failed={stats.failed} wasted=${stats.wasted_cost_usd:.5f}")
    assert stored_at_resume < n and max_spooled > 0
    assert b["attempts_by_key"] == {i: 1 for i in st.ids}, "an item was requested twice (or never)"
    assert_each_item_stored_once(st.engine, st.batch_id, st.ids, st.s3_direct, st.bucket)
    assert spool_files(spool_dir, st.batch_id) == []
    # A COMMIT cut by the outage after the server applied it makes the run count that item as a
    # duplicate (it was once); test e. below pins that case.
    assert (stats.done, stats.skipped, stats.failed, stats.requests) == (n, 0, 0, n)


@pytest.mark.parametrize("outage", ["stop", "commit_unheard"])
def test_pg_outage_longer_than_store_retry_aborts_keeps_spool_and_rerun_buys_nothing_again(
    messages_store: Store, pg_proxy: TcpProxy, slow_sim: ClaudeSimulator, tmp_path: Path, outage: str
) -> None:
    """`commit_unheard`: the outage starts with a COMMIT the server applied but whose answer the
    run never heard (what a plain stop produces only when it happens to cut one in flight):
    that item is stored AND spooled, and the re-run must count it as skipped, once."""
    st, sim = messages_store, slow_sim
    n = len(st.ids)
    spool_dir = tmp_path / "spool"
    # Short claims (renewed every 2.7 s; a request needs > timeout_s + 1 s of lease left): the
    # first run cannot release its claims while the DB is down, so the re-run waits for them
    # to expire, as a re-run after a real outage would (after claim_ttl_s). The request timeout
    # stays well above a 0.1 s answer on a saturated machine: at 1 s, one answer came late under
    # the full suite, was retried, and the simulator counted the item twice.
    config = run_config(sim.base_url, spool_dir, st.batch_id, store_retry_s=1.0, max_spool_items=6,
                        timeout_s=3.0, claim_ttl_s=8.0)
    engine1 = proxied_engine(st, pg_proxy)
    try:
        run1 = Background(lambda: generate_messages(st.requests, ledger_over_pg_proxy(st, engine1), config))
        try:
            wait_until(lambda: count_stored(st.engine, st.batch_id) >= 3 or run1.done, what="3 stored items")
            assert not run1.done, f"the run ended before the outage: {run1.error or run1.result}"
            if outage == "stop":
                pg_proxy.stop()
            else:
                fired = pg_proxy.cut_after(PG_COMMIT, then_stop=True)
                wait_until(lambda: fired.is_set() or run1.done, what="a COMMIT on the proxied DB")
                assert fired.is_set(), f"the run ended before a COMMIT: {run1.error or run1.result}"
            run1.join()
        finally:
            pg_proxy.resume()
    finally:
        engine1.dispose()

    err = run1.error
    assert isinstance(err, RunAbortedError), f"expected RunAbortedError, got {err!r} / {run1.result}"
    assert "kept in the local spool" in str(err), str(err)
    bill1 = bill(sim)["attempts_by_key"]
    stored1 = set(stored_item_ids(st.engine, st.batch_id))
    spool_records = dict(Spool(spool_dir, st.batch_id).pending())
    spooled = set(spool_records)
    unrequested = set(st.ids) - set(bill1)
    # A COMMIT the outage cut after the server applied it: stored AND still spooled (the run
    # could not know). It must be the same answer (same request id), not a second purchase.
    both = spooled & stored1
    assert all(v == 1 for v in bill1.values()), {i: v for i, v in bill1.items() if v != 1}
    assert stored1 <= set(bill1)
    assert spooled - stored1, "the outage left no unstored answer in the spool"
    assert spooled | stored1 == set(bill1), "a paid answer is neither stored nor spooled (lost)"
    assert {i: row_request_id(st.engine, i) for i in both} == {i: spool_records[i].request_id for i in both}
    assert unrequested, "the first run requested every item (the spool cap should have paused sends)"
    if outage == "commit_unheard":
        assert both, "the COMMIT cut by the outage left no item both stored and spooled"
    # The dead run's claims could not be released (DB down): they expire after claim_ttl_s.
    wait_until(lambda: live_leases(st.engine) == 0, what="the first run's claims to expire", poll=0.1)

    engine2 = proxied_engine(st, pg_proxy)
    try:
        stats2 = asyncio.run(generate_messages(st.requests, ledger_over_pg_proxy(st, engine2), config))
    finally:
        engine2.dispose()
    bill2 = bill(sim)["attempts_by_key"]
    new = requests_added(bill1, bill2, st.ids)
    print(f"\n[PG outage > store_retry 1s] items={n}; run 1: requests={sum(bill1.values())}, stored={len(stored1)}, "
          f"spooled={len(spooled)} (of which committed unheard: {len(both)}), unrequested={len(unrequested)}; "
          f"abort: {err}\n"
          f"  run 2: recovered_from_spool={stats2.recovered_from_spool}, new requests={sum(new.values())} "
          f"(for spooled items: {sum(new.get(i, 0) for i in spooled)}), done={stats2.done}, skipped={stats2.skipped}; "
          f"total requests={sum(bill2.values())}")
    assert_rerun_bought_only_the_unrequested(new, bill2, st.ids, spooled, unrequested)
    assert stats2.recovered_from_spool == len(spooled - stored1)
    assert (stats2.done, stats2.failed, stats2.requests) == (len(spooled - stored1) + len(unrequested), 0,
                                                             len(unrequested))
    # Skipped = every item run 1 stored, including a COMMIT it never heard of (`both`): the replay
    # finds that one stored and skips it, so `stored1 - spooled` was right only when the outage cut
    # no COMMIT in flight (the flake: this assertion failed whenever it did).
    assert stats2.skipped == len(stored1) and stats2.claimed_elsewhere == 0
    assert stats2.done + stats2.skipped == n
    assert_each_item_stored_once(st.engine, st.batch_id, st.ids, st.s3_direct, st.bucket)
    assert spool_files(spool_dir, st.batch_id) == []


# --- d. Batches mode: S3 outage while results are collected ------------------------------------------------


@dataclass
class BatchesOutage:
    """What the Batches scenario observed (run once per module, checked by two tests)."""

    n: int
    ids: list[str]
    error: BaseException | None
    bill1: dict[str, Any]
    stored1: set[str]
    spooled: set[str]
    rows1: list[dict[str, Any]]
    stats2: RunStats
    bill2: dict[str, Any]
    rows2: list[dict[str, Any]]
    stored2: list[str]
    statuses2: dict[str, int]
    raw_keys2: list[str]
    paid2: list[tuple[str, str]]
    spool_files2: list[str]


@pytest.fixture(scope="module")
def batches_outage(module_pg_url: str, module_s3_bucket: tuple[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> BatchesOutage:
    """A Message Batches run whose results arrive while S3 is down for longer than
    `store_retry_s` (the outage starts once the provider batch is recorded, before it ends), then
    a re-run after S3 is back (new SqlLedger, same spool, same requests)."""
    st = _store(module_pg_url, module_s3_bucket, "batches")
    spool_dir = tmp_path_factory.mktemp("batches-spool")
    sim = ClaudeSimulator(FaultConfig(batch_processing_s=0.5)).start()
    try:
        with TcpProxy("127.0.0.1", port_of(st.endpoint)) as proxy:
            config = run_config(sim.base_url, spool_dir, st.batch_id, store_retry_s=1.0)
            run1 = Background(lambda: generate_batches(st.requests, ledger_over_s3_proxy(st, proxy), config))
            try:
                wait_until(lambda: any(r["provider_batch_id"] for r in provider_batch_rows(st.engine, st.batch_id))
                           or run1.done, what="the provider batch to be recorded")
                assert not run1.done, f"the run ended before the outage: {run1.error or run1.result}"
                proxy.stop()
                run1.join()  # S3 stays down until the run gave up
            finally:
                proxy.resume()
            bill1 = bill(sim)
            stored1 = set(stored_item_ids(st.engine, st.batch_id))
            spooled = set(Spool(spool_dir, st.batch_id).item_ids())
            rows1 = provider_batch_rows(st.engine, st.batch_id)

            stats2 = asyncio.run(generate_batches(st.requests, ledger_over_s3_proxy(st, proxy), config))
    finally:
        sim.stop()
    out = BatchesOutage(
        n=len(st.ids), ids=st.ids, error=run1.error, bill1=bill1, stored1=stored1, spooled=spooled, rows1=rows1,
        stats2=stats2, bill2=bill(sim), rows2=provider_batch_rows(st.engine, st.batch_id),
        stored2=stored_item_ids(st.engine, st.batch_id), statuses2=item_statuses(st.engine, st.batch_id),
        raw_keys2=raw_keys_in_s3(st.s3_direct, st.bucket), paid2=paid_rows(st.engine, st.batch_id),
        spool_files2=spool_files(spool_dir, st.batch_id),
    )
    s2 = stats2
    print(f"\n[Batches, S3 outage > store_retry 1s while collecting] items={out.n}; run 1: batches created="
          f"{bill1['batches_created']}, stored={len(stored1)}, spooled={len(spooled)}; abort: {run1.error}\n"
          f"  run 2: recovered_from_spool={s2.recovered_from_spool}, resumed={s2.provider_batches_resumed}, "
          f"submitted={s2.provider_batches_submitted}, requests={s2.requests}, done={s2.done}, skipped={s2.skipped}, "
          f"cost=${s2.cost_usd:.5f} (wasted ${s2.wasted_cost_usd:.5f}); batches created in total={out.bill2['batches_created']}")
    return out


def test_batches_s3_outage_while_collecting_rerun_stores_from_spool_without_resubmitting(
    batches_outage: BatchesOutage,
) -> None:
    o = batches_outage
    assert isinstance(o.error, RunAbortedError), f"expected RunAbortedError, got {o.error!r}"
    assert "kept in the local spool" in str(o.error), str(o.error)
    # Run 1: one batch, each custom id once; S3 down, so every collected answer is in the spool.
    assert o.bill1["batches_created"] == 1 and o.bill1["batch_requests_by_custom_id"] == {i: 1 for i in o.ids}
    assert o.bill1["attempts_by_key"] == {}, "Batches mode must not call the Messages API"
    assert [r["status"] for r in o.rows1] == ["in_progress"], "the provider batch must stay open for the re-run"
    assert o.spooled and o.spooled == set(o.ids) - o.stored1, "every collected, unstored answer must be in the spool"
    # Run 2: nothing submitted again; the same provider batch polled and closed.
    assert o.bill2["batches_created"] == 1, "the re-run created a second provider batch"
    assert o.bill2["batch_requests_by_custom_id"] == {i: 1 for i in o.ids}, "a custom id was submitted twice"
    assert o.bill2["attempts_by_key"] == {}
    s2 = o.stats2
    assert (s2.provider_batches_submitted, s2.provider_batches_resumed, s2.requests, s2.failed) == (0, 1, 0, 0)
    assert [r["status"] for r in o.rows2] == ["ended"], o.rows2
    # The store: each item once (row, raw.json, one `stored` paid row), nothing left in the spool.
    assert sorted(o.stored2) == sorted(o.ids) and len(set(o.stored2)) == len(o.stored2)
    assert o.statuses2 == {"generated": o.n}
    assert o.raw_keys2 == sorted(conversation_key(DEFAULT_USER_ID, conversation_id_for(i), "raw.json") for i in o.ids)
    assert sorted(o.paid2) == sorted((i, "stored") for i in o.ids)
    assert o.spool_files2 == []


def test_batches_rerun_after_outage_reports_what_it_paid(batches_outage: BatchesOutage) -> None:
    """The re-run bought nothing (0 requests, 0 batches): its stats must say so."""
    s2 = batches_outage.stats2
    assert s2.recovered_from_spool == len(batches_outage.spooled)
    assert s2.done == len(batches_outage.spooled)
    assert s2.skipped == batches_outage.n - len(batches_outage.spooled), "items counted as skipped twice"
    assert s2.cost_usd == 0 and s2.wasted_cost_usd == 0, f"re-run reports ${s2.cost_usd:.5f} spent"


# --- e. PostgreSQL: a COMMIT whose answer is lost -------------------------------------------------------

#: psycopg2's commit on the wire: a simple Query message "COMMIT" (type 'Q', int32 length 11).
PG_COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


def test_pg_commit_answer_lost_item_counted_once_as_stored(
    messages_store: Store, pg_proxy: TcpProxy, sim: ClaudeSimulator, tmp_path: Path
) -> None:
    """The connection breaks after the server committed a stored answer but before the client
    heard so (the ambiguous commit every network outage can produce). The ledger write is
    retried: the item must end stored once, requested once, and the run must count it as
    stored (not as a paid duplicate)."""
    st = messages_store
    n = len(st.ids)
    spool_dir = tmp_path / "spool"
    engine = proxied_engine(st, pg_proxy)
    config = run_config(sim.base_url, spool_dir, st.batch_id, store_retry_s=20.0, claim_ttl_s=30.0)
    try:
        run = Background(lambda: generate_messages(st.requests, ledger_over_pg_proxy(st, engine), config))
        wait_until(lambda: count_stored(st.engine, st.batch_id) >= 3 or run.done, what="3 stored items")
        assert not run.done, f"the run ended before the trap was armed: {run.error or run.result}"
        fired = pg_proxy.cut_after(PG_COMMIT)  # the next COMMIT (a conversations row) commits unheard
        wait_until(fired.is_set, what="a COMMIT on the proxied DB")
        run.join()
    finally:
        engine.dispose()

    assert run.error is None, f"the run failed: {run.error!r}"
    stats = run.result
    assert stats is not None
    b = bill(sim)
    paid = paid_rows(st.engine, st.batch_id)
    print(f"\n[PG commit answer lost] items={n} requests={sum(b['attempts_by_key'].values())}; done={stats.done} "
          f"skipped={stats.skipped} failed={stats.failed}; cost=${stats.cost_usd:.5f} wasted=${stats.wasted_cost_usd:.5f}; "
          f"paid_requests rows={len(paid)} ({sorted({o for _, o in paid})})")
    # What the store and the bill say: exact.
    assert b["attempts_by_key"] == {i: 1 for i in st.ids}
    assert_each_item_stored_once(st.engine, st.batch_id, st.ids, st.s3_direct, st.bucket)
    assert spool_files(spool_dir, st.batch_id) == []
    # What the run reports about itself.
    assert (stats.done, stats.skipped, stats.failed) == (n, 0, 0), "an item stored by this run was reported as a duplicate"
    assert stats.wasted_cost_usd == 0, "money reported wasted that was not"
