"""generate → parse → enrich through the real `batch_pipeline` job (real Dagster instance, real
anthropic SDK over HTTP to the loopback simulator, real SQLite / PostgreSQL, local dir / moto S3)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from dagster import DagsterInstance, EnvVar
from sqlalchemy.engine import Engine

from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.settings import DEFAULT_USER_ID
from lora_assets.store.batches import get_batch
from lora_assets_tests.defs import helpers as h

CONTENT_FAULTS = ("truncated", "malformed", "refusal", "wrapped", "thinking")


@pytest.fixture(params=["sqlite+local", "postgresql+s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, h.BlobStoreResource]:
    """(db url, blob store resource): SQLite + a local dir, and PostgreSQL + moto S3."""
    if request.param == "sqlite+local":
        return request.getfixturevalue("sqlite_url"), h.local_blobs(tmp_path / "blobs")
    return request.getfixturevalue("pg_url"), h.s3_blobs(request.getfixturevalue("s3_bucket"))


def _count_rows(engine: Engine) -> dict[str, int]:
    import sqlalchemy as sa

    from lora_assets.store import tables as t

    with engine.connect() as conn:
        return {
            tbl.name: conn.execute(sa.select(sa.func.count()).select_from(tbl)).scalar_one()
            for tbl in t.metadata.sorted_tables
        }


def test_batch_end_to_end_and_rerun_buys_nothing(
    store: tuple[str, h.BlobStoreResource], sim: ClaudeSimulator, instance: DagsterInstance
) -> None:
    db_url, blobs = store
    engine = h.setup_store(db_url)
    defs = h.make_defs(db_url, blobs, sim)
    batch_id = h.plan(engine, 3, 2, 1)  # 6 items

    result = h.run_batch(defs, instance, batch_id)

    assert result.success
    assert h.materialized(result) == {"raw_conversations", "parsed_conversations", "enriched_conversations"}
    evaluations = h.check_evaluations(result)
    assert set(evaluations) == set(h.CHECK_ASSET)
    assert {name: ev.passed for name, ev in evaluations.items()} == {name: True for name in h.CHECK_ASSET}

    p = h.progress(engine, batch_id)
    assert p["items"]["generated"] == 6 and p["items"]["failed"] == 0
    assert p["parse"]["parsed"] == 6 and p["enrichment"]["completed"] == 6
    with engine.connect() as conn:
        assert get_batch(conn, batch_id)["status"] == "completed"

    store_ = blobs.store()
    rows = h.conversations(engine, batch_id)
    assert len(rows) == 6
    for row in rows:
        base = f"conversation-files/{DEFAULT_USER_ID}/{row['id']}"
        assert row["raw_response_path"] == f"{base}/raw.json"
        assert row["file_path"] == f"{base}/conversation.json"
        assert row["enriched_file_path"] == f"{base}/enriched.json"
        for name in ("raw.json", "conversation.json", "enriched.json"):
            assert store_.exists(f"{base}/{name}"), f"{base}/{name} missing"
        raw = h.read_json(store_, row["raw_response_path"])
        # the API response as returned by the SDK, before any parsing
        assert raw["response"]["id"].startswith("msg_sim_")
        assert raw["response"]["type"] == "message" and raw["response"]["stop_reason"] == "end_turn"
        assert any(b["type"] == "text" for b in raw["response"]["content"])
        assert raw["generation"]["generator"] == "simulator"
        assert row["generator"] == "simulator"
        assert row["stop_reason"] == "end_turn" and row["request_id"].startswith("req_sim_")
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["cost_usd"] > 0
        assert row["parse_status"] == "parsed" and row["enrichment_status"] == "completed"
        assert row["training_pair_count"] and row["training_pair_count"] > 0
        enriched = h.read_json(store_, row["enriched_file_path"])
        assert len(enriched["training_pairs"]) == row["training_pair_count"]

    md = h.metadata(result, "raw_conversations")
    # what really answered (from the stored responses), not what was configured
    assert md["generator"] == "simulator"
    assert md["items_total"] == 6 and md["items_generated"] == 6 and md["generated_this_run"] == 6
    assert md["input_tokens"] == p["input_tokens"] > 0
    assert md["output_tokens"] == p["output_tokens"] > 0
    assert md["cost_usd"] == pytest.approx(p["cost_usd"], abs=1e-6) and md["cost_usd"] > 0
    # the static system prompt is cached: the first request writes, the rest read
    assert md["cache_read_input_tokens"] > 0 and 0 < md["cache_hit_rate"] < 1
    assert h.metadata(result, "parsed_conversations")["parsed_this_run"] == 6
    enriched_md = h.metadata(result, "enriched_conversations")
    assert enriched_md["enriched_this_run"] == 6 and enriched_md["training_pairs_this_run"] > 0

    # --- re-run the same partition: nothing is bought again, nothing is stored twice
    attempts = dict(sim.stats.attempts_by_key)
    assert set(attempts) == {i["id"] for i in h.items(engine, batch_id)}
    rows_before = _count_rows(engine)
    blobs_before = sorted(store_.list("conversation-files"))

    again = h.run_batch(defs, instance, batch_id)

    assert again.success
    assert dict(sim.stats.attempts_by_key) == attempts
    assert _count_rows(engine) == rows_before
    assert sorted(store_.list("conversation-files")) == blobs_before
    md2 = h.metadata(again, "raw_conversations")
    assert md2["generated_this_run"] == 0 and md2["api_requests"] == 0 and md2["skipped_already_stored"] == 6
    assert md2["cost_usd_this_run"] == 0
    assert h.metadata(again, "parsed_conversations")["parsed_this_run"] == 0
    assert h.metadata(again, "enriched_conversations")["enriched_this_run"] == 0
    assert all(ev.passed for ev in again.get_asset_check_evaluations())


def _seed_with_every_fault(item_ids: list[str], cfg: FaultConfig) -> int:
    """A simulator seed under which these items' first attempts hit every content fault and ok
    (the simulator picks outcomes deterministically from (seed, item id, attempt))."""
    from lora_assets.generation.simulator import _MESSAGE_FAULTS, _pick, _unit

    for seed in range(500):
        outcomes = Counter(_pick(_unit(seed, "messages", i, 0), _MESSAGE_FAULTS, cfg._message_rates()) for i in item_ids)
        if all(outcomes[o] >= 2 for o in CONTENT_FAULTS) and outcomes["ok"] >= 10:
            return seed
    raise AssertionError("no seed hits every fault")


def test_bad_model_output_is_recorded_never_crashes_and_rerun_retries_only_failures(
    sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance
) -> None:
    engine = h.setup_store(sqlite_url)
    blobs = h.local_blobs(tmp_path / "blobs")
    store_ = blobs.store()
    # one attempt per item: a truncated / refused response is a failed item, not retried away
    defs = h.make_defs(sqlite_url, blobs, sim, max_attempts_per_item=1)
    batch_id = h.plan(engine, 5, 4, 2)  # 40 items
    item_rows = h.items(engine, batch_id)
    assert len(item_rows) == 40
    faults = FaultConfig(truncation_rate=0.1, malformed_rate=0.1, refusal_rate=0.1, wrapped_rate=0.1, thinking_rate=0.1)
    sim.config = faults.model_copy(update={"seed": _seed_with_every_fault([i["id"] for i in item_rows], faults)})

    result = h.run_batch(defs, instance, batch_id)

    # nothing crashes the partition: every asset materialises
    assert result.success
    assert h.materialized(result) == {"raw_conversations", "parsed_conversations", "enriched_conversations"}
    outcomes = sim.stats.by_outcome
    assert all(outcomes[o] >= 2 for o in CONTENT_FAULTS), dict(outcomes)

    # every item ends generated or failed with a stated reason
    items = h.items(engine, batch_id)
    assert {i["status"] for i in items} == {"generated", "failed"}
    failed_items = [i for i in items if i["status"] == "failed"]
    assert len(failed_items) == outcomes["truncated"] + outcomes["refusal"]
    for item in failed_items:
        kind, _, text = item["error"].partition(": ")
        assert kind in {"truncated", "refusal"} and "stop_reason" in text, item["error"]
    assert Counter(i["error"].split(":")[0] for i in failed_items) == {
        "truncated": outcomes["truncated"], "refusal": outcomes["refusal"]
    }
    check = h.check_evaluations(result)["items_accounted_for"]
    assert check.passed is False and check.severity.value == "WARN"  # failures have reasons, none lost
    assert f"{len(failed_items)} failed with a reason, 0 not processed" in check.description

    # every parse failure is on its row with kind + readable reason; fenced / thinking output parsed
    rows = h.conversations(engine, batch_id)
    assert len(rows) == 40 - len(failed_items)
    parse_failed = [r for r in rows if r["parse_status"] == "failed"]
    assert len(parse_failed) == outcomes["malformed"]
    parse_md = h.metadata(result, "parsed_conversations")
    for row in parse_failed:
        kind, _, reason = row["parse_error"].partition(": ")
        assert kind in {"invalid_json", "truncated_json", "no_json", "schema", "missing_turns"}, row["parse_error"]
        assert len(reason) > 10
        assert row["id"] in parse_md["failures"] and kind in parse_md["failures"]  # named in the UI table
        assert row["enrichment_status"] == "not_started" and row["file_path"] is None
    parsed = [r for r in rows if r["parse_status"] == "parsed"]
    assert len(parsed) == outcomes["ok"] + outcomes["wrapped"] + outcomes["thinking"]
    response_shapes = Counter()
    for row in parsed:
        content = h.read_json(store_, row["raw_response_path"])["response"]["content"]
        if content[0]["type"] == "thinking" and content[0]["thinking"]:  # the fault shows its thinking text;
            response_shapes["thinking"] += 1  # default adaptive thinking leads with an empty (omitted) block
        elif "```json" in content[-1]["text"]:
            response_shapes["wrapped"] += 1
        assert row["enrichment_status"] == "completed"
    assert response_shapes == {"thinking": outcomes["thinking"], "wrapped": outcomes["wrapped"]}
    assert parse_md["parsed_this_run"] == len(parsed) and parse_md["failed_this_run"] == len(parse_failed)
    assert all(ev.passed for name, ev in h.check_evaluations(result).items() if name != "items_accounted_for")

    # --- re-run with faults off: only failed generations are requested again; only parse
    # failures are parsed again, from the stored raw file (no API call for them)
    before = Counter(sim.stats.attempts_by_key)
    sim.config = FaultConfig()

    again = h.run_batch(defs, instance, batch_id)

    assert again.success
    delta = Counter(sim.stats.attempts_by_key)
    delta.subtract(before)
    asked = {k for k, n in delta.items() if n}
    assert asked == {i["id"] for i in failed_items}
    assert all(delta[k] == 1 for k in asked)
    parse_failed_items = {r["batch_item_id"] for r in parse_failed}
    assert not parse_failed_items & asked
    md = h.metadata(again, "raw_conversations")
    assert md["generated_this_run"] == len(failed_items) and md["api_requests"] == len(failed_items)
    parse_md2 = h.metadata(again, "parsed_conversations")
    # newly generated items parse; the malformed ones were read again from raw.json and fail again
    assert parse_md2["parsed_this_run"] == len(failed_items)
    assert parse_md2["failed_this_run"] == len(parse_failed)
    assert h.metadata(again, "enriched_conversations")["enriched_this_run"] == len(failed_items)
    after = {r["id"]: r for r in h.conversations(engine, batch_id)}
    assert len(after) == 40
    for row in parse_failed:
        assert after[row["id"]]["parse_status"] == "failed" and after[row["id"]]["parse_error"] == row["parse_error"]
    assert {i["status"] for i in h.items(engine, batch_id)} == {"generated"}


def test_parse_failure_is_retried_from_the_stored_raw_file(
    sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance
) -> None:
    """A conversation whose parse failed is parsed again from raw.json on the next run (here the
    stored raw response is repaired in place), never bought again."""
    engine = h.setup_store(sqlite_url)
    blobs = h.local_blobs(tmp_path / "blobs")
    store_ = blobs.store()
    defs = h.make_defs(sqlite_url, blobs, sim)
    batch_id = h.plan(engine, 1, 3, 1)
    item_ids = [i["id"] for i in h.items(engine, batch_id)]
    sim.config = FaultConfig(malformed_rate=1.0)
    first = h.run_batch(defs, instance, batch_id)
    assert first.success
    rows = h.conversations(engine, batch_id)
    assert [r["parse_status"] for r in rows] == ["failed"] * 3
    assert set(sim.stats.attempts_by_key) == set(item_ids)

    # repair one stored response with a well-formed one produced by the same simulator
    sim.config = FaultConfig()
    target = rows[0]
    good = _good_response_text(sim)
    attempts = dict(sim.stats.attempts_by_key)
    raw = h.read_json(store_, target["raw_response_path"])
    next(b for b in raw["response"]["content"] if b["type"] == "text")["text"] = good
    h.write_json(store_, target["raw_response_path"], raw)

    again = h.run_batch(defs, instance, batch_id)

    assert dict(sim.stats.attempts_by_key) == attempts  # no API call
    md = h.metadata(again, "parsed_conversations")
    assert md["parsed_this_run"] == 1 and md["failed_this_run"] == 2
    after = {r["id"]: r for r in h.conversations(engine, batch_id)}
    assert after[target["id"]]["parse_status"] == "parsed" and after[target["id"]]["parse_error"] is None
    assert after[target["id"]]["enrichment_status"] == "completed"


def _good_response_text(sim: ClaudeSimulator) -> str:
    """A complete conversation JSON from the simulator through the real SDK."""
    import anthropic

    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=sim.base_url)
    try:
        msg = client.messages.create(
            model="claude-haiku-5-5",
            max_tokens=8192,
            messages=[{"role": "user", "content": "<scaffolding>\npersona_name: Test\n</scaffolding>"}],
        )
    finally:
        client.close()
    return next(b.text for b in msg.content if b.type == "text")


SECRET = "sk-ant-api03-TEST-SECRET-0123456789abcdefDO-NOT-LEAK"


def test_api_key_never_appears_in_blobs_rows_events_or_logs(
    sqlite_url: str,
    tmp_path: Path,
    sim: ClaudeSimulator,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    caplog.set_level("DEBUG")
    engine = h.setup_store(sqlite_url)
    blobs = h.local_blobs(tmp_path / "blobs")
    defs = h.make_defs(sqlite_url, blobs, sim, api_key=EnvVar("ANTHROPIC_API_KEY"))
    batch_id = h.plan(engine, 2, 2, 1)
    # a fault mix so error paths (failed items, parse failures) write their texts too
    sim.config = FaultConfig(truncation_rate=0.25, malformed_rate=0.25)

    result = h.run_batch(defs, instance, batch_id)

    assert result.success
    assert sum(sim.stats.attempts_by_key.values()) >= 4  # the key really went over HTTP
    places: dict[str, str] = {
        "blobs": h.all_blobs_text(blobs.store()),
        "domain DB rows": h.all_table_rows_text(engine),
        "event log": h.run_event_log_text(instance, result.run_id),
        "run record": _run_record_text(instance, result.run_id),
        "python logs": caplog.text,
    }
    out, err = capfd.readouterr()
    places["stdout/stderr"] = out + err
    assert places["blobs"] and places["domain DB rows"] and places["event log"]
    for where, text in places.items():
        assert SECRET not in text, f"API key leaked into {where}"
        assert SECRET[-20:] not in text, f"part of the API key leaked into {where}"


def _run_record_text(instance: DagsterInstance, run_id: str) -> str:
    from dagster._serdes import serialize_value

    run = instance.get_run_by_id(run_id)
    return serialize_value(run) + json.dumps(run.run_config, default=str) if run else ""


def test_the_plan_is_what_gets_generated_whatever_init_changes_after_planning(
    sim: ClaudeSimulator, instance: DagsterInstance, tmp_path: Path
) -> None:
    """Plan a batch, then re-init scaffolding with the persona renamed and the consultant changed
    (what `lora-assets init --scaffolding-dir` does): the run generates, parses and enriches the
    plan — every file and row carries the names the batch was planned with."""
    from lora_assets.store import db as dbq
    from lora_assets.store.scaffolding_files import load_bundle

    db_url = f"sqlite:///{tmp_path / 'lora.db'}"
    blobs = h.local_blobs(tmp_path / "blobs")
    engine = h.setup_store(db_url)
    batch_id = h.plan(engine, 1, 2, 1)  # 2 items, one persona
    bundle = load_bundle()
    (persona_id,) = {i["persona_id"] for i in h.items(engine, batch_id)}
    (index,) = [k for k, p in enumerate(bundle.personas) if p.id == persona_id]
    planned = bundle.personas[index]
    changed = bundle.model_copy(deep=True)
    changed.personas[index].name = "Renamed After Planning"
    changed.consultant_profile.name = "Someone Else Entirely"
    counts = dbq.load_scaffolding(engine, changed)
    assert counts["personas"]["updated"] == 1

    result = h.run_batch(h.make_defs(db_url, blobs, sim), instance, batch_id)
    assert result.success

    store = blobs.store()
    text = h.all_blobs_text(store, "conversation-files")
    assert planned.name in text and bundle.consultant_profile.name in text
    assert "Renamed After Planning" not in text and "Someone Else Entirely" not in text
    for row in h.conversations(engine, batch_id):
        assert row["scaffolding_snapshot"]["persona"]["name"] == planned.name
        parsed = h.read_json(store, row["file_path"])
        assert parsed["input_parameters"]["persona_name"] == planned.name
        enriched = h.read_json(store, row["enriched_file_path"])
        assert planned.name in json.dumps(enriched) and "Renamed After Planning" not in json.dumps(enriched)
