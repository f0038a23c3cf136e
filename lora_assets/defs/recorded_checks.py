"""One pass per stage: the streaming loop of the per-conversation stages, and the checks they
compute while each conversation is in memory.

A stage (parse, enrich) applies every rule of its checks to each conversation it writes and
records the findings on the row (`{"run_id": …, "problems": {check: [messages]}}`). The asset
check then reads those records: in the run that wrote the files it reads no file at all. A
file written by another run (an earlier partial run, or one tampered with since) is read again
and its record refreshed, so a check run alone still judges the files as they are now.
"""

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import sqlalchemy as sa
from dagster import AssetCheckResult
from sqlalchemy.engine import Engine

from lora_assets.defs.report import conversation_check_result
from lora_assets.defs.resources import BlobStoreResource
from lora_assets.store import tables as t
from lora_assets.store.conversations import iter_batch_conversations, light_columns, update_conversations
from lora_assets.store.run_copies import RunCopies
from lora_assets.store.scaffolding import RESOLVE_COLUMNS, ScaffoldingResolver, snapshot_flag
from lora_assets.store.blobs import READ_CHUNK, WRITE_CHUNK, BlobStore, bounded_map, frozen_heap, release_freed_memory

#: check name -> rule(document, row's scaffolding or None) -> problems (stringified on record).
Rules = Mapping[str, Callable[[Any, Any], list[Any]]]


def findings(rules: Rules, document: Any, scaffolding: Any, run_id: str) -> dict[str, Any]:
    """The record a stage stores for one conversation: every rule's problems, and the run."""
    return {"run_id": run_id, "problems": {name: [str(p) for p in rule(document, scaffolding)]
                                          for name, rule in rules.items()}}


def unreadable(run_id: str, rules: Rules, message: str) -> dict[str, Any]:
    """The record of a file that could not be read: every check names the reason."""
    return {"run_id": run_id, "problems": {name: [message] for name in rules}}


def _filtered(batch_id: str, row_filter: dict[str, Any]) -> list[sa.ColumnElement[bool]]:
    c = t.conversations
    return [c.c.batch_job_id == batch_id, *(
        c.c[col].in_(value) if isinstance(value, (list, tuple, set)) else c.c[col] == value
        for col, value in row_filter.items())]


def verify(
    *,
    engine: Engine,
    blobs: BlobStoreResource,
    batch_id: str,
    run_id: str,
    row_filter: dict[str, Any],
    column: str,
    path_column: str,
    load: Callable[[bytes], Any],
    what: str,
    rules: Rules,
    check_name: str,
    summary: str,
    scaffolding: bool,
) -> AssetCheckResult:
    """Result of `check_name` over the partition's conversations matching `row_filter`: from the
    records this run made, and for every other row from its file (`path_column`), read again
    through the blob pool and its record (`column`) refreshed.

    The database does the sorting: a count of the rows, the rows whose record another run made
    (or none: read again), and the rows whose record names problems of this check. In the run
    that wrote the records the last two are empty, so a check costs a few queries however large
    the partition."""
    c = t.conversations
    record = c.c[column]
    recorded_run = record["run_id"].as_string()
    # The JSON text of the check's problem list: "[]" when the record found none.
    found = record[("problems", check_name)].as_string()
    conditions = _filtered(batch_id, row_filter)
    with engine.connect() as conn:
        checked = conn.execute(sa.select(sa.func.count()).select_from(c).where(*conditions)).scalar_one()
    problems: dict[str, list[str]] = {}
    fresh: set[str] = set()
    store = blobs.store()
    stale = sa.or_(recorded_run.is_(None), recorded_run != run_id, found.is_(None))
    needed = [path_column, *(RESOLVE_COLUMNS if scaffolding else ()), *([snapshot_flag()] if scaffolding else [])]
    resolver = ScaffoldingResolver()
    with blobs.pool() as pool:
        for page in iter_batch_conversations(engine, batch_id, columns=needed, where=stale, **row_filter):
            records = _reread(engine, store, pool, page, run_id, column, path_column, load, what, rules,
                              resolver if scaffolding else None, 2 * blobs.concurrency)
            for cid, rec in records.items():
                fresh.add(cid)
                if found_here := rec["problems"].get(check_name):
                    problems[cid] = found_here
    has_problems = sa.and_(found.is_not(None), found != "[]")
    for page in iter_batch_conversations(engine, batch_id, columns=[column], where=has_problems, **row_filter):
        for row in page:
            if row["id"] not in fresh and (listed := (row[column] or {}).get("problems", {}).get(check_name)):
                problems[row["id"]] = listed
    return conversation_check_result(problems, checked, summary, extra={"read_again_from_storage": len(fresh)})


def _reread(engine: Engine, store: BlobStore, pool: Any, rows: list[dict[str, Any]], run_id: str, column: str,
            path_column: str, load: Callable[[bytes], Any], what: str, rules: Rules,
            resolver: ScaffoldingResolver | None, window: int) -> dict[str, dict[str, Any]]:
    if not rows:
        return {}
    with engine.connect() as conn:
        resolved = resolver.resolve(conn, rows) if resolver is not None else {}
    records: dict[str, dict[str, Any]] = {}
    for row, data in bounded_map(pool, lambda r: store.get_bytes(r[path_column]), rows, window):
        try:
            if isinstance(data, BaseException):
                raise data
            document = load(data)
        except Exception as exc:  # noqa: BLE001 - reported per conversation by the check
            records[row["id"]] = unreadable(run_id, rules, f"{what} unreadable: {' '.join(str(exc).split())[:300]}")
            continue
        records[row["id"]] = findings(rules, document, resolved.get(row["id"]), run_id)
    with engine.begin() as conn:
        update_conversations(conn, ({"id": cid, column: rec} for cid, rec in records.items()))
    return records


#: Conversations per DB transaction.
CHUNK = 200


def stream_stage(
    *,
    engine: Engine,
    blobs: BlobStoreResource,
    batch_id: str,
    row_filter: dict[str, Any],
    read_column: str,
    process: Callable[[dict[str, Any], bytes | BaseException, Any], tuple[dict[str, Any], bytes | None]],
    out_column: str,
    unstored: Callable[[str, Exception], dict[str, Any]],
    keep: RunCopies | None = None,
    copies: RunCopies | None = None,
) -> Iterator[dict[str, Any]]:
    """One pass of a per-conversation stage over a partition: the rows matching `row_filter`
    (read a page at a time), each row's blob (`read_column`) read through the pool,
    `process(row, bytes or the read error, the row's scaffolding)` → (the row's update, bytes to
    store at the update's `out_column` or None), written through the pool; the updates of
    written rows are committed `CHUNK` at a time. Yields each committed update (a write that
    failed becomes `unstored(row id, error)`). With `keep`, a copy of every blob written is kept
    there for a later stage of the run; with `copies`, a blob found there is read from it instead
    of the store (`store.run_copies`).

    A pipeline, never drained on the way: reads run `2 × concurrency × READ_CHUNK` rows ahead of
    the one being processed (READ_CHUNK reads per pool task), across page boundaries, while the
    writes of the rows before it are in flight (WRITE_CHUNK per task, as many tasks as reads at
    most, so the bytes waiting stay bounded); a row's update is committed once its write has
    finished. (Waiting for a chunk's reads, then processing it, then waiting for its
    writes left the pool idle in turn.)"""
    store = blobs.store()
    where = blobs.identity()
    resolver = ScaffoldingResolver()
    # Every column but the large JSON ones (the scaffolding comes from `resolver`, a snapshot read
    # once per batch and part, not once per row).
    columns = [*light_columns(), snapshot_flag()]
    window = 2 * blobs.concurrency
    reads_ahead = window * READ_CHUNK  # a pool task reads READ_CHUNK rows: every thread kept busy

    def rows() -> Iterator[tuple[dict[str, Any], Any]]:
        for page in iter_batch_conversations(engine, batch_id, columns=columns, **row_filter):
            with engine.connect() as conn:
                scaffolding = resolver.resolve(conn, page)
            for row in page:
                yield row, scaffolding[row["id"]]

    def put_all(group: list[tuple[dict[str, Any], bytes]]) -> list[Exception | None]:
        errors: list[Exception | None] = []
        for update, data in group:
            try:
                store.put_bytes(update[out_column], data)
            except Exception as exc:  # noqa: BLE001 - stored on its row; retried next run
                errors.append(exc)
                continue
            errors.append(None)
            if keep is not None:  # only what was stored is copied
                keep.keep(where, update[out_column], data)
        return errors

    def read(item: tuple[dict[str, Any], Any]) -> bytes:
        key = item[0][read_column]
        if copies is not None and (data := copies.get(where, key)) is not None:
            return data
        return store.get_bytes(key)

    def written(updates: list[dict[str, Any]], future: Future[list[Exception | None]]) -> list[dict[str, Any]]:
        try:
            errors: list[Exception | None] = future.result()
        except Exception as exc:  # noqa: BLE001 - the task itself failed: every row of it is unstored
            errors = [exc] * len(updates)
        return [u if e is None else unstored(u["id"], e) for u, e in zip(updates, errors, strict=True)]

    def commit(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with engine.begin() as conn:
            update_conversations(conn, updates)
        release_freed_memory()
        return updates

    ready: list[dict[str, Any]] = []
    to_write: list[tuple[dict[str, Any], bytes]] = []  # handed to the pool WRITE_CHUNK at a time
    writes: deque[tuple[list[dict[str, Any]], Future[list[Exception | None]]]] = deque()
    writing = 0  # rows in `writes`
    with frozen_heap(), blobs.pool() as pool:

        def hand_over() -> None:
            nonlocal to_write, writing
            writes.append(([u for u, _ in to_write], pool.submit(put_all, to_write)))
            writing += len(to_write)
            to_write = []

        for (row, snapshot), data in bounded_map(pool, read, rows(), reads_ahead, chunk=READ_CHUNK):
            update, out = process(row, data, snapshot)
            if out is None:
                ready.append(update)
            else:
                to_write.append((update, out))
                if len(to_write) >= WRITE_CHUNK:
                    hand_over()
            while writes and (writes[0][1].done() or writing > window * WRITE_CHUNK):
                updates, future = writes.popleft()
                writing -= len(updates)
                ready.extend(written(updates, future))
            if len(ready) >= CHUNK:
                yield from commit(ready)
                ready = []
        if to_write:
            hand_over()
        while writes:
            ready.extend(written(*writes.popleft()))
        if ready:
            yield from commit(ready)
