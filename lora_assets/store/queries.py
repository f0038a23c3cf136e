"""Named queries over the domain DB: batch planning, generation ledger, stage bookkeeping."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from lora_assets.schemas import (
    BatchItemPlan,
    ConsultantProfile,
    BatchJobStatus,
    BatchSelection,
    EnrichmentStatus,
    GenerationRecord,
    ItemStatus,
    OpenSubmission,
    ParseStatus,
    ResolvedScaffolding,
)
from lora_assets.store import tables as t
from lora_assets.store.blobs import BlobStore, bounded_map
from lora_assets.store.db import read_consultant_profile, scaffolding_by_id

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


def sibling_key(key: str, name: str) -> str:
    """The key of file `name` next to `key` (e.g. a conversation's enriched.json beside its raw.json)."""
    return f"{key.rsplit('/', 1)[0]}/{name}"


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
        snapshot = _plan_snapshot(conn, combos, template_id)
        conn.execute(
            sa.insert(t.batch_jobs).values(
                scaffolding_snapshot=snapshot,
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


_SNAPSHOT_KINDS = ("personas", "emotional_arcs", "training_topics", "prompt_templates")


def _plan_snapshot(conn: Connection, combos: list[tuple[str, str, str]], template_id: str) -> dict[str, Any]:
    """The scaffolding rows a batch uses and the consultant profile, as they are now (design rule
    6: what is generated, parsed and enriched is the plan, whatever the tables say later)."""
    ids = [{c[k] for c in combos} for k in range(3)] + [{template_id}]
    snapshot: dict[str, Any] = {
        kind: {i: m.model_dump(mode="json") for i, m in scaffolding_by_id(conn, wanted, kind).items()}
        for kind, wanted in zip(_SNAPSHOT_KINDS, ids, strict=True)
    }
    consultant = read_consultant_profile(conn)
    snapshot["consultant_profile"] = consultant.model_dump(mode="json") if consultant else None
    return snapshot


def batch_consultant(conn: Connection, batch: dict[str, Any]) -> ConsultantProfile | None:
    """The consultant profile the batch was planned with (the current one for batches planned
    before snapshots existed)."""
    snap = batch.get("scaffolding_snapshot") or {}
    if snap.get("consultant_profile"):
        return ConsultantProfile.model_validate(snap["consultant_profile"])
    return read_consultant_profile(conn)


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


def list_batches(conn: Connection, *, with_snapshot: bool = True) -> list[dict[str, Any]]:
    """Every batch job, newest first; without their scaffolding snapshots (megabytes each) when
    `with_snapshot` is False."""
    b = t.batch_jobs
    columns = list(b.c) if with_snapshot else [c for c in b.c if c.name != "scaffolding_snapshot"]
    rows = conn.execute(sa.select(*columns).order_by(b.c.created_at.desc())).mappings()
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
    # Paid responses that stored nothing (duplicates, truncated / refused attempts): money too.
    pr = t.paid_requests
    extra = {o: (int(n), float(cost)) for o, n, cost in conn.execute(
        sa.select(pr.c.outcome, sa.func.count(), sa.func.coalesce(sa.func.sum(pr.c.cost_usd), 0.0))
        .where(pr.c.batch_job_id == batch_id, pr.c.outcome != "stored").group_by(pr.c.outcome))}
    duplicate_n, duplicate_cost = extra.get("duplicate", (0, 0.0))
    _, wasted_cost = extra.get("wasted", (0, 0.0))
    stored_n = int(conn.execute(sa.select(sa.func.count()).select_from(c).where(c.c.batch_job_id == batch_id)).scalar())
    return {
        "paid_responses": stored_n + duplicate_n,
        "duplicate_responses": duplicate_n,
        "duplicate_cost_usd": duplicate_cost,
        "wasted_cost_usd": wasted_cost,
        "stored_cost_usd": float(totals[4]),
        "items": {s.value: int(items.get(s.value, 0)) for s in ItemStatus},
        "parse": {s.value: int(parse.get(s.value, 0)) for s in ParseStatus},
        "enrichment": {s.value: int(enrich.get(s.value, 0)) for s in EnrichmentStatus},
        "input_tokens": int(totals[0]),
        "output_tokens": int(totals[1]),
        "cache_read_input_tokens": int(totals[2]),
        "cache_creation_input_tokens": int(totals[3]),
        "cost_usd": float(totals[4]) + duplicate_cost + wasted_cost,
    }


def batch_generators(conn: Connection, batch_id: str) -> list[str]:
    """Which generators (claude / simulator) produced the batch's stored conversations."""
    c = t.conversations
    q = sa.select(c.c.generator).where(c.c.batch_job_id == batch_id, c.c.generator.is_not(None)).distinct()
    return sorted(conn.scalars(q))


def items_held_by_live_runs(conn: Connection, batch_id: str) -> int:
    """Unfinished items of the batch whose claim is live: another run is generating them now."""
    i, lease = t.batch_items, t.leases
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(i.join(lease, lease.c.key == i.c.id))
        .where(i.c.batch_job_id == batch_id, i.c.status.in_([ItemStatus.PENDING, ItemStatus.SUBMITTED]),
               lease.c.expires_at > time.time())
    ).scalar())


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
    """Scaffolding of each item, from the IDs fixed at planning time, as it was at planning time
    (the batch's snapshot; the current rows only for batches planned before snapshots existed)."""
    items = list(items)
    snapshots: dict[str, dict[str, Any] | None] = {}
    for batch_id in {i.batch_job_id for i in items}:
        snapshots[batch_id] = conn.execute(
            sa.select(t.batch_jobs.c.scaffolding_snapshot).where(t.batch_jobs.c.id == batch_id)).scalar()
    out: dict[str, ResolvedScaffolding] = {}
    for batch_id, snap in snapshots.items():
        entries = [(i.id, i.persona_id, i.emotional_arc_id, i.training_topic_id, i.prompt_template_id)
                   for i in items if i.batch_job_id == batch_id]
        out.update(_resolve(conn, entries, snap))
    return out


def resolve_conversations(conn: Connection, rows: Iterable[dict[str, Any]]) -> dict[str, ResolvedScaffolding]:
    """Scaffolding of each conversation row (by its id): the snapshot stored on the row when it was
    generated; the current rows by the row's IDs only for conversations stored without one."""
    out: dict[str, ResolvedScaffolding] = {}
    legacy = []
    # Rows of one batch planned from the same scaffolding carry equal snapshots: validate each once.
    seen: dict[tuple[Any, ...], ResolvedScaffolding] = {}
    for r in rows:
        if r.get("scaffolding_snapshot"):
            same = (r.get("batch_job_id"), r["persona_id"], r["emotional_arc_id"], r["training_topic_id"],
                    r.get("prompt_template_id"))
            if same not in seen:
                seen[same] = ResolvedScaffolding.model_validate(r["scaffolding_snapshot"])
            out[r["id"]] = seen[same]
        else:
            legacy.append((r["id"], r["persona_id"], r["emotional_arc_id"], r["training_topic_id"], r["prompt_template_id"]))
    out.update(_resolve(conn, legacy))
    return out


def _resolve(conn: Connection, entries: list[tuple[str, str, str, str, str | None]],
             snapshot: dict[str, Any] | None = None) -> dict[str, ResolvedScaffolding]:
    if not entries:
        return {}
    if snapshot:
        personas, arcs, topics, templates = (snapshot.get(kind) or {} for kind in _SNAPSHOT_KINDS)
        # One object per combination, shared by its items: a batch's memory does not grow with
        # conversations per combination.
        combos: dict[tuple[str, str, str, str | None], ResolvedScaffolding] = {}
        out: dict[str, ResolvedScaffolding] = {}
        for key, p, a, x, tpl in entries:
            if (p, a, x, tpl) not in combos:
                combos[(p, a, x, tpl)] = ResolvedScaffolding.model_validate({
                    "persona": personas[p], "emotional_arc": arcs[a], "training_topic": topics[x],
                    "prompt_template": templates.get(tpl) if tpl else None})
            out[key] = combos[(p, a, x, tpl)]
        return out
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


def _chunks(ids: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _insert_ignore(conn: Connection, table: sa.Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for the connection's dialect."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


class SqlClaims:
    """Leases in the `leases` table, shared by generation and the judge.

    One upsert claims a set of keys atomically on PostgreSQL and SQLite alike: a key is inserted,
    or taken over when its lease has expired or is already ours; a key another live run holds
    is left alone (and not returned). On PostgreSQL a concurrent claim of the same key waits for
    the other transaction and then sees its lease, so two runs never both hold one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def take(self, keys: list[str], run_id: str, ttl_s: float) -> set[str]:
        """Claim `keys`; return those this run now holds."""
        now = time.time()
        held: set[str] = set()
        with self.engine.begin() as conn:
            # Sorted: every run locks keys in the same order, so two claims never deadlock on PostgreSQL.
            for chunk in _chunks(sorted(set(keys))):
                stmt = _insert_ignore(conn, t.leases).values(
                    [{"key": k, "run_id": run_id, "expires_at": now + ttl_s} for k in chunk])
                stmt = stmt.on_conflict_do_update(
                    index_elements=[t.leases.c.key],
                    set_={"run_id": stmt.excluded.run_id, "expires_at": stmt.excluded.expires_at},
                    where=(t.leases.c.expires_at < now) | (t.leases.c.run_id == stmt.excluded.run_id),
                ).returning(t.leases.c.key)
                held.update(conn.scalars(stmt))
        return held

    def drop(self, keys: Iterable[str], run_id: str) -> None:
        """Release some of this run's leases."""
        keys = list(keys)
        with self.engine.begin() as conn:
            for chunk in _chunks(keys):
                conn.execute(sa.delete(t.leases).where(t.leases.c.key.in_(chunk), t.leases.c.run_id == run_id))

    def renew(self, run_id: str, ttl_s: float) -> None:
        """Extend every lease of `run_id`."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.leases).where(t.leases.c.run_id == run_id).values(expires_at=time.time() + ttl_s))

    def release(self, run_id: str) -> None:
        """End every lease of `run_id`. The rows stay (expired): a key that was ever claimed may
        have a paid answer in storage, and recovery looks only at such keys."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.leases).where(t.leases.c.run_id == run_id).values(expires_at=0.0))

    def ever_claimed(self, keys: Iterable[str]) -> set[str]:
        """The keys that some run has claimed (and so may have requested)."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(keys))):
                found.update(conn.scalars(sa.select(t.leases.c.key).where(t.leases.c.key.in_(chunk))))
        return found


class SqlLedger:
    """The generation runner's ledger over the domain DB + blob store (thread-safe: the runner
    calls it from worker threads).

    record_success writes raw.json (the API response as returned, plus what we know about the
    call) at a key derived from the item id, then the conversations row, the item status and the
    paid-request row in one transaction. The UNIQUE batch_item_id makes a second store of the
    same item impossible, even from a concurrent run; `recover_stored_raw` turns a blob orphaned
    by a crash between the two writes into its row, so it is never bought again. Every paid
    response lands in `paid_requests` (stored / duplicate / wasted), which is what a batch cost."""

    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        batch_job_id: str,
        user_id: str,
        scaffolding: dict[str, ResolvedScaffolding] | None = None,
    ) -> None:
        self.engine = engine
        # Item id -> its resolved scaffolding (the planning snapshot stored on the row); looked up when absent.
        self.scaffolding = dict(scaffolding or {})
        self.blobs = blobs
        self.batch_job_id = batch_job_id
        self.user_id = user_id
        self.claims = SqlClaims(engine)
        self._lock = threading.Lock()
        self.stored = 0
        self.duplicates = 0

    def _item(self, conn: Connection, item_id: str) -> dict[str, Any]:
        row = conn.execute(sa.select(t.batch_items).where(t.batch_items.c.id == item_id)).mappings().one()
        return dict(row)

    def raw_key(self, item_id: str) -> str:
        return conversation_key(self.user_id, conversation_id_for(item_id), "raw.json")

    # --- claims ----------------------------------------------------------------------------------

    def claim(self, item_ids: list[str], run_id: str, ttl_s: float) -> dict[str, str]:
        """Lease the items; an item already generated is reported "stored" (and not kept leased)."""
        held = self.claims.take(item_ids, run_id, ttl_s)
        stored: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(held)):
                stored.update(conn.scalars(sa.select(t.batch_items.c.id).where(
                    t.batch_items.c.id.in_(chunk), t.batch_items.c.status == ItemStatus.GENERATED)))
        if stored:
            self.claims.drop(stored, run_id)
        return {i: "stored" if i in stored else "held" if i in held else "claimed" for i in item_ids}

    def renew_claims(self, run_id: str, ttl_s: float) -> None:
        self.claims.renew(run_id, ttl_s)

    def release_claims(self, run_id: str) -> None:
        self.claims.release(run_id)

    # --- outcomes --------------------------------------------------------------------------------

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
            self._insert_row(item_id, record, key, paid=record)
            with self._lock:
                self.stored += 1
            return True
        # An answer is stored already: this one (a retry whose COMMIT reply was lost, a spool
        # replay, results re-read), or another run's, which is then the item's truth; the row
        # describes the stored answer either way.
        stored = self._stored_record(key)
        self._insert_row(item_id, stored, key, paid=stored)
        if stored.response.get("id") == record.response.get("id"):
            return True  # this very answer is the stored one
        self._record_paid(record, "duplicate", record.cost_usd)
        with self._lock:
            self.duplicates += 1
        return False

    def _stored_record(self, key: str) -> GenerationRecord:
        payload = json.loads(self.blobs.get_bytes(key))
        return GenerationRecord.model_validate(payload["generation"] | {"response": payload["response"]})

    def _paid_rows(self, record: GenerationRecord, outcome: str, cost: float) -> list[dict[str, Any]]:
        message_id = str(record.response.get("id") or uuid.uuid4())
        rows = [{"id": message_id, "batch_job_id": self.batch_job_id, "item_id": record.batch_item_id,
                 "outcome": outcome, "cost_usd": cost}]
        wasted = float(record.extra.get("wasted_cost_usd") or 0.0)
        if wasted > 0 and outcome == "stored":
            # Truncated / refused attempts before this answer: paid, stored nowhere else.
            rows.append({"id": f"waste:{message_id}", "batch_job_id": self.batch_job_id,
                         "item_id": record.batch_item_id, "outcome": "wasted", "cost_usd": wasted})
        return rows

    def _record_paid(self, record: GenerationRecord, outcome: str, cost: float, conn: Connection | None = None) -> None:
        rows = self._paid_rows(record, outcome, cost)
        if conn is None:
            with self.engine.begin() as c:
                c.execute(_insert_ignore(c, t.paid_requests).values(rows).on_conflict_do_nothing())
        else:
            conn.execute(_insert_ignore(conn, t.paid_requests).values(rows).on_conflict_do_nothing())

    def _insert_row(self, item_id: str, record: GenerationRecord, key: str, paid: GenerationRecord | None = None) -> bool:
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
                if paid is not None:
                    self._record_paid(paid, "stored", paid.cost_usd, conn)
        except IntegrityError:
            return False
        return True

    def recover_stored_raw(self, item_ids: Iterable[str], workers: int = 32) -> list[str]:
        """Rows for raw blobs that were stored but whose DB step a crash cut off. Returns the
        recovered item ids (they must not be requested again). Only items some run has claimed
        can have been requested (a claim is taken before any request), so only their blobs are
        looked for: a fresh partition costs no storage request at all."""
        candidates = sorted(self.claims.ever_claimed(item_ids))
        if not candidates:
            return []
        with ThreadPoolExecutor(workers, thread_name_prefix="recover") as pool:
            found = []
            for item_id, there in bounded_map(pool, lambda i: self.blobs.exists(self.raw_key(i)), candidates, 2 * workers):
                if isinstance(there, BaseException):
                    raise there  # not knowing is not "absent": requesting it again could pay twice
                if there:
                    found.append(item_id)
        recovered = []
        for item_id in found:
            key = self.raw_key(item_id)
            stored = self._stored_record(key)
            if self._insert_row(item_id, stored, key, paid=stored):
                with self._lock:
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
            if cost_usd > 0:
                conn.execute(sa.insert(t.paid_requests).values(
                    id=f"failed:{uuid.uuid4().hex}", batch_job_id=self.batch_job_id, item_id=item_id,
                    outcome="wasted", cost_usd=cost_usd))

    # --- Message Batches bookkeeping -------------------------------------------------------------

    def record_intent(self, token: str, item_ids: list[str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(t.provider_batches).values(
                id=token, batch_job_id=self.batch_job_id, status="submitting", item_ids=item_ids))

    def record_provider_batch(self, token: str, provider_batch_id: str) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t.provider_batches.c.item_ids).where(t.provider_batches.c.id == token)).one()
            conn.execute(sa.update(t.provider_batches).where(t.provider_batches.c.id == token)
                         .values(provider_batch_id=provider_batch_id, status="in_progress", updated_at=now()))
            for chunk in _chunks(list(row[0])):
                conn.execute(
                    sa.update(t.batch_items)
                    .where(t.batch_items.c.id.in_(chunk), t.batch_items.c.status != ItemStatus.GENERATED)
                    .values(status=ItemStatus.SUBMITTED, updated_at=now())
                )

    def open_provider_batches(self) -> list[OpenSubmission]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.provider_batches.c.id, t.provider_batches.c.item_ids, t.provider_batches.c.created_at,
                          t.provider_batches.c.provider_batch_id)
                .where(
                    t.provider_batches.c.batch_job_id == self.batch_job_id,
                    t.provider_batches.c.status.in_(["submitting", "in_progress"]),
                )
                .order_by(t.provider_batches.c.created_at)
            ).all()
        return [OpenSubmission(token=r[0], item_ids=list(r[1]), created_at=_epoch(r[2]), provider_batch_id=r[3])
                for r in rows]

    def close_provider_batch(self, token: str, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(t.provider_batches)
                .where(t.provider_batches.c.id == token)
                .values(status=status, updated_at=now())
            )


def _epoch(value: datetime) -> float:
    # SQLite hands back naive datetimes (stored as UTC by func.now()).
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


# --- parse / enrich bookkeeping -----------------------------------------------------------


def batch_conversations(conn: Connection, batch_id: str, *, columns: Iterable[str] | None = None,
                        **filters: Any) -> list[dict[str, Any]]:
    """Rows of a batch's conversations (only `columns` when given: a whole partition's rows with
    their scaffolding snapshots are large), filtered by column values."""
    c = t.conversations
    q = (sa.select(*(c.c[name] for name in columns)) if columns else sa.select(c)).where(c.c.batch_job_id == batch_id)
    for col, value in filters.items():
        q = q.where(c.c[col].in_(value) if isinstance(value, (list, tuple, set)) else c.c[col] == value)
    return [dict(r) for r in conn.execute(q.order_by(c.c.id)).mappings()]


def iter_batch_conversations(engine: Engine, batch_id: str, page_size: int = 500,
                             **filters: Any) -> Iterator[list[dict[str, Any]]]:
    """`batch_conversations` a page at a time (keyset by id, a short connection per page), so a
    stage never holds a whole partition's rows. Rows updated behind the cursor are not seen again."""
    c = t.conversations
    after = ""
    while True:
        stmt = sa.select(c).where(c.c.batch_job_id == batch_id, c.c.id > after)
        for col, value in filters.items():
            stmt = stmt.where(c.c[col].in_(value) if isinstance(value, (list, tuple, set)) else c.c[col] == value)
        with engine.connect() as conn:
            page = [dict(r) for r in conn.execute(stmt.order_by(c.c.id).limit(page_size)).mappings()]
        if not page:
            return
        yield page
        after = page[-1]["id"]


def update_conversation(conn: Connection, conversation_id: str, **values: Any) -> None:
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


def get_conversation(conn: Connection, conversation_id: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(t.conversations).where(t.conversations.c.id == conversation_id)).mappings().first()
    return dict(row) if row else None
