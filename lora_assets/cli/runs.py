"""Running a job of the one `Definitions` object in this process, on the persistent instance,
and printing its check results: shared by `run`, `judge`, `training-file build` and `demo`."""

from __future__ import annotations

from typing import Any

import click

#: In-process runs log warnings and errors only; the full event log is in the instance (UI).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_job(job_name: str, partition_key: str, instance: Any = None, run_config: dict[str, Any] | None = None) -> Any:
    """Execute job `job_name` of `lora_assets.definitions.defs` for one partition in this process
    (on `instance`, default the persistent one), quietly, without raising on a failed step: the
    caller reads `result.success` and the check evaluations."""
    from lora_assets import definitions
    from lora_assets.instance import get_instance

    # Looked up now, not at import: tests swap `definitions.defs` for one with their resources.
    job = definitions.defs.resolve_job_def(job_name)
    return job.execute_in_process(partition_key=partition_key, instance=instance or get_instance(),
                                  raise_on_error=False, run_config=run_config or QUIET)


#: In-process runs whose failures the caller prints itself, one line each (`step_failures`):
#: Dagster's console logger would print each failure again with its stack trace.
SILENT = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def step_failures(result: Any) -> list[str]:
    """One line per failed step: its `Failure` description (the reason our code gave), else
    the error's message; never a stack trace."""
    lines = []
    for event in getattr(result, "all_events", []):
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        user = getattr(data, "user_failure_data", None)
        text = (user.description if user is not None and user.description else None) or \
            (data.error.message if data.error is not None else "failed")
        lines.append(f"{event.step_key}: {' '.join(str(text).split())}")
    return lines


def defs_resource(name: str) -> Any:
    """Resource `name` (`db`, `blobs`, `claude`) of `lora_assets.definitions.defs`: the CLI uses the
    resources the code location runs with, never a second copy built from the environment."""
    from lora_assets import definitions

    return definitions.defs.resources[name]


def _warned(ev: Any) -> bool:
    from dagster import AssetCheckSeverity

    return not ev.passed and getattr(ev, "severity", None) == AssetCheckSeverity.WARN


def print_checks(evaluations: list[Any]) -> None:
    """One line per asset check evaluation: PASS / FAIL / WARN (a failed WARN-severity check:
    it informs, it does not fail the run), asset:check, its description."""
    for ev in evaluations:
        mark = "PASS" if ev.passed else "WARN" if _warned(ev) else "FAIL"
        desc = ev.description or ""
        click.echo(f"  check {mark}  {ev.asset_key.to_user_string()}:{ev.check_name}  {desc}")


def blocking_failures(evaluations: list[Any], *, with_asset: bool = True) -> list[str]:
    """`asset:check` (or just `check`) of every blocking check that failed at ERROR severity
    (a failed WARN-severity check informs and blocks nothing)."""
    return [f"{ev.asset_key.to_user_string()}:{ev.check_name}" if with_asset else ev.check_name
            for ev in evaluations if ev.blocking and not ev.passed and not _warned(ev)]
