"""Claims (leases) in the domain DB: one holder per key, even when runs race; a dead run's lease
is taken over once it expires; a live run renews and releases its own."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from lora_assets.store import db as dbq
from lora_assets.store import tables as t
from lora_assets.store.claims import SqlClaims


def _claims(db_url: str) -> SqlClaims:
    engine = dbq.make_engine(db_url)
    dbq.init_schema(engine)
    return SqlClaims(engine)


def test_a_key_held_by_a_live_run_is_not_taken(db_url: str) -> None:
    claims = _claims(db_url)
    assert claims.take(["a", "b"], "run-1", 30) == {"a", "b"}
    assert claims.take(["a", "b", "c"], "run-2", 30) == {"c"}
    assert claims.take(["a"], "run-1", 30) == {"a"}  # re-entrant for its holder
    claims.engine.dispose()


def test_an_expired_lease_is_taken_over_and_renewal_keeps_it(db_url: str) -> None:
    claims = _claims(db_url)
    claims.take(["dead", "alive"], "run-1", 0.3)
    claims.take(["alive2"], "run-3", 0.3)
    time.sleep(0.1)
    claims.renew("run-3", 30)
    time.sleep(0.4)
    assert claims.take(["dead", "alive2"], "run-2", 30) == {"dead"}
    claims.release("run-3")
    assert claims.take(["alive2"], "run-2", 30) == {"alive2"}
    with claims.engine.connect() as conn:
        owners = dict(conn.execute(sa.select(t.leases.c.key, t.leases.c.run_id)).all())
    assert owners == {"dead": "run-2", "alive": "run-1", "alive2": "run-2"}
    claims.engine.dispose()


def test_racing_runs_never_both_hold_a_key(db_url: str) -> None:
    """Eight threads (eight runs) claim the same 200 keys at once: every key has one holder."""
    claims = _claims(db_url)
    keys = [f"k{i}" for i in range(200)]
    held: dict[str, set[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def run(n: int) -> None:
        start.wait()
        try:  # opposite orders: a claim that locks in the order given deadlocks on PostgreSQL
            held[f"run-{n}"] = claims.take(list(reversed(keys)) if n % 2 else keys, f"run-{n}", 30)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    together = [k for h in held.values() for k in h]
    assert sorted(together) == sorted(keys), "a key was held twice or by nobody"
    claims.engine.dispose()
