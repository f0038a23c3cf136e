"""Benchmark: an OTPM-bound run on the strict simulator, thinking on, against the bound the
tightest token bucket sets, with `max_tokens` sized from observed output beside the same run
with `max_tokens` fixed at 8192.

The scenario of issue 20: limits of 4,000 RPM / 400,000 ITPM / 80,000 OTPM and >= 1,000 items of
about 1,500 output tokens each, thinking included. At a real minute that is ~53 items a minute
(19 minutes a run). `--window 60 --latency 20` runs it in real time (the buckets refill their
limit over 60 s; a ~1,500-token generation takes 20 s); the default compresses time 20x: the
buckets refill their whole limit over `--window` seconds (3 s: the same limits per 3 s) and the
latency is `--latency` (1 s, scaled the same way). Every bucket refills continuously (the
simulator's token buckets, per model); OTPM reserves `max_tokens` when a request starts and
settles to the real output when it ends. `--mode sized|fixed` runs one of the two runs (each
against its own simulator: two processes can run the two modes side by side).

Bound: each bucket admits `limit / window` of its unit per second; a request takes 1 request,
its uncached input (input + cache writes; cache reads are free) and its real output (thinking
included), means measured in the run. The tightest is the steady bound; a run also starts with
full buckets, so the bound over a run of T seconds is (limit + limit/window x T) / per-item.
Reported: throughput (stored / wall s), both bounds, throughput / bound-over-the-run (aim
>= 0.9), items failed (aim 0), 429s, truncations (max_tokens too small), max_tokens used.

    .venv/bin/python bench/bench_tokens.py [--items 1000] [--window 3] [--latency 1] [--effort medium]
        [--mode both|sized|fixed] [--out bench/results/tokens.json]
    # real time, the two modes side by side (~20 min each):
    .venv/bin/python bench/bench_tokens.py --window 60 --latency 20 --mode sized --out bench/results/tokens-real-sized.json
    .venv/bin/python bench/bench_tokens.py --window 60 --latency 20 --mode fixed --out bench/results/tokens-real-fixed.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from pydantic import SecretStr  # noqa: E402

import bench_generation  # noqa: E402
from lora_assets.core.estimate import expected_output  # noqa: E402
from lora_assets.generation.runner import MemoryLedger, RunConfig, generate_messages  # noqa: E402
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig  # noqa: E402

MODEL = "claude-haiku-5-5"
AIM = 0.9
LIMITS = {"rpm": 4_000, "itpm": 400_000, "otpm": 80_000}


def make_requests(n: int, turns: int = 10) -> list[Any]:
    """bench_generation's requests asking for `turns` turns: ~1,500 output tokens each with
    thinking at effort medium on the simulator."""
    return [r.model_copy(update={"user": r.user.replace("turn_count: 6", f"turn_count: {turns}")})
            for r in bench_generation.make_requests(n)]


def _progress(label: str, ledger: MemoryLedger, sim: ClaudeSimulator, started: float, items: int,
              done: threading.Event, every_s: float = 60.0) -> None:
    """A line every `every_s` while a run lasts (long real-time runs are checked on from outside)."""
    while not done.wait(every_s):
        seen = sim.stats.snapshot()
        print(f"[{label}] {time.perf_counter() - started:7.0f}s: {len(ledger.successes)}/{items} stored, "
              f"{len(ledger.failures) if hasattr(ledger, 'failures') else '?'} failed, "
              f"server outcomes {dict(seen.get('by_outcome', {}))}", flush=True)


def run(items: int, window: float, latency: float, effort: str, concurrency: int, *, sized: bool) -> dict[str, Any]:
    """One run on a fresh simulator with the scenario's limits."""
    fault = FaultConfig(latency_s=latency, rpm_limit=LIMITS["rpm"], itpm_limit=LIMITS["itpm"],
                        otpm_limit=LIMITS["otpm"], rate_window_s=window)
    requests = make_requests(items)
    with ClaudeSimulator(fault) as sim:
        config = RunConfig(model=MODEL, api_key=SecretStr("bench-key"), base_url=sim.base_url,
                           max_concurrency=concurrency, effort=effort, size_max_tokens=sized,
                           # What raw_conversations passes: the tier's planning default, thinking included.
                           expected_output_tokens=expected_output("template", None, effort=effort).tokens_per_item)
        # Warm-up, not timed: the simulator builds its request validators on first use, and a
        # first wave of concurrent requests racing to build them takes seconds.
        warm = [r.model_copy(update={"item_id": f"warm-{i}"}) for i, r in enumerate(make_requests(4))]
        asyncio.run(generate_messages(warm, MemoryLedger(), config.model_copy(update={"run_id": "warm-up"})))
        time.sleep(window)  # the buckets are full again
        sim.reset_stats()  # warm-up requests out of the counts
        ledger = MemoryLedger()
        started = time.perf_counter()
        done = threading.Event()
        label = "sized" if sized else "fixed 8192"
        progress = threading.Thread(target=_progress, args=(label, ledger, sim, started, items, done), daemon=True)
        progress.start()
        try:
            stats = asyncio.run(generate_messages(requests, ledger, config))
        finally:
            done.set()
        wall = time.perf_counter() - started
        seen = sim.stats.snapshot()
    records = list(ledger.successes.values())
    out = [r.usage.output_tokens for r in records]
    itpm = [r.usage.input_tokens + r.usage.cache_creation_input_tokens for r in records]
    per_item = {"rpm": 1.0, "itpm": statistics.mean(itpm), "otpm": statistics.mean(out)}
    steady = {k: LIMITS[k] / window / per_item[k] for k in LIMITS}
    over_run = {k: (LIMITS[k] + LIMITS[k] / window * wall) / per_item[k] / wall for k in LIMITS}
    tightest = min(steady, key=steady.__getitem__)
    throughput = stats.done / wall
    max_tokens = [r.extra.get("max_tokens") for r in records]
    return {
        "max_tokens": "sized from observed output" if sized else "fixed at 8192",
        "items": items, "stored": stats.done, "failed": stats.failed, "failures_by_kind": stats.failures_by_kind,
        "wall_s": round(wall, 2), "throughput_per_s": round(throughput, 3),
        "tightest_bucket": tightest,
        "steady_bound_per_s": round(steady[tightest], 3),
        "bound_over_run_per_s": round(over_run[tightest], 3),
        "ratio_to_bound_over_run": round(throughput / over_run[tightest], 3),
        "ratio_to_steady_bound": round(throughput / steady[tightest], 3),
        "meets_aim": throughput / over_run[tightest] >= AIM and stats.failed == 0,
        "bounds_per_s": {k: round(v, 3) for k, v in steady.items()},
        "mean_output_tokens": round(per_item["otpm"], 1), "max_output_tokens": max(out),
        "mean_itpm_tokens_per_item": round(per_item["itpm"], 1),
        "max_tokens_sent": {"min": min(max_tokens), "median": statistics.median(max_tokens), "max": max(max_tokens)},
        "requests": stats.requests, "server_requests": sum(v for k, v in seen["attempts_by_key"].items() if not k.startswith("warm-")),
        "rate_limited_429s": stats.rate_limited, "truncated_retries": stats.retries,
        "max_in_flight": stats.max_in_flight, "cost_usd": round(stats.cost_usd, 4),
        "wasted_cost_usd": round(stats.wasted_cost_usd, 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--window", type=float, default=3.0, help="seconds over which a bucket refills its limit")
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--effort", default="medium")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fixed-items", type=int, default=None, help="items of the fixed-8192 run (default --items)")
    parser.add_argument("--mode", choices=("both", "sized", "fixed"), default="both",
                        help="run max_tokens sized, fixed at 8192, or both (one after the other)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tokens.json")
    args = parser.parse_args(argv)
    began = time.time()
    sized = run(args.items, args.window, args.latency, args.effort, args.concurrency, sized=True) \
        if args.mode in ("both", "sized") else None
    fixed = run(args.fixed_items or args.items, args.window, args.latency, args.effort, args.concurrency,
                sized=False) if args.mode in ("both", "fixed") else None
    results = {
        "limits": LIMITS, "window_s": args.window, "latency_s": args.latency, "effort": args.effort,
        "concurrency": args.concurrency, "aim": AIM,
        "time_scale": "real time (limits per 60 s)" if args.window == 60 else
        f"limits per {args.window:g} s instead of per 60 s ({60 / args.window:g}x a minute)",
        "caching": "system prompt cached (>= 512 tokens): cache reads do not count toward ITPM",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
        "command": " ".join(["bench/bench_tokens.py", *(argv if argv is not None else sys.argv[1:])]),
        "sized": sized, "fixed_8192": fixed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for r in (sized, fixed):
        if r is None:
            continue
        print(f"max_tokens {r['max_tokens']:<27} {r['stored']:>5} stored, {r['failed']} failed in {r['wall_s']}s: "
              f"{r['throughput_per_s']}/s vs {r['tightest_bucket']} bound {r['bound_over_run_per_s']}/s over the run "
              f"(steady {r['steady_bound_per_s']}/s) -> {r['ratio_to_bound_over_run']} (aim {AIM}); "
              f"mean output {r['mean_output_tokens']}, max_tokens median {r['max_tokens_sent']['median']}, "
              f"429s {r['rate_limited_429s']}, retries {r['truncated_retries']}")
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
