"""Message Batches state: the batches the simulator holds, their clock (in progress → ended, or
canceling → ended), their JSON and their results JSONL. No HTTP here: the server routes the
endpoints to `MessageBatches` and writes what it returns."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .content import rfc3339
from .contract import record_refusal
from .faults import FaultConfig, batch_outcome, digest, unit
from .replies import PromptCache, compose_reply, validate_params
from .stats import SimulatorStats

__all__ = ["BATCH_ID_PREFIX", "BatchSnapshot", "MessageBatches", "results_jsonl", "validate_requests"]

BATCH_ID_PREFIX = "msgbatch_sim_"
_CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: How long a canceling batch takes to end.
_CANCEL_DELAY_S = 0.1
_BATCH_TTL_S = 24 * 3600
_RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")


@dataclass
class _BatchEntry:
    custom_id: str
    result: dict[str, Any]
    outcome: str
    delivers: bool
    finish_fraction: float  # when, within processing, this request finishes (matters on cancel)


@dataclass
class _Batch:
    id: str
    created_at: float
    processing_s: float
    entries: list[_BatchEntry]
    status: str = "in_progress"
    cancel_initiated_at: float | None = None
    ended_at: float | None = None
    final: list[dict[str, Any]] | None = None  # result lines once ended
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchSnapshot:
    """A batch as one request saw it: its status, result lines (once ended) and JSON."""

    status: str
    lines: list[dict[str, Any]]
    json: dict[str, Any]


def validate_requests(body: Any) -> str | None:
    """An invalid_request_error message for a malformed batch-create body, or None."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return "requests: Field required (non-empty list)"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID_RE.match(custom_id):
            return f"requests.{i}.custom_id: must match {_CUSTOM_ID_RE.pattern}"
        if custom_id in seen:
            return f"requests.{i}.custom_id: duplicate {custom_id!r}"
        seen.add(custom_id)
        if (problem := validate_params(item.get("params"), f"requests.{i}.params.")) is not None:
            return problem
    return None


def results_jsonl(lines: list[dict[str, Any]]) -> bytes:
    """The results file of an ended batch: one JSON object per line."""
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def describe(batch: _Batch, base: str) -> dict[str, Any]:
    """The `message_batch` JSON of `batch`; `base` is the URL its results_url starts with."""
    ended = batch.status == "ended"
    # Requests count as processing until the whole batch ends, as in the real API.
    counts = batch.counts if ended else {**dict.fromkeys(_RESULT_TYPES, 0), "processing": len(batch.entries)}
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": batch.status,
        "request_counts": dict(counts),
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.created_at + _BATCH_TTL_S),
        "ended_at": rfc3339(batch.ended_at) if batch.ended_at is not None else None,
        "cancel_initiated_at": rfc3339(batch.cancel_initiated_at) if batch.cancel_initiated_at is not None else None,
        "archived_at": None,
        "results_url": f"{base}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


class MessageBatches:
    """The batches of one simulator. Results are decided when a batch is created; the batch only
    reveals them when it ends (on time, or early on cancel). Thread-safe.

    `released` is the simulator's hold switch: while it is clear, no in-progress batch ends.
    """

    def __init__(self, stats: SimulatorStats, cache: PromptCache, released: threading.Event) -> None:
        self._stats = stats
        self._cache = cache
        self._released = released
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        # Fault selection has its own attempt counters so reset_stats() does not replay faults.
        self._attempts: Counter[str] = Counter()

    def create(self, requests: list[dict[str, Any]], cfg: FaultConfig, invalid: dict[int, Any] | None = None) -> _Batch:
        """A new in-progress batch of validated `requests` (see `contract.check_batch`). Requests
        in `invalid` (index -> `contract.Refusal`) end errored with their invalid_request_error, as
        the API validates each request's params asynchronously."""
        entries: list[_BatchEntry] = []
        for index, item in enumerate(requests):
            custom_id = item["custom_id"]
            with self._lock:
                attempt = self._attempts[custom_id]
                self._attempts[custom_id] += 1
            # Results are decided now; the batch only reveals them when it ends.
            outcome, finish = batch_outcome(cfg, custom_id, attempt)
            refusal = (invalid or {}).get(index)
            if refusal is not None:
                record_refusal(f"batch request {custom_id}", refusal)
                error = {"type": "error", "error": {"type": refusal.kind, "message": refusal.message}}
                entries.append(_BatchEntry(custom_id, {"type": "errored", "error": error}, "batch_invalid", False, finish))
            elif outcome == "batch_errored":
                error = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
                entries.append(_BatchEntry(custom_id, {"type": "errored", "error": error}, outcome, False, finish))
            elif outcome == "batch_expired":
                entries.append(_BatchEntry(custom_id, {"type": "expired"}, outcome, False, finish))
            else:
                # Cache hits in a batch are best effort: a cached prefix is read only this often.
                hit = unit(cfg.seed, "batch-cache", custom_id, attempt) < cfg.batch_cache_hit_rate
                reply = compose_reply(
                    item["params"], custom_id, attempt, outcome, "batch", self._cache,
                    thinking_scale=cfg.thinking_scale, cache_hit_allowed=hit,
                )
                result = {"type": "succeeded", "message": reply.message}
                entries.append(_BatchEntry(custom_id, result, reply.outcome, reply.delivers, finish))

        batch = _Batch(BATCH_ID_PREFIX + uuid.uuid4().hex[:24], time.time(), cfg.batch_processing_s, entries)
        with self._lock:
            self._batches[batch.id] = batch
        self._stats._batch_created([e.custom_id for e in entries])
        return batch

    def advance_all(self) -> None:
        """End every batch whose time has come (the simulator's batch clock calls this)."""
        now = time.time()
        with self._lock:
            for batch in self._batches.values():
                self._advance(batch, now)

    def _advance(self, batch: _Batch, now: float) -> None:
        """Move a batch to `ended` when its time comes. Caller holds the lock."""
        if batch.status == "in_progress" and now >= batch.created_at + batch.processing_s and self._released.is_set():
            self._end(batch, batch.created_at + batch.processing_s, canceled_from=None)
        elif batch.status == "canceling" and batch.cancel_initiated_at is not None:
            if now >= batch.cancel_initiated_at + _CANCEL_DELAY_S:
                self._end(batch, batch.cancel_initiated_at + _CANCEL_DELAY_S, canceled_from=batch.cancel_initiated_at)

    def _end(self, batch: _Batch, ended_at: float, canceled_from: float | None) -> None:
        """Reveal the results (requests not finished by a cancel are canceled) and count them."""
        elapsed = None if canceled_from is None else canceled_from - batch.created_at
        lines: list[dict[str, Any]] = []
        counts = {**dict.fromkeys(_RESULT_TYPES, 0), "processing": 0}
        for entry in batch.entries:
            finished = elapsed is None or entry.finish_fraction * batch.processing_s <= elapsed
            result = entry.result if finished else {"type": "canceled"}
            outcome = entry.outcome if finished else "batch_canceled"
            counts[result["type"]] += 1
            self._stats._add("by_outcome", outcome)
            if finished and entry.delivers:
                self._stats._add("delivered_by_key", entry.custom_id)
            lines.append({"custom_id": entry.custom_id, "result": result})
        # Results come back in no particular order, as the real API warns: clients match on custom_id.
        lines.sort(key=lambda line: digest(batch.id, line["custom_id"]))
        batch.final, batch.counts, batch.status, batch.ended_at = lines, counts, "ended", ended_at

    def page(self, limit: int, after_id: str | None, before_id: str | None, base: str) -> dict[str, Any]:
        """One page of the batch list, newest first, as `GET /v1/messages/batches` answers it."""
        self.advance_all()
        with self._lock:
            batches = sorted(self._batches.values(), key=lambda b: b.created_at, reverse=True)  # newest first
            ids = [b.id for b in batches]
            if after_id:
                batches = batches[ids.index(after_id) + 1 :] if after_id in ids else []
                page = batches[:limit]
            elif before_id:
                batches = batches[: ids.index(before_id)] if before_id in ids else []
                page = batches[-limit:]
            else:
                page = batches[:limit]
            has_more = len(batches) > len(page)
            data = [describe(b, base) for b in page]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return {"data": data, "has_more": has_more, "first_id": first, "last_id": last}

    def act(self, batch_id: str, method: str, action: str, base: str) -> BatchSnapshot | None:
        """Apply a retrieve (`GET ""`), delete (`DELETE ""`, only once ended), cancel (`POST /cancel`,
        idempotent) or results (`GET /results`) request; the batch as it then is, or None if unknown."""
        now = time.time()
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            self._advance(batch, now)
            if action == "/cancel" and batch.status == "in_progress":
                batch.status, batch.cancel_initiated_at = "canceling", now
            if action == "" and method == "DELETE" and batch.status == "ended":
                del self._batches[batch_id]
            return BatchSnapshot(batch.status, list(batch.final or []), describe(batch, base))
