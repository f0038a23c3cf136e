"""What a generation run shares with whoever watches it: a stop flag (a cancel seen while the run
is live) and the run's live statistics (for progress reports). Pure: no I/O, no Dagster.

The runner only reads `stop_requested` before it starts a request and hands over its stats
once; the watcher (the Dagster asset, a thread polling the batch's status) sets the flag and
reads the stats. Requests already sent when the flag is set still end normally and are stored.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunWatch:
    """A stop flag and the live stats of one run (`stats` is the runner's RunStats, set when the
    run starts; `total` is the number of items the run was given)."""

    total: int = 0
    stats: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)
    reason: str = ""

    def attach(self, stats: Any) -> None:
        """Called by the runner when it starts: the stats it will update."""
        self.stats = stats

    def request_stop(self, reason: str) -> None:
        """Ask the run to start no new request (idempotent; the first reason wins)."""
        if not self._stop.is_set():
            self.reason = reason
            self._stop.set()

    @property
    def stop_requested(self) -> bool:
        """True once `request_stop` was called."""
        return self._stop.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to `timeout_s`, waking early when a stop is requested; returns the flag."""
        return self._stop.wait(timeout_s)


@dataclass(frozen=True)
class Progress:
    """One progress report: items done and failed of `total`, cost so far, and an ETA."""

    total: int
    done: int
    failed: int
    cost_usd: float
    elapsed_s: float

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before the first item ends."""
        if self.finished == 0 or self.elapsed_s <= 0:
            return None
        return max(0.0, (self.total - self.finished) * self.elapsed_s / self.finished)

    def line(self) -> str:
        """One log line: `12/168 items done (7%), 1 failed, $0.0041 so far, ETA 1m 40s`."""
        pct = 100 * self.finished / self.total if self.total else 100.0
        eta = "ETA unknown" if self.eta_s is None else f"ETA {_duration(self.eta_s)}"
        return (f"{self.done}/{self.total} items done ({pct:.0f}%), {self.failed} failed, "
                f"${self.cost_usd:.4f} so far, {eta}")

    def metadata(self) -> dict[str, Any]:
        """The same figures as observation metadata."""
        return {"items_total": self.total, "items_done": self.done, "items_failed": self.failed,
                "cost_usd_so_far": round(self.cost_usd, 6), "elapsed_s": round(self.elapsed_s, 1),
                "eta_s": round(self.eta_s, 1) if self.eta_s is not None else "unknown", "progress": self.line()}


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


class ProgressPacer:
    """Decides when a report is due: after `every_fraction` of the items more have ended, or
    `every_s` seconds since the last report, whichever comes first — but never more often than
    `min_interval_s` (a bounded rate however fast items end)."""

    def __init__(self, total: int, *, every_s: float = 10.0, every_fraction: float = 0.05,
                 min_interval_s: float = 2.0, clock: Any = time.monotonic) -> None:
        self.total, self.every_s, self.every_fraction = total, every_s, every_fraction
        self.min_interval_s, self.clock = min_interval_s, clock
        self.started = clock()
        self._last_at = self.started
        self._last_finished = 0

    def due(self, finished: int) -> bool:
        """True when a report with `finished` items ended should be made now (and records it)."""
        now = self.clock()
        since = now - self._last_at
        step = max(1, int(self.total * self.every_fraction))
        if since < self.min_interval_s or finished == self._last_finished and since < self.every_s:
            return False
        if finished - self._last_finished >= step or since >= self.every_s:
            self._last_at, self._last_finished = now, finished
            return True
        return False

    def progress(self, stats: Any) -> Progress:
        """A report from the runner's live stats."""
        return Progress(total=self.total, done=stats.done, failed=stats.failed, cost_usd=stats.cost_usd,
                        elapsed_s=self.clock() - self.started)
