"""Benchmark: the generation runner against a fixed-latency fake Messages endpoint, beside a
minimal asyncio client measured in the same run and beside the I/O bound C / latency.

Why a fake endpoint and not the simulator (bench_generation.py): the simulator composes a
conversation per request and shares the client's machine, so its own work sits inside every round
trip. Here the server does nothing but wait: `POST /v1/messages` sleeps `--latency` (requests
overlap) and returns one fixed, valid Message. It runs in a separate process (the machine has 2
cores, so its CPU does not compete inside the client's event loop) on plain asyncio streams
(HTTP/1.1, keep-alive, no framework). What is left is our client-side cost per request.

Measured for each concurrency C (`--concurrency`, default 16,32,64,128), over N requests
(`--requests`, default 200), medians of `--repeats` interleaved runs (runner, minimal, runner, ...):

- ours: `generate_messages` with `max_concurrency=C` (the real SDK, flow control, ledger, and
  the durable spool in a fresh temp dir when RunConfig has `spool_dir`, as in production);
  throughput counts stored items only, and items lost are reported;
- minimal: the peer floor outside our code: `httpx2.AsyncClient` (the HTTP library of the
  anthropic SDK) with one pool of C connections, an `asyncio.Semaphore(C)`, the same JSON body
  (`message_params`), json-decoding each answer and sleeping `retry-after-ms` on a 429. It is
  what a careful script would do, not a speed limit: httpcore checks every pooled connection on
  each request, so at high C this client is CPU-bound too, and a runner may beat it;
- bound: C / latency requests per second (no client can beat it). With N not a multiple of C the
  last wave is partly empty, so `bound_with_tail_per_s` = N / (ceil(N/C) x latency) is given too;
  both clients pay that tail, so the ratio ours / minimal is the figure (aim >= 0.95).

Then the 429 case at C = `--refuse-concurrency` (32): the server answers every
`--refuse-every`-th request (10; global arrival order) at once with HTTP 429 and
`retry-after-ms: 200` and no `anthropic-ratelimit-*` headers. Reported: our wall time against our
own fault-free wall time at the same C (aim <= 1.2), the minimal client's time in the same case,
and items lost (aim 0). And the client process's CPU time per request (`time.process_time()`
around each run / N), ours and minimal: one event loop does all of a client's work, so above
C = latency / CPU-per-request (`loop_saturation_concurrency`) it is busy for the whole round trip
and throughput stops following C.

`--profile PATH` also runs ours and the minimal client once each at the largest C under cProfile
and writes their top functions there (diagnosis, not a figure).

    .venv/bin/python bench/bench_peer.py [--requests 200] [--repeats 3] [--concurrency 16,32,64,128]
        [--latency 0.5] [--out bench/results/peer.json]

The server alone: `bench_peer.py serve --latency 0.5 [--refuse-every 10]` (prints its port).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import math
import pstats
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
REFUSAL_SLOWDOWN_AIM = 1.2


# =============================================================================================
# The fake server (runs in its own process)
# =============================================================================================

_TEXT = json.dumps({"conversation": [{"role": "client", "text": "Hello"}, {"role": "advisor", "text": "Hi"}]})
_RATE_LIMITED = json.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "rate limited"}}).encode()


class FakeMessages:
    """`POST /v1/messages` -> a fixed Message after `latency_s` (or an immediate 429 for every
    `refuse_every`-th request); `GET /stats` -> counts; `POST /reset` -> counts back to zero."""

    def __init__(self, latency_s: float, refuse_every: int) -> None:
        self.latency_s = latency_s
        self.refuse_every = refuse_every
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.ok = 0
        self.refused = 0
        self.other = 0
        self.max_inflight = 0
        self.inflight = 0
        self.connections = 0

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "ok_200": self.ok, "rate_limited_429": self.refused, "other": self.other,
                "max_inflight": self.max_inflight, "connections_opened": self.connections}

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
                request_line = await reader.readline()
                if not request_line:
                    return  # the client closed the connection
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                method, path, *_ = request_line.decode("latin-1").split()
                # Read the whole body before answering, as a real server would.
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                status, extra, body = await self._answer(method, path.split("?")[0], headers)
                close = headers.get("connection", "").lower() == "close"
                head = [f"HTTP/1.1 {status}", "content-type: application/json", f"content-length: {len(body)}",
                        f"connection: {'close' if close else 'keep-alive'}", *extra]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, list[str], bytes]:
        if method == "GET" and path == "/stats":
            return "200 OK", [], json.dumps(self.stats()).encode()
        if method == "POST" and path == "/reset":
            self.reset()
            return "200 OK", [], b"{}"
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
        request_id = [f"request-id: req_fake_{n}"]
        if self.refuse_every and n % self.refuse_every == 0:
            # Refused at once, no latency: the client learns of it immediately.
            self.refused += 1
            return "429 Too Many Requests", [*request_id, "retry-after-ms: 200", "retry-after: 1"], _RATE_LIMITED
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.latency_s)  # per request: concurrent requests overlap
        finally:
            self.inflight -= 1
        self.ok += 1
        return "200 OK", request_id, self._message(n)


async def _serve(latency_s: float, refuse_every: int) -> None:
    app = FakeMessages(latency_s, refuse_every)
    server = await asyncio.start_server(app.handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)  # the parent reads the port from here
    async with server:
        await server.serve_forever()


@contextmanager
def fake_server(latency_s: float, refuse_every: int = 0) -> Iterator[str]:
    """Start the server subprocess, yield its base URL, always terminate it."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", "--latency", str(latency_s),
                             "--refuse-every", str(refuse_every)], stdout=subprocess.PIPE, text=True)
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


def run_ours(base_url: str, requests: list[GenerationRequest], concurrency: int) -> dict[str, Any]:
    """Our runner, as production calls it (a fresh spool dir if RunConfig has one)."""
    from pydantic import SecretStr

    from lora_assets.generation.runner import MemoryLedger, RunAbortedError, RunConfig, generate_messages

    spool = tempfile.mkdtemp(prefix="bench-peer-spool-") if "spool_dir" in RunConfig.model_fields else None
    extra: dict[str, Any] = {"spool_dir": spool} if spool else {}
    config = RunConfig(model=MODEL, api_key=SecretStr("bench-key"), base_url=base_url, max_concurrency=concurrency,
                       max_attempts_per_item=10, **extra)
    ledger = MemoryLedger()
    error = None
    stats = None
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        stats = asyncio.run(generate_messages(requests, ledger, config))
    except RunAbortedError as exc:  # reported as lost items, not a crash of the bench
        error, stats = str(exc), exc.stats
    finally:
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if spool:
            shutil.rmtree(spool, ignore_errors=True)
    return {
        "wall_s": wall, "cpu_s": cpu, "stored": len(ledger.successes), "lost": len(requests) - len(ledger.successes),
        "failed": stats.failed if stats else None, "client_requests": stats.requests if stats else None,
        "client_429s": stats.rate_limited if stats else None, "retries": stats.retries if stats else None,
        "runner_elapsed_s": stats.elapsed_s if stats else None,
        "concurrency_decreases": getattr(stats, "concurrency_decreases", None), "error": error,
    }


async def _minimal(base_url: str, requests: list[GenerationRequest], concurrency: int) -> tuple[int, int, int]:
    """The peer floor: a semaphore, a pooled httpx2 client, json in and out, sleep on 429."""
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
                    if resp.status_code != 429:
                        resp.raise_for_status()
                    counts["429"] += 1
                    wait = float(resp.headers.get("retry-after-ms", "1000")) / 1000
                await asyncio.sleep(wait)  # outside the semaphore: the slot serves someone else
            return False

        done = await asyncio.gather(*(one(r) for r in requests))
    return sum(done), counts["requests"], counts["429"]


def run_minimal(base_url: str, requests: list[GenerationRequest], concurrency: int) -> dict[str, Any]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    stored, sent, refused = asyncio.run(_minimal(base_url, requests, concurrency))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "stored": stored, "lost": len(requests) - stored,
            "client_requests": sent, "client_429s": refused}


def measured(runner: Callable[[str, list[GenerationRequest], int], dict[str, Any]], base_url: str,
             requests: list[GenerationRequest], concurrency: int) -> dict[str, Any]:
    """One run on zeroed server counters, with the server's counts attached."""
    _control(base_url, "/reset", "POST")
    result = runner(base_url, requests, concurrency)
    result["server"] = _control(base_url, "/stats")
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
        "lost": lost,
        "runs_wall_s": [round(r["wall_s"], 3) for r in runs],
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
    """The 429 case; our fault-free time at the same C comes from the sweep, or is measured here."""
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
    ratio = _ratio(ours["wall_s"], fault_free["wall_s"])
    result = {
        "concurrency": concurrency,
        "refuse_every": refuse_every,
        "retry_after_ms": 200,
        "ours": ours,
        "minimal": minimal,
        "ours_fault_free_wall_s": fault_free["wall_s"],
        "ratio_ours_to_own_fault_free": ratio,
        "ratio_minimal_to_ours_fault_free": round(minimal["wall_s"] / fault_free["wall_s"], 3),
        "ratio_ours_to_minimal_wall": round(ours["wall_s"] / minimal["wall_s"], 3),
        "items_lost": ours["lost"],
        "meets_aim": ratio is not None and ratio <= REFUSAL_SLOWDOWN_AIM and ours["lost"] == 0,
    }
    print(f"429 every {refuse_every} at C={concurrency}: ours {ours['wall_s']}s vs own fault-free "
          f"{fault_free['wall_s']}s -> {ratio}x; minimal {minimal['wall_s']}s; lost {ours['lost']}", flush=True)
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
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="16,32,64,128", help="comma-separated concurrencies")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--refuse-every", type=int, default=10)
    parser.add_argument("--refuse-concurrency", type=int, default=32)
    parser.add_argument("--no-refusals", action="store_true", help="skip the 429 case (fault-free sweep only)")
    parser.add_argument("--profile", type=Path, default=None, help="also profile ours at the largest C into PATH")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer.json")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.latency, args.refuse_every))
        return {}

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
    cpu = {
        "ours_ms_per_request": round(statistics.median(r["ours"]["cpu_ms_per_request"] for r in rows), 3),
        "minimal_ms_per_request": round(statistics.median(r["minimal"]["cpu_ms_per_request"] for r in rows), 3),
        "by_concurrency": {r["concurrency"]: {"ours": r["ours"]["cpu_ms_per_request"],
                                              "minimal": r["minimal"]["cpu_ms_per_request"]} for r in rows},
        "note": "client process CPU (time.process_time) per stored item, median over the fault-free runs; "
                "the server runs in another process and is not counted",
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
        print(f"429 every {args.refuse_every} at C={args.refuse_concurrency}: ours {refused['ours']['wall_s']}s vs own "
              f"fault-free {refused['ours_fault_free_wall_s']}s -> {refused['ratio_ours_to_own_fault_free']}x "
              f"(aim <= {REFUSAL_SLOWDOWN_AIM}); minimal {refused['minimal']['wall_s']}s; "
              f"items lost {refused['items_lost']}")
    print(f"client CPU per request: ours {cpu['ours_ms_per_request']} ms, minimal {cpu['minimal_ms_per_request']} ms")
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
