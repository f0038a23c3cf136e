"""The durable local spool: a paid response is on local disk before anything that can fail.

The runner writes each whole answer here (temp file, fsync, rename, fsync of the directory)
before it hands it to the ledger (blob store + DB). The file is removed once the ledger has
stored it. If the blob store or the DB is down, or the process is killed, the answer stays here
and the next run of the same scope (a batch, a judge pass) stores it without a request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lora_assets.schemas.rows import GenerationRecord

__all__ = ["Spool", "SpoolError"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class SpoolError(ValueError):
    """A spool scope or item id that is not a safe file name."""


class Spool:
    """Paid responses of one scope (`<root>/<scope>/<item_id>.json`) not yet in the ledger."""

    def __init__(self, root: Path | str, scope: str) -> None:
        if not _SAFE.match(scope):
            raise SpoolError(f"spool scope {scope!r}: only letters, digits, '-' and '_' are allowed")
        self.dir = Path(root) / scope
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, item_id: str) -> Path:
        if not _SAFE.match(item_id):
            raise SpoolError(f"spool item id {item_id!r}: only letters, digits, '-' and '_' are allowed")
        return self.dir / f"{item_id}.json"

    def put(self, item_id: str, record: GenerationRecord) -> Path:
        """Write `record` durably; returns its path. Safe to call again for the same item (the
        newest answer wins the file, and the ledger stores an item once whatever it gets)."""
        path = self._path(item_id)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(record.model_dump_json().encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    def remove(self, item_id: str) -> None:
        """Forget an item's answer (call after the ledger stored it)."""
        self._path(item_id).unlink(missing_ok=True)

    def item_ids(self) -> list[str]:
        """Items with an answer waiting, sorted."""
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def pending(self) -> Iterator[tuple[str, GenerationRecord]]:
        """Every answer waiting to be stored. An unreadable file (never written by `put`, which
        renames only whole files) is set aside as `<name>.bad` with a log line, not lost."""
        for item_id in self.item_ids():
            path = self._path(item_id)
            try:
                record = GenerationRecord.model_validate_json(path.read_bytes())
            except FileNotFoundError:
                continue  # stored and removed by a concurrent run of the same scope
            except (ValueError, json.JSONDecodeError) as exc:
                log.error("spool file %s is unreadable (%s): set aside as .bad", path, type(exc).__name__)
                path.rename(path.with_suffix(".bad"))
                continue
            yield item_id, record

    def __len__(self) -> int:
        return len(self.item_ids())
