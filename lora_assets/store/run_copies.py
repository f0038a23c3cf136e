"""Copies of the blobs a run just wrote, for its next stage in the same process.

A batch's parse and enrich run one after the other in one process (the in-process executor, what
`batch_pipeline` uses): enrich reads every `conversation.json` parse has just written. Parse keeps
a copy of each file it stored in a local temp file, and enrich reads the copy instead of asking
the store again: one S3 GET (a round trip and ≈ 0.3 ms of client CPU) fewer per conversation.

A copy is made only after its write succeeded and holds exactly the stored bytes; it is found
only by the same run, in the same store, under the same key. Anything else (a step in another
process, an earlier run's files, a copy that cannot be read) reads the store as before: the
copies are a shortcut, never a source of truth, and an error in them is never an error of the
stage.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Hashable

#: Runs whose copies a process keeps at once (one in practice; a few for runs executed in
#: parallel in one process): the oldest is dropped beyond that.
KEPT_RUNS = 4


class RunCopies:
    """One run's copies: the bytes in an anonymous temp file, an index by (store, key)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="lora-run-copies-")
        self._fd = self._file.fileno()
        self._index: dict[tuple[Hashable, str], tuple[int, int]] = {}
        self._end = 0
        self._lock = threading.Lock()  # the pool's threads keep and read copies concurrently
        self.hits = 0  # reads served from the copies

    def keep(self, store: Hashable, key: str, data: bytes) -> None:
        """Remember `data` as stored at `key` (call it after the write succeeded). A copy that
        cannot be made whole (disk full, closed) is no copy: the next stage reads the store, never
        an older copy of the key."""
        with self._lock:
            self._index.pop((store, key), None)
            offset, self._end = self._end, self._end + len(data)
            try:
                if os.pwrite(self._fd, data, offset) != len(data):  # a short write
                    return
            except (OSError, ValueError):
                return
            self._index[(store, key)] = (offset, len(data))

    def get(self, store: Hashable, key: str) -> bytes | None:
        """The bytes this run stored at `key`, or None (read the store)."""
        entry = self._index.get((store, key))
        if entry is None:
            return None
        offset, size = entry
        try:
            data = os.pread(self._fd, size, offset)
        except (OSError, ValueError):
            return None
        if len(data) != size:
            return None
        with self._lock:
            self.hits += 1
        return data

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        self._file.close()


_RUNS: OrderedDict[str, RunCopies] = OrderedDict()
_RUNS_LOCK = threading.Lock()


def for_run(run_id: str) -> RunCopies:
    """The copies of `run_id`, made on first use (the writing stage)."""
    with _RUNS_LOCK:
        if run_id not in _RUNS:
            _RUNS[run_id] = RunCopies()
            while len(_RUNS) > KEPT_RUNS:
                _RUNS.popitem(last=False)[1].close()
        return _RUNS[run_id]


def of_run(run_id: str) -> RunCopies | None:
    """The copies `run_id` made in this process, if any (the reading stage)."""
    with _RUNS_LOCK:
        return _RUNS.get(run_id)


def release(run_id: str) -> None:
    """Drop `run_id`'s copies (the reading stage is done with them)."""
    with _RUNS_LOCK:
        copies = _RUNS.pop(run_id, None)
    if copies is not None:
        copies.close()
