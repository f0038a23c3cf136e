"""The one Definitions object of the lora_assets code location (workspace.yaml points here)."""

from typing import Any

from dagster import Definitions

from lora_assets.defs import automation, planning, enrichment, generation, judging, parsing, scaffolding, training_files
from lora_assets.defs import review
from lora_assets.defs.resources import build_resources

ASSETS = [
    scaffolding.scaffolding,
    generation.raw_conversations,
    parsing.parsed_conversations,
    enrichment.enriched_conversations,
    training_files.training_files,
    judging.judged_conversations,
]
ASSET_CHECKS = [
    scaffolding.scaffolding_completeness,
    generation.items_accounted_for,
    parsing.input_parameters_complete,
    parsing.client_persona_matches,
    enrichment.enriched_has_input_parameters,
    enrichment.training_pairs_have_scaffolding,
    enrichment.client_background_readable,
    enrichment.all_conversations_enriched,
    training_files.training_file_schema_valid,
    training_files.training_file_metadata_matches,
    training_files.training_file_members_valid,
    training_files.training_file_exports_consistent,
    training_files.training_file_lengths,
    training_files.training_file_leakage,
]


def build_defs(resources: dict[str, Any]) -> Definitions:
    """The code location with the given resources (tests pass their own; production reads env)."""
    return Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[automation.batch_pipeline_job, automation.training_file_job, automation.judge_job,
              planning.plan_batch, planning.approve_batch, planning.cancel_batch, review.review_export_job, review.review_import_job],
        sensors=[automation.queued_batches_sensor, automation.automation_sensor],
        schedules=[automation.nightly_coverage_batch],
        resources=resources,
        executor=automation.one_process_executor,
    )


defs = build_defs(build_resources())
