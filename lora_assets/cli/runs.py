"""Running a job of the one `Definitions` object in this process, on the persistent instance,
and printing its check results: shared by `run`, `judge`, `training-file build` and `demo`."""

from __future__ import annotations

from typing import Any

import click

#: In-process runs print nothing of their own: Dagster's console logger would print a STEP_FAILURE's
#: and RUN_FAILURE's stack traces. The CLI prints the run's warnings (`print_warnings`) and the
#: reason of a failure (`run_failure`) one line each; the full event log is in the instance (UI).
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

#: Failed steps named in a failure's reason; the rest are counted.
_REASONS_SHOWN = 3


def run_job(job_name: str, partition_key: str, instance: Any = None, run_config: dict[str, Any] | None = None) -> Any:
    """Execute job `job_name` of `lora_assets.definitions.defs` for one partition in this process
    (on `instance`, default the persistent one), quietly, without raising on a failed step, then
    print the run's warnings one line each: the caller reads `result.success` (`run_failure` says
    why it failed) and the check evaluations. `run_config` is added to the quiet logging config."""
    from lora_assets import definitions
    from lora_assets.instance import get_instance

    # Looked up now, not at import: tests swap `definitions.defs` for one with their resources.
    job = definitions.defs.resolve_job_def(job_name)
    instance = instance or get_instance()
    result = job.execute_in_process(partition_key=partition_key, instance=instance, raise_on_error=False,
                                    run_config={**QUIET, **(run_config or {})})
    print_warnings(instance, result.run_id)
    return result


def print_warnings(instance: Any, run_id: str) -> None:
    """The WARNING-level messages the run's steps logged (`context.log.warning`), one line each
    on stderr: what the quiet console logger no longer prints."""
    import logging

    for entry in instance.all_logs(run_id):
        if entry.is_dagster_event or entry.level < logging.WARNING or entry.level >= logging.ERROR:
            continue
        where = f"{entry.step_key}: " if entry.step_key else ""
        click.echo(f"warning: {where}{_first_line(entry.user_message)}", err=True)


def _first_line(text: str, limit: int = 400) -> str:
    line = next((x.strip() for x in str(text).splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _one_line(text: str, limit: int = 600) -> str:
    """A multi-line message (a Failure listing problems) as one line: `head: a; b; c`."""
    out = ""
    for line in (x.strip() for x in str(text).splitlines()):
        if line:
            out = line if not out else out + (" " if out.endswith(":") else "; ") + line
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _error_text(error: Any) -> str:
    """`Type: message` of the exception a step raised: Dagster's wrapper unwrapped, the module
    path dropped (`RunAbortedError: generation run aborted …`)."""
    while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError",
                                                          "DagsterResourceFunctionError", "DagsterUserCodeExecutionError"):
        error = error.cause
    text = _first_line(error.message)
    head, sep, rest = text.partition(": ")
    if sep and head.rsplit(".", 1)[-1] == error.cls_name:
        text = f"{error.cls_name}: {rest}"
    return text


def run_failure(result: Any) -> str:
    """Why an in-process run failed, in one line: each failed step (at most `_REASONS_SHOWN`, then
    a count) with the reason it gave (a `Failure`'s description, else the exception's type and
    first line), or the run's own failure message when no step failed."""
    reasons: list[str] = []
    for ev in result.all_events:
        if not ev.is_step_failure:
            continue
        data = ev.event_specific_data
        user = getattr(data, "user_failure_data", None)
        if user is not None and user.description:
            reasons.append(f"{ev.step_key}: {_one_line(user.description)}")
        elif getattr(data, "error", None) is not None:
            reasons.append(f"{ev.step_key}: {_error_text(data.error)}")
        else:
            reasons.append(f"{ev.step_key}: failed")
    if not reasons:
        failures = [ev for ev in result.all_events if ev.is_run_failure]
        message = failures[-1].message if failures and failures[-1].message else "the run failed"
        return _first_line(message)
    more = len(reasons) - _REASONS_SHOWN
    return "; ".join(reasons[:_REASONS_SHOWN]) + (f"; and {more} more failed step(s)" if more > 0 else "")


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
