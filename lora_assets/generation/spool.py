"""The durable local spool: a paid response is on local disk before anything that can fail.

Each run of a scope (a batch, a judge pass) appends the whole answers it receives to its own
journal, `<root>/<scope>/<run_id>.jsonl`, and fsyncs once per group of answers (group commit: at
hundreds of answers a second one fsync each would cost more CPU than the requests). Only then does
the runner hand an answer to the ledger (blob store + DB); once stored, a tombstone line marks it
(no fsync needed: a lost tombstone only means the next run stores it again, which is a no-op).

A journal is locked (`flock`) by the run writing it; the kernel drops the lock when the process
dies, even by `kill -9`. The next run of the scope replays every *unlocked* journal — answers
without a tombstone are stored without a request — and deletes it once all are stored. A run
deletes its own journal when it ends with everything stored. Journals of live runs are left alone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lora_assets.schemas.rows import GenerationRecord

__all__ = ["Spool", "SpoolError"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class SpoolError(ValueError):
    """A spool scope, run id or item id that is not a safe file name."""


def _safe(what: str, value: str) -> str:
    if not _SAFE.match(value):
        raise SpoolError(f"spool {what} {value!r}: only letters, digits, '-' and '_' are allowed (1-128)")
    return value


def _read(path: Path) -> dict[str, GenerationRecord]:
    """Answers in one journal without a tombstone. A torn last line (the process died while
    writing it, before its fsync) was never acknowledged as spooled: it is skipped."""
    pending: dict[str, GenerationRecord] = {}
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
                if "stored" in entry:
                    pending.pop(entry["stored"], None)
                else:
                    pending[entry["item"]] = GenerationRecord.model_validate(entry["record"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("spool %s line %d unreadable (%s): skipped (a write cut off before its fsync)",
                            path, n, type(exc).__name__)
    return pending


class Spool:
    """The spool of one scope. With `run_id` it is that run's writer (its journal is created and
    locked on the first `put_many`); without, a reader of everything waiting in the scope."""

    def __init__(self, root: Path | str, scope: str, run_id: str | None = None) -> None:
        self.dir = Path(root) / _safe("scope", scope)  # made on the first write
        self.path = self.dir / f"{_safe('run id', run_id)}.jsonl" if run_id is not None else None
        self._fh: IO[bytes] | None = None
        self._unstored: set[str] = set()
        self._lock = threading.Lock()  # the writer and the ledger threads append to one file

    # --- writing (the run's own journal) ------------------------------------------------------------

    def put_many(self, answers: list[tuple[str, GenerationRecord]]) -> None:
        """Append answers and fsync once: when this returns they survive a crash."""
        if self.path is None:
            raise SpoolError("a reader cannot write: give the Spool a run_id")
        for item_id, _ in answers:
            _safe("item id", item_id)
        data = b"".join(
            json.dumps({"item": i, "record": r.model_dump(mode="json")}, ensure_ascii=False).encode() + b"\n"
            for i, r in answers)
        with self._lock:
            created = self._fh is None
            if self._fh is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("ab")
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fh.write(data)
            self._fh.flush()
            fd = self._fh.fileno()
            self._unstored.update(i for i, _ in answers)
        os.fsync(fd)  # outside the lock: tombstones may be appended meanwhile
        if created:  # the new directory entry must be durable too
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def mark_stored(self, item_id: str) -> None:
        """The ledger has the answer: a tombstone (not fsynced; see the module docstring)."""
        with self._lock:
            if self._fh is not None and item_id in self._unstored:
                self._fh.write(json.dumps({"stored": item_id}).encode() + b"\n")
                self._fh.flush()
                self._unstored.discard(item_id)

    def close(self) -> None:
        """End of run: delete the journal if everything in it is stored, else keep it (unlocked)
        for the next run."""
        with self._lock:
            if self._fh is None:
                return
            fh, self._fh = self._fh, None
            if not self._unstored and self.path is not None:
                self.path.unlink(missing_ok=True)
                self._rmdir_if_empty()
            fh.close()  # releases the lock

    # --- replaying (journals of runs that are gone) -------------------------------------------------

    def orphans(self) -> Iterator[tuple[Path, IO[bytes], dict[str, GenerationRecord]]]:
        """Journals whose run is gone (their lock is free), locked by us while yielded, with the
        answers still to store. The caller deletes each (`forget`) once all are stored."""
        for path in sorted(self.dir.glob("*.jsonl")):
            if path == self.path and self._fh is not None:
                continue  # our own journal, being written
            try:
                fh = path.open("rb")
            except FileNotFoundError:
                continue  # replayed and deleted by another run just now
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue  # a live run writes it: its answers are its own to store
            if not path.exists():
                fh.close()
                continue
            yield path, fh, _read(path)

    def forget(self, path: Path, fh: IO[bytes]) -> None:
        """Delete a replayed journal (all its answers are stored) and drop its lock."""
        path.unlink(missing_ok=True)
        fh.close()
        if self._fh is None:
            self._rmdir_if_empty()

    def _rmdir_if_empty(self) -> None:
        # A finished scope leaves nothing behind (a concurrent run may be creating its journal:
        # then the directory is not empty, or mkdir on its next write brings it back).
        try:
            self.dir.rmdir()
        except OSError:
            pass

    # --- inspection -----------------------------------------------------------------------------------

    def pending(self) -> Iterator[tuple[str, GenerationRecord]]:
        """Every answer waiting to be stored in this scope, in every journal (live or not)."""
        for path in sorted(self.dir.glob("*.jsonl")):
            try:
                yield from _read(path).items()
            except FileNotFoundError:
                continue

    def item_ids(self) -> list[str]:
        """Items with an answer waiting, sorted."""
        return sorted({i for i, _ in self.pending()})

    def __len__(self) -> int:
        return len(self.item_ids())
