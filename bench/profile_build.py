"""CPU profile of the partition-scale stages on local disk (no S3, no proxy; the build also on S3
with `--s3`): where a member's milliseconds go, before the S3 benchmark (`bench_scale.py`)
measures the same stages against the I/O floor.

    python bench/profile_build.py --n 800 --state /tmp/lora-profile prepare   # once: generate + enrich
    python bench/profile_build.py --state /tmp/lora-profile build [--profile out.prof] [--name fixed]
    python bench/profile_build.py --state /tmp/lora-profile build --s3 20 --rounds 2
    python bench/profile_build.py --state /tmp/lora-profile pipeline [--profile out.prof]

`prepare` plans a batch of N items (as bench_scale does: the persona×arc×topic combinations in
order), generates it against the loopback simulator and parses + enriches it, on SQLite and a
local blob directory under `--state`. `build` then times `build_training_file` over every
conversation (a new training file each time; with `--name`, the next version of that one file,
whose members come in the same order every time, so two versions' files compare byte for byte),
`pipeline` re-parses and re-enriches the batch
(rows reset to not-started). Each prints seconds, CPU seconds and CPU ms per conversation (the
process's and the main thread's: blob threads apart), the peak RSS and, for `build`, the
wall-clock seconds of each of its steps.

`build --s3 D` builds on S3 instead: moto (`lora_assets_tests.s3_server`) behind the latency proxy
of `bench_scale.py` adding D ms per round trip, both started here and stopped after; the state's
`enriched.json` files are uploaded once (not timed), then each build (`--rounds`) reads and writes
S3 through the store production uses. What `bench_scale.py` measures for the build stage, without
the other stages, Dagster or PostgreSQL around it (the DB stays the state's SQLite): a quick
before/after for a change to the build.

`--profile out.prof` writes cProfile stats timed by the main thread's CPU (`time.thread_time`),
`--profile out.txt` (or `.html`) a pyinstrument sampling profile (`uv pip install pyinstrument`):
cProfile inflates code that makes many small calls, so compare shares, not seconds. For the S3
path, `bench_scale.py --profile-stages combined,tf_build` samples the stages with py-spy.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def prepare(state: Path, n: int) -> None:
    import sqlalchemy as sa
    from dagster import DagsterInstance

    from lora_assets.generation.simulator import ClaudeSimulator
    from lora_assets.schemas import BatchSelection
    from lora_assets.store import batches as bq
    from lora_assets.store import tables as t
    from lora_assets_tests.defs import helpers as h

    state.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{state / 'lora.db'}"
    engine = h.setup_store(db_url)
    with engine.connect() as conn:
        ids = [list(conn.scalars(sa.select(tbl.c.id).order_by(tbl.c.id)))
               for tbl in (t.personas, t.emotional_arcs, t.training_topics)]
    distinct = list(itertools.product(*ids))
    combos = [distinct[i % len(distinct)] for i in range(n)]
    batch_id, planned = bq.plan_batch(engine, selection=BatchSelection(), combinations=combos,
                                      model="claude-haiku-5-5", mode="messages", created_by="bench",
                                      name="profile")
    with ClaudeSimulator() as sim, DagsterInstance.ephemeral() as instance:
        defs = h.make_defs(db_url, h.local_blobs(state / "blobs"), sim, max_concurrency=64)
        assert h.run_batch(defs, instance, batch_id).success
    (state / "state.json").write_text(json.dumps({"db_url": db_url, "batch_id": batch_id, "n": planned}))


def _profiled(fn: Any, profile: Path | None) -> tuple[Any, float, float]:
    """Run `fn`, timed; with `profile`, under cProfile (stats dumped there) or, for a `.txt` /
    `.html` path, pyinstrument (sampling, so Python-heavy code is not inflated; main thread only)."""
    sampler = prof = None
    if profile is not None and profile.suffix in (".txt", ".html"):
        from pyinstrument import Profiler  # optional: `uv pip install pyinstrument`

        sampler = Profiler(interval=0.0005)
    elif profile is not None:
        # The main thread's CPU time, not wall time: blob threads waiting on I/O (or the GIL) and
        # other processes on a shared machine do not inflate what the stage's own code costs.
        prof = cProfile.Profile(time.thread_time)
    cpu0, main0, t0 = _cpu(), time.thread_time(), time.perf_counter()
    if sampler:
        sampler.start()
    if prof:
        prof.enable()
    out = fn()
    if prof:
        prof.disable()
        prof.dump_stats(str(profile))
    if sampler:
        sampler.stop()
        profile.write_text(sampler.output_html() if profile.suffix == ".html"  # type: ignore[union-attr]
                           else sampler.output_text(unicode=False, color=False, show_all=False))
    _profiled.main_thread_cpu = time.thread_time() - main0  # type: ignore[attr-defined]
    return out, time.perf_counter() - t0, _cpu() - cpu0


@contextmanager
def s3_store(state: Path, delay_ms: float) -> Iterator[Any]:
    """An S3 store on a moto server behind the latency proxy (both stopped on the way out) holding
    the state's enriched files, uploaded directly (not through the proxy)."""
    import os

    from bench_scale import free_port, make_bucket, process, start_proxy  # this script's directory
    from lora_assets.store.blobs import S3BlobStore, make_s3_client

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory(prefix="lora-profile-s3-") as tmp, ExitStack() as stack:
        port = free_port()
        stack.enter_context(process([sys.executable, "-m", "lora_assets_tests.s3_server", "--port", str(port)],
                                    port, "moto S3 server", Path(tmp) / "moto.log"))
        proxy = stack.enter_context(start_proxy(port, delay_ms, Path(tmp), "profile"))
        bucket = make_bucket(f"http://127.0.0.1:{port}")
        direct = S3BlobStore(make_s3_client(f"http://127.0.0.1:{port}", 32), bucket)
        root = state / "blobs"
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda p: direct.put_bytes(str(p.relative_to(root)), p.read_bytes()),
                          root.rglob("enriched.json")))
        yield S3BlobStore(make_s3_client(proxy.endpoint, 32), bucket)


def build(state: Path, profile: Path | None, concurrency: int, name: str | None = None,
          store: Any = None) -> dict[str, Any]:
    from lora_assets.defs.resources import DomainDB
    from lora_assets.store import training_files as tfq
    from lora_assets.store.blobs import LocalBlobStore
    from lora_assets.training_build import BuildPlan, build_training_file

    st = json.loads((state / "state.json").read_text())
    engine = DomainDB(database_url=st["db_url"]).engine()
    with engine.connect() as conn:
        ids = tfq.conversations_of_batches(conn, [st["batch_id"]])
    with engine.connect() as conn:
        existing = name is not None and tfq.get_training_file(conn, name) is not None
    if not existing:
        # A new file each time unless `--name` names one: its members' order is then the same in
        # every build (the order is by membership row id, random per file), so its versions'
        # outputs can be compared byte for byte.
        name = name or f"profile-{uuid.uuid4().hex[:8]}"
        tfq.create_training_file(engine, name=name, conversation_ids=ids, created_by="bench")
    assert name is not None
    store = store or LocalBlobStore(state / "blobs")
    result, seconds, cpu = _profiled(lambda: build_training_file(BuildPlan(name=name), engine=engine, store=store,
                                                                 concurrency=concurrency, run_id="profile"), profile)
    return {"stage": "build", "name": name, "version": result.version, "members": len(ids), "seconds": round(seconds, 3), "cpu_s": round(cpu, 3),
            "cpu_ms_per_member": round(cpu / len(ids) * 1000, 3),
            "main_thread_cpu_ms_per_member": round(_profiled.main_thread_cpu / len(ids) * 1000, 3),  # type: ignore[attr-defined]
            "kept": len(result.kept),
            "leakage": result.leakage.overlap.model_dump(exclude={"exact_examples", "near_examples"}),
            "diversity": result.leakage.diversity.model_dump(), "exact_dups": result.exact_duplicates,
            "near_dups": result.near_duplicates, "train": result.train_conversations,
            "outputs": {k: v.bytes for k, v in result.outputs.items()}, "phases": result.phase_seconds}


def pipeline(state: Path, profile: Path | None) -> dict[str, Any]:
    """parse + enrich of the prepared batch with all their checks in one run (as `batch_pipeline`
    runs them), after resetting its rows to pending / not started."""
    import sqlalchemy as sa
    from dagster import DagsterInstance

    from lora_assets.defs.resources import DomainDB
    from lora_assets.store import tables as t
    from lora_assets_tests.defs import helpers as h

    st = json.loads((state / "state.json").read_text())
    engine = DomainDB(database_url=st["db_url"]).engine()
    with engine.begin() as conn:
        conn.execute(sa.update(t.conversations).where(t.conversations.c.batch_job_id == st["batch_id"])
                     .values(parse_status="pending", enrichment_status="not_started"))
    defs = h.make_defs(st["db_url"], h.local_blobs(state / "blobs"), type("Sim", (), {"base_url": "http://127.0.0.1:9"}))
    with DagsterInstance.ephemeral() as instance:
        h.add_partition(instance, st["batch_id"])
        result, seconds, cpu = _profiled(lambda: h.run_assets(defs, instance, st["batch_id"],
                                                              ["parsed_conversations", "enriched_conversations"]), profile)
    assert result.success
    n = st["n"]
    return {"stage": "parse+enrich+checks", "conversations": n, "seconds": round(seconds, 3), "cpu_s": round(cpu, 3),
            "cpu_ms_per_conversation": round(cpu / n * 1000, 3),
            "main_thread_cpu_ms_per_conversation": round(_profiled.main_thread_cpu / n * 1000, 3)}  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["prepare", "build", "pipeline"])
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--state", type=Path, default=Path("/tmp/lora-profile"))
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--name", help="build: the next version of this training file (created on first use) "
                        "instead of a new file")
    parser.add_argument("--s3", type=float, metavar="DELAY_MS",
                        help="build: on S3 (moto behind a proxy adding DELAY_MS per round trip) instead of local disk")
    parser.add_argument("--rounds", type=int, default=1, help="build: how many builds (one JSON line each)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    import lora_assets.training_build  # noqa: F401 - import cost reported apart

    imported = time.perf_counter() - t0
    if args.what == "prepare":
        prepare(args.state, args.n)
    elif args.what == "build":
        with s3_store(args.state, args.s3) if args.s3 is not None else nullcontext() as store:
            for _ in range(args.rounds):
                out = build(args.state, args.profile, args.concurrency, args.name, store)
                out["import_s"] = round(imported, 3)
                out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
                print(json.dumps(out, indent=1), flush=True)
    else:
        out = pipeline(args.state, args.profile)
        out["import_s"] = round(imported, 3)
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
