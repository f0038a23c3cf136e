"""plan_batch and cancel_batch through a real Dagster instance, the real SDK and the simulator:
estimate from counted tokens, refusals named, a readable partition key, a cancel that stops all
further spending."""

import re
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, build_sensor_context

from lora_assets.defs.automation import queued_batches_sensor
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store.batches import batch_for_key, open_provider_batch_ids, slugify
from lora_assets_tests.defs import helpers as h


def _plan(defs: Any, instance: DagsterInstance, **config: Any) -> Any:
    job = defs.resolve_job_def("plan_batch")
    return job.execute_in_process(instance=instance, raise_on_error=False,
                                  run_config={"ops": {"plan_batch_op": {"config": config}}, **h.QUIET})


def _failure(result: Any) -> str:
    """The step failures' texts: a user's mistake as the one line the run page shows first (the
    Failure's description), anything else as its error message."""
    out = []
    for ev in result.all_events:
        if ev.is_step_failure and ev.event_specific_data:
            user = ev.event_specific_data.user_failure_data
            out.append(user.description if user and user.description else ev.event_specific_data.error.message)
    return "\n".join(out)


def _op_metadata(result: Any) -> dict[str, Any]:
    return {k: v.value for ev in result.all_events if ev.event_type_value == "STEP_OUTPUT"
            for k, v in ev.event_specific_data.metadata.items()}


@pytest.fixture
def setup(tmp_path: Path, sim: ClaudeSimulator) -> tuple[Any, Any]:
    db_url = f"sqlite:///{tmp_path / 'lora.db'}"
    engine = h.setup_store(db_url)
    return engine, h.make_defs(db_url, h.local_blobs(tmp_path / "blobs"), sim)


def test_plan_batch_estimates_from_counted_tokens_writes_the_batch_and_queues_its_readable_partition(
    setup: tuple[Any, Any], sim: ClaudeSimulator, instance: DagsterInstance
) -> None:
    engine, defs = setup
    sim.reset_stats()
    result = _plan(defs, instance, name="Q4 Retirement – pilot", personas=["anxious_planner", "late_starter"],
                   arcs=["fear_to_confidence"], topics=["retirement_catch_up", "estate_planning_basics"], per_combination=2, max_cost_usd=5.0)
    assert result.success, _failure(result)
    stats = sim.stats.snapshot()
    # Only count_tokens: 2 for the system prompt's share + 4 distinct prompts; nothing generated.
    assert stats["requests_total"] == 6 and not stats["delivered_by_key"]
    with engine.connect() as conn:
        batch = batch_for_key(conn, "q4-retirement-pilot")
    assert batch is not None and batch["total_items"] == 8 and batch["status"] == "queued"
    assert batch["estimate"]["items"] == 8 and batch["estimate"]["counted_prompts"] == 4
    assert 0 < batch["estimate"]["total_usd"] < 5.0
    assert instance.has_dynamic_partition(batch_jobs_partitions.name, "q4-retirement-pilot")
    out = result.output_for_node("plan_batch_op")
    assert out == "q4-retirement-pilot"

    # The sensor starts it once, by its readable key; a second plan of the same name gets its own key.
    tick = queued_batches_sensor(build_sensor_context(instance=instance, resources={"db": defs.resources["db"]}))
    assert [r.partition_key for r in tick.run_requests] == ["q4-retirement-pilot"]
    again = _plan(defs, instance, name="Q4 Retirement – pilot", personas=["anxious_planner"], arcs=["fear_to_confidence"],
                  topics=["retirement_catch_up"])
    assert again.output_for_node("plan_batch_op") == "q4-retirement-pilot-2"

    # The batch runs under its slug; the estimate sits beside the actual cost.
    run = h.run_batch(defs, instance, "q4-retirement-pilot")
    assert run.success
    md = h.metadata(run, "raw_conversations")
    assert md["estimated_cost_usd"] == round(batch["estimate"]["total_usd"], 6) and md["cost_usd"] > 0


@pytest.mark.parametrize("config, expected", [
    ({"personas": ["anxious_planner", "nobody", "ghost"], "arcs": ["*"], "topics": ["*"]},
     r"unknown persona key\(s\) \['nobody', 'ghost'\]; known persona keys: \['anxious_planner'"),
    ({"personas": ["anxious_planner"], "arcs": ["*"], "topics": ["*"], "max_cost_usd": 0.000001},
     r"estimated cost \$[0-9.]+ is above max_cost_usd \$0\.0000.*\(cap from max_cost_usd\)"),
    ({"model": "gpt-9", "personas": ["*"], "arcs": ["*"], "topics": ["*"]}, r"model 'gpt-9': no price known"),
    # No implicit "all": an empty key list is refused, naming the field and the explicit choice.
    ({"personas": [], "arcs": ["*"], "topics": ["*"]}, r'^personas: no persona keys given; name them, or give \["\*"\]'),
    ({"personas": ["*", "anxious_planner"], "arcs": ["*"], "topics": ["*"]}, r"personas: .* cannot be mixed"),
    # Dagster's launchpad has no numeric ranges: the run refuses it at once, naming the field.
    ({"personas": ["*"], "arcs": ["*"], "topics": ["*"], "per_combination": -1},
     r"^per_combination: Input should be greater than or equal to 1 \(got -1\)$"),
    ({"personas": ["*"], "arcs": ["*"], "topics": ["*"], "pilot_items": 0}, r"^pilot_items: Input should be greater"),
    ({"personas": ["*"], "arcs": ["*"], "topics": ["*"], "per_combination": 1000},
     r"1,568,000 items .* limit of 10,000 items per batch"),
])
def test_plan_batch_refusals_fail_the_run_naming_the_thing_and_write_nothing(
    setup: tuple[Any, Any], instance: DagsterInstance, config: dict[str, Any], expected: str
) -> None:
    import re

    engine, defs = setup
    result = _plan(defs, instance, name="refused", **config)
    assert not result.success
    assert re.search(expected, _failure(result)), _failure(result)
    with engine.connect() as conn:
        assert batch_for_key(conn, "refused") is None
    assert not instance.get_dynamic_partitions(batch_jobs_partitions.name)


def test_cancel_batch_stops_spending_and_is_never_restarted(
    setup: tuple[Any, Any], sim: ClaudeSimulator, instance: DagsterInstance
) -> None:
    engine, defs = setup
    batch_id = h.plan(engine, 1, 1, 2, name="to cancel")
    key = "to-cancel"
    job = defs.resolve_job_def("cancel_batch")

    def cancel(ref: str) -> Any:
        return job.execute_in_process(instance=instance, raise_on_error=False,
                                      run_config={"ops": {"cancel_batch_op": {"config": {"batch": ref}}}, **h.QUIET})

    result = cancel(key)
    assert result.success, _failure(result)
    assert _op_metadata(result)["items_not_generated"] == 2
    with engine.connect() as conn:
        assert batch_for_key(conn, key)["status"] == "cancelled"
    # The pipeline still runs (stored results stay usable) but requests nothing and stays cancelled.
    sim.reset_stats()
    rerun = h.run_batch(defs, instance, key)
    assert rerun.success
    assert sim.stats.snapshot()["requests_total"] == 0
    assert h.progress(engine, batch_id)["items"]["generated"] == 0
    with engine.connect() as conn:
        assert batch_for_key(conn, key)["status"] == "cancelled"
    tick = queued_batches_sensor(build_sensor_context(instance=instance, resources={"db": defs.resources["db"]}))
    assert not getattr(tick, "run_requests", None)
    assert cancel(batch_id).success  # by id, twice: harmless
    unknown = cancel("nope")
    assert not unknown.success and "no batch 'nope'" in _failure(unknown)


def test_slugs_are_partition_safe_and_never_look_like_batch_ids() -> None:
    assert slugify("Q4 Retirement – pilot!") == "q4-retirement-pilot"
    assert slugify("Épargne / été 2026") == "epargne-ete-2026"
    assert slugify("***") == "batch"
    assert slugify("31472a98-21a9-4c1e-9d1f-000000000000").startswith("b-")
    assert len(slugify("x" * 200)) <= 60


def test_scaffolding_assets_load_the_teams_own_directory_and_name_what_is_wrong(
    tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance
) -> None:
    import json

    from dagster import AssetSelection, materialize

    from lora_assets.defs.scaffolding import scaffolding
    from lora_assets.store import db as dbq
    from lora_assets.store.scaffolding_files import bundle_to_dir, load_bundle

    own = bundle_to_dir(load_bundle(), tmp_path / "own")
    personas = json.loads((own / "personas.json").read_text())[:3]
    (own / "personas.json").write_text(json.dumps(personas))
    db_url = f"sqlite:///{tmp_path / 'lora.db'}"
    blobs = h.BlobStoreResource(local_dir=str(tmp_path / "blobs"), scaffolding_dir=str(own))
    resources = h.make_resources(db_url, blobs, sim)
    result = materialize([scaffolding], resources=resources, instance=instance, selection=AssetSelection.all())
    assert result.success
    with h.DomainDB(database_url=db_url).engine().connect() as conn:
        assert [p.persona_key for p in dbq.read_personas(conn)] == sorted(p["persona_key"] for p in personas)
    assert h.metadata(result, "personas")["source"] == str(own)

    (own / "emotional_arcs.json").write_text("[{]")
    broken = materialize([scaffolding], resources=resources, instance=instance, raise_on_error=False)
    assert not broken.success
    assert f"scaffolding at {own} was not loaded:\nemotional_arcs.json: " in _failure(broken)


# --- issue 21: the user holds the purse ---------------------------------------------------------


def _defs_with(tmp_path: Path, sim: ClaudeSimulator, **db_kw: Any) -> tuple[Any, Any]:
    """The store of `setup` with DomainDB limits overridden (cap, auto-approve threshold)."""
    from lora_assets.definitions import build_defs

    db_url = f"sqlite:///{tmp_path / 'lora.db'}"
    engine = h.setup_store(db_url)
    resources = h.make_resources(db_url, h.local_blobs(tmp_path / "blobs"), sim)
    resources["db"] = h.DomainDB(database_url=db_url, **db_kw)
    return engine, build_defs(resources)


def _tick(defs: Any, instance: DagsterInstance) -> list[Any]:
    tick = queued_batches_sensor(build_sensor_context(instance=instance, resources={"db": defs.resources["db"]}))
    return list(getattr(tick, "run_requests", None) or [])


ONE = {"personas": ["anxious_planner"], "arcs": ["fear_to_confidence"]}


def test_a_cost_cap_always_applies_and_the_run_says_which(tmp_path: Path, sim: ClaudeSimulator,
                                                          instance: DagsterInstance) -> None:
    engine, defs = _defs_with(tmp_path, sim, max_batch_cost_usd=0.000001)
    refused = _plan(defs, instance, name="capped", topics=["*"], **ONE)
    assert not refused.success
    assert re.search(r"^estimated cost \$[0-9.]+ is above max_cost_usd \$0\.0000.*cap from the "
                     r"LORA_MAX_BATCH_COST_USD default", _failure(refused)), _failure(refused)
    own = _plan(defs, instance, name="own cap", topics=["*"], max_cost_usd=3.0, **ONE)
    assert own.success, _failure(own)
    md = _op_metadata(own)
    assert md["cost_cap_usd"] == 3.0 and md["cost_cap_source"] == "max_cost_usd"


def test_a_plan_over_the_threshold_waits_as_planned_until_approve_batch(
        tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance) -> None:
    engine, defs = _defs_with(tmp_path, sim, auto_approve_usd=0.0)
    result = _plan(defs, instance, name="big one", topics=["retirement_catch_up", "estate_planning_basics"], **ONE)
    assert result.success, _failure(result)
    md = _op_metadata(result)
    assert md["status"] == "planned" and "waits for approval" in md["approval"]
    assert md["cost_cap_source"] == "the LORA_MAX_BATCH_COST_USD default"
    with engine.connect() as conn:
        assert batch_for_key(conn, "big-one")["status"] == "planned"
    assert _tick(defs, instance) == []  # the sensor never starts a planned batch
    sim.reset_stats()
    refused = h.run_batch(defs, instance, "big-one")  # nor does a run launched by hand
    assert not refused.success and sim.stats.snapshot()["requests_total"] == 0
    assert _failure(refused).startswith("batch 'big-one' waits for approval (status planned)")

    approve = defs.resolve_job_def("approve_batch")
    approved = approve.execute_in_process(instance=instance, raise_on_error=False, run_config={
        "ops": {"approve_batch_op": {"config": {"batch": "big-one"}}}, **h.QUIET})
    assert approved.success, _failure(approved)
    assert _op_metadata(approved)["previous_status"] == "planned"
    assert [r.partition_key for r in _tick(defs, instance)] == ["big-one"]
    unknown = approve.execute_in_process(instance=instance, raise_on_error=False, run_config={
        "ops": {"approve_batch_op": {"config": {"batch": "nope"}}}, **h.QUIET})
    assert _failure(unknown).startswith("no batch 'nope'")


def test_a_pilot_generates_its_items_shows_them_with_their_cost_then_waits(
        tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance) -> None:
    engine, defs = _defs_with(tmp_path, sim)
    topics = ["retirement_catch_up", "estate_planning_basics", "emergency_fund"]
    result = _plan(defs, instance, name="pilot", topics=topics, per_combination=2, pilot_items=3, **ONE)
    assert result.success, _failure(result)
    assert [r.partition_key for r in _tick(defs, instance)] == ["pilot"]
    sim.reset_stats()
    run = h.run_batch(defs, instance, "pilot")
    assert run.success, _failure(run)
    assert len(sim.stats.snapshot()["delivered_by_key"]) == 3
    md = h.metadata(run, "raw_conversations")
    assert md["items_generated"] == 3 and md["pilot_items"] == 3 and md["pilot_cost_per_item_usd"] > 0
    assert md["skipped_already_stored"] == 0 and list(md)[:2] == ["pilot", "pilot_cost_per_item_usd"]
    assert re.search(r"Pilot done: 3 of 3 item\(s\) stored for \$[0-9.]+ \(\$[0-9.]+ per item; estimated "
                     r"\$[0-9.]+\)\. Re-estimate for the 3 item\(s\) left: \$[0-9.]+", md["pilot"])
    samples = md["sample_conversations"]
    assert samples.count("#### Sample ") == 3 and samples.count("**Cost:** $") == 3
    assert "**Persona:** " in samples and "**Client:** " in samples and "**Advisor:** " in samples
    with engine.connect() as conn:
        batch = batch_for_key(conn, "pilot")
    assert batch["status"] == "planned" and batch["estimate"]["pilot"]["items_left"] == 3
    assert _tick(defs, instance) == []

    approve = defs.resolve_job_def("approve_batch")
    assert approve.execute_in_process(instance=instance, raise_on_error=False, run_config={
        "ops": {"approve_batch_op": {"config": {"batch": "pilot"}}}, **h.QUIET}).success
    # Its second run is a new run key: the pilot's successful run does not hide it.
    assert [(r.partition_key, r.run_key) for r in _tick(defs, instance)] == [("pilot", "batch-pilot-approved")]
    rest = h.run_batch(defs, instance, "pilot")
    assert rest.success and h.metadata(rest, "raw_conversations")["items_generated"] == 6
    assert len(sim.stats.snapshot()["delivered_by_key"]) == 6  # the pilot's 3 were not paid twice
    with engine.connect() as conn:
        assert batch_for_key(conn, "pilot")["status"] == "completed"


def _events_text(instance: DagsterInstance, run_id: str) -> str:
    return "\n".join(str(r.user_message) for r in instance.all_logs(run_id))


def _wait_for(predicate: Any, what: str, deadline_s: float = 60.0) -> None:
    """Wait for an event (polled; the deadline only guards against a hang, it asserts no timing)."""
    import time

    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.05)


def test_a_cancel_is_seen_by_the_live_run_which_keeps_what_it_bought_and_ends_cancelled(
        tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from dagster import AssetKey, DagsterEventType, EventRecordsFilter

    from lora_assets.defs import generation

    # Report progress at every poll, so an observation is there while the simulator holds answers.
    monkeypatch.setattr(generation, "PROGRESS_PACE", {"every_s": 0.0, "every_fraction": 0.0, "min_interval_s": 0.0})
    from lora_assets.definitions import build_defs

    db_url = f"sqlite:///{tmp_path / 'lora.db'}"
    engine = h.setup_store(db_url)
    defs = build_defs(h.make_resources(db_url, h.local_blobs(tmp_path / "blobs"), sim, max_concurrency=2))
    batch_id = h.plan(engine, 1, 2, 4, name="live cancel")
    h.add_partition(instance, "live-cancel")
    sim.hold()
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(h.run_batch(defs, instance, "live-cancel")))
    runner.start()
    try:
        attempts = lambda: sum(sim.stats.snapshot()["attempts_by_key"].values())  # noqa: E731
        _wait_for(lambda: attempts() >= 2, "two requests in flight")
        run_id = instance.get_runs()[0].run_id

        def observed() -> bool:
            return bool(instance.fetch_observations(AssetKey("raw_conversations"), limit=1).records)
        _wait_for(observed, "a progress observation during the run")
        job = defs.resolve_job_def("cancel_batch")
        assert job.execute_in_process(instance=instance, raise_on_error=False, run_config={
            "ops": {"cancel_batch_op": {"config": {"batch": "live-cancel"}}}, **h.QUIET}).success
        at_cancel = attempts()
        _wait_for(lambda: "was cancelled: no new request starts" in _events_text(instance, run_id), "the run sees it")
    finally:
        sim.release()
        runner.join()
    (run,) = results
    # The two answers in flight are stored; nothing new was requested after the cancel.
    assert attempts() - at_cancel <= 2 and attempts() == at_cancel
    assert not run.success
    assert re.search(r"^batch 'live-cancel' cancelled: 2 conversation\(s\) stored, 0 failed, 6 not generated, "
                     r"\$[0-9.]+ spent", _failure(run)), _failure(run)
    with engine.connect() as conn:
        assert batch_for_key(conn, "live-cancel")["status"] == "cancelled"
    mat = instance.fetch_materializations(AssetKey("raw_conversations"), limit=1).records[0]
    md = mat.asset_materialization.metadata
    assert mat.partition_key == "live-cancel" and md["stored"].value == 2 and md["not_generated"].value == 6
    assert "sample_conversations" in md
    progress = instance.fetch_observations(AssetKey("raw_conversations"), limit=1).records[0]
    assert "items done" in progress.asset_observation.metadata["progress"].value
    assert "progress: " in _events_text(instance, run_id)

    # The documented action: run batch_pipeline for the partition again. It requests nothing and
    # parses and enriches what the cancelled batch kept; the batch stays cancelled.
    sim.reset_stats()
    again = h.run_batch(defs, instance, "live-cancel")
    assert again.success, _failure(again)
    assert sim.stats.snapshot()["requests_total"] == 0
    p = h.progress(engine, batch_id)
    assert p["parse"]["parsed"] == 2 and p["enrichment"]["completed"] == 2
    with engine.connect() as conn:
        assert batch_for_key(conn, "live-cancel")["status"] == "cancelled"
    assert "cancelled" in h.metadata(again, "raw_conversations")["cancelled"]
    del DagsterEventType, EventRecordsFilter


def test_a_cancel_seen_by_a_live_batches_run_cancels_its_api_batch_and_keeps_what_arrives(
        tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance) -> None:
    """Message Batches mode: the run is polling its provider batch when the batch is cancelled.
    The cancel here reaches only the domain DB (as when the provider call failed, or raced the
    batch's create), so it is the live run that cancels the API batch: within seconds, not at its
    next poll (5 s here). It then stores the results that arrive, submits nothing, ends cancelled,
    and the batch stays cancelled. Requests are counted at the simulator's HTTP layer."""
    import threading
    import time

    from lora_assets import cancel
    from lora_assets.definitions import build_defs
    from lora_assets.generation.simulator import FaultConfig

    # Requests of the provider batch finish over 8 s: a cancel midway leaves some done, some not.
    sim.config = FaultConfig(batch_processing_s=8.0)
    routes: list[tuple[float, str, str]] = []
    route = sim._route

    def counted(handler: Any, method: str, request_id: str) -> None:
        routes.append((time.monotonic(), method, handler.path))
        route(handler, method, request_id)

    sim._route = counted  # type: ignore[method-assign]
    db_url = f"sqlite:///{tmp_path / 'lora.db'}"
    engine = h.setup_store(db_url)
    defs = build_defs(h.make_resources(db_url, h.local_blobs(tmp_path / "blobs"), sim, poll_interval_s=5.0))
    batch_id = h.plan(engine, 2, 2, 4, mode="batches", name="batches cancel")
    h.add_partition(instance, "batches-cancel")
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(h.run_batch(defs, instance, "batches-cancel")))
    runner.start()
    try:
        def open_ids() -> list[str]:
            with engine.connect() as conn:
                return open_provider_batch_ids(conn, batch_id)
        _wait_for(lambda: sim.stats.batches_created == 1, "the provider batch created")
        created = time.monotonic()
        _wait_for(open_ids, "its id recorded")
        [provider_batch_id] = open_ids()
        time.sleep(max(0.0, created + 2.0 - time.monotonic()))  # about a quarter of its requests done
        result = cancel.cancel_batch(engine, "batches-cancel", provider=None, instance=None)
        assert result.previous_status == "processing" and result.provider_batches_cancelled == []
        at_cancel = time.monotonic()
    finally:
        runner.join(timeout=60)
    (run,) = results
    after = [(t, m, p) for t, m, p in routes if t >= at_cancel]
    cancels = [t for t, m, p in after if m == "POST" and p == f"/v1/messages/batches/{provider_batch_id}/cancel"]
    # The run cancelled its API batch itself, once, within seconds of the cancel (not at its next poll).
    assert len(cancels) == 1 and cancels[0] - at_cancel < 3.0, after
    # After the cancel: only that batch's cancel, retrieve and results; no new batch, no message.
    batch_path = f"/v1/messages/batches/{provider_batch_id}"
    assert {p for _, _, p in after} <= {batch_path, f"{batch_path}/cancel", f"{batch_path}/results"}, after
    assert sim.stats.batches_created == 1
    outcomes = sim.stats.snapshot()["by_outcome"]
    canceled = outcomes.get("batch_canceled", 0)
    assert 1 <= canceled < 16, outcomes  # the cancel landed mid-batch
    # What arrived is stored; the rest is recorded as canceled by the provider.
    p = h.progress(engine, batch_id)
    assert p["items"]["generated"] == 16 - canceled and p["items"]["failed"] == canceled, p
    assert not run.success
    assert re.search(rf"^batch 'batches-cancel' cancelled: {16 - canceled} conversation\(s\) stored, {canceled} "
                     r"failed, 0 not generated, \$[0-9.]+ spent", _failure(run)), _failure(run)
    with engine.connect() as conn:
        assert batch_for_key(conn, "batches-cancel")["status"] == "cancelled"
