"""The bug spec's Verification Checklist at the Dagster level: each item shown to hold after a
real `batch_pipeline` run, and each asset check shown to FAIL, naming the conversation and the
field, on data tampered to break it. Real Dagster instance, real SDK → loopback simulator,
real SQLite, local blobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, Definitions
from sqlalchemy.engine import Engine

from lora_assets.defs.resources import BlobStoreResource
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.schemas import InputParameters
from lora_assets.store import db as dbq
from lora_assets.store.blobs import BlobStore
from lora_assets_tests.defs import helpers as h

PAIR_FIELDS = ("persona_archetype", "emotional_arc", "emotional_arc_key", "training_topic", "training_topic_key")


@dataclass
class Env:
    engine: Engine
    blobs: BlobStoreResource
    store: BlobStore
    sim: ClaudeSimulator
    instance: DagsterInstance
    defs: Definitions


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One DB, blob dir, simulator and Dagster instance for the module; every test plans and
    runs its own batch (its own partition), so tests do not see each other's data."""
    root = tmp_path_factory.mktemp("checks")
    url = f"sqlite:///{root / 'lora.db'}"
    engine = h.setup_store(url)
    blobs = h.local_blobs(root / "blobs")
    with ClaudeSimulator() as sim, DagsterInstance.ephemeral() as instance:
        yield Env(engine, blobs, blobs.store(), sim, instance, h.make_defs(url, blobs, sim))
    engine.dispose()


@dataclass
class Batch:
    id: str
    rows: list[dict[str, Any]]
    result: Any


@pytest.fixture
def good(env: Env) -> Batch:
    """A batch of 2 × 2 × 1 conversations run through generate → parse → enrich, every check passing."""
    batch_id = h.plan(env.engine, 2, 2, 1)
    result = h.run_batch(env.defs, env.instance, batch_id)
    assert result.success
    assert all(ev.passed for ev in result.get_asset_check_evaluations())
    rows = h.conversations(env.engine, batch_id)
    assert len(rows) == 4 and all(r["enrichment_status"] == "completed" for r in rows)
    return Batch(batch_id, rows, result)


def expected_scaffolding(env: Env, row: dict[str, Any]) -> dict[str, Any]:
    with env.engine.connect() as conn:
        persona = dbq.scaffolding_by_id(conn, [row["persona_id"]], "personas")[row["persona_id"]]
        arc = dbq.scaffolding_by_id(conn, [row["emotional_arc_id"]], "emotional_arcs")[row["emotional_arc_id"]]
        topic = dbq.scaffolding_by_id(conn, [row["training_topic_id"]], "training_topics")[row["training_topic_id"]]
    return {"persona": persona, "arc": arc, "topic": topic}


def problem_line(evaluation: Any, conversation_id: str) -> str:
    """The row of the check's problems table about `conversation_id` (exactly one)."""
    table = h.plain(evaluation.metadata["problems"])
    lines = [line for line in table.splitlines() if line.startswith(f"| {conversation_id} |")]
    assert len(lines) == 1, f"{conversation_id} not named once in:\n{table}"
    return lines[0]


def tamper_json(store: BlobStore, key: str, change: Callable[[dict[str, Any]], None]) -> None:
    data = h.read_json(store, key)
    change(data)
    h.write_json(store, key, data)


def run_one_check(env: Env, batch_id: str, name: str) -> Any:
    result = h.run_checks(env.defs, env.instance, batch_id, [name])
    evaluations = h.check_evaluations(result)
    assert set(evaluations) == {name}  # only this check ran
    assert h.materialized(result) == set()  # and no asset was materialised
    return evaluations[name]


# --- the checklist holds after a real run --------------------------------------------------


def test_parsed_json_has_input_parameters_with_all_10_fields(env: Env, good: Batch) -> None:
    """Checklist: "Raw JSON contains input_parameters with all 10 fields populated"."""
    assert len(InputParameters.model_fields) == 10
    for row in good.rows:
        ip = h.read_json(env.store, row["file_path"])["input_parameters"]
        assert set(ip) == set(InputParameters.model_fields)
        assert all(isinstance(v, str) and v.strip() for v in ip.values()), ip
        s = expected_scaffolding(env, row)
        assert ip == {
            "persona_id": s["persona"].id,
            "persona_key": s["persona"].persona_key,
            "persona_name": s["persona"].name,
            "persona_archetype": s["persona"].archetype,
            "emotional_arc_id": s["arc"].id,
            "emotional_arc_key": s["arc"].arc_key,
            "emotional_arc_name": s["arc"].name,
            "training_topic_id": s["topic"].id,
            "training_topic_key": s["topic"].topic_key,
            "training_topic_name": s["topic"].name,
        }
        # the raw response is kept as-is alongside, unparsed
        assert "input_parameters" not in h.read_json(env.store, row["raw_response_path"])
    ev = h.check_evaluations(good.result)
    assert ev["input_parameters_complete"].passed and ev["client_persona_matches"].passed
    assert ev["input_parameters_complete"].metadata["checked"].value == 4


def test_enriched_json_copies_input_parameters(env: Env, good: Batch) -> None:
    """Checklist: "Enriched JSON contains input_parameters (copied from raw)"."""
    for row in good.rows:
        parsed = h.read_json(env.store, row["file_path"])
        enriched = h.read_json(env.store, row["enriched_file_path"])
        assert enriched["input_parameters"] == parsed["input_parameters"]
    assert h.check_evaluations(good.result)["enriched_has_input_parameters"].passed


@pytest.mark.parametrize("field", PAIR_FIELDS)
def test_every_training_pair_has_scaffolding_field(env: Env, good: Batch, field: str) -> None:
    """Checklist: "Each training_pair has <field> field" (one test per field)."""
    for row in good.rows:
        s = expected_scaffolding(env, row)
        expected = {
            "persona_archetype": s["persona"].persona_key,
            "emotional_arc": s["arc"].name,
            "emotional_arc_key": s["arc"].arc_key,
            "training_topic": s["topic"].name,
            "training_topic_key": s["topic"].topic_key,
        }[field]
        pairs = h.read_json(env.store, row["enriched_file_path"])["training_pairs"]
        assert len(pairs) >= 2 and len(pairs) == row["training_pair_count"]
        assert [p["conversation_metadata"][field] for p in pairs] == [expected] * len(pairs)
    assert h.check_evaluations(good.result)["training_pairs_have_scaffolding"].passed


def test_client_background_is_readable_text(env: Env, good: Batch) -> None:
    """Checklist: "client_background is proper text (no [object Object])"."""
    for row in good.rows:
        persona = expected_scaffolding(env, row)["persona"]
        for pair in h.read_json(env.store, row["enriched_file_path"])["training_pairs"]:
            bg = pair["conversation_metadata"]["client_background"]
            assert "[object Object]" not in bg and "{" not in bg and "'" + "age" + "'" not in bg
            # rendered from the demographics and financial_background JSON objects, as prose
            demographics, finances = persona.demographics, persona.financial_background
            assert isinstance(demographics, dict)
            assert bg.startswith(f"Age {demographics['age']}, {demographics['gender']}"), bg
            assert demographics["occupation"] in bg
            if isinstance(finances, dict):
                assert all(str(v) in bg for v in finances.values()), bg
            else:
                assert finances.split(".")[0] in bg, bg
    assert h.check_evaluations(good.result)["client_background_readable"].passed


def test_run_reports_what_was_added(env: Env, good: Batch) -> None:
    """Checklist's two log lines ("Added input_parameters section", "Added scaffolding metadata to
    N training pairs"), as Dagster materialisation metadata of the run."""
    parsed = h.metadata(good.result, "parsed_conversations")
    enriched = h.metadata(good.result, "enriched_conversations")
    assert parsed["parsed_this_run"] == 4 and parsed["failed_this_run"] == 0
    assert enriched["enriched_this_run"] == 4
    assert enriched["training_pairs_this_run"] == sum(r["training_pair_count"] for r in good.rows)


def test_old_conversation_without_input_parameters_still_enriches(env: Env) -> None:
    """Checklist: "Old conversations (without input_parameters) still enrich successfully" —
    through the enriched_conversations asset, with null scaffolding fields."""
    batch_id = h.plan(env.engine, 1, 2, 1)
    first = h.run_assets(env.defs, env.instance, batch_id, ["raw_conversations", "parsed_conversations"])
    assert first.success
    rows = h.conversations(env.engine, batch_id)
    legacy, modern = rows[0], rows[1]
    # a conversation written before input_parameters existed
    tamper_json(env.store, legacy["file_path"], lambda d: d.pop("input_parameters"))
    assert "input_parameters" not in h.read_json(env.store, legacy["file_path"])

    result = h.run_assets(env.defs, env.instance, batch_id, ["enriched_conversations"], with_checks=False)

    assert result.success and h.materialized(result) == {"enriched_conversations"}
    assert h.metadata(result, "enriched_conversations")["enriched_this_run"] == 2
    after = {r["id"]: r for r in h.conversations(env.engine, batch_id)}
    assert after[legacy["id"]]["enrichment_status"] == "completed"
    assert after[legacy["id"]]["enrichment_error"] is None
    old = h.read_json(env.store, after[legacy["id"]]["enriched_file_path"])
    assert old["input_parameters"] is None
    assert old["training_pairs"]
    for pair in old["training_pairs"]:
        meta = pair["conversation_metadata"]
        assert all(meta[f] is None for f in PAIR_FIELDS), meta
        assert meta["client_background"] and "[object Object]" not in meta["client_background"]
    new = h.read_json(env.store, after[modern["id"]]["enriched_file_path"])
    assert new["input_parameters"] is not None
    assert all(p["conversation_metadata"]["emotional_arc_key"] for p in new["training_pairs"])

    # the guard checks still say the legacy conversation is not training-ready, and name it
    checks = h.run_checks(env.defs, env.instance, batch_id, ["enriched_has_input_parameters", "training_pairs_have_scaffolding"])
    ev = h.check_evaluations(checks)
    assert ev["enriched_has_input_parameters"].passed is False
    assert "input_parameters is missing from enriched.json" in problem_line(ev["enriched_has_input_parameters"], legacy["id"])
    assert ev["training_pairs_have_scaffolding"].metadata["failing"].value == 1
    assert "training_pairs[0].conversation_metadata.persona_archetype is null" in problem_line(
        ev["training_pairs_have_scaffolding"], legacy["id"]
    )


# --- one pass: checks read what the stage recorded ---------------------------------------------


FILE_CHECKS = ("input_parameters_complete", "client_persona_matches", "enriched_has_input_parameters",
               "training_pairs_have_scaffolding", "client_background_readable")


def test_checks_in_the_stage_run_read_no_file_again(env: Env, good: Batch) -> None:
    """The pipeline run's checks use what parsing and enrichment recorded while each
    conversation was in memory: not one file is read again."""
    ev = h.check_evaluations(good.result)
    for name in FILE_CHECKS:
        assert ev[name].passed, name
        assert ev[name].metadata["checked"].value == 4, name
        assert ev[name].metadata["read_again_from_storage"].value == 0, name
    rows = h.conversations(env.engine, good.id)
    assert all(r["parse_checks"]["run_id"] == good.result.run_id for r in rows)
    assert all(r["enrichment_checks"]["problems"] == {
        "enriched_has_input_parameters": [], "training_pairs_have_scaffolding": [], "client_background_readable": []}
        for r in rows)


def test_a_check_run_alone_reads_the_files_again_and_records_them(env: Env, good: Batch) -> None:
    """Another run wrote the files: a check run alone judges them as they are now, and records
    that, so the stage's other check in the same run reads nothing again."""
    result = h.run_checks(env.defs, env.instance, good.id, ["input_parameters_complete", "client_persona_matches"])
    ev = h.check_evaluations(result)
    reads = sorted(ev[n].metadata["read_again_from_storage"].value for n in ev)
    assert reads == [0, 4] and all(e.passed for e in ev.values())


def test_an_unreadable_raw_file_fails_its_row_not_the_partition(env: Env) -> None:
    """A missing or corrupt raw.json is that conversation's failure, stated on its row; the other
    conversations of the partition are parsed (once this aborted the whole partition)."""
    batch_id = h.plan(env.engine, 2, 2, 1)
    assert h.run_assets(env.defs, env.instance, batch_id, ["raw_conversations"], with_checks=False).success
    rows = h.conversations(env.engine, batch_id)
    env.store.delete(rows[0]["raw_response_path"])
    env.store.put_bytes(rows[1]["raw_response_path"], b"\xff\xfe not json")

    result = h.run_assets(env.defs, env.instance, batch_id, ["parsed_conversations"], with_checks=False)

    assert result.success
    md = h.metadata(result, "parsed_conversations")
    assert md["parsed_this_run"] == 2 and md["failed_this_run"] == 2
    after = {r["id"]: r for r in h.conversations(env.engine, batch_id)}
    assert after[rows[0]["id"]]["parse_status"] == "failed"
    assert after[rows[0]["id"]]["parse_error"].startswith("unreadable: raw.json cannot be read")
    assert after[rows[1]["id"]]["parse_error"].startswith("unreadable: raw.json is not a stored response")
    assert {after[r["id"]]["parse_status"] for r in rows[2:]} == {"parsed"}


# --- each check fails, precisely, on data crafted to break it ---------------------------------


def test_input_parameters_complete_fails_when_parsed_file_lacks_them(env: Env, good: Batch) -> None:
    target = good.rows[1]
    tamper_json(env.store, target["file_path"], lambda d: d.pop("input_parameters"))

    ev = run_one_check(env, good.id, "input_parameters_complete")

    assert ev.passed is False
    assert ev.description == "3 of 4 parsed conversations have complete input_parameters"
    assert ev.metadata["failing"].value == 1
    assert "input_parameters is missing" in problem_line(ev, target["id"])
    assert all(r["id"] not in h.plain(ev.metadata["problems"]) for r in good.rows if r is not target)


def test_input_parameters_complete_fails_on_an_empty_field_and_a_wrong_id(env: Env, good: Batch) -> None:
    empty, wrong = good.rows[0], good.rows[2]
    tamper_json(env.store, empty["file_path"], lambda d: d["input_parameters"].update(emotional_arc_name=""))
    tamper_json(env.store, wrong["file_path"], lambda d: d["input_parameters"].update(persona_id="not-the-db-persona"))

    ev = run_one_check(env, good.id, "input_parameters_complete")

    assert ev.passed is False and ev.metadata["failing"].value == 2
    # an empty string already fails the schema (min_length=1): reported as unreadable, naming the field
    line = problem_line(ev, empty["id"])
    assert "conversation.json unreadable" in line
    assert "input_parameters.emotional_arc_name" in line and "at least 1 character" in line
    assert f"input_parameters.persona_id is 'not-the-db-persona', expected {wrong['persona_id']!r}" in problem_line(ev, wrong["id"])


def test_input_parameters_complete_fails_on_a_whitespace_only_field(env: Env, good: Batch) -> None:
    """"   " is not a populated field (found while writing these tests; fixed in the schema)."""
    target = good.rows[0]
    tamper_json(env.store, target["file_path"], lambda d: d["input_parameters"].update(persona_name="   "))

    ev = run_one_check(env, good.id, "input_parameters_complete")

    assert ev.passed is False
    assert "input_parameters.persona_name" in problem_line(ev, target["id"])


def test_client_persona_matches_fails_on_a_changed_persona(env: Env, good: Batch) -> None:
    target = good.rows[0]
    persona = expected_scaffolding(env, target)["persona"]
    tamper_json(
        env.store, target["file_path"], lambda d: d["conversation_metadata"].update(client_persona="David Chen - Someone Else")
    )

    ev = run_one_check(env, good.id, "client_persona_matches")

    assert ev.passed is False and ev.metadata["failing"].value == 1
    expected = f"{persona.name} - {persona.archetype}"
    assert f"conversation_metadata.client_persona is 'David Chen - Someone Else', expected {expected!r}" in problem_line(ev, target["id"])


def test_enriched_has_input_parameters_fails_when_enriched_file_has_null(env: Env, good: Batch) -> None:
    target = good.rows[3]
    tamper_json(env.store, target["enriched_file_path"], lambda d: d.update(input_parameters=None))

    ev = run_one_check(env, good.id, "enriched_has_input_parameters")

    assert ev.passed is False and ev.metadata["failing"].value == 1
    assert "input_parameters is missing from enriched.json" in problem_line(ev, target["id"])


@pytest.mark.parametrize("field", PAIR_FIELDS)
def test_training_pairs_have_scaffolding_fails_on_a_null_field(env: Env, good: Batch, field: str) -> None:
    target = good.rows[0]
    tamper_json(
        env.store, target["enriched_file_path"], lambda d: d["training_pairs"][1]["conversation_metadata"].update({field: None})
    )

    ev = run_one_check(env, good.id, "training_pairs_have_scaffolding")

    assert ev.passed is False and ev.metadata["failing"].value == 1
    line = problem_line(ev, target["id"])
    assert f"training_pairs[1].conversation_metadata.{field} is null" in line
    assert "training_pairs[0]" not in line


def test_client_background_readable_fails_on_object_object(env: Env, good: Batch) -> None:
    target = good.rows[2]
    tamper_json(
        env.store,
        target["enriched_file_path"],
        lambda d: d["training_pairs"][0]["conversation_metadata"].update(client_background="[object Object]; High earner"),
    )

    ev = run_one_check(env, good.id, "client_background_readable")

    assert ev.passed is False and ev.metadata["failing"].value == 1
    assert (
        "training_pairs[0].conversation_metadata.client_background is not readable text: '[object Object]; High earner'"
        in problem_line(ev, target["id"])
    )


def test_all_conversations_enriched_fails_on_a_not_started_row_and_enrichment_repairs_it(env: Env, good: Batch) -> None:
    target = good.rows[1]
    h.update_row(env.engine, target["id"], enrichment_status="not_started")

    ev = run_one_check(env, good.id, "all_conversations_enriched")

    assert ev.passed is False
    assert ev.metadata["parsed_not_enriched"].value == 1
    assert "1 parsed but not enriched" in ev.description
    table = h.plain(ev.metadata["not_enriched"])
    assert f"| {target['id']} | parsed | not_started |" in table

    # the enrichment asset picks it up again and the check passes
    again = h.run_assets(env.defs, env.instance, good.id, ["enriched_conversations"])
    assert h.metadata(again, "enriched_conversations")["enriched_this_run"] == 1
    assert h.check_evaluations(again)["all_conversations_enriched"].passed


def test_failing_blocking_check_on_parsed_stops_enrichment_in_the_same_run(env: Env, good: Batch) -> None:
    """Dagster 1.13: a blocking check that fails makes its step fail (DagsterAssetCheckFailedError);
    the downstream enriched_conversations step never starts in that run (no step events at all,
    not even STEP_SKIPPED), and the run fails."""
    broken = good.rows[0]
    tamper_json(env.store, broken["file_path"], lambda d: d.update(input_parameters=None))
    # a conversation the enrichment step WOULD pick up if it ran
    h.update_row(env.engine, good.rows[1]["id"], enrichment_status="not_started")
    enriched_key = AssetKey("enriched_conversations")
    latest_enriched_run = env.instance.get_latest_materialization_event(enriched_key).run_id

    result = h.run_batch(env.defs, env.instance, good.id)

    assert result.success is False
    assert h.materialized(result) == {"raw_conversations", "parsed_conversations"}
    ev = h.check_evaluations(result)
    assert ev["input_parameters_complete"].passed is False
    assert "input_parameters is missing" in problem_line(ev["input_parameters_complete"], broken["id"])
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["parsed_conversations_input_parameters_complete"]
    error = failures[0].step_failure_data.error
    assert error.cls_name == "DagsterAssetCheckFailedError"
    assert "parsed_conversations: input_parameters_complete" in error.message
    enriched_events = [e for e in result.all_events if (e.step_key or "").startswith("enriched_conversations")]
    assert enriched_events == []
    assert not result.is_node_success("enriched_conversations")
    # no enriched_conversations checks ran, and the row left for enrichment was not touched
    assert not any(name in ev for name in ("enriched_has_input_parameters", "all_conversations_enriched"))
    assert h.conversations(env.engine, good.id)[1]["enrichment_status"] == "not_started"
    assert env.instance.get_latest_materialization_event(enriched_key).run_id == latest_enriched_run
