"""Where a run's outcomes and claims go: the ledger protocols and an in-memory ledger.

The runner calls a ledger from worker threads (blob and DB writes must not stall the event
loop), so implementations are thread-safe. Three duties, each one protocol:

- `Ledger` (both modes and the judge): claim items before requesting them, store whole answers
  once, record failures with their reason.
- `BatchLedger` (Message Batches mode): the intent to submit, recorded before `batches.create`,
  then the provider batch id; open submissions are resumed or reconciled by the next run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from lora_assets.schemas.rows import GenerationRecord, OpenSubmission

__all__ = ["BatchLedger", "Ledger", "MemoryLedger", "OpenSubmission"]


@runtime_checkable
class Ledger(Protocol):
    """Claims and outcomes of items (the domain DB in production)."""

    def claim(self, item_ids: list[str], run_id: str, ttl_s: float) -> dict[str, str]:
        """Take a lease on each item not leased by another live run and not yet stored. Returns
        each id's outcome: "held" (this run may request it), "stored" (already generated), or
        "claimed" (another live run holds it). A lease of a dead run (expired) is taken over."""
        ...

    def renew_claims(self, run_id: str, ttl_s: float) -> None:
        """Extend every lease `run_id` holds to now + `ttl_s`."""
        ...

    def release_claims(self, run_id: str) -> None:
        """Drop every lease `run_id` holds (the run ended)."""
        ...

    def record_success(self, item_id: str, record: GenerationRecord) -> bool:
        """Store the answer (raw blob + row) in one step. True when this answer is the item's
        stored answer (idempotent: storing it again, e.g. after a lost COMMIT reply or from the
        spool, returns True again); False when a different answer was stored first (a duplicate)."""
        ...

    def record_failure(self, item_id: str, kind: str, reason: str, attempts: int, cost_usd: float) -> None:
        """Mark the item failed with its kind, a readable reason, attempts made and money spent."""
        ...


@runtime_checkable
class BatchLedger(Ledger, Protocol):
    """The Message Batches bookkeeping on top of `Ledger`."""

    def record_intent(self, token: str, item_ids: list[str]) -> None:
        """Persist the intent to submit these items, BEFORE `batches.create` is called."""
        ...

    def record_provider_batch(self, token: str, provider_batch_id: str) -> None:
        """Attach the provider's batch id to its intent (right after create, before polling)."""
        ...

    def open_provider_batches(self) -> list[OpenSubmission]:
        """Submissions not yet closed, oldest first (intents without a provider id included)."""
        ...

    def close_provider_batch(self, token: str, status: str) -> None:
        """Close a submission: `ended`, `not_found`, or `abandoned` (create never happened)."""
        ...


@dataclass
class MemoryLedger:
    """Both protocols in memory (tests, benchmarks, dry runs). `successes`/`failures` keep the
    last outcome per item; `failure_log` every record_failure call; `submissions` token ->
    OpenSubmission; `leases` item -> (run id, expiry). Pass one `leases` dict to two ledgers to
    model two runs sharing a database."""

    successes: dict[str, GenerationRecord] = field(default_factory=dict)
    failures: dict[str, tuple[str, str, int, float]] = field(default_factory=dict)
    failure_log: list[tuple[str, str, str]] = field(default_factory=list)
    submissions: dict[str, OpenSubmission] = field(default_factory=dict)
    closed: dict[str, str] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)
    duplicate_successes: int = 0
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def claim(self, item_ids: list[str], run_id: str, ttl_s: float) -> dict[str, str]:
        """Lease what is free, expired or already ours, and not stored."""
        now = self.clock()
        with self._lock:
            out = {}
            for item_id in item_ids:
                owner = self.leases.get(item_id)
                if item_id in self.successes:
                    out[item_id] = "stored"
                elif owner and owner[0] != run_id and owner[1] > now:
                    out[item_id] = "claimed"
                else:
                    self.leases[item_id] = (run_id, now + ttl_s)
                    out[item_id] = "held"
            return out

    def renew_claims(self, run_id: str, ttl_s: float) -> None:
        """Extend this run's leases."""
        now = self.clock()
        with self._lock:
            for item_id, (owner, _) in list(self.leases.items()):
                if owner == run_id:
                    self.leases[item_id] = (run_id, now + ttl_s)

    def release_claims(self, run_id: str) -> None:
        """Drop this run's leases."""
        with self._lock:
            for item_id in [i for i, (owner, _) in self.leases.items() if owner == run_id]:
                del self.leases[item_id]

    def record_success(self, item_id: str, record: GenerationRecord) -> bool:
        """Store unless already stored."""
        with self._lock:
            if item_id in self.successes:
                if self.successes[item_id].response.get("id") == record.response.get("id"):
                    return True
                self.duplicate_successes += 1
                return False
            self.successes[item_id] = record
            self.failures.pop(item_id, None)
            return True

    def record_failure(self, item_id: str, kind: str, reason: str, attempts: int, cost_usd: float) -> None:
        """Remember the failure (a stored success is never overwritten)."""
        with self._lock:
            self.failure_log.append((item_id, kind, reason))
            if item_id not in self.successes:
                self.failures[item_id] = (kind, reason, attempts, cost_usd)

    def record_intent(self, token: str, item_ids: list[str]) -> None:
        """Remember an intent to submit."""
        with self._lock:
            self.submissions[token] = OpenSubmission(token=token, item_ids=list(item_ids), created_at=self.clock())

    def record_provider_batch(self, token: str, provider_batch_id: str) -> None:
        """Attach the provider id to its intent."""
        with self._lock:
            s = self.submissions[token]
            self.submissions[token] = s.model_copy(update={"provider_batch_id": provider_batch_id})

    def open_provider_batches(self) -> list[OpenSubmission]:
        """Open submissions in the order they were recorded."""
        with self._lock:
            return [s for t, s in self.submissions.items() if t not in self.closed]

    def close_provider_batch(self, token: str, status: str) -> None:
        """Close a submission with `status`."""
        with self._lock:
            self.closed[token] = status

    @property
    def provider_batches(self) -> dict[str, tuple[list[str], str]]:
        """Provider batch id -> (item ids, status): what was really submitted."""
        with self._lock:
            return {s.provider_batch_id: (s.item_ids, self.closed.get(t, "in_progress"))
                    for t, s in self.submissions.items() if s.provider_batch_id}
