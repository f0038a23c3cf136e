"""The automation condition of the batch stages after generation (parse, enrich).

`AutomationCondition.eager()` arms a partition's request in two ways that misfire here, and a
tick that reads the event log as of its start but run status live then re-runs a stage the
pipeline run has just finished (seen under load: parse/enrich materialised a second time right
after a `batch_pipeline` run):

* `newly_missing()` arms parse and enrich the moment a batch's partition is added, before any
  run; the pipeline run that follows materialises them, but a tick whose snapshot predates the
  last materialisation while the run already reads as finished sees "armed, missing, not in
  progress" and requests them again;
* `any_deps_updated()` ignores an upstream update only when that run's *asset selection* named
  the target (`executed_with_root_target`); a run of the whole job carries an empty selection,
  so the pipeline's own raw → parse → enrich updates arm the next stage the same way.

`after_upstream_lands` is `eager()` without `newly_missing`: a stage runs when an upstream
update comes from a run that did not plan it (generation alone, a re-parse). Runs of the whole
pipeline name their assets (see `automation.BATCH_ASSETS`), so their own updates arm nothing.
"""

from __future__ import annotations

from dagster import AutomationCondition


def after_upstream_lands() -> AutomationCondition:
    """Request the partition when a dependency updated in a run that did not also plan this asset
    (or will be requested this tick), none is missing or in progress, and it is not in progress."""
    return (
        AutomationCondition.any_deps_updated().since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("after_upstream_lands")
