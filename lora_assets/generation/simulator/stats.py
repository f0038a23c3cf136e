"""`SimulatorStats`: the HTTP-layer counts of what the simulator did, which tests audit (how
many attempts each item took, how many whole conversations were delivered, …)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

__all__ = ["SimulatorStats"]


class SimulatorStats:
    """Thread-safe counters of what the simulator did. Read attributes directly or take a
    consistent `snapshot()`.

    - `requests_total`, `by_status`: every HTTP request / response status.
    - `by_outcome`: ok, rate_limited, overloaded, server_error, slow, truncated, malformed, refusal,
      wrapped, thinking (Messages requests and batch results), refused (a body the strict contract
      refused: 400/404/413), batch_errored, batch_expired, batch_canceled, batch_invalid (batch
      results, counted when the batch ends; batch_invalid: params the contract refused).
    - `attempts_by_key`: authenticated, well-formed `POST /v1/messages` requests per request key.
    - `delivered_by_key`: complete, schema-valid conversations delivered per key (Messages: the
      whole body was written to a still-connected client; Batches: a succeeded result whose text
      is a whole conversation, counted once when the batch ends).
    - `batches_created`, `batch_requests_by_custom_id`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests_total = 0
        self.by_status: Counter[int] = Counter()
        self.by_outcome: Counter[str] = Counter()
        self.attempts_by_key: Counter[str] = Counter()
        self.delivered_by_key: Counter[str] = Counter()
        self.batches_created = 0
        self.batch_requests_by_custom_id: Counter[str] = Counter()

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter as plain dicts and ints."""
        with self._lock:
            return {
                "requests_total": self.requests_total,
                "by_status": dict(self.by_status),
                "by_outcome": dict(self.by_outcome),
                "attempts_by_key": dict(self.attempts_by_key),
                "delivered_by_key": dict(self.delivered_by_key),
                "batches_created": self.batches_created,
                "batch_requests_by_custom_id": dict(self.batch_requests_by_custom_id),
            }

    def _reset(self) -> None:
        # Clear in place so references a test already holds stay live.
        with self._lock:
            self.requests_total = 0
            self.batches_created = 0
            for counter in (
                self.by_status,
                self.by_outcome,
                self.attempts_by_key,
                self.delivered_by_key,
                self.batch_requests_by_custom_id,
            ):
                counter.clear()

    def _add(self, counter: str, key: Any, n: int = 1) -> None:
        with self._lock:
            target: Counter[Any] = getattr(self, counter)
            target[key] += n
            if target[key] <= 0:  # a take-back leaves no zero entry behind
                del target[key]

    def _response(self, status: int) -> None:
        with self._lock:
            self.requests_total += 1
            self.by_status[status] += 1

    def _batch_created(self, custom_ids: list[str]) -> None:
        with self._lock:
            self.batches_created += 1
            self.batch_requests_by_custom_id.update(custom_ids)
