"""Jobs, the queued-batch sensor, the nightly coverage batch, and declarative automation."""

import os

import sqlalchemy as sa
from dagster import (
    AssetKey,
    ExecutorDefinition,
    Field,
    multi_or_in_process_executor,
    AssetSelection,
    DagsterRunStatus,
    RunsFilter,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    schedule,
    sensor,
)

from lora_assets.defs.conditions import PIPELINE_RUN_TAG
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.resources import ClaudeResource, DomainDB
from lora_assets.errors import SettingsError
from lora_assets.schemas import BatchJobStatus
from lora_assets.settings import env_number
from lora_assets.store.batches import least_covered_combinations, queued_batches

# Assets by key, not by object: jobs do not import (and so do not depend on) the modules defining them.

#: The assets of one batch, in order. A run request names them (with their checks), so the run's
#: own updates do not re-arm parse/enrich (see `conditions.after_upstream_lands`).
BATCH_ASSETS = [AssetKey("raw_conversations"), AssetKey("parsed_conversations"), AssetKey("enriched_conversations")]

#: One batch end to end: generate → parse → enrich, with every check of those assets.
batch_pipeline_job = define_asset_job(
    "batch_pipeline",
    selection=AssetSelection.assets(*BATCH_ASSETS),
    description="Generate, parse and enrich one batch job (partition), with all their checks.",
    # However the run is launched: its own updates must not arm parse/enrich again (conditions.py).
    run_tags={PIPELINE_RUN_TAG: "true"},
)


#: Optional: the Claude judge over one batch's enriched conversations.
judge_job = define_asset_job(
    "judge_batch",
    selection=AssetSelection.assets("judged_conversations"),
    description="Score one batch's enriched conversations with the Claude judge (optional; costs money).",
)


#: Build the next version of one training file (partition = its name), with its checks.
training_file_job = define_asset_job(
    "training_file_build",
    selection=AssetSelection.assets("training_files"),
    description="Build the next version of a training file, with all its checks.",
)


_LIVE_OR_DONE = [
    DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
    DagsterRunStatus.SUCCESS,
]


#: Every run of the location executes in one process unless its run config asks for
#: `multiprocess`: the stages run one after another (generate → parse → enrich, then checks), so a
#: process per step would only add its start-up (seconds of CPU and ~200 MB each). Same config as
#: Dagster's default executor; only the default differs.
one_process_executor = ExecutorDefinition(
    name="one_process_unless_configured",
    config_schema=Field(multi_or_in_process_executor.config_schema.config_type, default_value={"in_process": {}},
                        is_required=False),
    requirements=multi_or_in_process_executor.get_requirements,
    executor_creation_fn=multi_or_in_process_executor.executor_creation_fn,
    description="in_process by default; `execution: {config: {multiprocess: {...}}}` for a process per step.",
)


def sensor_interval_s(variable: str, default: int) -> int:
    """Seconds between a sensor's ticks from `variable` (a whole number, at least 1), else
    `default`; a SettingsError naming the variable for anything else (the code location does not
    load with it)."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    value = int(env_number(variable, raw, int))  # parsed as every setting is
    if value < 1:
        raise SettingsError(variable, f"must be at least 1 second (got {value})")
    return value


#: Seconds between ticks of the queued-batch sensor (production: 10 s). Read when the code
#: location loads; the UI test deployments set it lower so a test does not wait out production's
#: interval for the run it starts (lora_assets_tests/ui/conftest.py).
QUEUED_BATCHES_INTERVAL_S = sensor_interval_s("LORA_QUEUED_BATCHES_SENSOR_INTERVAL_S", 10)


@sensor(job=batch_pipeline_job, minimum_interval_seconds=QUEUED_BATCHES_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING)
def queued_batches_sensor(context: SensorEvaluationContext, db: DomainDB) -> SensorResult | SkipReason:
    """Start the batches approved to run (status `queued`: within the auto-approve threshold, or
    approved with `approve_batch` / `lora-assets batch approve`): add their partitions and request
    one run each. A `planned` batch waits for approval and is never started here. The run key
    makes a batch start once (and once more after its pilot is approved)."""
    engine = db.engine()
    try:
        with engine.connect() as conn:
            queued = queued_batches(conn)
    except sa.exc.DBAPIError as exc:
        # Before `lora-assets init` the tables do not exist: say so instead of failing every tick.
        return SkipReason(f"domain DB not ready (run `lora-assets init`): {exc.__class__.__name__}")
    # A batch someone already launched (UI, `lora-assets run`) must not get a second, paid run.
    # After a pilot only a live run counts: the pilot's own run succeeded and the rest is still to do.
    records = context.instance.get_run_records(
        RunsFilter(job_name=batch_pipeline_job.name, statuses=_LIVE_OR_DONE), limit=5000)
    started = {r.dagster_run.tags.get("dagster/partition") for r in records}
    live = {r.dagster_run.tags.get("dagster/partition") for r in records if r.dagster_run.status != DagsterRunStatus.SUCCESS}
    # A run of a batch's partition may carry its slug or (legacy, `lora-assets run <id>`) its id.
    wanted = [(key, after_pilot) for batch_id, key, after_pilot in queued
              if not ({batch_id, key} & (live if after_pilot else started))]
    if not wanted:
        return SkipReason("no queued batch jobs without a run")
    existing = set(context.instance.get_dynamic_partitions(batch_jobs_partitions.name))
    new = [b for b, _ in wanted if b not in existing]
    return SensorResult(
        dynamic_partitions_requests=[batch_jobs_partitions.build_add_request(new)] if new else [],
        run_requests=[RunRequest(partition_key=b, run_key=f"batch-{b}-approved" if after_pilot else f"batch-{b}",
                                 asset_selection=BATCH_ASSETS)
                      for b, after_pilot in wanted],
    )


NIGHTLY_BATCH_SIZE = 30


@schedule(
    job=batch_pipeline_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
)
def nightly_coverage_batch(
    context: ScheduleEvaluationContext, db: DomainDB, claude: ClaudeResource
) -> RunRequest | SkipReason:
    """Every night, plan a Message Batches-mode batch over the persona × arc × topic combinations
    with the fewest conversations (coverage-driven), through the same planning as `plan_batch`:
    item limit, estimate, cost cap (LORA_MAX_BATCH_COST_USD) and auto-approve threshold
    (LORA_AUTO_APPROVE_USD). Within the threshold it registers the partition and requests the run;
    above it the batch waits as `planned` (the tick skips, saying so) and the queued-batch sensor
    starts it once approved; over the cap nothing is written and the tick skips with the reason.
    Stopped by default: turning it on is a spending decision."""
    from lora_assets import planning
    from lora_assets.errors import UserInputError

    engine = db.engine()
    limits = db.plan_limits()
    with engine.connect() as conn:
        combos = least_covered_combinations(conn, NIGHTLY_BATCH_SIZE)
    if not combos:
        return SkipReason("no scaffolding loaded")
    request = planning.PlanRequest(name=f"nightly-{context.scheduled_execution_time:%Y%m%d}", mode="batches",
                                   model=claude.model)
    try:
        planned = planning.plan(engine, request, created_by="nightly-schedule", limits=limits,
                                counter=claude.token_counter(request.model), concurrency=claude.max_concurrency,
                                combinations=combos)
    except UserInputError as exc:
        # Over the cost cap or the item limit, unknown model: nothing was written.
        return SkipReason(f"nightly coverage batch not planned: {exc}")
    context.log.info(planned.summary())
    context.instance.add_dynamic_partitions(batch_jobs_partitions.name, [planned.key])
    if planned.status == BatchJobStatus.PLANNED:
        return SkipReason(f"nightly coverage batch {planned.key!r} planned, not started: {planned.approval}")
    return RunRequest(partition_key=planned.key, run_key=f"nightly-{planned.key}", asset_selection=BATCH_ASSETS)


#: Runs the eager conditions (parse after generate, enrich after parse) without anyone clicking.
automation_sensor = AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
)
