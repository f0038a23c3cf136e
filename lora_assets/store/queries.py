"""Named queries over the domain DB: batch planning, generation ledger, stage bookkeeping."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from lora_assets.schemas import (
    BatchItemPlan,
    BatchJobStatus,
    BatchSelection,
    EnrichmentStatus,
    GenerationRecord,
    ItemStatus,
    ParseStatus,
    ResolvedScaffolding,
)
from lora_assets.store import tables as t
from lora_assets.store.blobs import BlobStore
from lora_assets.store.db import scaffolding_by_id

_ITEM_NS = uuid.UUID("0b8a9f55-1d3c-4c1e-8f0e-5a4b7e2d9c61")


class UnknownScaffoldingKeyError(ValueError):
    """A selection names a persona / arc / topic key that is not in the DB."""


class EmptySelectionError(ValueError):
    """A selection that plans no items."""


def conversation_id_for(item_id: str) -> str:
    """Deterministic conversation id of an item: a raw blob written before a crash is found again
    on re-run instead of being paid for twice."""
    return str(uuid.uuid5(_ITEM_NS, item_id))


def conversation_key(user_id: str, conversation_id: str, name: str) -> str:
    """Blob key layout of the seeds: conversation-files/<user>/<conversation>/<name>."""
    return f"conversation-files/{user_id}/{conversation_id}/{name}"


def now() -> datetime:
    return datetime.now(UTC)


# --- planning -----------------------------------------------------------------------------


def _resolve_keys(conn: Connection, table: sa.Table, key_col: str, keys: list[str], what: str) -> list[tuple[str, str]]:
    rows = conn.execute(sa.select(table.c[key_col], table.c.id).order_by(table.c[key_col])).all()
    known = {k: i for k, i in rows}
    if not keys:
        return list(known.items())
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise UnknownScaffoldingKeyError(
            f"unknown {what} key(s) {unknown}; known {what} keys: {sorted(known)}"
        )
    return [(k, known[k]) for k in dict.fromkeys(keys)]


def plan_batch(
    engine: Engine,
    *,
    selection: BatchSelection,
    model: str,
    mode: str,
    created_by: str,
    name: str | None = None,
    combinations: list[tuple[str, str, str]] | None = None,
) -> tuple[str, int]:
    """Write a batch_jobs row and its items (scaffolding IDs fixed now, design rule 1).

    `combinations` (persona, arc, topic ids) overrides the key selection (coverage batches)."""
    batch_id = str(uuid.uuid4())
    with engine.begin() as conn:
        template_id = conn.execute(
            sa.select(t.prompt_templates.c.id).where(t.prompt_templates.c.tier == selection.tier)
        ).scalar()
        if template_id is None:
            raise UnknownScaffoldingKeyError(f"no prompt template for tier {selection.tier!r}")
        if combinations is None:
            personas = _resolve_keys(conn, t.personas, "persona_key", selection.persona_keys, "persona")
            arcs = _resolve_keys(conn, t.emotional_arcs, "arc_key", selection.arc_keys, "emotional arc")
            topics = _resolve_keys(conn, t.training_topics, "topic_key", selection.topic_keys, "training topic")
            combinations = [(p[1], a[1], x[1]) for p, a, x in itertools.product(personas, arcs, topics)]
        combos = [c for c in combinations for _ in range(selection.conversations_per_combination)]
        if not combos:
            raise EmptySelectionError("the selection plans no items (no scaffolding matches; run `lora-assets init`?)")
        conn.execute(
            sa.insert(t.batch_jobs).values(
                id=batch_id,
                name=name or f"batch-{now():%Y%m%d-%H%M%S}",
                status=BatchJobStatus.QUEUED,
                tier=selection.tier,
                model=model,
                mode=mode,
                selection=selection.model_dump(mode="json"),
                total_items=len(combos),
                created_by=created_by,
            )
        )
        conn.execute(
            sa.insert(t.batch_items),
            [
                {
                    "id": str(uuid.uuid4()),
                    "batch_job_id": batch_id,
                    "position": pos,
                    "persona_id": p,
                    "emotional_arc_id": a,
                    "training_topic_id": x,
                    "prompt_template_id": template_id,
                    "tier": selection.tier,
                }
                for pos, (p, a, x) in enumerate(combos)
            ],
        )
    return batch_id, len(combos)


def coverage_counts(conn: Connection, *, by: str = "key") -> dict[tuple[str, str, str], int]:
    """Generated conversations per (persona, arc, topic), keyed by scaffolding key (or id)."""
    c = t.conversations
    q = sa.select(c.c.persona_id, c.c.emotional_arc_id, c.c.training_topic_id, sa.func.count()).group_by(
        c.c.persona_id, c.c.emotional_arc_id, c.c.training_topic_id
    )
    counts = {(p, a, x): n for p, a, x, n in conn.execute(q) if p and a and x}
    if by == "id":
        return counts
    pk = dict(conn.execute(sa.select(t.personas.c.id, t.personas.c.persona_key)).all())
    ak = dict(conn.execute(sa.select(t.emotional_arcs.c.id, t.emotional_arcs.c.arc_key)).all())
    tk = dict(conn.execute(sa.select(t.training_topics.c.id, t.training_topics.c.topic_key)).all())
    return {(pk.get(p, p), ak.get(a, a), tk.get(x, x)): n for (p, a, x), n in counts.items()}


def least_covered_combinations(conn: Connection, size: int) -> list[tuple[str, str, str]]:
    """The `size` persona×arc×topic id combinations with the fewest conversations (planned
    pending items count too, so two nightly runs do not pick the same gaps)."""
    have = Counter(coverage_counts(conn, by="id"))
    i = t.batch_items
    pending = conn.execute(
        sa.select(i.c.persona_id, i.c.emotional_arc_id, i.c.training_topic_id, sa.func.count())
        .where(i.c.status.in_([ItemStatus.PENDING, ItemStatus.SUBMITTED]))
        .group_by(i.c.persona_id, i.c.emotional_arc_id, i.c.training_topic_id)
    )
    for p, a, x, n in pending:
        have[(p, a, x)] += n
    ids = [
        [r[0] for r in conn.execute(sa.select(tbl.c.id).order_by(tbl.c.id))]
        for tbl in (t.personas, t.emotional_arcs, t.training_topics)
    ]
    combos = list(itertools.product(*ids))
    combos.sort(key=lambda c: (have.get(c, 0), c))
    return combos[:size]


# --- reading batches ---------------------------------------------------------------------


def get_batch(conn: Connection, batch_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(t.batch_jobs).where(t.batch_jobs.c.id == batch_id)).mappings().first()
    return dict(row) if row else None


def list_batches(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(t.batch_jobs).order_by(t.batch_jobs.c.created_at.desc())).mappings()
    return [dict(r) for r in rows]


def batches_in_status(conn: Connection, status: str) -> list[str]:
    return list(conn.scalars(sa.select(t.batch_jobs.c.id).where(t.batch_jobs.c.status == status)))


def set_batch_status(conn: Connection, batch_id: str, status: str, error: str | None = None) -> None:
    conn.execute(
        sa.update(t.batch_jobs).where(t.batch_jobs.c.id == batch_id).values(status=status, error=error, updated_at=now())
    )


def batch_progress(conn: Connection, batch_id: str) -> dict[str, Any]:
    """Item counts by status plus parse / enrichment counts of the batch's conversations."""
    items = dict(
        conn.execute(
            sa.select(t.batch_items.c.status, sa.func.count())
            .where(t.batch_items.c.batch_job_id == batch_id)
            .group_by(t.batch_items.c.status)
        ).all()
    )
    c = t.conversations
    parse = dict(
        conn.execute(
            sa.select(c.c.parse_status, sa.func.count()).where(c.c.batch_job_id == batch_id).group_by(c.c.parse_status)
        ).all()
    )
    enrich = dict(
        conn.execute(
            sa.select(c.c.enrichment_status, sa.func.count())
            .where(c.c.batch_job_id == batch_id)
            .group_by(c.c.enrichment_status)
        ).all()
    )
    totals = conn.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(c.c.input_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.c.output_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.c.cache_read_input_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.c.cache_creation_input_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.c.cost_usd), 0.0),
        ).where(c.c.batch_job_id == batch_id)
    ).one()
    return {
        "items": {s.value: int(items.get(s.value, 0)) for s in ItemStatus},
        "parse": {s.value: int(parse.get(s.value, 0)) for s in ParseStatus},
        "enrichment": {s.value: int(enrich.get(s.value, 0)) for s in EnrichmentStatus},
        "input_tokens": int(totals[0]),
        "output_tokens": int(totals[1]),
        "cache_read_input_tokens": int(totals[2]),
        "cache_creation_input_tokens": int(totals[3]),
        "cost_usd": float(totals[4]),
    }


def batch_generators(conn: Connection, batch_id: str) -> list[str]:
    """Which generators (claude / simulator) produced the batch's stored conversations."""
    c = t.conversations
    q = sa.select(c.c.generator).where(c.c.batch_job_id == batch_id, c.c.generator.is_not(None)).distinct()
    return sorted(conn.scalars(q))


def item_failures(conn: Connection, batch_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(t.batch_items.c.id, t.batch_items.c.position, t.batch_items.c.attempts, t.batch_items.c.error)
        .where(t.batch_items.c.batch_job_id == batch_id, t.batch_items.c.status == ItemStatus.FAILED)
        .order_by(t.batch_items.c.position)
    ).mappings()
    return [dict(r) for r in rows]


def items_to_generate(conn: Connection, batch_id: str, *, include_submitted: bool = False) -> list[BatchItemPlan]:
    """Items without a stored conversation: pending and failed (failures are retried on re-run);
    submitted ones only when asked (in Batches mode they are resumed by polling instead)."""
    statuses = [ItemStatus.PENDING, ItemStatus.FAILED] + ([ItemStatus.SUBMITTED] if include_submitted else [])
    rows = conn.execute(
        sa.select(t.batch_items)
        .where(t.batch_items.c.batch_job_id == batch_id, t.batch_items.c.status.in_(statuses))
        .order_by(t.batch_items.c.position)
    ).mappings()
    return [BatchItemPlan.model_validate(dict(r)) for r in rows]


def resolve_items(conn: Connection, items: Iterable[BatchItemPlan]) -> dict[str, ResolvedScaffolding]:
    """Scaffolding of each item, from the IDs fixed at planning time."""
    return _resolve(conn, [(i.id, i.persona_id, i.emotional_arc_id, i.training_topic_id, i.prompt_template_id) for i in items])


def resolve_conversations(conn: Connection, rows: Iterable[dict[str, Any]]) -> dict[str, ResolvedScaffolding]:
    """Scaffolding of each conversation row (by its id), read from the DB by the IDs on the row."""
    return _resolve(
        conn,
        [(r["id"], r["persona_id"], r["emotional_arc_id"], r["training_topic_id"], r["prompt_template_id"]) for r in rows],
    )


def _resolve(conn: Connection, entries: list[tuple[str, str, str, str, str | None]]) -> dict[str, ResolvedScaffolding]:
    # Four queries for the whole set, whatever its size.
    personas = scaffolding_by_id(conn, (e[1] for e in entries), "personas")
    arcs = scaffolding_by_id(conn, (e[2] for e in entries), "emotional_arcs")
    topics = scaffolding_by_id(conn, (e[3] for e in entries), "training_topics")
    templates = scaffolding_by_id(conn, (e[4] for e in entries if e[4]), "prompt_templates")
    return {
        key: ResolvedScaffolding(
            persona=personas[p], emotional_arc=arcs[a], training_topic=topics[t], prompt_template=templates.get(tpl)
        )
        for key, p, a, t, tpl in entries
    }


# --- generation ledger --------------------------------------------------------------------


class SqlLedger:
    """The generation runner's ledger over the domain DB + blob store.

    record_success writes raw.json (the API response as returned, plus what we know about the
    call) at a key derived from the item id, then the conversations row and the item status in
    one transaction. The UNIQUE batch_item_id makes a second store of the same item impossible,
    even from a concurrent run; `recover_stored_raw` turns a blob orphaned by a crash between
    the two writes into its row, so it is never bought again."""

    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        batch_job_id: str,
        user_id: str,
        scaffolding: dict[str, ResolvedScaffolding] | None = None,
    ) -> None:
        self.engine = engine
        # Item id -> its resolved scaffolding (the snapshot stored on the row); looked up when absent.
        self.scaffolding = dict(scaffolding or {})
        self.blobs = blobs
        self.batch_job_id = batch_job_id
        self.user_id = user_id
        self.stored = 0
        self.duplicates = 0

    def _item(self, conn: Connection, item_id: str) -> dict[str, Any]:
        row = conn.execute(sa.select(t.batch_items).where(t.batch_items.c.id == item_id)).mappings().one()
        return dict(row)

    def raw_key(self, item_id: str) -> str:
        return conversation_key(self.user_id, conversation_id_for(item_id), "raw.json")

    def record_success(self, item_id: str, record: GenerationRecord) -> bool:
        key = self.raw_key(item_id)
        payload = {
            "response": record.response,
            "generation": record.model_dump(mode="json", exclude={"response"})
            | {"stored_at": now().isoformat(), "batch_job_id": self.batch_job_id},
        }
        if self.blobs.put_if_absent(key, json.dumps(payload, ensure_ascii=False).encode()):
            # Our blob is the item's stored answer. If a concurrent run already inserted the row,
            # it did so from this very blob: either way the item is stored as OUR answer.
            self._insert_row(item_id, record, key)
            self.stored += 1
            return True
        # Another run (or one that crashed) already stored an answer for this item: that stored
        # answer is the item's truth, so the row describes it, and this response is a duplicate.
        self._insert_row(item_id, self._stored_record(key), key)
        self.duplicates += 1
        return False

    def _stored_record(self, key: str) -> GenerationRecord:
        payload = json.loads(self.blobs.get_bytes(key))
        return GenerationRecord.model_validate(payload["generation"] | {"response": payload["response"]})

    def _insert_row(self, item_id: str, record: GenerationRecord, key: str) -> bool:
        conv_id = conversation_id_for(item_id)
        try:
            with self.engine.begin() as conn:
                item = self._item(conn, item_id)
                scaffolding = self.scaffolding.get(item_id) or resolve_items(
                    conn, [BatchItemPlan.model_validate(item)]
                )[item_id]
                conn.execute(
                    sa.insert(t.conversations).values(
                        id=conv_id,
                        batch_job_id=self.batch_job_id,
                        batch_item_id=item_id,
                        user_id=self.user_id,
                        persona_id=item["persona_id"],
                        emotional_arc_id=item["emotional_arc_id"],
                        training_topic_id=item["training_topic_id"],
                        prompt_template_id=item["prompt_template_id"],
                        tier=item["tier"],
                        scaffolding_snapshot=scaffolding.model_dump(mode="json"),
                        model=record.model,
                        generator=record.generator,
                        stop_reason=record.stop_reason,
                        request_id=record.request_id,
                        input_tokens=record.usage.input_tokens,
                        output_tokens=record.usage.output_tokens,
                        cache_creation_input_tokens=record.usage.cache_creation_input_tokens,
                        cache_read_input_tokens=record.usage.cache_read_input_tokens,
                        cost_usd=record.cost_usd,
                        raw_response_path=key,
                    )
                )
                conn.execute(
                    sa.update(t.batch_items)
                    .where(t.batch_items.c.id == item_id)
                    .values(
                        status=ItemStatus.GENERATED,
                        error=None,
                        conversation_id=conv_id,
                        attempts=t.batch_items.c.attempts + 1,
                        updated_at=now(),
                    )
                )
        except IntegrityError:
            return False
        return True

    def recover_stored_raw(self, item_ids: Iterable[str]) -> list[str]:
        """Rows for raw blobs that were stored but whose DB step a crash cut off. Returns the
        recovered item ids (they must not be requested again)."""
        recovered = []
        for item_id in item_ids:
            key = self.raw_key(item_id)
            if not self.blobs.exists(key):
                continue
            if self._insert_row(item_id, self._stored_record(key), key):
                self.stored += 1
                recovered.append(item_id)
        return recovered

    def record_failure(self, item_id: str, kind: str, reason: str, attempts: int, cost_usd: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(t.batch_items)
                .where(t.batch_items.c.id == item_id, t.batch_items.c.status != ItemStatus.GENERATED)
                .values(
                    status=ItemStatus.FAILED,
                    error=f"{kind}: {reason}",
                    attempts=t.batch_items.c.attempts + attempts,
                    updated_at=now(),
                )
            )

    def record_provider_batch(self, provider_batch_id: str, item_ids: list[str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(t.provider_batches).values(
                    id=provider_batch_id, batch_job_id=self.batch_job_id, status="in_progress", item_ids=item_ids
                )
            )
            conn.execute(
                sa.update(t.batch_items)
                .where(t.batch_items.c.id.in_(item_ids), t.batch_items.c.status != ItemStatus.GENERATED)
                .values(status=ItemStatus.SUBMITTED, updated_at=now())
            )

    def open_provider_batches(self) -> list[tuple[str, list[str]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.provider_batches.c.id, t.provider_batches.c.item_ids)
                .where(
                    t.provider_batches.c.batch_job_id == self.batch_job_id,
                    t.provider_batches.c.status == "in_progress",
                )
                .order_by(t.provider_batches.c.created_at)
            ).all()
        return [(r[0], list(r[1])) for r in rows]

    def close_provider_batch(self, provider_batch_id: str, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(t.provider_batches)
                .where(t.provider_batches.c.id == provider_batch_id)
                .values(status=status, updated_at=now())
            )


# --- parse / enrich bookkeeping -----------------------------------------------------------


def batch_conversations(conn: Connection, batch_id: str, **filters: Any) -> list[dict[str, Any]]:
    c = t.conversations
    q = sa.select(c).where(c.c.batch_job_id == batch_id)
    for col, value in filters.items():
        q = q.where(c.c[col].in_(value) if isinstance(value, (list, tuple, set)) else c.c[col] == value)
    return [dict(r) for r in conn.execute(q.order_by(c.c.id)).mappings()]


def update_conversation(conn: Connection, conversation_id: str, **values: Any) -> None:
    conn.execute(
        sa.update(t.conversations).where(t.conversations.c.id == conversation_id).values(**values, updated_at=now())
    )


def get_conversation(conn: Connection, conversation_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(t.conversations).where(t.conversations.c.id == conversation_id)).mappings().first()
    return dict(row) if row else None
