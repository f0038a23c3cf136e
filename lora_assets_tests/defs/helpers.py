"""Shared helpers for the Dagster-level tests: a real domain DB with the bundled scaffolding,
resources pointing the real SDK at a loopback simulator, batch planning, running the
`batch_pipeline` job for one dynamic partition, and running selected asset checks alone.

Signatures here are used by other test files (e.g. test_crash.py): keep them stable."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    TableMetadataValue,
)
from sqlalchemy.engine import Engine

from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.resources import BlobStoreResource, ClaudeResource, DomainDB
from lora_assets.schemas import BatchSelection
from lora_assets.store import db as dbq
from lora_assets.store.batches import batch_progress, plan_batch
from lora_assets.store.conversations import batch_conversations, update_conversation
from lora_assets.store import tables as t
from lora_assets.store.blobs import BlobStore
from lora_assets.store.scaffolding_files import load_bundle
from lora_assets_tests import check_names

#: Console logger at WARNING: keeps in-process runs quiet (event log is unaffected).
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

#: Which asset each batch-level check hangs on (derived from the Definitions).
CHECK_ASSET = check_names.CHECK_ASSET


# --- store -----------------------------------------------------------------------------------


def local_blobs(root: Path | str) -> BlobStoreResource:
    """A blob store resource on a local directory."""
    return BlobStoreResource(local_dir=str(root))


def s3_blobs(s3_bucket: tuple[str, str], prefix: str = "") -> BlobStoreResource:
    """A blob store resource on the moto bucket of the `s3_bucket` fixture ((endpoint, bucket))."""
    endpoint, bucket = s3_bucket
    return BlobStoreResource(s3_bucket=bucket, s3_endpoint_url=endpoint, s3_prefix=prefix)


def setup_store(db_url: str, blobs_resource: BlobStoreResource | None = None) -> Engine:
    """Create the schema and load the bundled scaffolding (what the scaffolding assets do).
    Returns the engine the DomainDB resource of `db_url` uses (one per URL per process).
    `blobs_resource` is accepted for symmetry; the blob store needs no setup."""
    engine = DomainDB(database_url=db_url).engine()
    dbq.init_schema(engine)
    dbq.load_scaffolding(engine, load_bundle())
    return engine


def make_resources(db_url: str, blobs: BlobStoreResource, sim: Any, **claude_kw: Any) -> dict[str, Any]:
    """Resources for `build_defs`: the DB at `db_url`, `blobs`, and Claude through the real SDK
    at the running simulator `sim` (`claude_kw` overrides ClaudeResource fields, e.g.
    `api_key=EnvVar("ANTHROPIC_API_KEY")`, `max_attempts_per_item=1`)."""
    kw: dict[str, Any] = {"api_key": "sk-ant-test-placeholder", "base_url": sim.base_url, "poll_interval_s": 0.1}
    kw.update(claude_kw)
    return {"db": DomainDB(database_url=db_url), "blobs": blobs, "claude": ClaudeResource(**kw)}


def make_defs(db_url: str, blobs: BlobStoreResource, sim: Any, **claude_kw: Any) -> Definitions:
    """`build_defs(make_resources(...))`."""
    from lora_assets.definitions import build_defs

    return build_defs(make_resources(db_url, blobs, sim, **claude_kw))


def plan(
    engine: Engine,
    n_personas: int,
    n_arcs: int,
    n_topics: int,
    per: int = 1,
    mode: str = "messages",
    *,
    model: str = "claude-haiku-5-5",
    name: str = "test-batch",
) -> str:
    """Plan a batch over the first n personas × arcs × topics (by key), `per` conversations per
    combination. Returns the batch id (a `queued` batch_jobs row; no Dagster partition yet)."""
    with engine.connect() as conn:
        pk = [p.persona_key for p in dbq.read_personas(conn)][:n_personas]
        ak = [a.arc_key for a in dbq.read_emotional_arcs(conn)][:n_arcs]
        tk = [x.topic_key for x in dbq.read_training_topics(conn)][:n_topics]
    assert len(pk) == n_personas and len(ak) == n_arcs and len(tk) == n_topics, "not enough bundled scaffolding"
    batch_id, n = plan_batch(
        engine,
        selection=BatchSelection(persona_keys=pk, arc_keys=ak, topic_keys=tk, conversations_per_combination=per),
        model=model,
        mode=mode,
        created_by="tests",
        name=name,
    )
    assert n == n_personas * n_arcs * n_topics * per
    return batch_id


# --- running ---------------------------------------------------------------------------------


def add_partition(instance: DagsterInstance, batch_id: str) -> None:
    if not instance.has_dynamic_partition(batch_jobs_partitions.name, batch_id):
        instance.add_dynamic_partitions(batch_jobs_partitions.name, [batch_id])


def run_batch(defs: Definitions, instance: DagsterInstance, batch_id: str) -> ExecuteInProcessResult:
    """Add the batch's dynamic partition (if missing) and execute `batch_pipeline` for it
    (generate → parse → enrich with all their checks). Never raises on step failure."""
    add_partition(instance, batch_id)
    job = defs.resolve_job_def("batch_pipeline")
    return job.execute_in_process(partition_key=batch_id, instance=instance, raise_on_error=False, run_config=QUIET)


def run_assets(
    defs: Definitions, instance: DagsterInstance, batch_id: str, asset_names: Iterable[str], *, with_checks: bool = True
) -> ExecuteInProcessResult:
    """Materialise only `asset_names` (assets of `batch_pipeline`) for the partition, with their
    checks unless told not to: a run of the implicit asset job, as an asset page's Materialize
    button launches (a `batch_pipeline` run would carry its run tag, which arms no later stage)."""
    add_partition(instance, batch_id)
    keys = {AssetKey(n) for n in asset_names}
    graph = defs.resolve_asset_graph()
    checks = {k for k in graph.asset_check_keys if k.asset_key in keys} if with_checks else set()
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=keys, asset_check_selection=checks)
    return job.execute_in_process(partition_key=batch_id, instance=instance, raise_on_error=False, run_config=QUIET)


def check_key(name: str) -> AssetCheckKey:
    return AssetCheckKey(AssetKey(CHECK_ASSET[name]), name)


def run_checks(defs: Definitions, instance: DagsterInstance, batch_id: str, check_names: Iterable[str]) -> ExecuteInProcessResult:
    """Execute ONLY the named asset checks for the partition (no asset is materialised): a
    subset of `batch_pipeline` with an empty asset selection and these check keys. (A subset of
    the implicit global asset job fails in 1.13 once the location holds assets with another
    partitions definition: "There is no PartitionsDefinition shared by all the provided assets".)"""
    add_partition(instance, batch_id)
    keys = {check_key(n) for n in check_names}
    job = defs.resolve_job_def("batch_pipeline").get_subset(asset_selection=set(), asset_check_selection=keys)
    return job.execute_in_process(partition_key=batch_id, instance=instance, raise_on_error=False, run_config=QUIET)


def check_evaluations(result: ExecuteInProcessResult) -> dict[str, Any]:
    """{check name: AssetCheckEvaluation} of a run."""
    return {ev.check_name: ev for ev in result.get_asset_check_evaluations()}


def materialized(result: ExecuteInProcessResult) -> set[str]:
    """Asset names materialised by a run."""
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def metadata(result: ExecuteInProcessResult, asset_name: str) -> dict[str, Any]:
    """Materialisation metadata of `asset_name` in a run, as plain values."""
    for ev in result.get_asset_materialization_events():
        if ev.asset_key.to_user_string() == asset_name:
            return {k: plain(v) for k, v in ev.materialization.metadata.items()}
    raise AssertionError(f"{asset_name} was not materialised in run {result.run_id}")


def plain(value: Any) -> Any:
    """A metadata value as a plain value; a table as markdown-style lines (`| a | b |`, header
    first), so a test can search it for a row."""
    if isinstance(value, TableMetadataValue):
        names = [c.name for c in value.schema.columns]
        lines = ["| " + " | ".join(names) + " |"]
        lines += ["| " + " | ".join(str(r.data.get(n)) for n in names) + " |" for r in value.records]
        return "\n".join(lines)
    return value.value


def check_text(evaluation: Any) -> str:
    """Description + every metadata value of a check evaluation, as one string to search."""
    parts = [evaluation.description or ""]
    parts += [f"{k}: {plain(v)}" for k, v in evaluation.metadata.items()]
    return "\n".join(str(p) for p in parts)


def run_event_log_text(instance: DagsterInstance, run_id: str) -> str:
    """Every event record of a run, serialized (to search for secrets)."""
    from dagster._serdes import serialize_value

    return "\n".join(serialize_value(r) for r in instance.get_records_for_run(run_id, limit=1_000_000).records)


# --- reading / tampering the store -------------------------------------------------------------


def conversations(engine: Engine, batch_id: str, **filters: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return batch_conversations(conn, batch_id, **filters)


def progress(engine: Engine, batch_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return batch_progress(conn, batch_id)


def items(engine: Engine, batch_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.batch_items).where(t.batch_items.c.batch_job_id == batch_id).order_by(t.batch_items.c.position)
        ).mappings()
        return [dict(r) for r in rows]


def update_row(engine: Engine, conversation_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        update_conversation(conn, conversation_id, **values)


def read_json(store: BlobStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


def write_json(store: BlobStore, key: str, data: Any) -> None:
    store.put_bytes(key, json.dumps(data, indent=2, ensure_ascii=False).encode())


def all_table_rows_text(engine: Engine) -> str:
    """Every row of every domain table, as text (to search for secrets)."""
    parts = []
    with engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)).mappings():
                parts.append(f"{table.name}: {dict(row)!r}")
    return "\n".join(parts)


def all_blobs_text(store: BlobStore, prefix: str = "") -> str:
    """Every blob's content, decoded leniently (to search for secrets)."""
    return "\n".join(store.get_bytes(k).decode("utf-8", "replace") for k in store.list(prefix))


def batch_id_of(engine: Engine, key: str) -> str:
    """The id of the batch whose partition key (slug) or id is `key`."""
    from lora_assets.store.batches import batch_id_for_key

    with engine.connect() as conn:
        return batch_id_for_key(conn, key)


def key_of(engine: Engine, batch_id: str) -> str:
    """The partition key (slug) of batch `batch_id`."""
    from lora_assets.store.batches import batch_key

    with engine.connect() as conn:
        return batch_key(conn, batch_id)
