"""Helpers every store module shares: the clock, the conversation blob-key layout, chunked id
lists and a dialect-neutral INSERT … ON CONFLICT."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

_ITEM_NS = uuid.UUID("0b8a9f55-1d3c-4c1e-8f0e-5a4b7e2d9c61")


def conversation_id_for(item_id: str) -> str:
    """Deterministic conversation id of an item: a raw blob written before a crash is found again
    on re-run instead of being paid for twice."""
    return str(uuid.uuid5(_ITEM_NS, item_id))


def conversation_key(user_id: str, conversation_id: str, name: str) -> str:
    """Blob key layout of the seeds: conversation-files/<user>/<conversation>/<name>."""
    return f"conversation-files/{user_id}/{conversation_id}/{name}"


def sibling_key(key: str, name: str) -> str:
    """The key of file `name` next to `key` (e.g. a conversation's enriched.json beside its raw.json)."""
    return f"{key.rsplit('/', 1)[0]}/{name}"


def now() -> datetime:
    """The current time, timezone-aware UTC (what every `updated_at` is set to)."""
    return datetime.now(UTC)


def chunks(ids: list[str], size: int = 500) -> Iterable[list[str]]:
    """`ids` in slices of `size`: an IN list stays under every dialect's parameter limit."""
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def insert_ignore(conn: Connection, table: sa.Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for the connection's dialect."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)
