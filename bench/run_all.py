"""`make bench`: run every benchmark, then write one report (JSON + markdown) with each figure
next to the bound or floor measured in the same run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *args: str) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "bench" / script), "--out", str(out), *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    data["_bench_wall_s"] = round(time.perf_counter() - started, 1)
    return data


def markdown(r: dict) -> str:
    g, a, loc = r["generation"], r["aggregate"], r["local"]
    lines = ["# lora_assets benchmark report", "", f"Generated {r['generated_at']} in {r['total_s']} s on this machine "
             "(2 cores, noisy: ratios are measured within one run).", "",
             "| figure | ours | bound / floor (same run) | ratio | aim |", "|---|---|---|---|---|"]
    for m in g["messages"]:
        lines.append(f"| generation, Messages mode, {m['scenario']} | {m['throughput_per_s']}/s | {m['bound_per_s']}/s "
                     f"| {m['ratio']} | ≥ {g['throughput_aim']} |")
    b = g["batches"]
    lines.append(f"| generation, Batches mode (wall) | {b['wall_s']} s | {b['floor_s']} s | {b['ratio_wall_to_floor']} (wall ÷ floor) | — |")
    ls = loc["local_stages"]
    lines.append(f"| local stages (parse+enrich+write), {ls['conversations']} conversations | {ls['ours_s']} s | "
                 f"{ls['floor_json_load_dump_s']} s (json load+dump of the input) | {ls['ratio']} | — |")
    lines.append(f"| same, floor incl. dumping our output bytes | {ls['ours_s']} s | {ls['floor_with_output_s']} s | "
                 f"{ls['ratio_to_floor_with_output']} | — |")
    ours, floor, pairs = a["ours"], a["floor_json_load_dump"], a["input"]["training_pairs"]
    lines.append(f"| aggregate {pairs} pairs: time | {ours['seconds']} s | {floor['seconds']} s (json load+dump of the same file) "
                 f"| {a['time_ratio']} (CPU {a['cpu_time_ratio']}) | ≤ 1.5 |")
    lines.append(f"| aggregate {pairs} pairs: peak RSS | {a['peak_rss_mb']} MB | {floor['peak_rss_mb']} MB (floor) | — | ≤ 300 MB |")
    c = loc["cost"]
    lines.append(f"| cost per 1,000 pairs ({c['model']}) | ${c['ours_usd_per_1000_pairs']} | ${c['naive_usd_per_1000_pairs']} (naive) "
                 f"| {c['ratio_ours_to_naive']} | < 0.5 |")
    p = r["peer"]
    for row in p["concurrency"]:
        o, m = row["ours"], row["minimal"]
        lines.append(f"| generation vs minimal client, fixed-latency fake endpoint, C={row['concurrency']} "
                     f"| {o['throughput_per_s']}/s | {m['throughput_per_s']}/s minimal client; bound {row['bound_per_s']}/s "
                     f"(C / latency; {row['bound_with_tail_per_s']}/s with the last partial wave) | {row['ratio_ours_to_minimal']} (ours ÷ minimal) | ≥ {p['throughput_aim']} |")
    rl = p["rate_limited"]
    lines.append(f"| same, every {rl['refuse_every']}th request 429 (retry-after-ms {rl['retry_after_ms']}), "
                 f"C={rl['concurrency']} | {rl['ours']['wall_s']} s, {rl['items_lost']} lost "
                 f"| {rl['ours_fault_free_wall_s']} s own fault-free; minimal client {rl['minimal']['wall_s']} s "
                 f"| {rl['ratio_ours_to_own_fault_free']} | ≤ {p['refusal_slowdown_aim']}, 0 lost |")
    cpu = p["cpu_per_request"]
    lines.append(f"| client CPU per request (fake endpoint) | {cpu['ours_ms_per_request']} ms | "
                 f"{cpu['minimal_ms_per_request']} ms (minimal client) | {cpu['ratio_ours_to_minimal']} | — |")
    d = loc["dagster_overhead"]
    lines.append(f"| Dagster overhead per batch run ({d['items']} items, {d['steps']} steps) | {d['overhead_s']} s | "
                 f"{d['run_wall_s']} s run wall | {d['overhead_share']} of wall | — |")
    lines += ["", "Notes:", f"- local stages: {ls['note']}", f"- cost: {c['note']}", f"- Dagster: {d['note']}",
              f"- Batches: {b.get('floor_explained', '')}",
              f"- fake endpoint: {p['note']}; N={p['requests']}, latency {p['latency_s']} s, medians of {p['repeats']}; "
              f"{cpu['note']}", "", "Raw figures: `report.json` (and one file per benchmark)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="Smaller sizes (for a smoke run).")
    args = parser.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    quick = args.quick
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generation": _run("bench_generation.py", out / "generation.json", *(["--items", "100"] if quick else [])),
        "aggregate": _run("bench_aggregate.py", out / "aggregate.json", *(["--pairs", "5000"] if quick else [])),
        "local": _run("bench_local.py", out / "local.json",
                      *(["--conversations", "300", "--cost-items", "20", "--overhead-items", "10"] if quick else [])),
        "peer": _run("bench_peer.py", out / "peer.json",
                     *(["--requests", "100", "--repeats", "1", "--concurrency", "32,128"] if quick else [])),
    }
    report["total_s"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    print((out / "report.md").read_text())
    print(f"written: {out / 'report.json'}, {out / 'report.md'}")


if __name__ == "__main__":
    main()
