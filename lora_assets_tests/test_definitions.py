"""Definitions load with placeholder settings, so a broken definition fails fast."""

from __future__ import annotations

import importlib

import pytest


def test_definitions_load(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LORA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORA_S3_BUCKET", "placeholder-bucket")
    monkeypatch.setenv("LORA_DATABASE_URL", "postgresql+psycopg2://user@localhost/placeholder")
    import lora_assets.definitions as module

    defs = importlib.reload(module).defs
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"personas", "raw_conversations", "parsed_conversations", "enriched_conversations"} <= keys
    checks = {c.name for c in repo.asset_graph.asset_check_keys}
    assert {"scaffolding_completeness", "input_parameters_complete", "client_persona_matches",
            "enriched_has_input_parameters", "training_pairs_have_scaffolding", "client_background_readable",
            "all_conversations_enriched"} <= checks
    assert defs.resolve_job_def("batch_pipeline") is not None
    assert {s.name for s in repo.sensor_defs} >= {"queued_batches_sensor", "default_automation_condition_sensor"}
    # What the webserver does when it loads the location: every job built (an op named like a job
    # is refused only here), plus Dagster's own loadability check.
    from dagster import Definitions

    Definitions.validate_loadable(defs)
    assert {j.name for j in repo.get_all_jobs()} >= {
        "batch_pipeline", "training_file_build", "judge_batch", "plan_batch", "approve_batch", "cancel_batch", "review_export",
        "review_import"}
