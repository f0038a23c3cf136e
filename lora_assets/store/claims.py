"""Leases and the generation ledger: which run holds which item, and every paid answer stored
exactly once (its raw blob, its conversations row, its paid_requests row)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from lora_assets.schemas import BatchItemPlan, GenerationRecord, ItemStatus, OpenSubmission, ResolvedScaffolding
from lora_assets.store import tables as t
from lora_assets.store.blobs import BlobStore, bounded_map
from lora_assets.store.common import chunks, conversation_id_for, conversation_key, insert_ignore, now
from lora_assets.store.scaffolding import resolve_items


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
            for chunk in chunks(sorted(set(keys))):
                stmt = insert_ignore(conn, t.leases).values(
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
            for chunk in chunks(keys):
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
            for chunk in chunks(sorted(set(keys))):
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
        """The blob key of the item's raw.json (derived from the item id, so a re-run finds it)."""
        return conversation_key(self.user_id, conversation_id_for(item_id), "raw.json")

    # --- claims ----------------------------------------------------------------------------------

    def claim(self, item_ids: list[str], run_id: str, ttl_s: float) -> dict[str, str]:
        """Lease the items; an item already generated is reported "stored" (and not kept leased)."""
        held = self.claims.take(item_ids, run_id, ttl_s)
        stored: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(held)):
                stored.update(conn.scalars(sa.select(t.batch_items.c.id).where(
                    t.batch_items.c.id.in_(chunk), t.batch_items.c.status == ItemStatus.GENERATED)))
        if stored:
            self.claims.drop(stored, run_id)
        return {i: "stored" if i in stored else "held" if i in held else "claimed" for i in item_ids}

    def renew_claims(self, run_id: str, ttl_s: float) -> None:
        """Extend every lease of `run_id` by `ttl_s`."""
        self.claims.renew(run_id, ttl_s)

    def release_claims(self, run_id: str) -> None:
        """End every lease of `run_id` (the rows stay, expired: see SqlClaims.release)."""
        self.claims.release(run_id)

    # --- outcomes --------------------------------------------------------------------------------

    def record_success(self, item_id: str, record: GenerationRecord) -> bool:
        """Store a paid answer: raw.json if none is stored yet, then its row; True when this answer is
        the item's stored one, False when another was (this one is then a paid duplicate)."""
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
                c.execute(insert_ignore(c, t.paid_requests).values(rows).on_conflict_do_nothing())
        else:
            conn.execute(insert_ignore(conn, t.paid_requests).values(rows).on_conflict_do_nothing())

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
        """Mark the item failed with `kind: reason` (unless already generated); money spent on it is
        recorded as wasted."""
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
        """Before submitting a Message Batch: which items it will hold, under a token of ours."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(t.provider_batches).values(
                id=token, batch_job_id=self.batch_job_id, status="submitting", item_ids=item_ids))

    def record_provider_batch(self, token: str, provider_batch_id: str) -> None:
        """After submitting: the provider's batch id; its items become `submitted`."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t.provider_batches.c.item_ids).where(t.provider_batches.c.id == token)).one()
            conn.execute(sa.update(t.provider_batches).where(t.provider_batches.c.id == token)
                         .values(provider_batch_id=provider_batch_id, status="in_progress", updated_at=now()))
            for chunk in chunks(list(row[0])):
                conn.execute(
                    sa.update(t.batch_items)
                    .where(t.batch_items.c.id.in_(chunk), t.batch_items.c.status != ItemStatus.GENERATED)
                    .values(status=ItemStatus.SUBMITTED, updated_at=now())
                )

    def open_provider_batches(self) -> list[OpenSubmission]:
        """This batch job's Message Batches still submitting or in progress, oldest first."""
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
        """Record the final status of a Message Batch."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(t.provider_batches)
                .where(t.provider_batches.c.id == token)
                .values(status=status, updated_at=now())
            )


def _epoch(value: datetime) -> float:
    # SQLite hands back naive datetimes (stored as UTC by func.now()).
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
