"""A batch's conversation rows: read (whole or a page at a time) and updated by the stages."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lora_assets.store import tables as t
from lora_assets.store.common import now


def batch_conversations(conn: Connection, batch_id: str, *, columns: Iterable[str] | None = None,
                        **filters: Any) -> list[dict[str, Any]]:
    """Rows of a batch's conversations (only `columns` when given: a whole partition's rows with
    their scaffolding snapshots are large), filtered by column values."""
    c = t.conversations
    q = (sa.select(*(c.c[name] for name in columns)) if columns else sa.select(c)).where(c.c.batch_job_id == batch_id)
    for col, value in filters.items():
        q = q.where(c.c[col].in_(value) if isinstance(value, (list, tuple, set)) else c.c[col] == value)
    return [dict(r) for r in conn.execute(q.order_by(c.c.id)).mappings()]


#: The large JSON columns of a conversation row: a stage that streams a partition reads them only
#: when it needs them (a row's scaffolding snapshot alone is ≈ 5 KB to fetch and decode).
HEAVY_COLUMNS = ("scaffolding_snapshot", "parse_checks", "enrichment_checks", "judge_scores")


def light_columns() -> list[str]:
    """Every column of a conversation row but `HEAVY_COLUMNS`."""
    return [col.name for col in t.conversations.c if col.name not in HEAVY_COLUMNS]


def iter_batch_conversations(engine: Engine, batch_id: str, page_size: int = 500, *,
                             columns: Sequence[str | sa.ColumnElement[Any]] | None = None,
                             where: sa.ColumnElement[bool] | None = None,
                             **filters: Any) -> Iterator[list[dict[str, Any]]]:
    """`batch_conversations` a page at a time (keyset by id, a short connection per page), so a
    stage never holds a whole partition's rows. Rows updated behind the cursor are not seen again.
    `columns`: only these (names, or labelled expressions; `id` is always read); `where`: a
    further condition."""
    c = t.conversations
    selected = ([c.c.id, *(c.c[x] if isinstance(x, str) else x for x in columns if x != "id")]
                if columns is not None else [c])
    after = ""
    while True:
        stmt = sa.select(*selected).where(c.c.batch_job_id == batch_id, c.c.id > after)
        if where is not None:
            stmt = stmt.where(where)
        for col, value in filters.items():
            stmt = stmt.where(c.c[col].in_(value) if isinstance(value, (list, tuple, set)) else c.c[col] == value)
        with engine.connect() as conn:
            page = [dict(r) for r in conn.execute(stmt.order_by(c.c.id).limit(page_size)).mappings()]
        if not page:
            return
        yield page
        after = page[-1]["id"]


def update_conversation(conn: Connection, conversation_id: str, **values: Any) -> None:
    """Set columns of one conversation row (and its updated_at)."""
    conn.execute(
        sa.update(t.conversations).where(t.conversations.c.id == conversation_id).values(**values, updated_at=now())
    )


def update_conversations(conn: Connection, updates: Iterable[dict[str, Any]]) -> int:
    """Many row updates in few statements (one executemany per set of columns): what a stage
    writes for a chunk of conversations. Each dict holds `id` and the columns to set."""
    c = t.conversations
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for u in updates:
        cols = tuple(sorted(k for k in u if k != "id"))
        groups.setdefault(cols, []).append({"_id": u["id"], **{k: u[k] for k in cols}})
    stamp = now()
    for cols, rows in groups.items():
        stmt = sa.update(c).where(c.c.id == sa.bindparam("_id")).values(
            {k: sa.bindparam(k) for k in cols} | {"updated_at": stamp})
        conn.execute(stmt, rows)
    return sum(len(rows) for rows in groups.values())
