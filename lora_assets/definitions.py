"""The one Definitions object of the lora_assets code location (workspace.yaml points here)."""

from __future__ import annotations

import warnings

from dagster import Definitions, PreviewWarning

warnings.filterwarnings("ignore", category=PreviewWarning)  # partitioned asset checks are preview in 1.13

from lora_assets.defs import automation, enrichment, generation, parsing, scaffolding  # noqa: E402
from lora_assets.defs.resources import build_resources  # noqa: E402

defs = Definitions(
    assets=[
        scaffolding.scaffolding,
        generation.raw_conversations,
        parsing.parsed_conversations,
        enrichment.enriched_conversations,
    ],
    asset_checks=[
        scaffolding.scaffolding_completeness,
        generation.items_accounted_for,
        parsing.input_parameters_complete,
        parsing.client_persona_matches,
        enrichment.enriched_has_input_parameters,
        enrichment.training_pairs_have_scaffolding,
        enrichment.client_background_readable,
        enrichment.all_conversations_enriched,
    ],
    jobs=[automation.batch_pipeline_job],
    sensors=[automation.queued_batches_sensor, automation.automation_sensor],
    schedules=[automation.nightly_coverage_batch],
    resources=build_resources(),
)
