"""plan_batch and cancel_batch through a real Dagster instance, the real SDK and the simulator:
estimate from counted tokens, refusals named, a readable partition key, a cancel that stops all
further spending."""

from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, build_sensor_context

from lora_assets.defs.automation import queued_batches_sensor
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store.batches import batch_for_key, slugify
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
