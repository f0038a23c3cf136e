"""One pass per stage: the streaming loop of the per-conversation stages, and the checks they
compute while each conversation is in memory.

A stage (parse, enrich) applies every rule of its checks to each conversation it writes and
records the findings on the row (`{"run_id": …, "problems": {check: [messages]}}`). The asset
check then reads those records: in the run that wrote the files it reads no file at all. A
file written by another run (an earlier partial run, or one tampered with since) is read again
and its record refreshed, so a check run alone still judges the files as they are now.
"""

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dagster import AssetCheckResult
from sqlalchemy.engine import Engine

from lora_assets.defs.report import conversation_check_result
from lora_assets.defs.resources import BlobStoreResource
from lora_assets.store.conversations import iter_batch_conversations, update_conversations
from lora_assets.store.scaffolding import resolve_conversations
from lora_assets.store.blobs import BlobStore, batched, bounded_map, release_freed_memory

#: check name -> rule(document, row's scaffolding or None) -> problems (stringified on record).
Rules = Mapping[str, Callable[[Any, Any], list[Any]]]


def findings(rules: Rules, document: Any, scaffolding: Any, run_id: str) -> dict[str, Any]:
    """The record a stage stores for one conversation: every rule's problems, and the run."""
    return {"run_id": run_id, "problems": {name: [str(p) for p in rule(document, scaffolding)]
                                          for name, rule in rules.items()}}


def unreadable(run_id: str, rules: Rules, message: str) -> dict[str, Any]:
    """The record of a file that could not be read: every check names the reason."""
    return {"run_id": run_id, "problems": {name: [message] for name in rules}}


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
    through the blob pool and its record (`column`) refreshed."""
    problems: dict[str, list[str]] = {}
    checked = reread = 0
    store = blobs.store()
    with blobs.pool() as pool:
        for page in iter_batch_conversations(engine, batch_id, **row_filter):
            stale = [r for r in page if (r[column] or {}).get("run_id") != run_id]
            fresh = _reread(engine, store, pool, stale, run_id, column, path_column, load, what, rules, scaffolding,
                            2 * blobs.concurrency)
            reread += len(stale)
            for row in page:
                record = fresh.get(row["id"]) or row[column]
                checked += 1
                if found := record["problems"].get(check_name):
                    problems[row["id"]] = found
    return conversation_check_result(problems, checked, summary, extra={"read_again_from_storage": reread})


def _reread(engine: Engine, store: BlobStore, pool: Any, rows: list[dict[str, Any]], run_id: str, column: str,
            path_column: str, load: Callable[[bytes], Any], what: str, rules: Rules, scaffolding: bool,
            window: int) -> dict[str, dict[str, Any]]:
    if not rows:
        return {}
    with engine.connect() as conn:
        resolved = resolve_conversations(conn, rows) if scaffolding else {}
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


#: Conversations per DB transaction (and per wait for their writes).
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
) -> Iterator[dict[str, Any]]:
    """One pass of a per-conversation stage over a partition: pages of rows matching
    `row_filter`, each row's blob (`read_column`) read through the pool, `process(row, bytes or
    the read error, the row's scaffolding)` → (the row's update, bytes to store at the update's
    `out_column` or None), writes through the pool, one transaction per chunk. Yields each
    committed update (a write that failed becomes `unstored(row id, error)`)."""
    store = blobs.store()
    with blobs.pool() as pool:
        for page in iter_batch_conversations(engine, batch_id, **row_filter):
            with engine.connect() as conn:
                scaffolding = resolve_conversations(conn, page)
            reads = bounded_map(pool, lambda r: store.get_bytes(r[read_column]), page, 2 * blobs.concurrency)
            for chunk in batched(reads, CHUNK):
                updates, writes = [], []
                for row, data in chunk:
                    update, out = process(row, data, scaffolding[row["id"]])
                    if out is None:
                        updates.append(update)
                    else:
                        writes.append((update, pool.submit(store.put_bytes, update[out_column], out)))
                for update, written in writes:
                    try:
                        written.result()
                        updates.append(update)
                    except Exception as exc:  # noqa: BLE001 - stored on the row; retried next run
                        updates.append(unstored(update["id"], exc))
                with engine.begin() as conn:
                    update_conversations(conn, updates)
                release_freed_memory()
                yield from updates
