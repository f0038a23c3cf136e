"""Benchmark: the generation runner against the loopback Claude simulator.

Messages mode, two scenarios, each over N items with the real SDK talking HTTP to a fresh
simulator with a fixed latency:

- rate-limited: the simulator admits `rpm_limit` requests per `rate_window_s` (a sliding window;
  `rpm_limit / rate_window_s` requests per second, i.e. the rpm/60 of the brief when the window is
  60 s; we use a 1 s window so the steady state, not the first window's burst, dominates a short
  run). Bound = min(rate limit, concurrency / latency).
- concurrency-limited: no rate limit configured. Bound = concurrency / latency.

Reported: measured throughput (stored responses per second of wall time), the bound, their
ratio (aim >= 0.95), and the 429s the runner ran into (pacing from the rate-limit headers should
keep them near zero). For the concurrency-limited case the bound uses the nominal latency, but
every round trip also carries the SDK's and the simulator's own work; so the same items are also
pushed through the bare SDK with a plain semaphore (no retries, no pacing, no ledger) and the
runner's throughput is given relative to that floor too.

Batches mode: N items in one Message Batch; the simulator ends a batch `batch_processing_s` after
creation and the runner sees it at its next poll, up to one `poll_interval_s` later. The floor is
`batch_processing_s + poll_interval_s`; the ratio wall / floor shows what building and uploading
the batch, polling and collecting and recording the results add.

    .venv/bin/python bench/bench_generation.py [--items 400] [--out bench/results/generation.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from lora_assets.core.prompt import scaffolding_block  # noqa: E402
from lora_assets.generation.client import ITEM_ID_HEADER, make_client, message_params  # noqa: E402
from lora_assets.generation.runner import (  # noqa: E402
    GenerationRequest,
    MemoryLedger,
    RunConfig,
    generate_batches,
    generate_messages,
)
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig  # noqa: E402

MODEL = "claude-haiku-5-5"
THROUGHPUT_AIM = 0.95
# The static system prompt is long enough (> 512 tokens at ~4 chars/token) to be cacheable.
SYSTEM = "You write realistic financial-planning training conversations as one JSON object. " * 40


def make_requests(n: int) -> list[GenerationRequest]:
    """N items with distinct ids and a scaffolding block the simulator composes from."""
    requests = []
    for i in range(n):
        variables = {
            "persona_name": f"Client {i}",
            "persona_archetype": "The Cautious Planner",
            "persona_demographics": "Age 41, married, two children",
            "persona_financial_background": "Household income $92,000; $14,000 in savings",
            "arc_name": "Anxiety → Confidence",
            "arc_starting_emotion": "anxiety",
            "arc_ending_emotion": "confidence",
            "topic_name": "Building an emergency fund",
            "topic_description": "How much cash to keep for emergencies and where to hold it.",
            "turn_count": "6",
        }
        user = "Write the conversation described below.\n\n" + scaffolding_block(variables)
        requests.append(GenerationRequest(item_id=f"bench-{i:06d}", system=SYSTEM, user=user))
    return requests


def run_messages(name: str, n: int, concurrency: int, fault: FaultConfig) -> dict[str, Any]:
    """One Messages-mode scenario on a fresh simulator."""
    with ClaudeSimulator(fault) as sim:
        config = RunConfig(model=MODEL, api_key=SecretStr("bench-key"), base_url=sim.base_url, max_concurrency=concurrency)
        ledger = MemoryLedger()
        stats = asyncio.run(generate_messages(make_requests(n), ledger, config))
        sim_stats = sim.stats.snapshot()
    conc_bound = concurrency / fault.latency_s
    rate_bound = fault.rpm_limit / fault.rate_window_s if fault.rpm_limit else math.inf
    bound = min(rate_bound, conc_bound)
    return {
        "scenario": name,
        "items": n,
        "concurrency": concurrency,
        "latency_s": fault.latency_s,
        "rpm_limit": fault.rpm_limit,
        "rate_window_s": fault.rate_window_s if fault.rpm_limit else None,
        "rate_limit_per_s": None if math.isinf(rate_bound) else rate_bound,
        "concurrency_bound_per_s": conc_bound,
        "bound_per_s": bound,
        "throughput_per_s": round(stats.throughput_per_s, 3),
        "ratio": round(stats.throughput_per_s / bound, 3),
        "meets_aim": stats.throughput_per_s / bound >= THROUGHPUT_AIM,
        "elapsed_s": round(stats.elapsed_s, 3),
        "stored": stats.done,
        "failed": stats.failed,
        "requests": stats.requests,
        "rate_limited_429s": stats.rate_limited,
        "cost_usd": round(stats.cost_usd, 6),
        "cache_read_input_tokens": stats.cache_read_input_tokens,
        "max_deliveries_per_item": max(sim_stats["delivered_by_key"].values(), default=0),
    }


async def _bare_sdk(base_url: str, requests: list[GenerationRequest], concurrency: int) -> float:
    """Throughput of the bare SDK with a semaphore: the floor any runner on this stack sees."""
    client = make_client("bench-key", base_url, 60.0)
    gate = asyncio.Semaphore(concurrency)

    async def one(request: GenerationRequest) -> None:
        async with gate:
            await client.messages.create(**message_params(request, MODEL), extra_headers={ITEM_ID_HEADER: request.item_id})

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(r) for r in requests))
    finally:
        await client.close()
    return len(requests) / (time.perf_counter() - started)


def bare_sdk_throughput(n: int, concurrency: int, fault: FaultConfig) -> float:
    """The bare-SDK reference on a fresh simulator."""
    with ClaudeSimulator(fault) as sim:
        return asyncio.run(_bare_sdk(sim.base_url, make_requests(n), concurrency))


def run_batches(n: int, processing_s: float, poll_s: float) -> dict[str, Any]:
    """Batches mode: one batch of N on a fresh simulator."""
    with ClaudeSimulator(FaultConfig(batch_processing_s=processing_s)) as sim:
        config = RunConfig(model=MODEL, api_key=SecretStr("bench-key"), base_url=sim.base_url, poll_interval_s=poll_s)
        started = time.perf_counter()
        stats = asyncio.run(generate_batches(make_requests(n), MemoryLedger(), config))
        wall = time.perf_counter() - started
        sim_stats = sim.stats.snapshot()
    floor = processing_s + poll_s
    return {
        "scenario": "batches",
        "items": n,
        "batch_processing_s": processing_s,
        "poll_interval_s": poll_s,
        "floor_s": floor,
        "floor_explained": "the batch ends batch_processing_s after create; the runner polls every poll_interval_s, "
        "so it sees the end up to one interval later",
        "wall_s": round(wall, 3),
        "ratio_wall_to_floor": round(wall / floor, 3),
        "overhead_s": round(wall - floor, 3),
        "stored": stats.done,
        "failed": stats.failed,
        "provider_batches_submitted": stats.provider_batches_submitted,
        "batches_created_on_server": sim_stats["batches_created"],
        "cost_usd": round(stats.cost_usd, 6),
        "throughput_per_s": round(stats.throughput_per_s, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every scenario, write the figures as JSON to --out and print them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8, help="concurrency of the concurrency-limited run")
    parser.add_argument("--rl-concurrency", type=int, default=16, help="concurrency of the rate-limited run")
    parser.add_argument("--rpm-limit", type=int, default=20, help="requests per --rate-window-s")
    parser.add_argument("--rate-window-s", type=float, default=1.0)
    parser.add_argument("--batch-processing-s", type=float, default=1.0)
    parser.add_argument("--poll-interval-s", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generation.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    concurrency_limited = run_messages("concurrency_limited", args.items, args.concurrency, FaultConfig(latency_s=args.latency))
    bare = bare_sdk_throughput(args.items, args.concurrency, FaultConfig(latency_s=args.latency))
    concurrency_limited["bare_sdk_throughput_per_s"] = round(bare, 3)
    concurrency_limited["ratio_to_bare_sdk"] = round(concurrency_limited["throughput_per_s"] / bare, 3)
    results = {
        "messages": [
            run_messages("rate_limited", args.items, args.rl_concurrency,
                         FaultConfig(latency_s=args.latency, rpm_limit=args.rpm_limit, rate_window_s=args.rate_window_s)),
            concurrency_limited,
        ],
        "batches": run_batches(args.items, args.batch_processing_s, args.poll_interval_s),
        "throughput_aim": THROUGHPUT_AIM,
    }
    results["total_bench_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for m in results["messages"]:
        print(f"{m['scenario']}: {m['throughput_per_s']}/s vs bound {m['bound_per_s']}/s -> ratio {m['ratio']} "
              f"({'meets' if m['meets_aim'] else 'BELOW'} the {THROUGHPUT_AIM} aim), {m['rate_limited_429s']} x 429")
    print(f"concurrency_limited vs the bare SDK on the same simulator: {concurrency_limited['bare_sdk_throughput_per_s']}/s "
          f"-> ratio {concurrency_limited['ratio_to_bare_sdk']}")
    b = results["batches"]
    print(f"batches: {b['wall_s']}s wall vs {b['floor_s']}s floor -> ratio {b['ratio_wall_to_floor']}")
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
