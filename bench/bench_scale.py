"""Scale benchmark (part of `make bench`): one partition of N conversations through the public
Dagster assets on PostgreSQL + S3 (moto), with every S3 round trip paying a fixed delay.

    python bench/bench_scale.py --n 2000 --delays 0,20 --rss-n 500 --out bench/results/scale.json

For each delay: a throwaway PostgreSQL database, moto's S3 server (`lora_assets_tests.s3_server`)
with a bucket, and `bench/latency_proxy.py` in front of it adding the delay to every client→server
round trip and counting requests at the HTTP layer. Each stage runs in its own fresh subprocess
(so its peak RSS is that process's `ru_maxrss`) against one persistent Dagster instance, with the
in-process executor, by asset / check name:

    setup            schema + bundled scaffolding; plan batches A and B (N items each, Messages mode)
    generate         raw_conversations of A (the Claude simulator in its own process, as Claude is a
                     remote service: the stage's CPU and memory are the client's; latency 0,
                     max_concurrency 64)
    raw_checks       the checks of raw_conversations, alone
    parse            parsed_conversations of A, without checks
    parsed_checks    the checks of parsed_conversations, alone
    enrich           enriched_conversations of A, without checks
    enriched_checks  the checks of enriched_conversations, alone
    tf_create        a training file with all N conversations of A as members (DB only)
    tf_build         the training_files partition, without checks
    tf_checks        its checks, alone
    generate_b       raw_conversations of B
    combined         parse + enrich of B with all their checks in ONE run (as batch_pipeline runs them)

`--rss-n M` adds a run at M conversations (delay `--rss-delay`, 0 by default) of only generate →
combined → tf_create → tf_build → tf_checks (on batch A), to compare the peak RSS of every stage
(and, at the same delay, the normal path's ratio to the floor) between two partition sizes.
`--normal-path-only` runs the main runs that way too (what a 10,000 run fits in):

    python bench/bench_scale.py --n 10000 --delays 20 --normal-path-only --rss-n 2000 --rss-delay 20

Generation goes through a second proxy without delay (counted the same way) unless
`--generate-through-delay`: it calls no model here and is not part of the acceptance figure.

**The floor of a stage is measured, in the same run, right after it** (`_child_replay`): the
S3 requests the stage's store sent (counted by method and body size in the stage process:
botocore hooks for what boto3 sends, the store's `_put`/`_head`/`get_bytes` for what obstore
sends; `_count_s3_io`) are sent again twice, by a plain pool of the blob pool's size of each
client: boto3 (its default configuration, what dagster-aws gives) and obstore (its defaults),
through the same proxy to the same moto, with no work in between: the GETs read the same
objects (keys from the DB, big files by key), the PUTs send bodies of the stage's mean size,
multipart parts go as parts (obstore: PUTs) of the same size. The floor is the faster of the
two; the ratio to boto3's is reported too. The machine's load at that moment is the stage's,
within seconds. (Earlier versions extrapolated the floor from a capacity loop of 6 KB objects
run once at the end, which underrated a build's uploads and a stage's larger bodies, and
measured the server at another moment.)

Per stage: seconds (around the materialisation call, inside the subprocess; the whole
subprocess too), s per 1,000 conversations, S3 requests per conversation by method, round trips,
the floor (measured as above; also the old estimate: the I/O bound = round trips × delay ÷
pool size, and the S3-server bound from the capacity loop, `floor_estimate_s`), peak RSS, and
the CPU seconds of the stage, moto and the proxy (`cpu_busy` = their sum ÷ (seconds × cores):
near 1, this machine is the bound). Client CPU per conversation: the stage process's CPU (all its
threads) ÷ N, and of it the steps' own thread (`main_thread_cpu_ms_per_conv`: parsing,
enrichment, checks, build, Dagster; the rest is the blob pool's and obstore's threads); the
replays' own client CPU on the same requests is what each plain client alone costs
(`boto3_cpu_ms_per_conv`, `obstore_cpu_ms_per_conv`). `--profile-stages` samples chosen stages with py-spy.

The machine is shared (2 cores, other sessions' work): every figure of a run is read against the
floor of the same run, and `load_1m` is recorded with each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_ADMIN_URLS = [u for u in (os.environ.get("LORA_TEST_PG_ADMIN_URL"),
                             "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
                             "postgresql+psycopg2://root@127.0.0.1:5432/postgres") if u]
CORES = os.cpu_count() or 1
DEFAULT_POOL = 32  # the default of LORA_BLOB_CONCURRENCY (lora_assets/settings.py)
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

#: The stages of the acceptance figure: parse + enrich + all their checks + the training-file build.
ACCEPTANCE_STAGES = ("parse", "parsed_checks", "enrich", "enriched_checks", "tf_build", "tf_checks")
#: The same work on the normal path: parse + enrich with their checks in one run, then the build.
NORMAL_PATH_STAGES = ("combined", "tf_build", "tf_checks")


# --- the child: one stage in a fresh process ------------------------------------------------------


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _cpu_self() -> float:
    """CPU seconds (user + system) of this process so far, every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _plain(value: Any) -> Any:
    """A metadata value small enough for the report (long text is cut)."""
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    except Exception:  # noqa: BLE001 - e.g. a Dagster TableRecord, which refuses iteration
        text = str(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _error_chain(error: Any) -> str:
    """A Dagster error and its causes, one message each (Dagster's own wrapper says little)."""
    parts = []
    while error is not None and len(parts) < 5:
        parts.append(" ".join(error.message.split())[:400])
        error = error.cause or getattr(error, "context", None)
    return " <- ".join(parts)


def _child_setup(spec: dict[str, Any]) -> dict[str, Any]:
    """Schema + bundled scaffolding (what the tests' `setup_store` does), then the batches, each of
    exactly N items in Messages mode: the persona×arc×topic combinations in order, repeated once every
    combination has one (the bundle has 14 × 8 × 14 = 1,568)."""
    import itertools

    import sqlalchemy as sa

    from lora_assets.schemas import BatchSelection
    from lora_assets.store import batches as bq
    from lora_assets.store import tables as t
    from lora_assets_tests.defs.helpers import setup_store

    engine = setup_store(spec["db_url"])
    with engine.connect() as conn:
        ids = [list(conn.scalars(sa.select(tbl.c.id).order_by(tbl.c.id)))
               for tbl in (t.personas, t.emotional_arcs, t.training_topics)]
    distinct = list(itertools.product(*ids))
    n = spec["n"]
    combos = [distinct[i % len(distinct)] for i in range(n)]
    batches = {}
    for name in spec["batches"]:
        batch_id, planned = bq.plan_batch(engine, selection=BatchSelection(), combinations=combos,
                                          model="claude-haiku-5-5", mode="messages", created_by="bench",
                                          name=f"bench-scale-{name}")
        assert planned == n, (planned, n)
        batches[name] = batch_id
    engine.dispose()
    return {"batches": batches, "distinct_combinations": len(distinct),
            "per_combination": -(-n // len(distinct)), "success": True}


def _child_tf_create(spec: dict[str, Any]) -> dict[str, Any]:
    """A training file whose members are every conversation of the batch (as `training-file create
    --batch` does), and its dynamic partition."""
    from dagster import DagsterInstance

    from lora_assets.defs.partitions import training_files_partitions
    from lora_assets.defs.resources import DomainDB
    from lora_assets.store import training_files as tfq

    engine = DomainDB(database_url=spec["db_url"]).engine()
    t0 = time.perf_counter()
    with engine.connect() as conn:
        ids = tfq.conversations_of_batches(conn, [spec["batch"]])
    tfq.create_training_file(engine, name=spec["training_file"], conversation_ids=ids, created_by="bench")
    seconds = time.perf_counter() - t0
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(training_files_partitions.name, [spec["training_file"]])
    return {"seconds": round(seconds, 3), "members": len(ids), "success": True}


#: GETs of objects at least this large are replayed by key (a check streaming a 200 MB JSONL); the
#: smaller ones (a conversation's JSON) by count, from the keys the DB names (see `_child_replay`).
BIG_OBJECT = 1 << 20


def _count_s3_io(settings: Any) -> dict[str, Any]:
    """Count what the stage's S3 client sends, by operation, with body bytes (botocore hooks on the
    one client the stage uses): what `_child_replay` sends again with no work in between."""
    from lora_assets.defs.resources import _s3_client

    io: dict[str, Any] = {"small_get": 0, "small_get_bytes": 0, "big_gets": [], "put": 0, "put_bytes": 0,
                          "part": 0, "part_bytes": 0, "uploads": {}, "completed": [], "other": 0}
    client = _s3_client(settings.s3_endpoint_url or "", settings.blob_concurrency)
    lock = threading.Lock()  # the stage's upload threads send parts at once

    def sent(request: Any, event_name: str, **_: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        body = request.body
        size = len(body) if isinstance(body, bytes | bytearray) else int(request.headers.get("Content-Length") or 0)
        upload_id = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query).get("uploadId", [""])[0]
        with lock:
            if op == "PutObject":
                io["put"] += 1
                io["put_bytes"] += size
            elif op == "UploadPart":
                io["part"] += 1
                io["part_bytes"] += size
                # Each multipart upload's part sizes: the replay sends the same uploads.
                io["uploads"].setdefault(upload_id, []).append(size)
            elif op == "CompleteMultipartUpload":
                io["completed"].append(upload_id)
            elif op not in ("GetObject", "CreateMultipartUpload"):
                io["other"] += 1

    def got(http_response: Any, parsed: Any, **_: Any) -> None:
        size = int(parsed.get("ContentLength") or 0)
        if size >= BIG_OBJECT:  # path-style URL: /bucket/key (percent-encoded)
            io["big_gets"].append(urllib.parse.unquote(urllib.parse.urlsplit(http_response.url).path.split("/", 2)[2]))
        else:
            io["small_get"] += 1
            io["small_get_bytes"] += size

    client.meta.events.register("before-send.s3", sent, unique_id="bench-scale-sent")
    client.meta.events.register("after-call.s3.GetObject", got, unique_id="bench-scale-got")

    # Small objects go through obstore (`S3BlobStore._put/_head/get_bytes`), which botocore's
    # hooks do not see: counted where the store hands them over.
    from lora_assets.store.blobs import S3BlobStore

    put, head, get = S3BlobStore._put, S3BlobStore._head, S3BlobStore.get_bytes

    def counted_put(self: Any, key: str, data: bytes, create: bool = False) -> None:
        put(self, key, data, create)
        io["put"] += 1
        io["put_bytes"] += len(data)

    def counted_head(self: Any, key: str) -> int:
        io["other"] += 1
        return head(self, key)

    def counted_get(self: Any, key: str) -> bytes:
        value = get(self, key)
        if len(value) >= BIG_OBJECT:
            io["big_gets"].append(self._key(key))
        else:
            io["small_get"] += 1
            io["small_get_bytes"] += len(value)
        return value

    S3BlobStore._put, S3BlobStore._head, S3BlobStore.get_bytes = counted_put, counted_head, counted_get  # type: ignore[method-assign]
    return io


def _child_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Materialise `assets` and/or the checks of `checks_of` (by name) for one partition of `job`,
    in process, on the persistent instance; time the execution call only."""
    from dagster import AssetKey, DagsterEventType, DagsterInstance

    from lora_assets.defs.resources import build_resources
    from lora_assets.definitions import build_defs
    from lora_assets.settings import Settings

    settings = Settings.from_env()
    io = _count_s3_io(settings) if settings.s3_bucket else None
    defs = build_defs(build_resources(settings))
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def(spec["job"])
    asset_keys = {AssetKey(a) for a in spec["assets"]}
    check_keys = {k for k in graph.asset_check_keys if k.asset_key.to_user_string() in spec["checks_of"]}
    note = ""
    try:
        subset = job.get_subset(asset_selection=asset_keys, asset_check_selection=check_keys)
    except Exception as exc:  # noqa: BLE001 - e.g. checks computed by a non-subsettable asset
        # An asset whose checks are computed in the same pass may refuse to run without them:
        # run it with them, and say so in the report.
        check_keys |= {k for k in graph.asset_check_keys if k.asset_key in asset_keys}
        subset = job.get_subset(asset_selection=asset_keys, asset_check_selection=check_keys)
        note = f"ran with its checks: the asset cannot be selected without them ({exc.__class__.__name__})"
    with DagsterInstance.get() as instance:
        pdef = spec["partitions_def"]
        if not instance.has_dynamic_partition(pdef, spec["partition"]):
            instance.add_dynamic_partitions(pdef, [spec["partition"]])
        rss_start = _rss_now_mb()
        cpu0, main0 = _cpu_self(), time.thread_time()
        t0 = time.perf_counter()
        result = subset.execute_in_process(partition_key=spec["partition"], instance=instance,
                                           raise_on_error=False, run_config=QUIET)
        seconds = time.perf_counter() - t0
        # The in-process executor runs the steps on this thread: its CPU is the stage's Python
        # work; the rest of the process's is the blob pool's threads (the S3 requests) and obstore's.
        cpu, main_cpu = _cpu_self() - cpu0, time.thread_time() - main0
    materialised = {
        ev.asset_key.to_user_string(): {k: _plain(v.value) for k, v in ev.materialization.metadata.items()}
        for ev in result.get_asset_materialization_events()
    }
    checks = {ev.check_name: ev.passed for ev in result.get_asset_check_evaluations()}
    # A failed check's own words (what it found), so a report says why, not only that it failed.
    check_failures = {ev.check_name: ev.description for ev in result.get_asset_check_evaluations() if not ev.passed}
    failures = [f"{ev.step_key}: {_error_chain(ev.event_specific_data.error)}"  # type: ignore[union-attr]
                for ev in result.all_events if ev.event_type == DagsterEventType.STEP_FAILURE]
    # A blocking check that fails has judged the data (e.g. leakage between the simulator's train
    # and validation answers): the stage ran to the end and its time counts; it is reported under
    # `checks_failed`, not as a failed stage.
    ran = result.success or all("DagsterAssetCheckFailedError" in f for f in failures)
    return {
        "seconds": round(seconds, 3), "cpu_s": round(cpu, 2), "main_thread_cpu_s": round(main_cpu, 2),
        "success": ran, "rss_start_mb": rss_start,
        "assets": sorted(materialised), "checks": checks, "checks_selected": sorted(k.name for k in check_keys),
        "checks_failed": sorted(name for name, passed in checks.items() if not passed),
        "check_failures": check_failures,
        "metadata": materialised, "failures": failures, "note": note, "s3_io": io,
    }


def _child_replay(spec: dict[str, Any]) -> dict[str, Any]:
    """The floor of a stage: the S3 requests it sent (`s3_io`, counted by `_count_s3_io`) sent again
    by a plain boto3 pool of the blob pool's size, through the same proxy, with nothing else in
    between. "Plain": boto3's default client configuration but for a connection pool as wide as
    the thread pool and no `Expect: 100-continue` on small PUTs (a protocol round trip, not work:
    the stores' client skips it too). The stages' client is otherwise tuned
    (`resources._s3_client`: no parameter validation, checksums only where required), and what
    that saves shows as the stages' own gain. GETs read the
    objects the stage read (their keys come from the DB: `get_columns` of the batch's rows, and
    the big objects by key); PUTs send bodies of the stage's mean size to new scratch keys, one per
    PUT as the stage writes (deleted afterwards, outside the timing); each multipart upload of the
    stage as a multipart upload of the same part sizes, created with its first part and completed
    (or aborted, as the stage did) once its parts are in: a completion makes the server assemble
    the object, which costs moto about a second per 200 MB (earlier versions sent one HEAD in its
    place and left that work out of the floor); other requests (HEAD, DELETE) as HEADs. All of
    them shuffled into one queue, as a stage interleaves them (the obstore client sends a whole
    upload from one task, its parts at once). Timed around the requests only."""
    import random

    import boto3
    import sqlalchemy as sa
    from botocore.config import Config

    from lora_assets.settings import Settings
    from lora_assets.store import tables as t

    settings = Settings.from_env()
    bucket, io, threads = settings.s3_bucket, spec["io"], settings.blob_concurrency
    client = boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url or None,
                                            config=Config(max_pool_connections=threads))
    plain_obstore = spec.get("client") == "obstore"
    from lora_assets.store.blobs import _no_expect_for_small_bodies

    client.meta.events.register("before-send.s3.PutObject", _no_expect_for_small_bodies)
    keys: list[str] = []
    if io["small_get"]:
        engine = sa.create_engine(spec["db_url"])
        c = t.conversations
        with engine.connect() as conn:
            for col in spec["get_columns"]:
                keys += [k for k in conn.scalars(sa.select(c.c[col]).where(c.c.batch_job_id == spec["batch"])
                                                 .order_by(c.c.id)) if k]
        engine.dispose()
        if not keys:
            raise RuntimeError(f"no keys in {spec['get_columns']} to replay {io['small_get']} GETs")
    scratch = f"bench-floor/{uuid.uuid4().hex[:8]}"
    put_body = os.urandom(io["put_bytes"] // io["put"]) if io["put"] else b""
    # The stage's multipart uploads, each with its parts' sizes; one it completed is completed
    # here too (CompleteMultipartUpload makes the server assemble the object: on moto about a
    # second per 200 MB, work a HEAD in its place would leave out), one it did not is aborted.
    uploads = [(f"{scratch}/upload-{n}", sizes, upload_id in io["completed"])
               for n, (upload_id, sizes) in enumerate(io["uploads"].items())]
    part_source = os.urandom(max((max(sizes) for _, sizes, _ in uploads), default=0))
    client.put_object(Bucket=bucket, Key=f"{scratch}/head", Body=b"x")

    def get(key: str) -> None:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        while body.read(1 << 20):
            pass

    class Upload:
        """One multipart upload as the stage's store sends it: created with its first part,
        completed by its last one to finish."""

        def __init__(self, key: str, sizes: list[int], complete: bool) -> None:
            self.key, self.sizes, self.complete = key, sizes, complete
            self.lock = threading.Lock()
            self.upload_id: str | None = None
            self.etags: dict[int, str] = {}

        def part(self, number: int) -> None:
            with self.lock:
                if self.upload_id is None:
                    self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
            etag = client.upload_part(Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                                      Body=part_source[:self.sizes[number - 1]])["ETag"]
            with self.lock:
                self.etags[number] = etag
                last = len(self.etags) == len(self.sizes)
            if last and self.complete:
                client.complete_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": e} for n, e in sorted(self.etags.items())]})
            elif last:
                client.abort_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self.upload_id)

    tasks: list[Any] = [lambda k=keys[i % len(keys)]: get(k) for i in range(io["small_get"])]
    tasks += [lambda k=key: get(k) for key in io["big_gets"]]
    tasks += [lambda i=i: client.put_object(Bucket=bucket, Key=f"{scratch}/{i}", Body=put_body)
              for i in range(io["put"])]
    for key, sizes, complete in uploads:
        upload = Upload(key, sizes, complete)
        tasks += [lambda u=upload, n=n: u.part(n) for n in range(1, len(sizes) + 1)]
    tasks += [lambda: client.head_object(Bucket=bucket, Key=f"{scratch}/head") for _ in range(io["other"])]
    if plain_obstore:
        # The same requests from a plain obstore client (its defaults, but for the pool and plain
        # HTTP): a part is sent as a PUT of the part's bytes, a HEAD as a HEAD.
        import obstore
        from obstore.store import S3Store

        store = S3Store(bucket, endpoint=settings.s3_endpoint_url, region="us-east-1",
                        virtual_hosted_style_request=False,
                        client_options={"allow_http": True, "pool_max_idle_per_host": str(threads)})

        def oget(key: str) -> None:
            obstore.get(store, key).bytes()  # whole, as the store reads (cheaper than streaming)

        tasks = [lambda k=keys[i % len(keys)]: oget(k) for i in range(io["small_get"])]
        tasks += [lambda k=key: oget(k) for key in io["big_gets"]]
        tasks += [lambda i=i: obstore.put(store, f"{scratch}/{i}", put_body, use_multipart=False)
                  for i in range(io["put"])]
        # A multipart upload is one task: obstore sends its parts (of the stage's part size) at
        # once and completes it.
        source = memoryview(part_source)
        tasks += [lambda k=key, sz=sizes: obstore.put(store, k, iter([source[:size] for size in sz]),
                                                      use_multipart=True, chunk_size=max(sz), max_concurrency=len(sz))
                  for key, sizes, _ in uploads]
        tasks += [lambda: obstore.head(store, f"{scratch}/head") for _ in range(io["other"])]
    random.Random(0).shuffle(tasks)
    with ThreadPoolExecutor(threads, thread_name_prefix="replay") as pool:
        cpu0, t0 = _cpu_self(), time.perf_counter()
        list(pool.map(lambda f: f(), tasks))
        seconds, cpu = time.perf_counter() - t0, _cpu_self() - cpu0
    scratch_keys = [f"{scratch}/{i}" for i in range(io["put"])] + [f"{scratch}/head"] + [k for k, _, _ in uploads]
    for first in range(0, len(scratch_keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in scratch_keys[first:first + 1000]]})
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu, 3), "requests": len(tasks), "success": True,
            "put_body_bytes": len(put_body), "part_body_bytes": len(part_source), "big_gets": len(io["big_gets"])}


def child_main(spec_path: Path) -> None:
    """Run one stage (spec JSON written by the parent); write its result JSON next to it."""
    started = time.perf_counter()
    spec = json.loads(spec_path.read_text())
    kind = spec["kind"]
    try:
        out = {"setup": _child_setup, "tf_create": _child_tf_create, "run": _child_run,
               "replay": _child_replay}[kind](spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the bench
        import traceback

        out = {"success": False, "failures": [f"{exc.__class__.__name__}: {exc}"], "traceback": traceback.format_exc()}
    out["rss_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["child_wall_s"] = round(time.perf_counter() - started, 3)
    Path(spec["result"]).write_text(json.dumps(out, default=str))


# --- the parent: services, stages, figures ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s} s")


def cpu_s(pid: int) -> float:
    """utime + stime of a process (s), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def process(cmd: list[str], port: int, what: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until it listens, terminate (then kill) it on the way out."""
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_port(port, proc, what)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class Proxy:
    """A running latency proxy and its counters."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, stats_file: Path, delay_ms: float) -> None:
        self.proc, self.port, self.stats_file, self.delay_ms = proc, port, stats_file, delay_ms

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {"seq": -1}

    def snapshot(self) -> dict[str, Any]:
        """Counts now. Asks for a fresh write (SIGUSR1) and waits for one: every request of a stage
        that has ended was counted before it was forwarded, so any write after this call has it."""
        seq = self._read()["seq"]
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the latency proxy exited with {self.proc.returncode}")
            data = self._read()
            if data["seq"] > seq:
                data["cpu_s"] = cpu_s(self.proc.pid)
                return data
            time.sleep(0.01)
        raise RuntimeError("the latency proxy did not write its stats")


@contextmanager
def start_proxy(upstream_port: int, delay_ms: float, tmp: Path, name: str) -> Iterator[Proxy]:
    port = free_port()
    stats = tmp / f"proxy-{name}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "latency_proxy.py"), "--listen-port", str(port),
           "--upstream-port", str(upstream_port), "--delay-ms", str(delay_ms), "--stats-file", str(stats)]
    with process(cmd, port, f"latency proxy ({name})", tmp / f"proxy-{name}.log") as proc:
        proxy = Proxy(proc, port, stats, delay_ms)
        proxy.snapshot()
        yield proxy


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (user postgres or root, trust auth), dropped after."""
    import sqlalchemy as sa

    errors = []
    for admin_url in PG_ADMIN_URLS:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            break
        except Exception as exc:  # noqa: BLE001 - try the next admin user
            errors.append(f"{admin_url}: {exc.__class__.__name__}")
            admin.dispose()
    else:
        raise RuntimeError(f"no PostgreSQL admin connection: {errors}")
    name = f"lora_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pool_size() -> tuple[int, str]:
    raw = os.environ.get("LORA_BLOB_CONCURRENCY")
    return (int(raw), "LORA_BLOB_CONCURRENCY") if raw else (DEFAULT_POOL, "default; LORA_BLOB_CONCURRENCY unset")


def counts_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    methods = set(before.get("requests", {})) | set(after.get("requests", {}))
    by_method = {m: after["requests"].get(m, 0) - before["requests"].get(m, 0) for m in sorted(methods)}
    return {
        "requests": {m: c for m, c in by_method.items() if c},
        "requests_total": sum(by_method.values()),
        "round_trips": after["round_trips"] - before["round_trips"],
        "expect_100": after["expect_100"] - before["expect_100"],
        "connections": after["connections"] - before["connections"],
        "proxy_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
    }


def capacity(proxy: Proxy, threads: int, requests: int, moto_pid: int) -> dict[str, Any]:
    """The S3 server's own rate through the same proxy: a plain boto3 pool of `threads`, PUT then
    GET `requests` objects of 6 KB (what our blobs weigh) — the most a stage could get from it;
    with the CPU milliseconds per request of that boto3 client (all its threads) and of moto."""
    from lora_assets_tests.s3_server import put_get_rate

    before = proxy.snapshot()
    rates = put_get_rate(proxy.endpoint, requests=requests, threads=threads, size=6 * 1024, server_pid=moto_pid,
                         client_stats=True)
    after = proxy.snapshot()
    return {**rates, "threads": threads, "requests_each": requests, "object_bytes": 6 * 1024,
            "delay_ms": proxy.delay_ms, "counted_at_proxy": counts_between(before, after),
            "note": "boto3 client, thread pool of the blob pool size, through the same latency proxy, "
                    "on the same moto (after the stages, so it holds their objects)"}


class Run:
    """One delay's run: services up, stages in order, figures."""

    def __init__(self, n: int, delay_ms: float, tmp: Path, *, generate_through_delay: bool, capacity_requests: int,
                 log: Any, rss_only: bool = False, profile_stages: tuple[str, ...] = (),
                 profile_dir: Path = ROOT) -> None:
        self.profile_stages, self.profile_dir = profile_stages, profile_dir
        self.n, self.delay_ms, self.tmp = n, delay_ms, tmp
        self.rss_only = rss_only
        self.generate_through_delay = generate_through_delay
        self.capacity_requests = capacity_requests
        self.pool, self.pool_source = pool_size()
        self.log = log
        self.stages: list[dict[str, Any]] = []
        self.seq = 0

    def env(self, db_url: str, bucket: str, endpoint: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}  # never a paid call
        env.update({
            "LORA_DATA_DIR": str(self.tmp / "data"),
            "LORA_DATABASE_URL": db_url,
            "LORA_S3_BUCKET": bucket,
            "LORA_S3_PREFIX": "",
            "LORA_S3_ENDPOINT_URL": endpoint,
            "LORA_MAX_CONCURRENCY": "64",
            "LORA_SIMULATOR_LATENCY_S": "0",
            "LORA_SPOOL_DIR": str(self.tmp / "spool"),
            "DAGSTER_HOME": str(self.tmp / "dagster_home"),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONPATH": str(ROOT),
        })
        env.pop("LORA_CLAUDE_MODEL", None)
        return env

    def stage(self, name: str, spec: dict[str, Any], env: dict[str, str], proxy: Proxy | None,
              moto: subprocess.Popen[bytes], *, replay: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one stage in a fresh subprocess; S3 counts from `proxy` before/after it. With
        `replay` (`batch` and `get_columns`: where the keys of the objects it read are), its floor
        is measured right after it, on the same proxy (`_child_replay`)."""
        result = self._subprocess(name, spec, env, proxy, moto)
        self.stages.append(result)
        if replay is not None and proxy is not None and result.get("s3_io"):
            # Two plain clients replay the stage's requests: boto3 (what dagster-aws gives) and
            # obstore (what the store sends small objects with); the floor is the faster.
            for client, field in (("boto3", "floor_replay"), ("obstore", "floor_replay_obstore")):
                floor = self._subprocess(f"{name}_floor_{client}", {"kind": "replay", "io": result["s3_io"],
                                                                    "client": client, **replay}, env, proxy, moto)
                result[field] = {k: floor.get(k) for k in (
                    "seconds", "cpu_s", "requests", "requests_total", "round_trips", "moto_cpu_s", "proxy_cpu_s",
                    "load_1m", "put_body_bytes", "part_body_bytes", "big_gets", "success", "failures")}
            result["s3_io"] = {k: (len(v) if k in ("big_gets", "uploads", "completed") else v)
                               for k, v in result["s3_io"].items()}
        return result

    def _subprocess(self, name: str, spec: dict[str, Any], env: dict[str, str], proxy: Proxy | None,
                    moto: subprocess.Popen[bytes]) -> dict[str, Any]:
        self.seq += 1
        spec_path = self.tmp / f"stage-{self.seq:02d}-{name}.json"
        spec = {**spec, "result": str(spec_path.with_suffix(".result.json"))}
        spec_path.write_text(json.dumps(spec))
        before = proxy.snapshot() if proxy else None
        moto_before = cpu_s(moto.pid)
        t0 = time.perf_counter()
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
        if name in self.profile_stages:  # sampled by py-spy (GIL holder only: what the stage's Python costs)
            out = self.profile_dir / f"{self.n}-{self.delay_ms:g}ms-{name}.txt"
            command = [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "-r", "200",
                       "-f", "raw", "-o", str(out), "--", *command]
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        moto_cpu = cpu_s(moto.pid) - moto_before
        result_path = Path(spec["result"])
        if result_path.exists():
            result = json.loads(result_path.read_text())
        else:
            result = {"success": False, "failures": [f"stage process exited {proc.returncode}: "
                                                     f"{proc.stdout.decode(errors='replace')[-2000:]}"]}
        result.update({"stage": name, "subprocess_wall_s": round(wall, 2), "moto_cpu_s": round(moto_cpu, 2),
                       "load_1m": round(os.getloadavg()[0], 2),  # others' work on the machine skews every figure
                       "through_proxy_delay_ms": proxy.delay_ms if proxy else None})
        if proxy is not None and before is not None:
            result.update(counts_between(before, proxy.snapshot()))
        status = "ok" if result.get("success") else "FAILED " + "; ".join(result.get("failures", []))[:800]
        self.log(f"  [{self.delay_ms:g} ms, N={self.n}] {name}: {result.get('seconds', '?')} s "
                 f"(process {result['subprocess_wall_s']} s), {result.get('requests_total', '-')} S3 requests, "
                 f"peak RSS {result.get('rss_peak_mb')} MB — {status}")
        return result

    def execute(self) -> dict[str, Any]:
        from lora_assets_tests.s3_server import put_get_rate  # noqa: F401 - fail early if moto[server] is missing

        started = time.perf_counter()
        with ExitStack() as stack:
            db_url = stack.enter_context(throwaway_database())
            moto_port = free_port()
            moto = stack.enter_context(process([sys.executable, "-m", "lora_assets_tests.s3_server", "--port",
                                                str(moto_port)], moto_port, "moto S3 server", self.tmp / "moto.log"))
            bucket = make_bucket(f"http://127.0.0.1:{moto_port}")
            proxy = stack.enter_context(start_proxy(moto_port, self.delay_ms, self.tmp, f"{self.delay_ms:g}ms"))
            gen_proxy = proxy if self.generate_through_delay or self.delay_ms == 0 else \
                stack.enter_context(start_proxy(moto_port, 0, self.tmp, "generate-0ms"))
            (self.tmp / "dagster_home").mkdir()
            (self.tmp / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
            env, gen_env = self.env(db_url, bucket, proxy.endpoint), self.env(db_url, bucket, gen_proxy.endpoint)
            # Generation talks to the simulator served apart (`lora-assets simulate-claude`), through the
            # SDK as to Claude: without a key the stage would start one in its own process, and its
            # work (composing every answer) and memory would count as the stage's.
            sim_port = free_port()
            stack.enter_context(process([str(Path(sys.executable).with_name("lora-assets")), "simulate-claude",
                                         "--port", str(sim_port)], sim_port, "Claude simulator",
                                        self.tmp / "simulator.log"))
            gen_env |= {"ANTHROPIC_API_KEY": "sk-ant-bench-placeholder",
                        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{sim_port}"}

            setup = self.stage("setup", {"kind": "setup", "db_url": db_url, "n": self.n,
                                         "batches": ["a"] if self.rss_only else ["a", "b"]}, env, None, moto)
            if not setup.get("success", True) or "batches" not in setup:
                raise RuntimeError(f"setup failed: {setup.get('failures')}\n{setup.get('traceback', '')}")
            a, b = setup["batches"]["a"], setup["batches"].get("b", "")

            def batch(assets: list[str], checks_of: list[str], partition: str) -> dict[str, Any]:
                return {"kind": "run", "job": "batch_pipeline", "partitions_def": "batch_jobs", "partition": partition,
                        "assets": assets, "checks_of": checks_of}

            tf_name = f"bench-scale-{uuid.uuid4().hex[:8]}"

            def tf(assets: list[str], checks_of: list[str]) -> dict[str, Any]:
                return {"kind": "run", "job": "training_file_build", "partitions_def": "training_files",
                        "partition": tf_name, "assets": assets, "checks_of": checks_of}

            both = ["parsed_conversations", "enriched_conversations"]

            def floor(partition: str, *columns: str) -> dict[str, Any]:
                return {"db_url": db_url, "batch": partition, "get_columns": list(columns)}

            self.stage("generate", batch(["raw_conversations"], [], a), gen_env, gen_proxy, moto)
            if self.rss_only:  # the batch run and the build, for the RSS comparison only
                self.stage("combined", batch(both, both, a), env, proxy, moto,
                           replay=floor(a, "raw_response_path", "file_path"))
            else:
                self.stage("raw_checks", batch([], ["raw_conversations"], a), env, proxy, moto,
                           replay=floor(a, "raw_response_path"))
                self.stage("parse", batch(["parsed_conversations"], [], a), env, proxy, moto,
                           replay=floor(a, "raw_response_path"))
                self.stage("parsed_checks", batch([], ["parsed_conversations"], a), env, proxy, moto,
                           replay=floor(a, "file_path"))
                self.stage("enrich", batch(["enriched_conversations"], [], a), env, proxy, moto,
                           replay=floor(a, "file_path"))
                self.stage("enriched_checks", batch([], ["enriched_conversations"], a), env, proxy, moto,
                           replay=floor(a, "enriched_file_path"))
            self.stage("tf_create", {"kind": "tf_create", "db_url": db_url, "batch": a, "training_file": tf_name},
                       env, proxy, moto)
            self.stage("tf_build", tf(["training_files"], []), env, proxy, moto, replay=floor(a, "enriched_file_path"))
            self.stage("tf_checks", tf([], ["training_files"]), env, proxy, moto, replay=floor(a, "enriched_file_path"))
            if not self.rss_only:
                self.stage("generate_b", batch(["raw_conversations"], [], b), gen_env, gen_proxy, moto)
                self.stage("combined", batch(both, both, b), env, proxy, moto,
                           replay=floor(b, "raw_response_path", "file_path"))
            self.log(f"  [{self.delay_ms:g} ms, N={self.n}] S3 server capacity ({self.pool} threads)…")
            cap = capacity(proxy, self.pool, self.capacity_requests, moto.pid)
        return self.figures(cap, time.perf_counter() - started)

    def figures(self, cap: dict[str, Any], wall_s: float) -> dict[str, Any]:
        """Per stage: rates, bounds, RSS; totals for the acceptance figure and the normal path."""
        n = self.n
        put_rate, get_rate = cap["put_per_s"], cap["get_per_s"]
        rows = []
        for s in self.stages:
            if s["stage"] == "setup":
                continue
            reqs = s.get("requests", {})
            puts = reqs.get("PUT", 0) + reqs.get("POST", 0)
            others = s.get("requests_total", 0) - puts
            delay_here = (s.get("through_proxy_delay_ms") or 0) / 1000
            io_bound = s.get("round_trips", 0) * delay_here / self.pool
            server_bound = puts / put_rate + others / get_rate
            estimate = max(io_bound, server_bound)
            replays = [r for r in (s.get("floor_replay"), s.get("floor_replay_obstore"))
                       if r and r.get("success") and r.get("seconds")]
            # The floor: the same requests replayed right after the stage by a plain pool of each
            # client (measured), the faster of the two; the capacity loop's estimate only where
            # nothing was replayed.
            replayed = min(replays, key=lambda r: r["seconds"]) if replays else {}
            floor = replayed["seconds"] if replayed else estimate
            boto3_replay, obstore_replay = s.get("floor_replay") or {}, s.get("floor_replay_obstore") or {}
            seconds = s.get("seconds")
            cpu = sum(s.get(k) or 0 for k in ("cpu_s", "moto_cpu_s", "proxy_cpu_s"))
            rows.append({
                "stage": s["stage"], "success": s.get("success", False),
                "seconds": seconds, "s_per_1000": round(seconds / n * 1000, 2) if seconds is not None else None,
                "subprocess_wall_s": s["subprocess_wall_s"],
                "requests": reqs, "requests_total": s.get("requests_total", 0),
                "requests_per_conv": round(s.get("requests_total", 0) / n, 3),
                "requests_per_conv_by_method": {m: round(c / n, 3) for m, c in reqs.items()},
                "round_trips": s.get("round_trips", 0), "round_trips_per_conv": round(s.get("round_trips", 0) / n, 3),
                "expect_100": s.get("expect_100", 0),
                "delay_ms": s.get("through_proxy_delay_ms"),
                "io_bound_s": round(io_bound, 3), "s3_server_bound_s": round(server_bound, 3),
                "floor_estimate_s": round(estimate, 3), "floor_s": round(floor, 3),
                "floor_measured": bool(replayed), "floor_replay": boto3_replay or None,
                "floor_replay_obstore": obstore_replay or None,
                "floor_client": ("obstore" if replayed is obstore_replay else "boto3") if replayed else None,
                "s3_io": s.get("s3_io"),
                "ratio_to_floor": round(seconds / floor, 2) if seconds and floor else None,
                "replay_cpu_ms_per_conv": round((boto3_replay.get("cpu_s") or 0) / n * 1000, 2) if boto3_replay else None,
                "replay_obstore_cpu_ms_per_conv": (round((obstore_replay.get("cpu_s") or 0) / n * 1000, 2)
                                                   if obstore_replay else None),
                "ratio_to_boto3_floor": (round(seconds / boto3_replay["seconds"], 2)
                                         if seconds and boto3_replay.get("seconds") else None),
                "rss_peak_mb": s.get("rss_peak_mb"), "rss_start_mb": s.get("rss_start_mb"),
                "cpu_s_stage_moto_proxy": round(cpu, 2),
                "cpu_busy": round(cpu / (seconds * CORES), 2) if seconds else None,
                "stage_cpu_s": s.get("cpu_s"),
                "client_cpu_ms_per_conv": round((s.get("cpu_s") or 0) / n * 1000, 2),
                "main_thread_cpu_ms_per_conv": round((s.get("main_thread_cpu_s") or 0) / n * 1000, 2),
                "load_1m": s.get("load_1m"), "moto_cpu_s": s.get("moto_cpu_s"), "proxy_cpu_s": s.get("proxy_cpu_s"),
                "checks": s.get("checks", {}), "checks_selected": s.get("checks_selected", []),
                "checks_failed": s.get("checks_failed", []), "check_failures": s.get("check_failures", {}),
                "assets": s.get("assets", []), "note": s.get("note", ""), "failures": s.get("failures", []),
                "metadata": s.get("metadata", {}),
            })
        by = {r["stage"]: r for r in rows}

        def total(names: tuple[str, ...]) -> dict[str, Any]:
            sel = [by[x] for x in names if x in by]
            seconds = sum(r["seconds"] or 0 for r in sel)
            reqs = sum(r["requests_total"] for r in sel)
            rts = sum(r["round_trips"] for r in sel)
            floor = sum(r["floor_s"] for r in sel)
            return {"stages": list(names), "seconds": round(seconds, 2), "s_per_1000": round(seconds / n * 1000, 2),
                    "requests_per_conv": round(reqs / n, 2), "round_trips_per_conv": round(rts / n, 2),
                    "io_bound_s": round(sum(r["io_bound_s"] for r in sel), 2),
                    "s3_server_bound_s": round(sum(r["s3_server_bound_s"] for r in sel), 2),
                    "floor_s": round(floor, 2), "floor_s_per_1000": round(floor / n * 1000, 2),
                    "floor_measured": all(r["floor_measured"] for r in sel if r["requests_total"]),
                    "cpu_s_stage_moto_proxy": round(sum(r["cpu_s_stage_moto_proxy"] for r in sel), 1),
                    "ratio_to_floor": round(seconds / floor, 2) if floor else None,
                    "rss_peak_mb": max((r["rss_peak_mb"] or 0 for r in sel), default=0),
                    "client_cpu_ms_per_conv": round(sum(r["stage_cpu_s"] or 0 for r in sel) / n * 1000, 2),
                    # Of which the steps' own thread (parsing, enrichment, checks, build, Dagster);
                    # the rest is the blob pool's and obstore's threads.
                    "main_thread_cpu_ms_per_conv": round(sum(r["main_thread_cpu_ms_per_conv"] for r in sel), 2),
                    # What plain clients spend on the same requests (the replays, measured in this
                    # run): the rest of a stage's CPU is ours (parsing, enrichment, checks, build,
                    # Dagster, and the store's own client).
                    "boto3_cpu_ms_per_conv": round(replay_ms(sel, "floor_replay") / n, 2),
                    "obstore_cpu_ms_per_conv": round(replay_ms(sel, "floor_replay_obstore") / n, 2),
                    "ratio_to_boto3_floor": (round(seconds / boto3_floor, 2)
                                             if (boto3_floor := sum((r["floor_replay"] or {}).get("seconds") or 0
                                                                    for r in sel)) else None)}

        def replay_ms(sel: list[dict[str, Any]], field: str) -> float:
            return sum(((r.get(field) or {}).get("cpu_s") or 0) * 1000 for r in sel)

        end_to_end = ("generate", *ACCEPTANCE_STAGES)
        return {
            "n": n, "delay_ms": self.delay_ms, "cores": CORES, "pool_size": self.pool, "pool_size_source": self.pool_source,
            "generate_through_delay": self.generate_through_delay or self.delay_ms == 0,
            "stages": rows,
            "acceptance_total": total(ACCEPTANCE_STAGES),
            "normal_path_total": total(NORMAL_PATH_STAGES),
            "end_to_end_requests_per_conv": round(sum(by[x]["requests_total"] for x in end_to_end if x in by) / n, 2),
            "end_to_end_normal_path_requests_per_conv": round(
                sum(by[x]["requests_total"] for x in ("generate_b" if "generate_b" in by else "generate",
                                                      *NORMAL_PATH_STAGES) if x in by) / n, 2),
            "rss_only": self.rss_only,
            "planning": {k: v for k, v in self.stages[0].items() if k in ("distinct_combinations", "per_combination")},
            "s3_capacity": cap,
            # A run's fixed cost (Dagster + one DB query, no S3): what a tiny partition pays per stage anyway.
            "run_fixed_cost_s": by["raw_checks"]["seconds"] if "raw_checks" in by else None,
            "load_1m_max": max((r["load_1m"] or 0 for r in rows), default=None),
            "all_succeeded": all(r["success"] for r in rows),
            "wall_s": round(wall_s, 1),
        }


def make_bucket(endpoint: str) -> str:
    import boto3

    bucket = f"lora-bench-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return bucket


def run_once(n: int, delay_ms: float, **kw: Any) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"lora-bench-scale-{n}-{delay_ms:g}ms-"))
    try:
        return Run(n, delay_ms, tmp, **kw).execute()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def acceptance(runs: list[dict[str, Any]], rss_run: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's acceptance figures, read off the runs (informative: the bench does not fail on them)."""
    out: dict[str, Any] = {}
    slow = max(runs, key=lambda r: r["delay_ms"])

    def normal(run: dict[str, Any]) -> dict[str, Any]:
        t = run["normal_path_total"]
        return {"n": run["n"], "delay_ms": run["delay_ms"], "s_per_1000": t["s_per_1000"],
                "floor_s_per_1000": t["floor_s_per_1000"], "ratio_to_floor": t["ratio_to_floor"], "aim_ratio": 1.3,
                "client_cpu_ms_per_conv": t["client_cpu_ms_per_conv"],
                "main_thread_cpu_ms_per_conv": t["main_thread_cpu_ms_per_conv"],
                "boto3_cpu_ms_per_conv": t["boto3_cpu_ms_per_conv"], "obstore_cpu_ms_per_conv": t["obstore_cpu_ms_per_conv"],
                "ratio_to_boto3_floor": t["ratio_to_boto3_floor"], "aim_cpu_ms": 3.0,
                "stages": {r["stage"]: {"s_per_1000": r["s_per_1000"], "floor_s_per_1000": round(r["floor_s"] / run["n"] * 1000, 2),
                                        "ratio_to_floor": r["ratio_to_floor"], "client_cpu_ms_per_conv": r["client_cpu_ms_per_conv"],
                                        "main_thread_cpu_ms_per_conv": r["main_thread_cpu_ms_per_conv"],
                                        "requests_per_conv": r["requests_per_conv"], "rss_peak_mb": r["rss_peak_mb"],
                                        "checks_failed": r["checks_failed"]}
                           for r in run["stages"] if r["stage"] in ("generate", *NORMAL_PATH_STAGES)}}

    out["parse_to_build_normal_path"] = normal(slow)
    if rss_run is not None and rss_run["delay_ms"] == slow["delay_ms"]:
        out["parse_to_build_normal_path_small_n"] = normal(rss_run)
    if not slow["rss_only"]:
        out["staged_s_per_1000_at_max_delay"] = {"delay_ms": slow["delay_ms"], "s_per_1000": slow["acceptance_total"]["s_per_1000"],
                                                 "ratio_to_floor": slow["acceptance_total"]["ratio_to_floor"]}
    out["requests_per_conv_end_to_end"] = {"staged": None if slow["rss_only"] else slow["end_to_end_requests_per_conv"],
                                           "normal_path": slow["end_to_end_normal_path_requests_per_conv"], "aim_at_most": 6.0}

    def peaks(run: dict[str, Any]) -> dict[str, float]:
        by = {s["stage"]: s for s in run["stages"]}
        return {"generate": by["generate"]["rss_peak_mb"], "batch_run (combined)": by["combined"]["rss_peak_mb"],
                "training_file_build": by["tf_build"]["rss_peak_mb"], "training_file_checks": by["tf_checks"]["rss_peak_mb"],
                "max_any_stage": max(s["rss_peak_mb"] or 0 for s in run["stages"])}

    big = next((r for r in runs if r["delay_ms"] == 0), runs[0])
    out["peak_rss_mb"] = {"n": big["n"], "delay_ms": big["delay_ms"], **peaks(big), "aim_mb": 500}
    if rss_run is not None:
        small = peaks(rss_run)
        out["peak_rss_mb_small"] = {"n": rss_run["n"], "delay_ms": rss_run["delay_ms"], **small}
        out["rss_ratio_n_to_small"] = {k: round(peaks(big)[k] / v, 3) if v else None for k, v in small.items()}
        out["rss_ratio_aim"] = "within 0.9–1.1"
    return out


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _environment() -> dict[str, Any]:
    """What a reader needs to reproduce a run: the commit, versions, cores, the settings that
    change the stages' S3 path."""
    import platform

    import boto3
    import botocore

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", None
    return {"git_commit": commit, "uncommitted_changes": dirty, "python": platform.python_version(),
            "boto3": boto3.__version__, "botocore": botocore.__version__, "cores": CORES,
            "load_1m_at_start": round(os.getloadavg()[0], 2),
            "obstore": _version("obstore"),
            "LORA_BLOB_CONCURRENCY": os.environ.get("LORA_BLOB_CONCURRENCY", "32 (default)")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="Conversations in the partition (up to 10,000).")
    parser.add_argument("--delays", default="0,20", help="Milliseconds added per S3 round trip, comma-separated.")
    parser.add_argument("--rss-n", type=int, default=500, help="Also run this N for the RSS comparison (0: skip).")
    parser.add_argument("--rss-delay", type=float, default=0.0,
                        help="Milliseconds per S3 round trip of the --rss-n run (its normal-path figures are "
                             "reported too).")
    parser.add_argument("--normal-path-only", action="store_true",
                        help="Run only generate → parse + enrich + checks in one run → build → its checks (the "
                             "path production takes), not the stages one by one: what fits a 10,000 run in minutes.")
    parser.add_argument("--capacity-requests", type=int, default=1000, help="PUTs and GETs of the S3-capacity loop.")
    parser.add_argument("--generate-through-delay", action="store_true",
                        help="Generation's S3 traffic pays the delay too (default: a 0 ms proxy, still counted).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json",
                        help="Where the JSON report goes (the acceptance run: docs/bench-scale-n10000-run2.json).")
    parser.add_argument("--profile-stages", default="",
                        help="Comma-separated stages (e.g. combined,tf_build) to run under `py-spy record --gil` (needs "
                             "py-spy in the venv); raw collapsed stacks go next to --out. Sampling slows them: "
                             "figures of a profiled run are not comparable.")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return {}

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so servers, databases and temp dirs go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kw = {"generate_through_delay": args.generate_through_delay, "capacity_requests": args.capacity_requests, "log": log,
          "profile_stages": tuple(x for x in args.profile_stages.split(",") if x), "profile_dir": args.out.parent}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    runs = [run_once(args.n, d, rss_only=args.normal_path_only, **kw) for d in delays]
    rss_run = run_once(args.rss_n, args.rss_delay, rss_only=True, **kw) if args.rss_n else None
    pool, source = pool_size()
    results = {
        "command": " ".join(["bench/bench_scale.py", *(argv if argv is not None else sys.argv[1:])]),
        "environment": _environment(),
        "n": args.n, "delays_ms": delays, "pool_size": pool, "pool_size_source": source,
        "runs": runs, "rss_run": rss_run, "acceptance": acceptance(runs, rss_run),
        "all_succeeded": all(r["all_succeeded"] for r in runs) and (rss_run is None or rss_run["all_succeeded"]),
        "total_s": round(time.perf_counter() - started, 1),
        "note": "seconds = the materialisation call inside a fresh subprocess (imports excluded; subprocess_wall_s "
                "includes them); requests and round trips counted by the proxy at the HTTP layer; io_bound = round "
                "trips × delay ÷ pool size; s3_server_bound = requests ÷ the S3 server's measured rate; floor = the "
                "larger of the two. moto is served with HTTP/1.1 keep-alive, as S3 keeps connections alive; "
                "connection set-up is not delayed.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("runs", "rss_run")}, indent=2))
    judged = [f"{r['delay_ms']:g} ms/{s['stage']}: {', '.join(s['checks_failed'])}"
              for r in runs + ([rss_run] if rss_run else []) for s in r["stages"] if s.get("checks_failed")]
    if judged:
        log(f"checks that failed on the benchmark's data (findings, not errors): {judged}")
    if not results["all_succeeded"]:
        failed = [f"{r['delay_ms']:g} ms/{s['stage']}" for r in runs + ([rss_run] if rss_run else [])
                  for s in r["stages"] if not s["success"]]
        log(f"stages failed: {failed}")
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
