"""Benchmark: the generation runner against a fixed-latency fake Messages endpoint, beside a
minimal aiohttp client measured in the same run and beside the I/O bound C / latency.

Why a fake endpoint and not the simulator (bench_generation.py): the simulator composes a
conversation per request and shares the client's machine, so its own work sits inside every round
trip. Here the server does nothing but wait: `POST /v1/messages` sleeps `--latency` (requests
overlap) and returns one fixed, valid Message. It runs in a separate process on plain asyncio
streams (HTTP/1.1, keep-alive, no framework), reads each request head in one call, and reports its
own CPU (`server_cpu_s` in each run's `server`: ~0.1 ms a request, so it is never the bound). Its
answers look like the API's: every one carries `request-id` and the `anthropic-ratelimit-*`
headers of a high tier's buckets (so the client parses real headers); a 429 carries `retry-after`
in whole seconds.

Measured for each concurrency C (`--concurrency`, default 16,32,64,128), over N requests
(`--requests`, default 200), medians of `--repeats` interleaved runs (runner, minimal, runner, ...):

- ours: `generate_messages` with `max_concurrency=C` (the real SDK's client configuration and
  error types, flow control, ledger, and the durable spool in a fresh temp dir, as in
  production); throughput counts stored items only, and items lost are reported;
- minimal (`--peer aiohttp`, the default): an `aiohttp.ClientSession` with a connector of C
  connections, an `asyncio.Semaphore(C)`, the same JSON body (`json.dumps(message_params(...))`),
  json-decoding each answer and sleeping `retry-after` on a 429/529: what a careful script would
  do. `--peer httpx` uses `httpx2.AsyncClient` with one pool of C connections instead; httpcore
  checks every pooled connection on each request, so at C=1024 that client is CPU-bound far below
  C / latency (and collapses when the machine is busy): it is no floor there;
- bound: C / latency requests per second (no client can beat it). With N not a multiple of C the
  last wave is partly empty, so `bound_with_tail_per_s` = N / (ceil(N/C) x latency) is given too;
  both clients pay that tail, so the ratio ours / minimal is the figure (aim >= 0.95).

Client CPU: process CPU (`time.process_time()` and `getrusage` user+system, all threads) around
each run / N, ours and minimal in the same run. One event loop does all of a client's work, so
above C = latency / CPU-per-request (`loop_saturation_concurrency`) it is busy for the whole
round trip and throughput stops following C.

Then the 429 case at C = `--refuse-concurrency` (32): the server answers every
`--refuse-every`-th request (10; global arrival order) at once with HTTP 429, `retry-after: 1`
(whole seconds, as the API sends it; no `retry-after-ms`) and bucket headers that show room (a
limit over a shorter interval than the headers report: a client must honour `retry-after`).
Reported: our wall time against the minimal client's on the same server (aim <= 1.05), our own
fault-free time, items lost and failed (aim 0). And a refusal storm: every 2nd request a 429 and
every 3rd of the others a 529, ours with ONE attempt per item and no retry budget: any refusal
that used up an attempt would fail its item (aim: all stored, 0 failed).

`--profile PATH` also runs ours and the minimal client once each at the largest C under cProfile
and writes their top functions there (diagnosis, not a figure).

    .venv/bin/python bench/bench_peer.py [--requests 200] [--repeats 3] [--concurrency 16,32,64,128]
        [--latency 0.5] [--peer aiohttp|httpx] [--out bench/results/peer.json]

The server alone: `bench_peer.py serve --latency 0.5 [--refuse-every 10] [--overload-every 0]`
(prints its port).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import json
import math
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from lora_assets.generation.runner import GenerationRequest

# Our package (and the SDK) is imported lazily, inside the client-side functions: the server
# subprocess runs this same file and needs nothing but the standard library.

MODEL = "claude-haiku-5-5"
THROUGHPUT_AIM = 0.95
#: The 429 case: our wall time at most this x the minimal client's on the same server (>= 0.95 of its throughput).
REFUSAL_SLOWDOWN_AIM = 1.05


# =============================================================================================
# The fake server (runs in its own process)
# =============================================================================================

_TEXT = json.dumps({"conversation": [{"role": "client", "text": "Hello"}, {"role": "advisor", "text": "Hi"}]})
_RATE_LIMITED = json.dumps({"type": "error", "error": {
    "type": "rate_limit_error",
    "message": "This request would exceed your organization's rate limit. Retry after the retry-after header's seconds."},
}).encode()
_OVERLOADED = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()

#: The fake key's limits, per minute (a high tier: they never bind at C=1024, 5 s latency, but every
#: answer reports them as the API does, so the client parses real headers).
LIMITS = {"requests": 50_000, "input-tokens": 50_000_000, "output-tokens": 10_000_000}
#: What one answer takes from the buckets (the fixed Message's usage: input 1,000 uncached, output 800).
USE = {"requests": 1, "input-tokens": 1000, "output-tokens": 800}


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class _Buckets:
    """The API's rate-limit buckets, refilled continuously over a minute, only to report them:
    `anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}`
    (remaining token counts rounded down to the thousand, reset = when full again, RFC 3339)."""

    def __init__(self) -> None:
        now = time.time()
        self.level = {k: float(v) for k, v in LIMITS.items()}
        self.at = now
        self._cache: tuple[float, list[str]] | None = None

    def take(self, now: float) -> None:
        for k, v in LIMITS.items():
            self.level[k] = min(float(v), self.level[k] + (now - self.at) * v / 60.0) - USE[k]
        self.at = now

    def headers(self, now: float) -> list[str]:
        # The same second-rounded values for a millisecond's answers: headers cost the server ~nothing.
        if self._cache is not None and now - self._cache[0] < 0.001:
            return self._cache[1]
        out = []
        for k, limit in LIMITS.items():
            level = max(0.0, min(float(limit), self.level[k] + (now - self.at) * limit / 60.0))
            remaining = int(level) if k == "requests" else int(level) // 1000 * 1000
            reset = _rfc3339(now + (limit - level) * 60.0 / limit)
            out += [f"anthropic-ratelimit-{k}-limit: {limit}", f"anthropic-ratelimit-{k}-remaining: {remaining}",
                    f"anthropic-ratelimit-{k}-reset: {reset}"]
            if k == "output-tokens":  # the more restrictive token bucket (output, here)
                out += [f"anthropic-ratelimit-tokens-limit: {limit}", f"anthropic-ratelimit-tokens-remaining: {remaining}",
                        f"anthropic-ratelimit-tokens-reset: {reset}"]
        self._cache = (now, out)
        return out


class FakeMessages:
    """`POST /v1/messages` -> a fixed Message after `latency_s`, or at once a 429 for every
    `refuse_every`-th request / a 529 for every `overload_every`-th (global arrival order);
    `GET /stats` -> counts; `POST /reset` -> counts back to zero.

    Answers look like the API's: every one carries the `anthropic-ratelimit-*` headers of the
    key's buckets (`LIMITS`, refilled over a minute) and a `request-id`; a 429 carries
    `retry-after` in whole seconds (`retry_after_s`, no `retry-after-ms`) and its body names the
    limit; a 529 `overloaded_error` carries no wait. The refused requests are not explained by
    the buckets (the headers still show room), like a limit enforced over a shorter interval
    than the headers report: a client must honour `retry-after`."""

    def __init__(self, latency_s: float, refuse_every: int, overload_every: int = 0, retry_after_s: int = 1,
                 hang: bool = False, hang_all: bool = False) -> None:
        self.hang = hang
        self.hang_all = hang_all
        self.latency_s = latency_s
        self.refuse_every = refuse_every
        self.overload_every = overload_every
        self.retry_after_s = retry_after_s
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.ok = 0
        self.refused = 0
        self.overloaded = 0
        self.other = 0
        self.max_inflight = 0
        self.inflight = 0
        self.connections = 0
        self.buckets = _Buckets()
        self.cpu0 = time.process_time()

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "ok_200": self.ok, "rate_limited_429": self.refused,
                "overloaded_529": self.overloaded, "other": self.other, "max_inflight": self.max_inflight,
                "connections_opened": self.connections,
                "server_cpu_s": round(time.process_time() - self.cpu0, 3)}

    def _message(self, n: int) -> bytes:
        return json.dumps({
            "id": f"msg_fake_{n}", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "text", "text": _TEXT}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1000, "output_tokens": 800, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 900},
        }).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests one after the other (HTTP/1.1 keep-alive, no pipelining)."""
        self.connections += 1
        try:
            while True:
                # The head in one read (the client writes it in one go), then the body by length.
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, *_ = lines[0].split()
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                # Read the whole body before answering, as a real server would.
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                status, extra, body = await self._answer(method, path.split("?")[0], headers)
                close = headers.get("connection", "").lower() == "close"
                out = [f"HTTP/1.1 {status}", "content-type: application/json", f"content-length: {len(body)}",
                       f"connection: {'close' if close else 'keep-alive'}", *extra]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            return
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, list[str], bytes]:
        if method == "GET" and path == "/stats":
            return "200 OK", [], json.dumps(self.stats()).encode()
        if method == "POST" and path == "/reset":
            self.reset()
            return "200 OK", [], b"{}"
        if method == "POST" and path == "/v1/messages/count_tokens" and not self.hang_all:
            # Planning counts input tokens first (`batch create`): about 4 characters a token.
            self.other += 1
            return "200 OK", [], json.dumps({"input_tokens": int(headers.get("content-length", "0")) // 4}).encode()
        if self.hang_all:
            await asyncio.Event().wait()
        if method != "POST" or path != "/v1/messages":
            self.other += 1
            return "404 Not Found", [], json.dumps(
                {"type": "error", "error": {"type": "not_found_error", "message": path}}).encode()
        if not (headers.get("x-api-key") or headers.get("authorization", "").startswith("Bearer ")):
            self.other += 1
            return "401 Unauthorized", [], json.dumps(
                {"type": "error", "error": {"type": "authentication_error", "message": "no key"}}).encode()
        self.requests += 1
        n = self.requests
        if self.hang:  # accepts and reads the request, never answers
            await asyncio.Event().wait()
        now = time.time()
        request_id = f"request-id: req_fake_{n}"
        if self.refuse_every and n % self.refuse_every == 0:
            # Refused at once, no latency: the client learns of it immediately.
            self.refused += 1
            return ("429 Too Many Requests", [request_id, f"retry-after: {self.retry_after_s}",
                                              *self.buckets.headers(now)], _RATE_LIMITED)
        if self.overload_every and n % self.overload_every == 0:
            self.overloaded += 1
            return "529 Overloaded", [request_id, *self.buckets.headers(now)], _OVERLOADED
        self.buckets.take(now)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.latency_s)  # per request: concurrent requests overlap
        finally:
            self.inflight -= 1
        self.ok += 1
        return "200 OK", [request_id, *self.buckets.headers(time.time())], self._message(n)


async def _serve(latency_s: float, refuse_every: int, overload_every: int = 0, hang: bool = False,
                 hang_all: bool = False) -> None:
    app = FakeMessages(latency_s, refuse_every, overload_every, hang=hang, hang_all=hang_all)
    server = await asyncio.start_server(app.handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)  # the parent reads the port from here
    async with server:
        await server.serve_forever()


@contextmanager
def fake_server(latency_s: float, refuse_every: int = 0, overload_every: int = 0) -> Iterator[str]:
    """Start the server subprocess, yield its base URL, always terminate it."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", "--latency", str(latency_s),
                             "--refuse-every", str(refuse_every), "--overload-every", str(overload_every)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"fake server did not start (said {line!r}, exit code {proc.poll()})")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _control(base_url: str, path: str, method: str = "GET") -> dict[str, Any]:
    # Outside the measured runs: a blocking stdlib call is fine.
    req = urllib.request.Request(base_url + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


# =============================================================================================
# The two clients
# =============================================================================================


def make_requests(n: int) -> list[GenerationRequest]:
    """The same N requests bench_generation.py sends: its long system prompt, a scaffolded user
    prompt (imported here so the fake server's process never loads lora_assets)."""
    from bench_generation import make_requests as same_as_bench_generation

    return same_as_bench_generation(n)


def run_ours(base_url: str, requests: list[GenerationRequest], concurrency: int, *,
             attempts: dict[str, int] | None = None) -> dict[str, Any]:
    """Our runner, as production calls it (a fresh spool dir if RunConfig has one). `attempts`:
    RunConfig overrides (`max_attempts_per_item`, `retry_budget`) for the refusal storm."""
    attempts = attempts or {}
    from pydantic import SecretStr

    from lora_assets.generation.runner import MemoryLedger, RunAbortedError, RunConfig, generate_messages

    spool = tempfile.mkdtemp(prefix="bench-peer-spool-") if "spool_dir" in RunConfig.model_fields else None
    extra: dict[str, Any] = {"spool_dir": spool} if spool else {}
    # Default attempts (4) and retry budget: a 429/529 must not use them up, however many.
    config = RunConfig(model=MODEL, api_key=SecretStr("bench-key"), base_url=base_url, max_concurrency=concurrency,
                       **(extra | attempts))
    ledger = MemoryLedger()
    error = None
    stats = None
    cpu0, ru0, t0 = time.process_time(), _cpu_s(), time.perf_counter()
    try:
        stats = asyncio.run(generate_messages(requests, ledger, config))
    except RunAbortedError as exc:  # reported as lost items, not a crash of the bench
        error, stats = str(exc), exc.stats
    finally:
        wall, cpu, ru = time.perf_counter() - t0, time.process_time() - cpu0, _cpu_s() - ru0
        if spool:
            shutil.rmtree(spool, ignore_errors=True)
    return {
        "wall_s": wall, "cpu_s": cpu, "rusage_cpu_s": ru, "stored": len(ledger.successes),
        "lost": len(requests) - len(ledger.successes), "failed": stats.failed if stats else None,
        "client_529s": stats.overloaded if stats else None,
        "max_attempts_used": max((r.extra.get("attempts", 0) for r in ledger.successes.values()), default=0), "client_requests": stats.requests if stats else None,
        "client_429s": stats.rate_limited if stats else None, "retries": stats.retries if stats else None,
        "runner_elapsed_s": stats.elapsed_s if stats else None,
        "concurrency_decreases": getattr(stats, "concurrency_decreases", None), "error": error,
    }


#: Which minimal client `run_minimal` uses: "aiohttp" (the peer the acceptance names) or "httpx"
#: (httpx2, the SDK's HTTP library: one pool of C connections, which httpcore scans on every
#: request, so at C=1024 it is CPU-bound far below C / latency). Set by `--peer`.
PEER = "aiohttp"


async def _minimal_aiohttp(base_url: str, requests: list[GenerationRequest], concurrency: int) -> tuple[int, int, int]:
    """The peer floor: a semaphore, an aiohttp session (a connector of C connections), json in
    and out (`json.dumps(message_params(...))` per request), sleep `retry-after` on a 429/529."""
    import aiohttp

    from lora_assets.generation.client import ITEM_ID_HEADER, message_params

    gate = asyncio.Semaphore(concurrency)
    counts = {"requests": 0, "429": 0}
    headers = {"x-api-key": "bench-key", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url, connector=connector, headers=headers, timeout=timeout) as session:

        async def one(request: GenerationRequest) -> bool:
            for _ in range(10):
                async with gate:
                    counts["requests"] += 1
                    body = json.dumps(message_params(request, MODEL)).encode()
                    async with session.post("/v1/messages", data=body, headers={ITEM_ID_HEADER: request.item_id}) as resp:
                        content = await resp.read()
                        status, wait_header = resp.status, resp.headers.get("retry-after", "1")
                    if status == 200:
                        return json.loads(content)["stop_reason"] == "end_turn"
                    if status not in (429, 529):
                        raise RuntimeError(f"HTTP {status}: {content[:200]!r}")
                    counts["429"] += 1
                    wait = float(wait_header)  # the API's wait, whole seconds (a 529 names none: 1 s)
                await asyncio.sleep(wait)  # outside the semaphore: the slot serves someone else
            return False

        done = await asyncio.gather(*(one(r) for r in requests))
    return sum(done), counts["requests"], counts["429"]


async def _minimal(base_url: str, requests: list[GenerationRequest], concurrency: int) -> tuple[int, int, int]:
    """The peer floor with httpx2: a semaphore, a pooled httpx2 client, json in and out, sleep on 429."""
    import httpx2

    from lora_assets.generation.client import ITEM_ID_HEADER, message_params

    gate = asyncio.Semaphore(concurrency)
    counts = {"requests": 0, "429": 0}
    headers = {"x-api-key": "bench-key", "anthropic-version": "2023-06-01"}
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx2.AsyncClient(base_url=base_url, limits=limits, timeout=60.0, headers=headers) as client:

        async def one(request: GenerationRequest) -> bool:
            for _ in range(10):
                async with gate:
                    counts["requests"] += 1
                    resp = await client.post("/v1/messages", json=message_params(request, MODEL),
                                             headers={ITEM_ID_HEADER: request.item_id})
                    if resp.status_code == 200:
                        return json.loads(resp.content)["stop_reason"] == "end_turn"
                    if resp.status_code not in (429, 529):
                        resp.raise_for_status()
                    counts["429"] += 1
                    # The API's wait, whole seconds (a 529 names none: one second).
                    wait = float(resp.headers.get("retry-after", "1"))
                await asyncio.sleep(wait)  # outside the semaphore: the slot serves someone else
            return False

        done = await asyncio.gather(*(one(r) for r in requests))
    return sum(done), counts["requests"], counts["429"]


def _cpu_s() -> float:
    """This process's CPU seconds (user + system, every thread), from getrusage."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_minimal(base_url: str, requests: list[GenerationRequest], concurrency: int) -> dict[str, Any]:
    client = _minimal_aiohttp if PEER == "aiohttp" else _minimal
    cpu0, ru0, t0 = time.process_time(), _cpu_s(), time.perf_counter()
    stored, sent, refused = asyncio.run(client(base_url, requests, concurrency))
    wall, cpu, ru = time.perf_counter() - t0, time.process_time() - cpu0, _cpu_s() - ru0
    return {"peer": PEER, "wall_s": wall, "cpu_s": cpu, "rusage_cpu_s": ru, "stored": stored,
            "lost": len(requests) - stored, "client_requests": sent, "client_429s": refused}


def measured(runner: Callable[[str, list[GenerationRequest], int], dict[str, Any]], base_url: str,
             requests: list[GenerationRequest], concurrency: int) -> dict[str, Any]:
    """One run on zeroed server counters, with the server's counts attached."""
    _control(base_url, "/reset", "POST")
    result = runner(base_url, requests, concurrency)
    result["server"] = _control(base_url, "/stats")
    result["load_1m"] = round(os.getloadavg()[0], 2)  # the machine is shared: how busy it was
    return result


# =============================================================================================
# Figures
# =============================================================================================


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _summary(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    wall = statistics.median(r["wall_s"] for r in runs)
    lost = max(r["lost"] for r in runs)
    if lost:
        print(f"WARNING: {lost} of {n} items lost in a run: its throughput counts stored items only", flush=True)
    return {
        "wall_s": round(wall, 3),
        # Stored items per second (a run that lost items does not get credit for them).
        "throughput_per_s": round(statistics.median(r["stored"] / r["wall_s"] for r in runs), 2),
        "cpu_ms_per_request": round(statistics.median(r["cpu_s"] for r in runs) / n * 1000, 3),
        "rusage_cpu_ms_per_request": round(statistics.median(r["rusage_cpu_s"] for r in runs) / n * 1000, 3),
        "server_cpu_ms_per_request": round(statistics.median(r["server"]["server_cpu_s"] for r in runs) / n * 1000, 3),
        "lost": lost,
        "runs_wall_s": [round(r["wall_s"], 3) for r in runs],
        "load_1m": [r["load_1m"] for r in runs],
        "runs": runs,
    }


def sweep(base_url: str, requests: list[GenerationRequest], concurrencies: list[int], repeats: int,
          latency_s: float) -> list[dict[str, Any]]:
    n = len(requests)
    rows = []
    for c in concurrencies:
        ours_runs, minimal_runs = [], []
        for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
            ours_runs.append(measured(run_ours, base_url, requests, c))
            minimal_runs.append(measured(run_minimal, base_url, requests, c))
        ours, minimal = _summary(ours_runs, n), _summary(minimal_runs, n)
        bound = c / latency_s
        tail_bound = n / (math.ceil(n / c) * latency_s)
        row = {
            "concurrency": c,
            "ours": ours,
            "minimal": minimal,
            "bound_per_s": round(bound, 2),
            "bound_with_tail_per_s": round(tail_bound, 2),
            "ratio_ours_to_minimal": _ratio(ours["throughput_per_s"], minimal["throughput_per_s"]),
            "ratio_ours_to_bound": round(ours["throughput_per_s"] / bound, 3),
            "ratio_minimal_to_bound": round(minimal["throughput_per_s"] / bound, 3),
            "ratio_ours_to_tail_bound": round(ours["throughput_per_s"] / tail_bound, 3),
        }
        row["meets_aim"] = (row["ratio_ours_to_minimal"] or 0.0) >= THROUGHPUT_AIM and ours["lost"] == 0
        rows.append(row)
        print(f"C={c}: ours {ours['wall_s']}s ({ours['throughput_per_s']}/s), minimal {minimal['wall_s']}s "
              f"({minimal['throughput_per_s']}/s), bound {bound}/s -> ours/minimal {row['ratio_ours_to_minimal']}",
              flush=True)
    return rows


def refusals(requests: list[GenerationRequest], concurrency: int, repeats: int, latency_s: float, refuse_every: int,
             fault_free: dict[str, Any] | None) -> dict[str, Any]:
    """The 429 case (every `refuse_every`-th request answered 429 with `retry-after: 1`), ours
    beside the minimal client on the same server; our fault-free time at the same C comes from
    the sweep, or is measured here."""
    n = len(requests)
    if fault_free is None:
        with fake_server(latency_s) as base_url:
            fault_free = _summary([measured(run_ours, base_url, requests, concurrency) for _ in range(repeats)], n)
    ours_runs, minimal_runs = [], []
    with fake_server(latency_s, refuse_every) as base_url:
        for _ in range(repeats):
            ours_runs.append(measured(run_ours, base_url, requests, concurrency))
            minimal_runs.append(measured(run_minimal, base_url, requests, concurrency))
    ours, minimal = _summary(ours_runs, n), _summary(minimal_runs, n)
    ratio = _ratio(ours["wall_s"], minimal["wall_s"])
    failed = max(r["failed"] or 0 for r in ours_runs)
    result = {
        "concurrency": concurrency,
        "refuse_every": refuse_every,
        "retry_after": "1 (whole seconds, no retry-after-ms; anthropic-ratelimit-* headers showing room)",
        "ours": ours,
        "minimal": minimal,
        "ours_fault_free_wall_s": fault_free["wall_s"],
        "ratio_ours_to_own_fault_free": _ratio(ours["wall_s"], fault_free["wall_s"]),
        "ratio_ours_to_minimal_wall": ratio,
        "items_lost": ours["lost"],
        "items_failed": failed,
        "meets_aim": ratio is not None and ratio <= REFUSAL_SLOWDOWN_AIM and ours["lost"] == 0 and failed == 0,
    }
    print(f"429 every {refuse_every} (retry-after 1) at C={concurrency}: ours {ours['wall_s']}s, minimal "
          f"{minimal['wall_s']}s -> {ratio}x (own fault-free {fault_free['wall_s']}s); lost {ours['lost']}, "
          f"failed {failed}", flush=True)
    return result


def storm(requests: list[GenerationRequest], concurrency: int, latency_s: float, refuse_every: int,
          overload_every: int) -> dict[str, Any]:
    """Refusals only, many: every `refuse_every`-th request a 429 (`retry-after: 1`), every
    `overload_every`-th of the others a 529, and ours run with ONE attempt per item and no retry
    budget: an item fails only if a refusal used up an attempt. Its wall time is no figure: two
    answers in three refused is sustained refusal, so flow control halves the concurrency (as it
    should against a real API) and 529s back off exponentially."""
    n = len(requests)
    with fake_server(latency_s, refuse_every, overload_every) as base_url:
        ours = measured(functools.partial(run_ours, attempts={"max_attempts_per_item": 1, "retry_budget": 0}),
                        base_url, requests, concurrency)
    server = ours["server"]
    result = {
        "concurrency": concurrency, "refuse_every": refuse_every, "overload_every": overload_every,
        "max_attempts_per_item": 1, "retry_budget": 0,
        "server_429s": server["rate_limited_429"], "server_529s": server["overloaded_529"],
        "refused_share": round((server["rate_limited_429"] + server["overloaded_529"]) / max(1, server["requests"]), 3),
        "stored": ours["stored"], "failed": ours["failed"], "lost": ours["lost"], "wall_s": round(ours["wall_s"], 2),
        "max_attempts_used": ours["max_attempts_used"], "error": ours["error"],
        "meets_aim": ours["stored"] == n and not ours["failed"] and ours["error"] is None,
    }
    print(f"refusal storm at C={concurrency}: {server['rate_limited_429']} x 429 + {server['overloaded_529']} x 529 "
          f"({result['refused_share']:.0%} of {server['requests']} requests), 1 attempt per item: {ours['stored']}/{n} "
          f"stored, {ours['failed']} failed in {result['wall_s']}s", flush=True)
    return result


def profile(base_url: str, requests: list[GenerationRequest], concurrency: int, path: Path) -> None:
    """One run of ours and one of the minimal client under cProfile (wall clock, so the idle
    event-loop wait shows as `select.epoll.poll`): top functions by own and cumulative time."""
    out = io.StringIO()
    for name, runner in (("ours", run_ours), ("minimal", run_minimal)):
        profiler = cProfile.Profile()
        profiler.enable()
        runner(base_url, requests, concurrency)
        profiler.disable()
        out.write(f"===== {name}, C={concurrency}, N={len(requests)} =====\n")
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(50)
    path.write_text(out.getvalue())
    print(f"profiles of ours and minimal at C={concurrency} written to {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the fake server alone (prints its port)")
    serve.add_argument("--latency", type=float, default=0.5)
    serve.add_argument("--refuse-every", type=int, default=0)
    serve.add_argument("--overload-every", type=int, default=0)
    serve.add_argument("--hang", action="store_true", help="read each Messages request and never answer it "
                       "(count_tokens is answered)")
    serve.add_argument("--hang-all", action="store_true", help="read every request and never answer it")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="16,32,64,128", help="comma-separated concurrencies")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--refuse-every", type=int, default=10)
    parser.add_argument("--refuse-concurrency", type=int, default=32)
    parser.add_argument("--no-refusals", action="store_true", help="skip the 429 case (fault-free sweep only)")
    parser.add_argument("--peer", choices=("aiohttp", "httpx"), default="aiohttp", help="the minimal client's library")
    parser.add_argument("--profile", type=Path, default=None, help="also profile ours at the largest C into PATH")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer.json")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.latency, args.refuse_every, args.overload_every, args.hang, args.hang_all))
        return {}

    global PEER
    PEER = args.peer
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    n = args.requests
    requests = make_requests(n)
    started = time.perf_counter()
    with fake_server(args.latency) as base_url:
        # Warm-up (not recorded): first-use costs (lazy imports, pydantic schema builds) once.
        warm = requests[: min(n, 20)]
        run_ours(base_url, warm, 16)
        run_minimal(base_url, warm, 16)
        rows = sweep(base_url, requests, concurrencies, args.repeats, args.latency)
        if args.profile:
            profile(base_url, requests, max(concurrencies), args.profile)
    same_c = next((r["ours"] for r in rows if r["concurrency"] == args.refuse_concurrency), None)
    refused = None if args.no_refusals else refusals(requests, args.refuse_concurrency, args.repeats, args.latency,
                                                     args.refuse_every, same_c)
    stormed = None if args.no_refusals else storm(requests[:64], args.refuse_concurrency, args.latency, 2, 3)
    cpu = {
        "ours_ms_per_request": round(statistics.median(r["ours"]["cpu_ms_per_request"] for r in rows), 3),
        "minimal_ms_per_request": round(statistics.median(r["minimal"]["cpu_ms_per_request"] for r in rows), 3),
        "by_concurrency": {r["concurrency"]: {"ours": r["ours"]["cpu_ms_per_request"],
                                              "minimal": r["minimal"]["cpu_ms_per_request"]} for r in rows},
        "rusage_by_concurrency": {r["concurrency"]: {"ours": r["ours"]["rusage_cpu_ms_per_request"],
                                                     "minimal": r["minimal"]["rusage_cpu_ms_per_request"]} for r in rows},
        "peer": PEER,
        "note": "client process CPU (time.process_time; getrusage user+system agrees) per request, median over the "
                "fault-free runs; the server runs in another process and is not counted (its own CPU is in "
                "server_cpu_ms_per_request)",
    }
    cpu["ratio_ours_to_minimal"] = _ratio(cpu["ours_ms_per_request"], cpu["minimal_ms_per_request"])
    # One event loop does all of a client's work: above C = latency / CPU-per-request it is busy
    # the whole round trip, and throughput stops following C (the bound's assumption fails).
    cpu["loop_saturation_concurrency"] = {
        "ours": round(args.latency / (cpu["ours_ms_per_request"] / 1000)),
        "minimal": round(args.latency / (cpu["minimal_ms_per_request"] / 1000)),
    }
    results = {
        "requests": n,
        "latency_s": args.latency,
        "repeats": args.repeats,
        "throughput_aim": THROUGHPUT_AIM,
        "refusal_slowdown_aim": REFUSAL_SLOWDOWN_AIM,
        "concurrency": rows,
        "rate_limited": refused,
        "refusal_storm": stormed,
        "cpu_per_request": cpu,
        "note": "fixed-latency fake Messages endpoint in a separate process; bound = C / latency; "
                "bound_with_tail counts the partly empty last wave (N not a multiple of C); medians of interleaved runs",
        "total_bench_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\nN={n}, latency {args.latency}s, medians of {args.repeats}")
    print(f"{'C':>5} {'ours s':>8} {'minimal s':>10} {'ours/s':>8} {'minimal/s':>10} {'bound/s':>8} {'ours/min':>9} "
          f"{'ours/bound':>11}")
    for r in rows:
        print(f"{r['concurrency']:>5} {r['ours']['wall_s']:>8} {r['minimal']['wall_s']:>10} "
              f"{r['ours']['throughput_per_s']:>8} {r['minimal']['throughput_per_s']:>10} {r['bound_per_s']:>8} "
              f"{r['ratio_ours_to_minimal']:>9} {r['ratio_ours_to_bound']:>11}")
    if refused is not None:
        print(f"429 every {args.refuse_every} (retry-after 1) at C={args.refuse_concurrency}: ours "
              f"{refused['ours']['wall_s']}s vs minimal {refused['minimal']['wall_s']}s -> "
              f"{refused['ratio_ours_to_minimal_wall']}x (aim <= {REFUSAL_SLOWDOWN_AIM}); own fault-free "
              f"{refused['ours_fault_free_wall_s']}s; items lost {refused['items_lost']}, failed {refused['items_failed']}")
    if stormed is not None:
        print(f"refusal storm: {stormed['server_429s']} x 429 + {stormed['server_529s']} x 529, 1 attempt per item: "
              f"{stormed['stored']} stored, {stormed['failed']} failed")
    print(f"client CPU per request: ours {cpu['ours_ms_per_request']} ms, minimal {cpu['minimal_ms_per_request']} ms")
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
