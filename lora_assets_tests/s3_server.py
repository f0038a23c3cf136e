"""moto's real S3 server, dispatched faster and kept alive: `python -m lora_assets_tests.s3_server --port P`.

The same app as `moto_server -H 127.0.0.1 -p P` (moto's own `DomainDispatcherApplication` and
backend apps, built the way `moto.server.main` builds them: `create_backend_app`, `debug`,
`MOTO_PORT`) except for three things that cost CPU and change no answer:

* `get_backend_for_host` is memoised per host. Upstream it scans every backend's URL regexes
  (hundreds) under the dispatcher's global lock on every request; py-spy put that at ~65% of
  moto's CPU. Its result depends only on the host string (the patterns are a constant index), so
  a per-host cache returns the same backend. `None` (no backend) is not cached, so the upstream
  "Unable to find appropriate backend" message still prints each time.
* It is served by uvicorn with HTTP/1.1 keep-alive, not werkzeug's dev server. werkzeug answers
  every request with `Connection: close`, so each S3 request cost a new TCP connection, a new
  server thread and a new client connection; S3 keeps connections alive, and so does this
  launcher (a boto3 pool opens a connection per thread, once). The app is reached through
  `WsgiOverAsgi`, a small bridge that hands it the environ werkzeug + moto's `MotoRequestHandler`
  built (`wsgi_environ`; checked key by key against werkzeug's). uvicorn's own
  `interface="wsgi"` bridge lacks two things moto needs, both seen with boto3: `RAW_URI` (a key
  with `%2F` was stored with `/`) and underscored `x-amz-meta-*` names (metadata `my_key` came
  back as `my-key`). uvicorn answers `Expect: 100-continue` (once; werkzeug sent `100 Continue`
  twice), frames bodies (Content-Length, chunked, none for HEAD/304) and binds with SO_REUSEADDR
  (a restart takes the same port at once). An idle connection closes after `KEEP_ALIVE_S`; on
  SIGTERM idle connections close at once and a request in flight gets `GRACEFUL_SHUTDOWN_S`.
  `--server werkzeug` serves the same app on werkzeug's dev server, as before.
* No per-request access log line (errors are still logged).

Measured on this 2-core machine (`python -m lora_assets_tests.s3_server --measure`): boto3 with
16 threads, 2,000 PUTs then 2,000 GETs of 6 KB objects on loopback, no proxy, the three servers
in turn, median of 3 rounds; the server's CPU from /proc, the client's (this process, all its
threads) from `time.process_time`, connections counted at `urllib3.util.connection.create_connection`:

| server                             | PUT req/s | GET req/s | server CPU ms / PUT | / GET | client CPU ms / PUT | / GET | connections PUT / GET |
|------------------------------------|-----------|-----------|---------------------|-------|---------------------|-------|-----------------------|
| `moto_server` (stock)              |       280 |       262 |                2.90 |  2.39 |                1.63 |  1.59 |           2000 / 2000 |
| this launcher, `--server werkzeug` |       360 |       445 |                1.89 |  1.56 |                1.54 |  1.52 |           2000 / 2000 |
| this launcher (uvicorn)            |       399 |       378 |                1.34 |  1.12 |                1.37 |  1.47 |                15 / 0 |

Client and server share the 2 cores and the machine was running another benchmark (load 6–11),
so req/s are end-to-end and noisy (in a shorter run, 200 requests and 1 round, the GET rates
were 350 on werkzeug and 358 on uvicorn); the CPU per request is the steadier figure. Against
the werkzeug launcher, keep-alive takes 29% (PUT) and 28% (GET) off the server's CPU per
request, 11% and 3% off the client's; against stock `moto_server`, 54% and 53% off the
server's. Sampling the request threads' stacks earlier (werkzeug, 1,000 PUTs + GETs): 75% of
their time was inside `get_application` (scanning, or waiting for its lock) with stock moto,
under 3% with the memoised dispatcher.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from moto.core.request import (
    PRESERVED_HEADER_NAMES_ENVIRON_KEY,
    environ_key_for_header,
    should_preserve_original_header_name,
)
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

__all__ = ["FastDomainDispatcher", "QuietMotoRequestHandler", "WsgiOverAsgi", "main", "measure", "put_get_rate",
           "serve", "wsgi_environ"]

#: Servers `serve()` can run the app on.
SERVERS = ("uvicorn", "werkzeug")
#: An idle kept-alive connection is closed after this long (uvicorn's default is 5 s). Long, so a
#: pooled connection is seldom closed just as a client reuses it (botocore would retry that
#: request, and a proxy counting requests could count it twice).
KEEP_ALIVE_S = 60
#: On SIGTERM idle connections close at once; a request in flight gets this long to finish.
GRACEFUL_SHUTDOWN_S = 1


class FastDomainDispatcher(DomainDispatcherApplication):
    """moto's dispatcher with `get_backend_for_host` memoised per host."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backend_by_host: dict[str, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:
        if host is None:
            return None
        try:
            return self._backend_by_host[host]
        except KeyError:
            pass
        backend = super().get_backend_for_host(host)
        if backend is not None:  # a miss is not cached: upstream's "no backend" message stays
            self._backend_by_host[host] = backend
        return backend


class QuietMotoRequestHandler(MotoRequestHandler):
    """moto's request handler without werkzeug's one-line-per-request access log."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def wsgi_environ(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The WSGI environ of one ASGI HTTP request (`scope` + its whole `body`), as werkzeug's
    `WSGIRequestHandler.make_environ` with moto's `MotoRequestHandler.make_environ` on top builds
    it. What moto reads that a generic ASGI→WSGI bridge (uvicorn's `interface="wsgi"`) leaves out:
    `RAW_URI` (moto matches S3 keys on the still-encoded path: a key with `%2F`), and underscored
    `x-amz-meta-*` headers kept apart from dashed ones (werkzeug drops underscored headers, moto
    puts those back under `PRESERVED_HEADER_NAMES_ENVIRON_KEY`; a generic bridge folds `_` into
    `-`). The body is already read in full, so the stream is terminated (a chunked upload needs no
    Content-Length)."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string") or b""
    uri = (raw_path + b"?" + query if query else raw_path).decode("latin-1")
    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("<local>", 0)
    environ: dict[str, Any] = {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": "uvicorn",
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),  # percent-decoded, as werkzeug's
        "QUERY_STRING": query.decode("latin-1"),
        "REQUEST_URI": uri,
        "RAW_URI": uri,
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": client[1],
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
    }
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
    for name, value in headers:  # werkzeug: underscored names dropped, repeats joined
        if "_" in name:
            continue
        key = environ_key_for_header(name)
        if key.startswith("HTTP_") and key in environ:
            value = f"{environ[key]},{value}"
        environ[key] = value
    # moto: underscored S3 metadata headers back, under their own names (never over a dashed one)
    dashed = {environ_key_for_header(name) for name, _ in headers if "_" not in name}
    names: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    for name, value in headers:
        if should_preserve_original_header_name(name) and (key := environ_key_for_header(name)) not in dashed:
            names.setdefault(key, name)
            values.setdefault(key, []).append(value)
    for key, key_values in values.items():
        environ[key] = ",".join(key_values)
    environ[PRESERVED_HEADER_NAMES_ENVIRON_KEY] = names
    return environ


class WsgiOverAsgi:
    """A WSGI app as an ASGI app, for uvicorn: read the request body in full (uvicorn answers
    `Expect: 100-continue` when the body is first asked for, i.e. at once), call the app in a
    thread pool with `wsgi_environ`, send its whole response. moto builds every response in
    memory anyway, so nothing streams; uvicorn frames it (Content-Length from the app, chunked
    without one, no body for HEAD / 204 / 304) and keeps the connection alive. Header values are
    sent latin-1 encoded, as werkzeug's server sends them (uvicorn's own bridge insists on ASCII)."""

    def __init__(self, app: Any, threads: int = 64) -> None:
        self.app = app
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="moto")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"only HTTP is served, not {scope['type']!r} (run uvicorn with lifespan='off')")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its request was whole
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        environ = wsgi_environ(scope, bytes(body))
        status, headers, content = await asyncio.get_running_loop().run_in_executor(self.pool, self.call, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the WSGI app on `environ`: (status code, headers, body)."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [int(status.split(" ", 1)[0]),
                          [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]]
            return chunks.append  # WSGI's legacy write()

        result = self.app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return started[0], started[1], b"".join(chunks)


def serve(host: str, port: int, server: str = "uvicorn") -> None:
    """Run moto's S3 (every moto backend, as `moto_server` does) on host:port until SIGTERM/SIGINT,
    on uvicorn (HTTP/1.1 keep-alive) or, with `server="werkzeug"`, on werkzeug's threaded dev
    server as `moto_server` does (a new connection and thread per request)."""
    if server not in SERVERS:
        raise ValueError(f"server must be one of {SERVERS}, not {server!r}")
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server.main: moto calls itself on it
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = FastDomainDispatcher(create_backend_app)
    app.debug = True  # as moto.server.main
    if server == "werkzeug":
        from werkzeug.serving import run_simple

        run_simple(host, port, app, threaded=True, use_reloader=False, request_handler=QuietMotoRequestHandler)
        return
    import uvicorn

    # uvicorn takes SIGINT/SIGTERM while it runs (stop listening, close idle connections, finish
    # the requests in flight) and re-raises the signal after, to the handlers above: exit 0.
    # It binds with SO_REUSEADDR, so a restart on the same port does not wait out TIME_WAIT.
    uvicorn.run(WsgiOverAsgi(app), host=host, port=port, interface="asgi3", lifespan="off",
                log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


# --- measuring (for the docstring table) ------------------------------------------------------


def _wait_port(port: int, timeout_s: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (s), from /proc (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def put_get_rate(endpoint: str, *, requests: int = 2000, threads: int = 16, size: int = 6 * 1024,
                 server_pid: int | None = None, client_stats: bool = False) -> dict[str, float]:
    """PUT then GET `requests` objects of `size` bytes with a `threads`-wide boto3 pool against
    `endpoint` (a fresh bucket, emptied and removed afterwards): requests per second of each
    phase; with `server_pid` the server's CPU milliseconds per request of each phase; with
    `client_stats` this process's CPU milliseconds per request (all its threads: boto3 and the
    pool) and the TCP connections urllib3 opened, per phase."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    import urllib3.util.connection
    from botocore.config import Config

    opened = [0]
    create_connection = urllib3.util.connection.create_connection

    def counting_create_connection(*args: Any, **kwargs: Any) -> Any:
        opened[0] += 1  # under the GIL; a lost increment would need two threads in one bytecode
        return create_connection(*args, **kwargs)

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing", config=Config(max_pool_connections=threads),
    )
    bucket = f"rate-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    body = os.urandom(size)
    keys = [f"obj/{i:06d}" for i in range(requests)]
    phases = {
        "put": lambda k: client.put_object(Bucket=bucket, Key=k, Body=body),
        "get": lambda k: client.get_object(Bucket=bucket, Key=k)["Body"].read(),
    }
    out: dict[str, float] = {}
    if client_stats:
        urllib3.util.connection.create_connection = counting_create_connection
    try:
        with ThreadPoolExecutor(threads) as pool:
            for phase, call in phases.items():
                cpu0 = _cpu_s(server_pid) if server_pid else 0.0
                own0, opened0 = time.process_time(), opened[0]
                t0 = time.perf_counter()
                list(pool.map(call, keys))
                out[f"{phase}_per_s"] = round(requests / (time.perf_counter() - t0), 1)
                if server_pid:
                    out[f"server_cpu_ms_per_{phase}"] = round((_cpu_s(server_pid) - cpu0) / requests * 1000, 2)
                if client_stats:
                    out[f"client_cpu_ms_per_{phase}"] = round((time.process_time() - own0) / requests * 1000, 2)
                    out[f"connections_{phase}"] = opened[0] - opened0
            list(pool.map(lambda k: client.delete_object(Bucket=bucket, Key=k), keys))
    finally:
        urllib3.util.connection.create_connection = create_connection
        client.delete_bucket(Bucket=bucket)
    return out


def measure(requests: int = 2000, threads: int = 16, rounds: int = 3) -> dict[str, Any]:
    """Stock `moto_server`, this launcher on werkzeug (`--server werkzeug`) and on uvicorn (the
    default), in turn, the same load on each; medians of `rounds`."""
    import socket
    import statistics

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    launcher = [sys.executable, "-m", "lora_assets_tests.s3_server", "--port"]
    commands = {
        "moto_server": lambda p: [str(os.path.join(os.path.dirname(sys.executable), "moto_server")),
                                  "-H", "127.0.0.1", "-p", str(p)],
        "s3_server --server werkzeug": lambda p: [*launcher, str(p), "--server", "werkzeug"],
        "s3_server (uvicorn)": lambda p: [*launcher, str(p)],
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            p = port()
            proc = subprocess.Popen(cmd(p), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_port(p)
                samples[name].append(put_get_rate(f"http://127.0.0.1:{p}", requests=requests, threads=threads,
                                                  server_pid=proc.pid, client_stats=True))
            finally:
                proc.terminate()
                proc.wait(10)
    return {name: {k: statistics.median(s[k] for s in runs) for k in runs[0]} | {"rounds": rounds}
            for name, runs in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1", help="Address to bind (loopback by default).")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    parser.add_argument("--server", choices=SERVERS, default="uvicorn",
                        help="uvicorn (keep-alive, the default) or werkzeug (moto_server's dev server).")
    parser.add_argument("--measure", action="store_true",
                        help="Compare stock moto_server with this launcher on werkzeug and on uvicorn, and exit.")
    parser.add_argument("--requests", type=int, default=2000, help="--measure: objects PUT then GET per round.")
    parser.add_argument("--threads", type=int, default=16, help="--measure: the boto3 pool's width.")
    parser.add_argument("--rounds", type=int, default=3, help="--measure: rounds (medians are reported).")
    args = parser.parse_args(argv)
    if args.measure:
        import json

        print(json.dumps(measure(args.requests, args.threads, args.rounds), indent=2))
        return
    serve(args.host, args.port, args.server)


if __name__ == "__main__":
    main()
