"""Serve the local blob store read-only over HTTP on the loopback interface, so a person using
the Dagster UI on the same machine can open output files from their metadata links (a browser
refuses to open a `file://` path from a web page).

`lora-assets serve-files` runs it; LORA_FILES_URL tells the code location where it listens, and
the training-file metadata then links every output there. GET and HEAD only; paths are resolved
inside the served directory (`..` and symlinks out of it are refused)."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: Content types for our outputs: text ones open in the browser tab (JSONL as plain text: a
#: browser downloads application/x-ndjson instead of showing it); Parquet downloads.
TYPES = {".jsonl": "text/plain; charset=utf-8", ".json": "application/json; charset=utf-8",
         ".md": "text/plain; charset=utf-8", ".yaml": "text/plain; charset=utf-8",
         ".yml": "text/plain; charset=utf-8", ".parquet": "application/vnd.apache.parquet"}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def translate_path(self, path: str) -> str:
        root = Path(self.directory).resolve()
        candidate = Path(super().translate_path(path)).resolve()
        # A symlink inside the store that points outside it is not served (404, as if absent).
        return str(candidate) if candidate == root or root in candidate.parents else str(root / ".not-served" / "x")

    def list_directory(self, path: Any) -> Any:
        self.send_error(404, "directory listings are off")  # keys are known from metadata
        return None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: one line per file would drown the terminal running `make ui`


def serve_directory(root: Path | str, host: str = "127.0.0.1", port: int = 3031) -> ThreadingHTTPServer:
    """Start serving `root` on host:port in a background thread; returns the server (call
    `shutdown()` and `server_close()` to stop it). `port` 0 picks a free port."""
    server = ThreadingHTTPServer((host, port), partial(_Handler, directory=str(Path(root).resolve())))
    threading.Thread(target=server.serve_forever, name="file-server", daemon=True).start()
    return server
