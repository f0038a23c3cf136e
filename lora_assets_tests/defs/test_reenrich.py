"""Re-enrichment (`enriched_conversations` with run config `re_enrich: true`) on SQLite + a local
store: after the enrichment logic changes, every conversation is enriched again from its stored
parsed file with no Claude request (counted at the simulator's HTTP layer), rows and files carry
the new ENRICHMENT_VERSION, the training files holding them are listed as stale, and the next
training-file version reflects the change."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from lora_assets.core import enrich
from lora_assets.defs.partitions import training_files_partitions
from lora_assets.defs.resources import _ENGINES
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import training_files as tfq
from lora_assets_tests.defs import helpers as h

MARKER = "[re-enriched system prompt]"


def test_re_enrich_makes_no_claude_request_and_the_next_build_reflects_it(
    tmp_path: Path, sim: ClaudeSimulator, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url, blobs = f"sqlite:///{tmp_path / 'lora.db'}", h.local_blobs(tmp_path / "blobs")
    engine = h.setup_store(db_url)
    try:
        defs = h.make_defs(db_url, blobs, sim)
        store = blobs.store()
        batch_id = h.plan(engine, 1, 1, 2, name="reenrich")
        assert h.run_batch(defs, instance, batch_id).success
        rows = h.conversations(engine, batch_id)
        assert {r["enrichment_version"] for r in rows} == {enrich.ENRICHMENT_VERSION}

        name = "reenrich-tf"
        tfq.create_training_file(engine, name=name, conversation_ids=[r["id"] for r in rows], created_by="tests")
        instance.add_dynamic_partitions(training_files_partitions.name, [name])
        build = defs.resolve_job_def("training_file_build")
        assert build.execute_in_process(partition_key=name, instance=instance, raise_on_error=False,
                                        run_config=h.QUIET).success
        with engine.connect() as conn:
            v1 = tfq.get_version(conn, name)
        assert v1 is not None and MARKER.encode() not in store.get_bytes(v1["jsonl_file_path"])

        # The enrichment logic changes (a new training system prompt) and its version is bumped.
        original_prompt = enrich.training_system_prompt
        monkeypatch.setattr(enrich, "training_system_prompt", lambda consultant: f"{original_prompt(consultant)}\n{MARKER}")
        monkeypatch.setattr(enrich, "ENRICHMENT_VERSION", "test-bump")
        sim.reset_stats()

        keys = {AssetKey("enriched_conversations")}
        checks = {k for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key in keys}
        job = defs.resolve_job_def("batch_pipeline").get_subset(asset_selection=keys, asset_check_selection=checks)
        result = job.execute_in_process(
            partition_key=batch_id, instance=instance, raise_on_error=False,
            run_config={**h.QUIET, "ops": {"enriched_conversations": {"config": {"re_enrich": True}}}})
        assert result.success
        assert all(ev.passed for ev in result.get_asset_check_evaluations())
        assert sim.stats.snapshot()["requests_total"] == 0  # nothing reached Claude
        md = h.metadata(result, "enriched_conversations")
        assert md["re_enrich"] is True and md["enrichment_version"] == "test-bump"
        assert md["enriched_this_run"] == 2 and md["failed_this_run"] == 0
        assert f"| {name} | 1 | 2 | stale until rebuilt |" in md["stale_training_files"]

        for row in h.conversations(engine, batch_id):
            assert row["enrichment_version"] == "test-bump" and row["enrichment_status"] == "completed"
            doc = h.read_json(store, row["enriched_file_path"])
            assert doc["dataset_metadata"]["enrichment_version"] == "test-bump"
            assert all(p["system_prompt"].endswith(MARKER) for p in doc["training_pairs"])

        assert build.execute_in_process(partition_key=name, instance=instance, raise_on_error=False,
                                        run_config=h.QUIET).success
        with engine.connect() as conn:
            v2 = tfq.get_version(conn, name)
        assert v2 is not None and v2["version"] == 2
        jsonl = store.get_bytes(v2["jsonl_file_path"]).decode()
        assert jsonl.count(MARKER) == v2["total_training_pairs"] > 0
        assert MARKER.encode() not in store.get_bytes(v1["jsonl_file_path"])  # v1 stays as it was
        assert sim.stats.snapshot()["requests_total"] == 0
    finally:
        _ENGINES.pop(db_url, None)
        engine.dispose()
