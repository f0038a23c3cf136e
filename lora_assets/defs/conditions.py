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

  The queued-batches sensor's runs name their assets (`automation.BATCH_ASSETS`), but a run of
  `batch_pipeline` launched from its page in the UI, by `lora-assets run` or over GraphQL has an
  empty selection: after such a run `enriched_conversations` was materialised a second time by an
  `__ASSET_JOB` run of the automation sensor (seen in test_restart's daemon log).

`after_upstream_lands` is `eager()` without `newly_missing`, and an upstream update counts only
when it comes from a run outside the pipeline (generation alone, a re-parse): every run of
`batch_pipeline` carries the PIPELINE_RUN_TAG run tag, however it was launched, and plans all
three stages itself.
"""

from __future__ import annotations

from dagster import AutomationCondition


#: Run tag of every `batch_pipeline` run (the job's run_tags): its updates arm no later stage.
PIPELINE_RUN_TAG = "lora_assets/batch_pipeline"


def after_upstream_lands() -> AutomationCondition:
    """Request the partition when a dependency updated in a run that is not a `batch_pipeline`
    run and did not also plan this asset (or will be requested this tick), none is missing or in
    progress, and it is not in progress."""
    updated_outside_pipeline = AutomationCondition.any_deps_match(
        (
            AutomationCondition.newly_updated()
            & ~AutomationCondition.executed_with_root_target()
            # the latest run's tags: `all_new_updates_have_run_tags` needs the event log's global
            # record ids, which Dagster's SQLite storage (the embedded default) does not have
            & ~AutomationCondition.executed_with_tags(tag_keys={PIPELINE_RUN_TAG})
        ).with_label("newly_updated_outside_the_pipeline")
        | AutomationCondition.will_be_requested()
    ).with_label("any_deps_updated_outside_the_pipeline")
    return (
        updated_outside_pipeline.since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("after_upstream_lands")
