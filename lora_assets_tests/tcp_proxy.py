"""A byte-level loopback TCP proxy whose upstream can be made unreachable on demand (an outage).

    with TcpProxy("127.0.0.1", 5432) as proxy:      # listens on 127.0.0.1:<proxy.port>
        ...                                          # clients connect to proxy.port
        proxy.stop()                                 # outage: refused connects, open ones cut
        proxy.resume()                               # the same port accepts again

`stop()` closes the listening socket (new connects are refused) AND every open connection both
ways (the client side gets a reset, the upstream side is closed), so a client in the middle of a
request sees the connection break, exactly like a dead server or a network partition that the
kernel reports. Bytes are forwarded unchanged; nothing is parsed (`cut_after(pattern)` only
looks for a byte string in what the client sends, to lose the server's answer to that one
request). Threads only (one accept thread, two pump threads per connection), daemon threads,
joined by `stop()`.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["TcpProxy"]

_CHUNK = 65536


class _Pair:
    """One proxied connection: the accepted client socket and its upstream socket."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.threads: list[threading.Thread] = []
        self._closed = False
        self._ended = 0
        self.muted = False  # bytes from upstream are dropped (see TcpProxy.cut_after)
        self._lock = threading.Lock()

    def ended(self) -> bool:
        """One direction finished; True once both have."""
        with self._lock:
            self._ended += 1
            return self._ended >= 2

    def close(self, *, reset: bool) -> None:
        """Close both sockets once. `reset`: abort with RST (SO_LINGER 0) instead of a FIN."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.upstream):
            if reset:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump thread blocked in recv()
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port`, byte for byte.

    `port` 0 picks a free port at the first `start()`; `resume()` reuses it. Counters:
    `connections` (accepted in total), `cut` (open connections closed by `stop()`)."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0, connect_timeout_s: float = 5.0) -> None:
        self.target = (target_host, int(target_port))
        self.connect_timeout_s = connect_timeout_s
        self._port = port
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._trap: tuple[bytes, float, threading.Event] | None = None
        self.connections = 0
        self.cut = 0

    # --- public ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the proxy has no port yet: call start() first")
        return self._port

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> TcpProxy:
        """Listen on 127.0.0.1 (the same port as before on a later call) and accept in a thread."""
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self._port))
        except OSError:
            listener.close()
            raise
        listener.listen(128)
        listener.settimeout(0.05)  # the accept loop checks for stop() this often
        self._port = listener.getsockname()[1]
        self._stopping.clear()
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                               name=f"tcp-proxy-{self._port}-accept")
        self._accept_thread.start()
        return self

    def resume(self) -> TcpProxy:
        """End an outage: listen again on the same port."""
        return self.start()

    def stop(self) -> int:
        """The outage: stop listening (connects are refused) and cut every open connection both
        ways. Returns how many open connections were cut. Idempotent."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(10)
            self._accept_thread = None
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.close(reset=True)
        for pair in pairs:
            for th in pair.threads:
                if th is not threading.current_thread():
                    th.join(10)
        self.cut += len(pairs)
        return len(pairs)

    def cut_after(self, pattern: bytes, *, hold_s: float = 0.2, then_stop: bool = False) -> threading.Event:
        """Arm a one-shot trap: the next client chunk containing `pattern` is forwarded, but
        nothing the server sends back on that connection reaches the client, and `hold_s` later
        the connection is cut (reset). The server acts on the request; the client sees only a
        broken connection (an answer lost in the network). With `then_stop` the cut is the start
        of an outage (`stop()`: every connection cut, connects refused until `resume()`).
        Returns an event set once cut."""
        fired = threading.Event()
        with self._lock:
            self._trap = (pattern, hold_s, fired, then_stop)
        return fired

    def _spring(self, pair: _Pair, data: bytes) -> None:
        """Called before forwarding a client chunk: mute the pair if the trap matches."""
        with self._lock:
            trap = self._trap
            if trap is None or trap[0] not in data:
                return
            self._trap = None
        pattern, hold_s, fired, then_stop = trap
        pair.muted = True

        def cut() -> None:
            time.sleep(hold_s)
            if then_stop:
                self.stop()
            else:
                pair.close(reset=True)
                self._forget(pair)
            fired.set()

        threading.Thread(target=cut, daemon=True, name=f"tcp-proxy-{self._port}-trap").start()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- threads ---------------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            client.settimeout(None)
            if self._stopping.is_set():
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=self.connect_timeout_s)
            except OSError:
                _abort(client)  # upstream down: the client sees its connection reset
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:
                if self._stopping.is_set():
                    pair.close(reset=True)
                    return
                self._pairs.add(pair)
                self.connections += 1
            pair.threads = [
                threading.Thread(target=self._pump, args=(pair, client, upstream), daemon=True,
                                 name=f"tcp-proxy-{self._port}-up"),
                threading.Thread(target=self._pump, args=(pair, upstream, client), daemon=True,
                                 name=f"tcp-proxy-{self._port}-down"),
            ]
            for th in pair.threads:
                th.start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        """Copy src -> dst until EOF or an error; a half-close is passed on, an error closes both."""
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)  # pass the FIN on; the other direction goes on
                    except OSError:
                        pass
                    break
                if src is pair.client:
                    self._spring(pair, data)
                elif pair.muted:
                    continue  # the trap swallows the server's answer
                dst.sendall(data)
        except OSError:
            pair.close(reset=True)
            self._forget(pair)
            return
        if pair.ended():  # both directions saw EOF: a clean close
            pair.close(reset=False)
            self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)


def _abort(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
