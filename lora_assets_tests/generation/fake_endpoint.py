"""A deliberately broken Messages endpoint for the failure-mode tests: it hangs, answers 200 with
HTML, answers a fixed Message after a fixed latency, or refuses each item's first requests as the
API refuses (429 with `retry-after` in whole seconds and the `anthropic-ratelimit-*` headers, then
529 `overloaded_error`), and counts what reached it at the HTTP layer (requests, peak in flight,
when each item's requests arrived). Plain asyncio streams on 127.0.0.1, in a thread of its own;
`stop()` closes every connection it accepted."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Literal

Mode = Literal["hang", "html", "ok", "refuse"]

_MESSAGE = {
    "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-haiku-5-5",
    "content": [{"type": "text", "text": "{}"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 100, "output_tokens": 50, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
}


def _room() -> str:
    """What "refuse" mode's answers report: every bucket nearly full (so the refusal is not explained
    by them, like a limit enforced over a shorter interval than the headers show)."""
    now, out = time.time(), []
    for kind, limit, used in (("requests", 4000, 1), ("input-tokens", 400_000, 1000), ("output-tokens", 80_000, 1000),
                              ("tokens", 80_000, 1000)):
        reset = datetime.fromtimestamp(now + used * 60 / limit, timezone.utc).isoformat().replace("+00:00", "Z")
        out.append(f"anthropic-ratelimit-{kind}-limit: {limit}\r\nanthropic-ratelimit-{kind}-remaining: "
                   f"{limit - used}\r\nanthropic-ratelimit-{kind}-reset: {reset}\r\n")
    return "".join(out)


class FakeEndpoint:
    """`POST /v1/messages` per `mode`: "hang" (reads the request, never answers), "html" (200 with
    an HTML page), "ok" (a fixed Message after `latency_s`), "refuse" (each item's first
    `refusals_429` requests get a 429 with `retry-after: 1` and bucket headers showing room, its
    next `refusals_529` a 529, then a fixed Message). `arrivals` holds each item's request times."""

    def __init__(self, mode: Mode, latency_s: float = 0.0, *, refusals_429: int = 1, refusals_529: int = 0) -> None:
        self.mode = mode
        self.latency_s = latency_s
        self.refusals_429 = refusals_429
        self.refusals_529 = refusals_529
        self.arrivals: defaultdict[str, list[float]] = defaultdict(list)
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeEndpoint:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                if length := int(headers.get("content-length", "0")):
                    await reader.readexactly(length)
                if not line.startswith(b"POST /v1/messages"):
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    continue
                self.requests += 1
                seen = self.arrivals[headers.get("x-lora-item-id", "")]
                seen.append(time.monotonic())
                if self.mode == "refuse" and len(seen) <= self.refusals_429 + self.refusals_529:
                    if len(seen) <= self.refusals_429:
                        status, extra = "429 Too Many Requests", "retry-after: 1\r\n" + _room()
                        error = {"type": "rate_limit_error", "message": "rate limited: retry after the retry-after header"}
                    else:
                        status, extra, error = "529 Overloaded", _room(), {"type": "overloaded_error", "message": "Overloaded"}
                    body = json.dumps({"type": "error", "error": error}).encode()
                    writer.write(f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                                 f"{extra}connection: keep-alive\r\n\r\n".encode() + body)
                    await writer.drain()
                    continue
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
                try:
                    if self.mode == "hang":
                        await asyncio.Event().wait()
                    await asyncio.sleep(self.latency_s)
                finally:
                    self.inflight -= 1
                extra = _room() if self.mode == "refuse" else ""
                if self.mode == "html":
                    status, kind, body = "200 OK", "text/html", b"<html><body>Welcome to nginx!</body></html>"
                else:
                    status, kind, body = "200 OK", "application/json", json.dumps(_MESSAGE).encode()
                writer.write(f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n"
                             f"{extra}connection: keep-alive\r\n\r\n".encode() + body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
