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
    if rl:
        lines.append(f"| same, every {rl['refuse_every']}th request 429 (`retry-after: 1`, whole seconds, headers "
                     f"showing room), C={rl['concurrency']} | {rl['ours']['wall_s']} s, {rl['items_lost']} lost, "
                     f"{rl['items_failed']} failed | minimal client {rl['minimal']['wall_s']} s (same server); own "
                     f"fault-free {rl['ours_fault_free_wall_s']} s | {rl['ratio_ours_to_minimal_wall']} (wall ÷ minimal) "
                     f"| ≤ {p['refusal_slowdown_aim']}, 0 lost |")
    st = p.get("refusal_storm")
    if st:
        lines.append(f"| refusal storm: {st['server_429s']} × 429 + {st['server_529s']} × 529 ({st['refused_share']:.0%} "
                     f"of requests), ONE attempt per item, no retry budget, C={st['concurrency']} | {st['stored']} "
                     f"stored, {st['failed']} failed | — | — | 0 failed |")
    cpu = p["cpu_per_request"]
    lines.append(f"| client CPU per request (fake endpoint, process CPU) | {cpu['ours_ms_per_request']} ms | "
                 f"{cpu['minimal_ms_per_request']} ms (minimal {cpu.get('peer', 'httpx')} client) | "
                 f"{cpu['ratio_ours_to_minimal']} | ≤ 1 ms |")
    lines += claude_rows(r)
    d = loc["dagster_overhead"]
    lines.append(f"| Dagster overhead per batch run ({d['items']} items, {d['steps']} steps) | {d['overhead_s']} s | "
                 f"{d['run_wall_s']} s run wall | {d['overhead_share']} of wall | — |")
    lines += scale_rows(r.get("scale"))
    lines += ["", "Notes:", f"- local stages: {ls['note']}", f"- cost: {c['note']}", f"- Dagster: {d['note']}",
              f"- Batches: {b.get('floor_explained', '')}",
              f"- fake endpoint: {p['note']}; N={p['requests']}, latency {p['latency_s']} s, medians of {p['repeats']}; "
              f"{cpu['note']}"]
    lines += scale_section(r.get("scale"))
    lines += ["", "Raw figures: `report.json` (and one file per benchmark)."]
    return "\n".join(lines) + "\n"


def claude_rows(r: dict) -> list[str]:
    """Issue 20's figures: C=1024 on the fake endpoint, the OTPM-bound run, estimate vs actual."""
    lines = []
    for big in (r.get("peer_c128"), r.get("peer_c1024")):
        if not big:
            continue
        for row in big["concurrency"]:
            lines.append(f"| generation vs minimal client, fake endpoint, C={row['concurrency']}, {big['latency_s']:g} s latency, "
                         f"{big['requests']:,} requests | {row['ours']['throughput_per_s']}/s (CPU "
                         f"{row['ours']['cpu_ms_per_request']} ms/request) | {row['minimal']['throughput_per_s']}/s minimal "
                         f"client (CPU {row['minimal']['cpu_ms_per_request']} ms/request); bound {row['bound_per_s']}/s | "
                         f"{row['ratio_ours_to_minimal']} (ours ÷ minimal) | ≥ {0.9 if row['concurrency'] > 128 else 0.95}, "
                         f"CPU ≤ 1 ms |")
    tk = r.get("tokens")
    if tk:
        for key in ("sized", "fixed_8192"):
            t = tk.get(key)
            if t is None:
                continue
            lines.append(f"| OTPM-bound run ({tk['limits']['rpm']:,} RPM / {tk['limits']['itpm']:,} ITPM / "
                         f"{tk['limits']['otpm']:,} OTPM per {tk['window_s']:g} s), {t['items']:,} items, effort "
                         f"{tk['effort']}, max_tokens {t['max_tokens']} | {t['throughput_per_s']}/s, {t['failed']} failed, "
                         f"{t['rate_limited_429s']} 429s | {t['bound_over_run_per_s']}/s {t['tightest_bucket']} bound over the "
                         f"run (steady {t['steady_bound_per_s']}/s; mean output {t['mean_output_tokens']} tokens) | "
                         f"{t['ratio_to_bound_over_run']} | ≥ 0.9, 0 failed (sized) |")
    est = r.get("estimate")
    if est:
        for t in est["tiers"]:
            lines.append(f"| estimate vs billed, tier {t['tier']}, {t['items']} items, effort {est['effort']} (thinking on) "
                         f"| ${t['actual_usd']} billed | ${t['estimated_usd']} estimated | {t['ratio_actual_to_estimate']} "
                         f"| 0.85–1.15 |")
    return lines


def _per_conv(by_method: dict[str, float]) -> str:
    return " + ".join(f"{v:g} {m}" for m, v in sorted(by_method.items())) or "0"


def scale_rows(sc: dict | None) -> list[str]:
    """The scale benchmark's acceptance figures, as rows of the main table."""
    if not sc:
        return []
    acc, lines = sc["acceptance"], []
    for run in sc["runs"]:
        t, nt = run["acceptance_total"], run["normal_path_total"]
        aim = "≤ 8 s/1,000" if run["delay_ms"] == max(sc["delays_ms"]) else "—"
        lines.append(f"| scale N={run['n']}, +{run['delay_ms']:g} ms/round trip: parse + enrich + all checks + training-file "
                     f"build, stage by stage | {t['s_per_1000']} s/1,000 ({t['seconds']} s) | {t['floor_s_per_1000']} s/1,000 "
                     f"floor (I/O bound {t['io_bound_s']} s, S3-server bound {t['s3_server_bound_s']} s) | {t['ratio_to_floor']} | {aim} |")
        lines.append(f"| same, normal path (parse + enrich with checks in one run, then the build) | {nt['s_per_1000']} s/1,000 "
                     f"({nt['seconds']} s) | {nt['floor_s_per_1000']} s/1,000 floor (I/O {nt['io_bound_s']} s, "
                     f"S3 server {nt['s3_server_bound_s']} s) | {nt['ratio_to_floor']} | {aim} |")
    rq = acc["requests_per_conv_end_to_end"]
    lines.append(f"| scale: S3 requests per conversation end to end (generate → … → build), counted at the proxy "
                 f"| {rq['normal_path']} (normal path); {rq['staged']} stage by stage | — | — | ≤ {rq['aim']:g} |")
    rss = acc["peak_rss_mb"]
    small = acc.get("peak_rss_mb_small")
    ratio = acc.get("rss_ratio_n_to_small", {})
    for key, label in (("batch_run (combined)", "batch run"), ("training_file_build", "training-file build")):
        vs = (f"{small[key]} MB at N={small['n']}" if small else "—")
        lines.append(f"| scale: peak RSS of the {label}, N={rss['n']} | {rss[key]} MB | {vs} | "
                     f"{ratio.get(key, '—')} | ≤ {rss['aim_mb']} MB, ratio 0.9–1.1 |")
    return lines


def scale_section(sc: dict | None) -> list[str]:
    """One table per delay: each stage beside its I/O bound and the S3 server's bound."""
    if not sc:
        return []
    lines = ["", "## Scale benchmark (bench/bench_scale.py)", "",
             f"One partition through the Dagster assets on PostgreSQL + moto S3 behind a loopback proxy adding a fixed "
             f"delay per round trip. Pool size {sc['pool_size']} ({sc['pool_size_source']}). Each stage in a fresh "
             f"process; seconds = its materialisation call. I/O bound = round trips × delay ÷ pool size; S3-server "
             f"bound = requests ÷ the server's own rate below; floor = the larger.", ""]
    for run in [*sc["runs"], *([sc["rss_run"]] if sc.get("rss_run") else [])]:
        cap = run["s3_capacity"]
        what = " (RSS comparison: the batch run and the build only)" if run.get("rss_only") else ""
        lines += [f"### N = {run['n']}, +{run['delay_ms']:g} ms per round trip{what}", "",
                  f"S3 server capacity in this run (boto3, {cap['threads']} threads, 6 KB objects, through the proxy): "
                  f"{cap['put_per_s']} PUT/s, {cap['get_per_s']} GET/s. "
                  + (f"A run's fixed cost (raw_checks: one check, no S3): {run['run_fixed_cost_s']} s. "
                     if run.get("run_fixed_cost_s") is not None else "")
                  + f"Highest 1-minute load average seen after a stage: {run.get('load_1m_max')} ({run['cores']} cores).", "",
                  "| stage | s (whole process) | s per 1,000 | S3 requests / conv. | round trips / conv. | I/O bound s | S3-server bound s "
                  f"| ratio to floor | CPU s (stage + moto + proxy; {run['cores']} cores) | peak RSS MB | checks |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for st in run["stages"]:
            checks = ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in st["checks"].items()) or "—"
            failed = "" if st["success"] else " **FAILED**"
            delay = "" if st["delay_ms"] in (None, run["delay_ms"]) else f" (+{st['delay_ms']:g} ms)"
            lines.append(f"| {st['stage']}{delay}{failed} | {st['seconds']} ({st['subprocess_wall_s']}) | {st['s_per_1000']} | "
                         f"{_per_conv(st['requests_per_conv_by_method'])} | {st['round_trips_per_conv']} | {st['io_bound_s']} "
                         f"| {st['s3_server_bound_s']} | {st['ratio_to_floor'] or '—'} | {st['cpu_s_stage_moto_proxy']} "
                         f"| {st['rss_peak_mb']} | {checks} |")
        t, nt = run["acceptance_total"], run["normal_path_total"]
        totals = [("normal path (combined + build)", nt)]
        if not run.get("rss_only"):
            totals.insert(0, ("parse + enrich + all checks + build (stage by stage)", t))
        for label, tot in totals:
            lines.append(f"| **{label}** | {tot['seconds']} | {tot['s_per_1000']} | {tot['requests_per_conv']} | "
                         f"{tot['round_trips_per_conv']} | {tot['io_bound_s']} | {tot['s3_server_bound_s']} | "
                         f"{tot['ratio_to_floor'] or '—'} | {tot['cpu_s_stage_moto_proxy']} | {tot['rss_peak_mb']} | |")
        lines.append("")
    lines.append(f"Note: {sc['note']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="Smaller sizes (for a smoke run).")
    parser.add_argument("--scale-n", type=int, default=2000,
                        help="Conversations in the scale benchmark's partition (it also runs N=500 for the RSS comparison).")
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
        "peer_c128": _run("bench_peer.py", out / "peer_c128.json", "--no-refusals", "--latency", "0.5",
                          "--concurrency", "128", *(["--requests", "512", "--repeats", "1"] if quick
                                                    else ["--requests", "2048", "--repeats", "3"])),
        "peer_c1024": _run("bench_peer.py", out / "peer_c1024.json", "--no-refusals", "--repeats", "1", "--latency", "5",
                           *(["--requests", "1024", "--concurrency", "256"] if quick
                             else ["--requests", "4096", "--concurrency", "1024"])),
        "tokens": _run("bench_tokens.py", out / "tokens.json", *(["--items", "200"] if quick else [])),
        "estimate": _run("bench_estimate.py", out / "estimate.json", *(["--per-combination", "1"] if quick else [])),
        "scale": _run("bench_scale.py", out / "scale.json",
                      *(["--n", "200", "--rss-n", "100"] if quick else ["--n", str(args.scale_n)])),
    }
    report["total_s"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    print((out / "report.md").read_text())
    print(f"written: {out / 'report.json'}, {out / 'report.md'}")


if __name__ == "__main__":
    main()
