"""A loopback TCP proxy that adds a fixed delay per HTTP round trip and counts S3 requests.

    python bench/latency_proxy.py --listen-port A --upstream-port B --delay-ms D --stats-file F

Bytes are forwarded unchanged both ways. Every client→server chunk is held D ms after it
arrives, per connection and in order (each chunk's deadline is its own arrival + D, so a body
read in several chunks pays D once, and connections never wait for each other); server→client
bytes pass at once. A client sends only after it has heard back, so each HTTP round trip pays D:
a request head, and again the body a client sends after `100 Continue` (boto3's PUT with
`Expect: 100-continue` pays two). Connection set-up is not delayed: S3 keeps connections
alive, as `lora_assets_tests.s3_server` (moto on uvicorn) does, so a client pays a handshake
once per pooled connection, not per request; stock `moto_server` (werkzeug's dev server) closes
every connection after one response, and charging those handshakes would charge that quirk to
the client.

Counted at the HTTP layer (what reached the server, whatever the client library does):
requests per method (a chunk that starts with `GET|PUT|HEAD|POST|DELETE <path> HTTP/1.x`; on a
kept-alive connection too, since a client sends its next request only after the last answer),
round trips (request heads + bodies sent after the server spoke), requests that carried
`Expect: 100-continue`, connections, bytes. The counts go as JSON to the stats file (written
atomically) every 0.5 s, on SIGUSR1 and on SIGTERM; `seq` grows with every write, so a reader
that sends SIGUSR1 knows when the file it reads is newer than its signal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
from collections import Counter, deque
from pathlib import Path
from typing import Any

_REQUEST_LINE = re.compile(rb"(GET|PUT|HEAD|POST|DELETE) \S+ HTTP/1\.[01]\r\n")


class Stats:
    """The counters, and writing them to the stats file."""

    def __init__(self, path: Path | None, delay_ms: float) -> None:
        self.path = path
        self.delay_ms = delay_ms
        self.requests: Counter[str] = Counter()
        self.round_trips = 0
        self.continue_bodies = 0
        self.expect_100 = 0
        self.connections = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.seq = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "delay_ms": self.delay_ms,
            "requests": dict(sorted(self.requests.items())),
            "requests_total": sum(self.requests.values()),
            "round_trips": self.round_trips,
            "continue_bodies": self.continue_bodies,
            "expect_100": self.expect_100,
            "connections": self.connections,
            "max_open_connections": self.max_open_connections,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }

    def write(self) -> None:
        if self.path is None:
            return
        self.seq += 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot()) + "\n")
        os.replace(tmp, self.path)  # a reader never sees half a file


class Pipe:
    """One proxied connection. Client→server chunks wait in a per-connection queue until their
    own arrival + delay (one timer per connection, so order holds and connections never wait for
    each other); server→client bytes pass at once. Each side pauses the other's reading while its
    write buffer is full, so memory stays bounded whatever the transfer size."""

    def __init__(self, stats: Stats, delay_s: float, upstream_port: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.stats = stats
        self.delay_s = delay_s
        self.upstream_port = upstream_port
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.pending: deque[tuple[float, bytes]] = deque()  # b"" marks the client's EOF
        self.timer: asyncio.TimerHandle | None = None
        # Set when the server sent bytes since the client's last chunk: the client's next chunk
        # answers it (a body after `100 Continue`), i.e. a new round trip.
        self.server_spoke = False
        self.eof_client = self.eof_server = self.closed = False

    # --- counting ---------------------------------------------------------------------------------

    def classify(self, data: bytes) -> None:
        """Count a client→server chunk: a request head, or a body sent after the server spoke."""
        m = _REQUEST_LINE.match(data)
        if m:
            self.stats.requests[m.group(1).decode()] += 1
            self.stats.round_trips += 1
            head = data.split(b"\r\n\r\n", 1)[0].lower()
            if b"\r\nexpect: 100-continue" in head:
                self.stats.expect_100 += 1
        elif self.server_spoke:
            self.stats.round_trips += 1
            self.stats.continue_bodies += 1
        self.server_spoke = False

    # --- client → server (delayed) -------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if data:
            self.classify(data)
            self.stats.bytes_up += len(data)
        self.pending.append((self.loop.time() + self.delay_s, data))
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.pending and self.server is not None:
            self.timer = self.loop.call_at(self.pending[0][0], self._flush)

    def _flush(self) -> None:
        """Forward every chunk that is due, in order; re-arm for the next one."""
        self.timer = None
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now and not self.closed:
            _, data = self.pending.popleft()
            assert self.server is not None
            if data:
                self.server.write(data)
            else:
                self.eof_client = True
                if self.server.can_write_eof():
                    self.server.write_eof()
                self._maybe_close()
        self._arm()

    # --- server → client (immediate) -----------------------------------------------------------

    def from_server(self, data: bytes) -> None:
        assert self.client is not None
        self.server_spoke = True
        self.stats.bytes_down += len(data)
        self.client.write(data)

    def server_eof(self) -> None:
        self.eof_server = True
        if self.client is not None and self.client.can_write_eof():
            self.client.write_eof()
        self._maybe_close()

    # --- lifecycle -------------------------------------------------------------------------------

    async def connect(self) -> None:
        try:
            self.server, _ = await self.loop.create_connection(
                lambda: _ServerSide(self), "127.0.0.1", self.upstream_port)
        except OSError:
            if self.client is not None:
                self.client.abort()  # upstream down: the client sees a reset
            return
        if self.closed:  # the client left while we connected
            self.server.close()
            return
        self._arm()

    def _maybe_close(self) -> None:
        if self.eof_client and self.eof_server:
            self.close()

    def close(self, *, abort: bool = False) -> None:
        """Close both sides once (flushing what is buffered, unless aborting after an error)."""
        if self.closed:
            return
        self.closed = True
        self.stats.open_connections -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()
        for transport in (self.client, self.server):
            if transport is not None:
                transport.abort() if abort else transport.close()


class _ClientSide(asyncio.Protocol):
    """The accepted connection from the client."""

    def __init__(self, stats: Stats, delay_s: float, upstream_port: int, tasks: set[asyncio.Task[None]]) -> None:
        self.pipe = Pipe(stats, delay_s, upstream_port)
        self.tasks = tasks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.pipe.client = transport
        stats = self.pipe.stats
        stats.connections += 1
        stats.open_connections += 1
        stats.max_open_connections = max(stats.max_open_connections, stats.open_connections)
        task = asyncio.ensure_future(self.pipe.connect())
        self.tasks.add(task)  # a strong reference until done (the loop keeps only weak ones)
        task.add_done_callback(self.tasks.discard)

    def data_received(self, data: bytes) -> None:
        self.pipe.from_client(data)

    def eof_received(self) -> bool:
        self.pipe.from_client(b"")
        return True  # keep our sending half open: the server may still answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.close(abort=exc is not None)

    def pause_writing(self) -> None:
        if self.pipe.server is not None:
            self.pipe.server.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe.server is not None and not self.pipe.closed:
            self.pipe.server.resume_reading()


class _ServerSide(asyncio.Protocol):
    """Our connection to the upstream server."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe

    def data_received(self, data: bytes) -> None:
        self.pipe.from_server(data)

    def eof_received(self) -> bool:
        self.pipe.server_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.close(abort=exc is not None)

    def pause_writing(self) -> None:
        if self.pipe.client is not None:
            self.pipe.client.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe.client is not None and not self.pipe.closed:
            self.pipe.client.resume_reading()


async def serve(listen_port: int, upstream_port: int, delay_ms: float, stats: Stats) -> None:
    """Accept on 127.0.0.1:listen_port until SIGTERM/SIGINT; write the stats then."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    # Handlers first: a reader may send SIGUSR1 as soon as the port accepts, and SIGUSR1's default
    # action would end the process.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, stats.write)
    stats.write()
    server = await loop.create_server(lambda: _ClientSide(stats, delay_ms / 1000, upstream_port, tasks),
                                      "127.0.0.1", listen_port)

    async def periodic() -> None:
        while True:
            stats.write()
            await asyncio.sleep(0.5)

    ticker = asyncio.ensure_future(periodic())
    await stop.wait()
    ticker.cancel()
    stats.write()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--stats-file", type=Path, default=None)
    args = parser.parse_args(argv)
    stats = Stats(args.stats_file, args.delay_ms)
    asyncio.run(serve(args.listen_port, args.upstream_port, args.delay_ms, stats))


if __name__ == "__main__":
    main()
