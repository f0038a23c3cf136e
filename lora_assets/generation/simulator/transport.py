"""The simulator's HTTP transport: a threading HTTP/1.1 server that tracks its connections (so a
stop closes idle keep-alive sockets and joins every thread) and a handler that hands each
request to the simulator."""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

__all__ = ["Handler", "HTTPServer"]

log = logging.getLogger(__name__)


class _Simulator(Protocol):
    """What the transport needs of the simulator: one entry point per request."""

    def _handle(self, h: Handler, method: str) -> None: ...


class HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks handler threads and their sockets so stop() can close idle
    keep-alive connections and join every thread."""

    # The default backlog (5) stalls bursts of concurrent SDK connections for ~1 s.
    request_queue_size = 128

    daemon_threads = True
    simulator: _Simulator

    def __init__(self, address: tuple[str, int], simulator: _Simulator) -> None:
        self.simulator = simulator
        self._live: dict[threading.Thread, socket.socket] = {}
        self._live_lock = threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall on loopback.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), daemon=True, name="claude-sim-conn"
        )
        with self._live_lock:
            self._live[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(threading.current_thread(), None)

    def close_connections(self, timeout: float) -> None:
        """Shut every open client socket down and join the handler threads."""
        with self._live_lock:
            live = list(self._live.items())
        for _, sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread, _ in live:
            thread.join(max(0.0, deadline - time.monotonic()))


class Handler(BaseHTTPRequestHandler):
    """One connection's requests, each handed to `server.simulator._handle`."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every response has Content-Length
    #: The model of the request being answered: its rate-limit buckets go in the answer's headers.
    sim_model: str | None = None
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid the 40 ms delayed-ACK stall
    server: HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("claude-sim %s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.simulator._handle(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.server.simulator._handle(self, "POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.simulator._handle(self, "DELETE")

    def client_gone(self) -> bool:
        """True if the client closed its end (e.g. it timed out) while we were busy."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
