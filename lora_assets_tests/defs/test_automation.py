"""Automation: enrichment materialises on its own after parsing (eager automation conditions,
evaluated with Dagster's own evaluator), the queued-batch sensor, the nightly coverage schedule.
Real Dagster instance, real SQLite domain DB, real SDK → loopback simulator."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import (
    AssetKey,
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
)

from lora_assets.defs.conditions import PIPELINE_RUN_TAG
from lora_assets.defs.automation import (
    BATCH_ASSETS,
    NIGHTLY_BATCH_SIZE,
    nightly_coverage_batch,
    queued_batches_sensor,
    sensor_interval_s,
)
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.errors import SettingsError
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.schemas import BatchSelection
from lora_assets.store.batches import coverage_counts, get_batch, plan_batch, set_batch_status
from lora_assets.store import tables as t
from lora_assets_tests.defs import helpers as h

RAW, PARSED, ENRICHED = (AssetKey(n) for n in ("raw_conversations", "parsed_conversations", "enriched_conversations"))


@pytest.fixture
def persistent_instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """An on-disk instance: ScheduleEvaluationContext.instance needs an instance ref in 1.13
    (an ephemeral instance raises "no instance reference was provided")."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.local_temp(tempdir=str(home)) as inst:
        yield inst


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> str:
    """The test DB's URL. The sensor and schedule get their resources from the caller (here the
    evaluation context), never from the environment: the environment points elsewhere."""
    monkeypatch.setenv("LORA_DATABASE_URL", "sqlite:////nonexistent/not-this.db")
    return sqlite_url


def sensor_context(instance: DagsterInstance, db_url: str) -> Any:
    """A sensor evaluation context carrying the DomainDB resource of `db_url`."""
    return build_sensor_context(instance=instance, resources={"db": h.DomainDB(database_url=db_url)})


def run_schedule(instance: DagsterInstance, db_url: str, when: datetime, **limits: Any) -> Any:
    """Evaluate the nightly schedule with the DomainDB and Claude resources in its context (a
    context manager: the Claude resource has a teardown). `limits`: DomainDB fields
    (max_batch_cost_usd, auto_approve_usd, max_items_per_batch), as the settings would set them."""
    resources = {"db": h.DomainDB(database_url=db_url, **limits), "claude": h.ClaudeResource()}
    with build_schedule_context(instance=instance, scheduled_execution_time=when, resources=resources) as context:
        return nightly_coverage_batch(context)


def test_enrichment_is_requested_automatically_after_parsing(
    sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance
) -> None:
    """Checklist: "Enrichment triggers automatically after generation" — the eager condition on
    enriched_conversations requests exactly the partition whose parse just landed."""
    engine = h.setup_store(sqlite_url)
    defs = h.make_defs(sqlite_url, h.local_blobs(tmp_path / "blobs"), sim)
    batch_id = h.plan(engine, 1, 2, 1)
    other = h.plan(engine, 1, 1, 1, name="untouched")
    h.add_partition(instance, batch_id)
    h.add_partition(instance, other)

    tick0 = evaluate_automation_conditions(defs=defs, instance=instance)
    assert tick0.total_requested == 0  # nothing upstream has landed yet

    landed = h.run_assets(defs, instance, batch_id, ["raw_conversations", "parsed_conversations"])
    assert landed.success and h.materialized(landed) == {"raw_conversations", "parsed_conversations"}
    assert {r["enrichment_status"] for r in h.conversations(engine, batch_id)} == {"not_started"}

    tick1 = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick0.cursor)

    # parsing landed → enrichment is requested, for that partition only, and nothing else
    assert tick1.get_requested_partitions(ENRICHED) == {batch_id}
    assert tick1.total_requested == 1

    # run what the automation asked for: no conversation is left not_started
    enrich = h.run_assets(defs, instance, batch_id, ["enriched_conversations"])
    assert enrich.success
    assert {r["enrichment_status"] for r in h.conversations(engine, batch_id)} == {"completed"}
    assert h.check_evaluations(enrich)["all_conversations_enriched"].passed

    tick2 = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick1.cursor)
    assert tick2.total_requested == 0  # everything up to date: nothing requested

    # generation alone landing on another partition: Dagster 1.13's eager() treats a missing
    # parent that is requested in the same tick as not missing, so parse AND enrich are both
    # requested at once (they run in one run, parse first)
    gen = h.run_assets(defs, instance, other, ["raw_conversations"])
    assert gen.success
    tick3 = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick2.cursor)
    assert tick3.get_requested_partitions(PARSED) == {other}
    assert tick3.get_requested_partitions(ENRICHED) == {other}
    assert tick3.get_num_requested(RAW) == 0


def test_queued_batch_sensor_adds_partition_and_requests_a_run(
    settings_env: str, instance: DagsterInstance, sim: ClaudeSimulator, tmp_path: Path
) -> None:
    engine = h.setup_store(settings_env)
    skipped = queued_batches_sensor(sensor_context(instance, settings_env))
    assert isinstance(skipped, SkipReason) and "no queued batch jobs" in skipped.skip_message

    # a batch created outside Dagster (e.g. `lora-assets batch create`): a queued row, no partition
    batch_id = h.plan(engine, 1, 2, 1)
    key = h.key_of(engine, batch_id)  # the readable partition key (a slug of the batch's name)
    assert key == "test-batch" and not instance.has_dynamic_partition(batch_jobs_partitions.name, key)

    result = queued_batches_sensor(sensor_context(instance, settings_env))

    assert isinstance(result, SensorResult)
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == batch_jobs_partitions.name and list(add.partition_keys) == [key]
    [run] = result.run_requests
    assert run.partition_key == key and run.run_key == f"batch-{key}"
    assert run.asset_selection == BATCH_ASSETS  # named: the run's own updates arm no stage

    # what the daemon does with the result: register the partition, launch the run
    instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    again = queued_batches_sensor(sensor_context(instance, settings_env))
    assert isinstance(again, SensorResult)
    assert again.dynamic_partitions_requests == []  # partition exists: not added twice
    assert [r.run_key for r in again.run_requests] == [f"batch-{key}"]  # same key: the daemon dedupes

    defs = h.make_defs(settings_env, h.local_blobs(tmp_path / "blobs"), sim)
    assert h.run_batch(defs, instance, run.partition_key).success
    with engine.connect() as conn:
        assert get_batch(conn, batch_id)["status"] == "completed"
    after = queued_batches_sensor(sensor_context(instance, settings_env))
    assert isinstance(after, SkipReason)  # no longer queued


def test_sensor_gets_its_resources_from_the_definitions(
    settings_env: str, instance: DagsterInstance, sim: ClaudeSimulator, tmp_path: Path
) -> None:
    """The resources given to `build_defs` reach the sensor (nothing built from the environment,
    which points at a database that does not exist)."""
    engine = h.setup_store(settings_env)
    batch_id = h.plan(engine, 1, 1, 1)
    defs = h.make_defs(settings_env, h.local_blobs(tmp_path / "blobs"), sim)
    # What the sensor daemon does: the repository's top-level resources go into the context.
    resources = defs.get_repository_def().get_top_level_resources()
    with build_sensor_context(instance=instance, resources=resources) as context:
        result = defs.get_sensor_def("queued_batches_sensor")(context)
    assert isinstance(result, SensorResult) and [r.partition_key for r in result.run_requests] == [h.key_of(engine, batch_id)]


def test_queued_batch_sensor_skips_before_init(settings_env: str, instance: DagsterInstance) -> None:
    """No tables yet: a readable skip, not a failed tick every 30 s."""
    result = queued_batches_sensor(sensor_context(instance, settings_env))
    assert isinstance(result, SkipReason) and "lora-assets init" in result.skip_message


def test_queued_batch_sensor_never_starts_a_second_run(
    settings_env: str, instance: DagsterInstance, sim: ClaudeSimulator, tmp_path: Path
) -> None:
    """A batch already launched by hand gets no sensor run, even if its row still says `queued`
    (the window between a manual launch and its run marking the batch `processing`)."""
    engine = h.setup_store(settings_env)
    batch_id = h.plan(engine, 1, 1, 1)
    defs = h.make_defs(settings_env, h.local_blobs(tmp_path / "blobs"), sim)
    assert h.run_batch(defs, instance, batch_id).success
    with engine.begin() as conn:
        set_batch_status(conn, batch_id, "queued")
    result = queued_batches_sensor(sensor_context(instance, settings_env))
    assert isinstance(result, SkipReason) and "without a run" in result.skip_message


def _id_combinations(engine: sa.Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        ids = [
            [r[0] for r in conn.execute(sa.select(tbl.c.id).order_by(tbl.c.id))]
            for tbl in (t.personas, t.emotional_arcs, t.training_topics)
        ]
    return list(itertools.product(*ids))


def _batch_combinations(engine: sa.Engine, batch_id: str) -> list[tuple[str, str, str]]:
    return [(i["persona_id"], i["emotional_arc_id"], i["training_topic_id"]) for i in h.items(engine, batch_id)]


def test_nightly_schedule_plans_a_coverage_batch_over_the_least_covered_combinations(
    settings_env: str, persistent_instance: DagsterInstance, sim: ClaudeSimulator, tmp_path: Path
) -> None:
    instance = persistent_instance
    engine = h.setup_store(settings_env)
    every = _id_combinations(engine)
    assert len(every) > 2 * NIGHTLY_BATCH_SIZE + 4
    # cover the 4 combinations that would come first on a tie, with generated conversations
    covered = every[:4]
    batch_id, _ = plan_batch(
        engine, selection=BatchSelection(), model="claude-haiku-5-5", mode="messages", created_by="tests", combinations=covered
    )
    defs = h.make_defs(settings_env, h.local_blobs(tmp_path / "blobs"), sim)
    assert h.run_batch(defs, instance, batch_id).success
    with engine.connect() as conn:
        assert coverage_counts(conn, by="id") == {c: 1 for c in covered}

    when = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
    request = run_schedule(instance, settings_env, when)

    assert isinstance(request, RunRequest)
    nightly_key = request.partition_key
    assert request.run_key == f"nightly-{nightly_key}" and nightly_key == "nightly-20261121"
    assert instance.has_dynamic_partition(batch_jobs_partitions.name, nightly_key)
    nightly = h.batch_id_of(engine, nightly_key)
    with engine.connect() as conn:
        batch = get_batch(conn, nightly)
    assert batch["status"] == "queued" and batch["mode"] == "batches" and batch["name"] == "nightly-20261121"
    assert batch["total_items"] == NIGHTLY_BATCH_SIZE and batch["created_by"] == "nightly-schedule"
    # Planned like any other batch: estimated from counted tokens, under the default cost cap.
    est = batch["estimate"]
    assert est["items"] == NIGHTLY_BATCH_SIZE and 0 < est["total_usd"] <= 0.25 and est["mode"] == "batches"
    assert (est["cost_cap_usd"], est["cost_cap_source"]) == (5.0, "the LORA_MAX_BATCH_COST_USD default")
    planned = _batch_combinations(engine, nightly)
    # the least-covered combinations: none of the covered ones, then in stable id order
    assert planned == every[4 : 4 + NIGHTLY_BATCH_SIZE]

    # the next night does not pick the same gaps: planned-but-pending items count as coverage
    request2 = run_schedule(instance, settings_env, datetime(2026, 11, 22, 2, tzinfo=UTC))
    assert isinstance(request2, RunRequest) and request2.partition_key != nightly_key
    assert _batch_combinations(engine, h.batch_id_of(engine, request2.partition_key)) == every[4 + NIGHTLY_BATCH_SIZE : 4 + 2 * NIGHTLY_BATCH_SIZE]

    # the run it requests runs (Message Batches mode against the simulator)
    result = h.run_batch(defs, instance, nightly_key)
    assert result.success
    assert h.progress(engine, nightly)["enrichment"]["completed"] == NIGHTLY_BATCH_SIZE
    assert sim.stats.batches_created >= 1


def _batch_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(t.batch_jobs)) or 0


def test_nightly_batch_above_the_auto_approve_threshold_waits_for_approval_then_the_sensor_starts_it(
    settings_env: str, persistent_instance: DagsterInstance
) -> None:
    """The nightly schedule applies the same limits as `plan_batch`: above LORA_AUTO_APPROVE_USD
    its batch is written `planned`, the tick requests no run and says which batch waits and why;
    after `approve` the queued-batch sensor starts it."""
    instance = persistent_instance
    engine = h.setup_store(settings_env)
    when = datetime(2026, 11, 21, 2, tzinfo=UTC)

    result = run_schedule(instance, settings_env, when, auto_approve_usd=0.000001)

    assert isinstance(result, SkipReason), result
    message = result.skip_message or ""
    assert message.startswith("nightly coverage batch 'nightly-20261121' planned, not started: waits for approval: "
                              "estimate $"), message
    assert "above the auto-approve threshold $0.00 (LORA_AUTO_APPROVE_USD)" in message
    assert "`approve_batch` job or `lora-assets batch approve`" in message and "\n" not in message
    nightly = h.batch_id_of(engine, "nightly-20261121")
    with engine.connect() as conn:
        batch = get_batch(conn, nightly)
    assert batch["status"] == "planned" and batch["total_items"] == NIGHTLY_BATCH_SIZE
    assert batch["estimate"]["cost_cap_source"] == "the LORA_MAX_BATCH_COST_USD default"
    assert instance.get_runs() == []
    waiting = queued_batches_sensor(sensor_context(instance, settings_env))
    assert isinstance(waiting, SkipReason)  # planned: never started unapproved

    from lora_assets.planning import approve

    assert approve(engine, "nightly-20261121").previous_status == "planned"
    started = queued_batches_sensor(sensor_context(instance, settings_env))
    assert isinstance(started, SensorResult)
    assert [(r.partition_key, r.run_key) for r in started.run_requests] == [("nightly-20261121", "batch-nightly-20261121")]


@pytest.mark.parametrize("limits, reason", [
    ({"max_batch_cost_usd": 0.000001},
     r"^nightly coverage batch not planned: estimated cost \$[0-9.]+ is above max_cost_usd \$0\.0000 .*"
     r"\(cap from the LORA_MAX_BATCH_COST_USD default\)$"),
    ({"max_items_per_batch": NIGHTLY_BATCH_SIZE - 1},
     rf"^nightly coverage batch not planned: batch plan: the selection plans {NIGHTLY_BATCH_SIZE} items "
     rf"\({NIGHTLY_BATCH_SIZE} combinations × 1 per combination\), over the limit of {NIGHTLY_BATCH_SIZE - 1} items "
     r"per batch \(raise it with LORA_MAX_ITEMS_PER_BATCH=<n> if you mean it\)$"),
])
def test_nightly_batch_over_a_limit_is_skipped_with_the_reason_and_nothing_is_written(
    settings_env: str, persistent_instance: DagsterInstance, limits: dict[str, Any], reason: str
) -> None:
    import re

    instance = persistent_instance
    engine = h.setup_store(settings_env)
    result = run_schedule(instance, settings_env, datetime(2026, 11, 21, 2, tzinfo=UTC), **limits)
    assert isinstance(result, SkipReason), result
    assert re.search(reason, result.skip_message or ""), result.skip_message
    assert _batch_count(engine) == 0
    assert instance.get_dynamic_partitions(batch_jobs_partitions.name) == []


def test_the_nightly_picks_its_gaps_in_memory_bounded_by_its_size(sqlite_url: str) -> None:
    """200 personas × 8 arcs × 200 topics = 320,000 combinations: the least covered 30 are
    streamed out of their product, never listed (a list of them alone would take ~25 MB)."""
    import tracemalloc
    import uuid

    from lora_assets.store.batches import least_covered_combinations

    engine = h.setup_store(sqlite_url)
    with engine.begin() as conn:
        for table, key in ((t.personas, "persona_key"), (t.training_topics, "topic_key")):
            first = dict(conn.execute(sa.select(table).limit(1)).mappings().one())
            have = conn.scalar(sa.select(sa.func.count()).select_from(table))
            conn.execute(sa.insert(table), [first | {"id": str(uuid.uuid4()), key: f"{first[key]}_{i}"}
                                            for i in range(200 - have)])
        tracemalloc.start()
        try:
            picked = least_covered_combinations(conn, NIGHTLY_BATCH_SIZE)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(picked) == NIGHTLY_BATCH_SIZE and picked == sorted(picked)  # no coverage yet: id order
    assert peak < 2 * 1024 * 1024, f"peak {peak / 1024 / 1024:.1f} MiB"


def test_nightly_schedule_skips_without_scaffolding(settings_env: str, persistent_instance: DagsterInstance) -> None:
    instance = persistent_instance
    from lora_assets.store import db as dbq

    dbq.init_schema(h.DomainDB(database_url=settings_env).engine())
    result = run_schedule(instance, settings_env, datetime(2026, 11, 21, 2, tzinfo=UTC))
    assert isinstance(result, SkipReason) and "no scaffolding" in result.skip_message
    assert instance.get_dynamic_partitions(batch_jobs_partitions.name) == []


def _armed(tick: Any, key: AssetKey) -> int:
    """How many `since` nodes of `key`'s condition are true: armed by an upstream update (or, under
    `eager()`, a new partition) not yet handled. 0 when nothing is waiting to request it."""
    [result] = [r for r in tick.results if r.key == key]
    todo, armed = [result], 0
    while todo:
        node = todo.pop()
        if type(node.condition).__name__ == "SinceCondition":
            armed += 0 if node.true_subset.is_empty else 1
        todo.extend(node.child_results)
    return armed


def test_a_pipeline_run_leaves_parse_and_enrich_unarmed(sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator,
                                                          instance: DagsterInstance) -> None:
    """The cause of a re-run seen under load: a tick that reads the event log as of its start but
    run status live sees an armed stage, the pipeline run finished and the stage's materialisation
    not yet: it requests the stage a second time. So nothing the pipeline run itself does may arm
    parse or enrich — neither its partition being added nor its own raw → parse → enrich updates
    (the sensor's run request names the batch assets, so Dagster knows the run planned them)."""
    engine = h.setup_store(sqlite_url)
    defs = h.make_defs(sqlite_url, h.local_blobs(tmp_path / "blobs"), sim)
    tick = evaluate_automation_conditions(defs=defs, instance=instance)  # the sensor has been running
    batch_id = h.plan(engine, 1, 2, 1)
    h.add_partition(instance, batch_id)
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.total_requested == 0
    assert (_armed(tick, PARSED), _armed(tick, ENRICHED)) == (0, 0)  # a new partition arms nothing

    # the run the queued-batches sensor requests: the job, with the batch assets named
    job = defs.resolve_job_def("batch_pipeline").get_subset(asset_selection=set(BATCH_ASSETS))
    run = job.execute_in_process(partition_key=batch_id, instance=instance, raise_on_error=False, run_config=h.QUIET)
    assert run.success and h.materialized(run) == {"raw_conversations", "parsed_conversations", "enriched_conversations"}
    assert all(e.passed for e in h.check_evaluations(run).values())  # the checks ran in the same run
    for _ in range(2):
        tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert tick.total_requested == 0
        assert (_armed(tick, PARSED), _armed(tick, ENRICHED)) == (0, 0)


def test_a_pipeline_run_that_does_not_name_enrich_leaves_it_unarmed(
    sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance
) -> None:
    """What a racing tick sees of a `batch_pipeline` run launched without an asset selection (its
    page in the UI, `lora-assets run`, GraphQL): raw and parse updated by a run that does not name
    enrich, enrich not yet updated, nothing in progress. Before the pipeline's run tag counted,
    this tick requested enrich (test_restart's daemon log: an `__ASSET_JOB` run of
    `enriched_conversations` right after the pipeline run). Runs outside the pipeline still arm
    the next stage (test_enrichment_is_requested_automatically_after_parsing)."""
    engine = h.setup_store(sqlite_url)
    defs = h.make_defs(sqlite_url, h.local_blobs(tmp_path / "blobs"), sim)
    tick = evaluate_automation_conditions(defs=defs, instance=instance)
    batch_id = h.plan(engine, 1, 2, 1)
    h.add_partition(instance, batch_id)
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)

    pipeline = defs.resolve_job_def("batch_pipeline")
    run = pipeline.get_subset(asset_selection={RAW, PARSED}).execute_in_process(
        partition_key=batch_id, instance=instance, raise_on_error=False, run_config=h.QUIET)
    assert run.success and h.materialized(run) == {"raw_conversations", "parsed_conversations"}
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.total_requested == 0
    assert (_armed(tick, PARSED), _armed(tick, ENRICHED)) == (0, 0)
    assert run.dagster_run.tags.get(PIPELINE_RUN_TAG) == "true"


@pytest.mark.xfail(strict=True, reason="known gap: Dagster's executed_with_tags reads the asset's latest "
                   "materialisation of any partition; all_new_updates_have_run_tags stays empty here (no "
                   "previous event id in the tick's temporal context). Fixing it needs a custom condition "
                   "evaluated on the code server (a Dagster preview feature). Cost: a second enrich run "
                   "that finds nothing to do; nothing is paid. XPASS fails: then drop this mark.")
def test_a_racing_tick_sees_two_pipeline_runs_and_arms_nothing(
        sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance) -> None:
    """What a tick sees when it reads the event log mid-way through batch A's pipeline run (raw
    and parse landed, enrich not yet; a run without an asset selection does not name enrich)
    while batch B's pipeline run has finished. `executed_with_tags` asks only the latest
    materialisation of the asset, whatever its partition (B's), so for A it answered "not a
    pipeline run" and the tick requested A's enrich (seen in test_ui under load: an `__ASSET_JOB`
    run of enrich right after the pipeline run)."""
    engine = h.setup_store(sqlite_url)
    defs = h.make_defs(sqlite_url, h.local_blobs(tmp_path / "blobs"), sim)
    tick = evaluate_automation_conditions(defs=defs, instance=instance)
    a, b = (h.plan(engine, 1, 1, 1, name=f"racing-{i}") for i in range(2))
    for batch_id in (a, b):
        h.add_partition(instance, batch_id)
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    job = defs.resolve_job_def("batch_pipeline")
    for batch_id, job_or_part in ((a, job.get_subset(asset_selection={RAW, PARSED})), (b, job)):
        run = job_or_part.execute_in_process(partition_key=batch_id, instance=instance, raise_on_error=False,
                                             run_config=h.QUIET)
        assert run.success and run.dagster_run.tags.get(PIPELINE_RUN_TAG) == "true"
    tick = evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
    assert tick.total_requested == 0
    assert (_armed(tick, PARSED), _armed(tick, ENRICHED)) == (0, 0)


def test_queued_batch_sensor_ticks_every_10_s_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production's interval is 10 s; LORA_QUEUED_BATCHES_SENSOR_INTERVAL_S sets another (the UI
    test deployments use 2 s), and a value that is not a whole number of seconds ≥ 1 is refused
    with the variable's name, so the code location does not load with it."""
    assert queued_batches_sensor.minimum_interval_seconds == 10
    variable = "LORA_QUEUED_BATCHES_SENSOR_INTERVAL_S"
    monkeypatch.delenv(variable, raising=False)
    assert sensor_interval_s(variable, 10) == 10
    monkeypatch.setenv(variable, " 2 ")
    assert sensor_interval_s(variable, 10) == 2
    for bad, reason in (("2.5", "is not a whole number"), ("abc", "is not a whole number"),
                        ("0", "must be at least 1 second")):
        monkeypatch.setenv(variable, bad)
        with pytest.raises(SettingsError, match=reason) as caught:
            sensor_interval_s(variable, 10)
        assert caught.value.variable == variable
