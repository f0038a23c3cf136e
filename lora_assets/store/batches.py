"""Batch jobs and their items: planning (scaffolding IDs fixed at planning time), coverage, and
reading a batch's state and progress."""

from __future__ import annotations

import heapq
import itertools
import re
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from lora_assets.schemas import (
    BatchItemPlan,
    BatchJobStatus,
    BatchSelection,
    ConsultantProfile,
    EnrichmentStatus,
    ItemStatus,
    ParseStatus,
    ResolvedScaffolding,
)
from lora_assets.store import tables as t
from lora_assets.store.common import now
from lora_assets.store.scaffolding import UnknownScaffoldingKeyError, plan_snapshot, resolve_keys, resolve_snapshot


class EmptySelectionError(ValueError):
    """A selection that plans no items."""


# --- planning -----------------------------------------------------------------------------


def selection_size(conn: Connection, persona_keys: Iterable[str], arc_keys: Iterable[str],
                   topic_keys: Iterable[str]) -> tuple[int, int, int]:
    """(personas, arcs, topics) a selection would plan, counted without planning: keys given count
    as given (distinct), an empty list as every row of its table."""
    def count(keys: Iterable[str], table: sa.Table) -> int:
        given = set(keys)
        return len(given) if given else conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0

    return count(persona_keys, t.personas), count(arc_keys, t.emotional_arcs), count(topic_keys, t.training_topics)


class PlanPreview(BaseModel):
    """What a selection would plan, read without writing: one resolved scaffolding per distinct
    combination (as it is now, i.e. as the plan's snapshot would fix it) and the consultant."""

    model_config = {"arbitrary_types_allowed": True}

    scaffolding: list[ResolvedScaffolding]
    consultant: ConsultantProfile


def _template_and_combinations(conn: Connection, selection: BatchSelection,
                               combinations: list[tuple[str, str, str]] | None) -> tuple[str, list[tuple[str, str, str]]]:
    template_id = conn.execute(
        sa.select(t.prompt_templates.c.id).where(t.prompt_templates.c.tier == selection.tier)
    ).scalar()
    if template_id is None:
        raise UnknownScaffoldingKeyError(f"no prompt template for tier {selection.tier!r}")
    if combinations is None:
        personas = resolve_keys(conn, t.personas, "persona_key", selection.persona_keys, "persona")
        arcs = resolve_keys(conn, t.emotional_arcs, "arc_key", selection.arc_keys, "emotional arc")
        topics = resolve_keys(conn, t.training_topics, "topic_key", selection.topic_keys, "training topic")
        combinations = [(p[1], a[1], x[1]) for p, a, x in itertools.product(personas, arcs, topics)]
    if not combinations:
        raise EmptySelectionError("the selection plans no items (no scaffolding matches; run `lora-assets init`?)")
    return template_id, combinations


def preview_plan(conn: Connection, selection: BatchSelection,
                 combinations: list[tuple[str, str, str]] | None = None) -> PlanPreview:
    """The scaffolding `plan_batch` would fix for `selection` (or for explicit `combinations`, as
    `plan_batch` takes them), one entry per distinct combination; UnknownScaffoldingKeyError /
    EmptySelectionError as `plan_batch` raises them. Writes nothing."""
    template_id, combos = _template_and_combinations(conn, selection, combinations)
    snapshot = plan_snapshot(conn, combos, template_id)
    if snapshot.get("consultant_profile") is None:
        raise EmptySelectionError("no consultant profile in the domain DB (materialise the scaffolding assets first)")
    resolved = resolve_snapshot(conn, [(str(i), p, a, x, template_id) for i, (p, a, x) in enumerate(combos)], snapshot)
    return PlanPreview(scaffolding=[resolved[str(i)] for i in range(len(combos))],
                       consultant=ConsultantProfile.model_validate(snapshot["consultant_profile"]))


def output_token_history(conn: Connection, *, tier: str, model: str) -> tuple[int, float] | None:
    """(count, mean output tokens) of stored conversations of `tier` and `model`, or None."""
    c = t.conversations
    n, mean = conn.execute(sa.select(sa.func.count(), sa.func.avg(c.c.output_tokens)).where(
        c.c.tier == tier, c.c.model == model, c.c.output_tokens > 0)).one()
    return (int(n), float(mean)) if n else None


_SLUG_UNSAFE = re.compile(r"[^a-z0-9]+")
_UUID_LIKE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-")


def slugify(name: str) -> str:
    """A partition-key-safe slug of `name`: lower-case ASCII letters, digits and dashes, ≤ 60
    characters ("Q4 Retirement – pilot" → "q4-retirement-pilot"). Never shaped like a batch id."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = _SLUG_UNSAFE.sub("-", ascii_name).strip("-")[:60].strip("-") or "batch"
    return f"b-{slug}" if _UUID_LIKE.match(slug) else slug


def _unique_slug(conn: Connection, name: str) -> str:
    base = slugify(name)
    taken = set(conn.scalars(sa.select(t.batch_jobs.c.slug).where(
        sa.or_(t.batch_jobs.c.slug == base, t.batch_jobs.c.slug.like(f"{base}-%")))))
    if base not in taken:
        return base
    return next(f"{base}-{n}" for n in itertools.count(2) if f"{base}-{n}" not in taken)


def plan_batch(
    engine: Engine,
    *,
    selection: BatchSelection,
    model: str,
    mode: str,
    created_by: str,
    name: str | None = None,
    combinations: list[tuple[str, str, str]] | None = None,
    estimate: dict[str, Any] | None = None,
    status: str = BatchJobStatus.QUEUED,
    pilot_items: int | None = None,
) -> tuple[str, int]:
    """Write a batch_jobs row and its items (scaffolding IDs fixed now, design rule 1), under a
    unique slug of its name (its partition key: `batch_key`). Returns (batch id, items).

    `combinations` (persona, arc, topic ids) overrides the key selection (coverage batches);
    `estimate` is the cost estimate made before planning, kept beside the actual cost; `status`
    is `planned` for a batch that waits for approval; `pilot_items` (kept in the selection) makes
    the first run generate only that many items, then wait for approval."""
    batch_id = str(uuid.uuid4())
    name = name or f"batch-{now():%Y%m%d-%H%M%S}"
    with engine.begin() as conn:
        template_id, combinations = _template_and_combinations(conn, selection, combinations)
        combos = [c for c in combinations for _ in range(selection.conversations_per_combination)]
        snapshot = plan_snapshot(conn, combos, template_id)
        conn.execute(
            sa.insert(t.batch_jobs).values(
                scaffolding_snapshot=snapshot,
                id=batch_id,
                name=name,
                slug=_unique_slug(conn, name),
                estimate=estimate,
                status=status,
                tier=selection.tier,
                model=model,
                mode=mode,
                selection=selection.model_dump(mode="json") | (
                    {"pilot_items": pilot_items, "approved": False} if pilot_items else {}),
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
    # The `size` smallest of the product, streamed: memory grows with `size`, not with the product
    # (1,000 personas × 8 arcs × 1,000 topics would otherwise be 8 million tuples in a list).
    return heapq.nsmallest(size, itertools.product(*ids), key=lambda c: (have.get(c, 0), c))


# --- reading batches ---------------------------------------------------------------------


def get_batch(conn: Connection, batch_id: str) -> dict[str, Any] | None:
    """The batch_jobs row, or None for an unknown id."""
    row = conn.execute(sa.select(t.batch_jobs).where(t.batch_jobs.c.id == batch_id)).mappings().first()
    return dict(row) if row else None


def list_batches(conn: Connection, *, with_snapshot: bool = True) -> list[dict[str, Any]]:
    """Every batch job, newest first; without their scaffolding snapshots (megabytes each) when
    `with_snapshot` is False."""
    b = t.batch_jobs
    columns = list(b.c) if with_snapshot else [c for c in b.c if c.name != "scaffolding_snapshot"]
    rows = conn.execute(sa.select(*columns).order_by(b.c.created_at.desc())).mappings()
    return [dict(r) for r in rows]


def batch_for_key(conn: Connection, key: str) -> dict[str, Any] | None:
    """The batch_jobs row (without its snapshot) whose partition key (slug) or id is `key`."""
    b = t.batch_jobs
    columns = [c for c in b.c if c.name != "scaffolding_snapshot"]
    row = conn.execute(sa.select(*columns).where(sa.or_(b.c.id == key, b.c.slug == key))
                       .order_by((b.c.id == key).desc())).mappings().first()
    return dict(row) if row else None


def batch_id_for_key(conn: Connection, key: str) -> str:
    """The id of the batch whose partition key or id is `key`; `key` itself when none matches
    (so the caller's own "does not exist" error names what the user gave)."""
    row = batch_for_key(conn, key)
    return row["id"] if row else key


def batch_key(conn: Connection, batch_id: str) -> str:
    """The partition key of a batch: its slug (its id for batches planned before slugs)."""
    return conn.scalar(sa.select(t.batch_jobs.c.slug).where(t.batch_jobs.c.id == batch_id)) or batch_id


def batches_in_status(conn: Connection, status: str) -> list[tuple[str, str]]:
    """(id, partition key) of the batches in `status`; the key is the slug, else the id."""
    rows = conn.execute(sa.select(t.batch_jobs.c.id, t.batch_jobs.c.slug).where(t.batch_jobs.c.status == status))
    return [(batch_id, slug or batch_id) for batch_id, slug in rows]


def queued_batches(conn: Connection) -> list[tuple[str, str, bool]]:
    """(id, partition key, after_pilot) of the batches approved to run (`queued`): after_pilot is
    True when the batch ran a pilot and was approved since (its second run is a new one)."""
    b = t.batch_jobs
    rows = conn.execute(sa.select(b.c.id, b.c.slug, b.c.selection).where(b.c.status == BatchJobStatus.QUEUED))
    return [(batch_id, slug or batch_id, bool((sel or {}).get("pilot_items") and (sel or {}).get("approved")))
            for batch_id, slug, sel in rows]


def set_batch_status(conn: Connection, batch_id: str, status: str, error: str | None = None) -> bool:
    """Set a batch's status (and error, cleared when None). A cancelled batch stays cancelled:
    the update is conditional in SQL, so a run closing the batch while a cancel lands cannot
    turn it back into completed. Returns whether the row changed."""
    b = t.batch_jobs
    query = sa.update(b).where(b.c.id == batch_id)
    if status != BatchJobStatus.CANCELLED:
        query = query.where(b.c.status != BatchJobStatus.CANCELLED)
    return conn.execute(query.values(status=status, error=error, updated_at=now())).rowcount > 0


def batch_status(conn: Connection, batch_id: str) -> str | None:
    """The batch's status now (one indexed read: the live run polls it for a cancel)."""
    return conn.scalar(sa.select(t.batch_jobs.c.status).where(t.batch_jobs.c.id == batch_id))


def update_batch_plan(conn: Connection, batch_id: str, *, selection: dict[str, Any] | None = None,
                      estimate: dict[str, Any] | None = None, status: str | None = None) -> None:
    """Rewrite a batch's selection / estimate JSON (approval, pilot results) and status (never a
    cancelled batch's)."""
    b = t.batch_jobs
    values: dict[str, Any] = {"updated_at": now()}
    if selection is not None:
        values["selection"] = selection
    if estimate is not None:
        values["estimate"] = estimate
    if status is not None:
        values["status"] = status
    conn.execute(sa.update(b).where(b.c.id == batch_id, b.c.status != BatchJobStatus.CANCELLED).values(**values))


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
    """Failed items of a batch (id, position, attempts, error), by position."""
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


def open_provider_batch_ids(conn: Connection, batch_id: str) -> list[str]:
    """Provider (Message Batches) ids of the batch's submissions still open at the provider."""
    pb = t.provider_batches
    return list(conn.scalars(sa.select(pb.c.provider_batch_id).where(
        pb.c.batch_job_id == batch_id, pb.c.status.in_(["submitting", "in_progress"]),
        pb.c.provider_batch_id.is_not(None)).order_by(pb.c.created_at)))
