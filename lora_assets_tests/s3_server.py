"""moto's real S3 server, dispatched faster: `python -m lora_assets_tests.s3_server --port P`.

The same as `moto_server -H 127.0.0.1 -p P` (moto's own `DomainDispatcherApplication`, backend
apps, `MotoRequestHandler` and werkzeug's threaded dev server, built the way `moto.server.main`
builds them) except for two things that cost CPU and change no answer:

* `get_backend_for_host` is memoised per host. Upstream it scans every backend's URL regexes
  (hundreds) under the dispatcher's global lock on every request; py-spy put that at ~65% of
  moto's CPU. Its result depends only on the host string (the patterns are a constant index), so
  a per-host cache returns the same backend. `None` (no backend) is not cached, so the upstream
  "Unable to find appropriate backend" message still prints each time.
* werkzeug's per-request access log line is off (errors are still logged).

Measured on this 2-core machine (`python -m lora_assets_tests.s3_server --measure`): boto3 with
16 threads, 2,000 PUTs then 2,000 GETs of 6 KB objects on loopback, no proxy, the two servers
alternating, median of 3 rounds; the server's CPU from /proc:

| server                | PUT req/s | GET req/s | server CPU ms / PUT | server CPU ms / GET |
|-----------------------|-----------|-----------|---------------------|---------------------|
| `moto_server` (stock) |       190 |       231 |                3.72 |                3.28 |
| this launcher         |       315 |       325 |                2.17 |                2.08 |

Client and server share the 2 cores (and the machine was shared with other work, load ~4), so
req/s are end-to-end and noisy (single runs ranged 178–256 → 314–369 PUT/s); the server's CPU
per request, -40%, is the steadier figure. Sampling the request threads' stacks (1,000 PUTs +
GETs): 75% of their time was inside `get_application` (scanning, or waiting for its lock) with
stock moto, under 3% with this launcher; what remains is werkzeug's socket I/O and moto's S3.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

__all__ = ["FastDomainDispatcher", "QuietMotoRequestHandler", "main", "measure", "put_get_rate", "serve"]


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


def serve(host: str, port: int) -> None:
    """Run moto's S3 (every moto backend, as `moto_server` does) on host:port until SIGTERM/SIGINT."""
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server.main: moto calls itself on it
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = FastDomainDispatcher(create_backend_app)
    app.debug = True  # as moto.server.main
    run_simple(host, port, app, threaded=True, use_reloader=False, request_handler=QuietMotoRequestHandler)


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
                 server_pid: int | None = None) -> dict[str, float]:
    """PUT then GET `requests` objects of `size` bytes with a `threads`-wide boto3 pool against
    `endpoint` (a fresh bucket, emptied and removed afterwards): requests per second of each
    phase, and with `server_pid` the server's CPU milliseconds per request of each phase."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

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
    try:
        with ThreadPoolExecutor(threads) as pool:
            for phase, call in phases.items():
                cpu0 = _cpu_s(server_pid) if server_pid else 0.0
                t0 = time.perf_counter()
                list(pool.map(call, keys))
                out[f"{phase}_per_s"] = round(requests / (time.perf_counter() - t0), 1)
                if server_pid:
                    out[f"server_cpu_ms_per_{phase}"] = round((_cpu_s(server_pid) - cpu0) / requests * 1000, 2)
            list(pool.map(lambda k: client.delete_object(Bucket=bucket, Key=k), keys))
    finally:
        client.delete_bucket(Bucket=bucket)
    return out


def measure(requests: int = 2000, threads: int = 16, rounds: int = 3) -> dict[str, Any]:
    """Stock `moto_server` vs this launcher, alternating, same load; medians of `rounds`."""
    import socket
    import statistics

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    commands = {
        "moto_server": lambda p: [str(os.path.join(os.path.dirname(sys.executable), "moto_server")),
                                  "-H", "127.0.0.1", "-p", str(p)],
        "s3_server": lambda p: [sys.executable, "-m", "lora_assets_tests.s3_server", "--port", str(p)],
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            p = port()
            proc = subprocess.Popen(cmd(p), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_port(p)
                samples[name].append(put_get_rate(f"http://127.0.0.1:{p}", requests=requests, threads=threads,
                                                  server_pid=proc.pid))
            finally:
                proc.terminate()
                proc.wait(10)
    return {name: {k: statistics.median(s[k] for s in runs) for k in runs[0]} | {"rounds": rounds}
            for name, runs in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1", help="Address to bind (loopback by default).")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    parser.add_argument("--measure", action="store_true", help="Compare stock moto_server with this launcher and exit.")
    args = parser.parse_args(argv)
    if args.measure:
        import json

        print(json.dumps(measure(), indent=2))
        return
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
