"""Benchmark: the cost estimate against the cost actually billed, per tier, on the strict
simulator with thinking on.

For each tier: a fresh SQLite store with the bundled scaffolding, a batch planned the way
`plan_batch` plans it (input tokens counted by count_tokens, expected output per tier with the
thinking of the chosen effort, prompt-cache assumptions), then generated through the
`batch_pipeline` job on a real Dagster instance; estimate and actual (the paid requests of the
batch) side by side, with the output tokens per item that make most of the difference.
Aim: |actual / estimate - 1| <= 0.15 for every tier.

Caching assumed by the estimate (and seen on the simulator): the generation system prompt is
above the 512-token minimum, so in Messages mode the first `concurrency` requests write it and
the rest read it; no history exists (a fresh store), so output is the tier's planning default
plus the thinking expected at the effort.

    .venv/bin/python bench/bench_estimate.py [--per-combination 2] [--effort low]
        [--out bench/results/estimate.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AIM = 0.15
TIERS = ("template", "scenario", "edge_case")


def one_tier(tier: str, per: int, effort: str, workdir: Path) -> dict[str, Any]:
    """Plan and generate one batch of `tier`; estimate beside actual."""
    from dagster import DagsterInstance

    from lora_assets import planning
    from lora_assets.generation.simulator import ClaudeSimulator
    from lora_assets.store.batches import batch_for_key, batch_progress
    from lora_assets_tests.defs import helpers as h

    db_url = f"sqlite:///{workdir / f'{tier}.db'}"
    engine = h.setup_store(db_url)
    with ClaudeSimulator() as sim:
        defs = h.make_defs(db_url, h.local_blobs(workdir / f"blobs-{tier}"), sim)
        claude = defs.resources["claude"]
        request = planning.PlanRequest(name=f"estimate-{tier}", personas=["anxious_planner", "late_starter"],
                                       arcs=["fear_to_confidence", "confusion_to_clarity"],
                                       topics=["retirement_catch_up", "estate_planning_basics", "emergency_fund"],
                                       per_combination=per, tier=tier, model="claude-haiku-5-5", effort=effort)
        # Limits high enough that the batch is written `queued` (no approval step) and runs now.
        limits = planning.PlanLimits(max_items=10_000, max_cost_usd=1_000.0, auto_approve_usd=1_000.0)
        planned = planning.plan(engine, request, created_by="bench", limits=limits,
                                counter=claude.token_counter(request.model), concurrency=claude.max_concurrency)
        with DagsterInstance.ephemeral() as instance:
            result = h.run_batch(defs, instance, planned.key)
        with engine.connect() as conn:
            batch = batch_for_key(conn, planned.key)
            progress = batch_progress(conn, batch["id"])
    est = planned.estimate
    assert est is not None and result.success
    generated = progress["items"]["generated"]
    actual_out = progress["output_tokens"] / max(1, generated)
    return {
        "tier": tier, "items": planned.items, "generated": generated, "effort": effort,
        "estimated_usd": est.total_usd, "actual_usd": round(progress["cost_usd"], 6),
        "ratio_actual_to_estimate": round(progress["cost_usd"] / est.total_usd, 3),
        "within_aim": abs(progress["cost_usd"] / est.total_usd - 1) <= AIM,
        "estimated_output_tokens_per_item": est.output.tokens_per_item,
        "actual_output_tokens_per_item": round(actual_out, 1),
        "estimated_input_usd": est.input_usd, "estimated_output_usd": est.output_usd,
        "assumptions": est.assumptions,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-combination", type=int, default=2)
    parser.add_argument("--effort", default="low")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "estimate.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        rows = [one_tier(tier, args.per_combination, args.effort, Path(tmp)) for tier in TIERS]
    results = {"aim": f"|actual / estimate - 1| <= {AIM}", "effort": args.effort, "tiers": rows,
               "all_within_aim": all(r["within_aim"] for r in rows),
               "total_bench_s": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for r in rows:
        print(f"{r['tier']:<10} {r['generated']:>3}/{r['items']} items: estimate ${r['estimated_usd']:.5f}, actual "
              f"${r['actual_usd']:.5f} -> {r['ratio_actual_to_estimate']} (output/item est "
              f"{r['estimated_output_tokens_per_item']}, actual {r['actual_output_tokens_per_item']})")
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
