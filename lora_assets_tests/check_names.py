"""The code location's asset-check names, derived once from the Definitions' checks, for tests
that expect a set of checks (so a renamed or added check changes one place, not four)."""

from __future__ import annotations

from lora_assets.definitions import ASSET_CHECKS
from lora_assets.defs.scaffolding import SCAFFOLDING_KEYS

#: The assets of one batch (the batch_pipeline job), in pipeline order.
BATCH_ASSETS = ("raw_conversations", "parsed_conversations", "enriched_conversations")

#: Every check name -> the asset it hangs on.
ALL_CHECK_ASSETS: dict[str, str] = {
    key.name: key.asset_key.to_user_string() for checks in ASSET_CHECKS for key in checks.check_keys
}

#: Batch-level check name -> the asset it hangs on (raw / parsed / enriched).
CHECK_ASSET: dict[str, str] = {name: asset for name, asset in ALL_CHECK_ASSETS.items() if asset in BATCH_ASSETS}

#: The checks of the batch_pipeline job.
PIPELINE_CHECKS: frozenset[str] = frozenset(CHECK_ASSET)

#: The checks of a training-file build.
TRAINING_FILE_CHECKS: frozenset[str] = frozenset(n for n, a in ALL_CHECK_ASSETS.items() if a == "training_files")

__all__ = ["ALL_CHECK_ASSETS", "BATCH_ASSETS", "CHECK_ASSET", "PIPELINE_CHECKS", "SCAFFOLDING_KEYS",
           "TRAINING_FILE_CHECKS"]
