"""`lora-assets`: init, batches, runs, training files, and one-file tools.

Exit codes (README "Errors and limits"): 0 the command did what it was asked; 1 the work failed
(a run failed, every item failed, a blocking check failed, a document is invalid); 2 bad input
(an argument, a setting, a file, or a store that is not initialised). Every failure is one
`error: …` line naming the thing and the reason; a traceback only with `--debug`.

One module per command group: `initialise` (init), `files` (schema, sql, parse, enrich, validate),
`batches` (batch …, run, judge), `training_files` (training-file …), `review` (review …), `simulator`
(simulate-claude); `common` and `runs` hold what they share (and what `demo` uses).
"""

from __future__ import annotations

from typing import Any

import click

from lora_assets.errors import EXIT_BAD_INPUT, EXIT_FAILED, LoraError, NotInitialisedError


def _first_line(text: str, limit: int = 300) -> str:
    line = next((x.strip() for x in str(text).splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe(exc: BaseException) -> tuple[int, list[str]]:
    """(exit code, message lines) of an exception escaping a command."""
    if isinstance(exc, LoraError):
        lines = [x for x in str(exc).splitlines() if x.strip()] or [type(exc).__name__]
        return exc.exit_code, lines
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, (sa_exc.OperationalError, sa_exc.ProgrammingError)):
        reason = _first_line(str(exc.orig) if exc.orig is not None else str(exc))
        if "no such table" in reason or ("relation" in reason and "does not exist" in reason):
            return EXIT_BAD_INPUT, [str(NotInitialisedError(reason))]
        if isinstance(exc, sa_exc.OperationalError):
            return EXIT_FAILED, [f"the domain database cannot be used: {reason}"]
    if isinstance(exc, PermissionError):
        return EXIT_BAD_INPUT, [f"{exc.filename or 'a file'}: permission denied"]
    return EXIT_FAILED, [f"{type(exc).__name__}: {_first_line(str(exc))}", "run with --debug for the traceback"]


class LoraGroup(click.Group):
    """Reports every exception of a command as `error: <message>` and its exit code (no
    traceback), unless `--debug` was given."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; an exception becomes one `error:` line and its exit code."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place every failure becomes a message
            if ctx.params.get("debug"):
                raise
            code, lines = _describe(exc)
            click.echo(f"error: {lines[0]}", err=True)
            for line in lines[1:]:
                click.echo(f"  {line}", err=True)
            ctx.exit(code)


@click.group(cls=LoraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="LORA_DEBUG", help="Show the Python traceback of a failure.")
def main(debug: bool) -> None:
    """Turn scaffolding (personas × emotional arcs × topics) into LoRA training data with Claude.

    Settings come from the environment (LORA_DATA_DIR, LORA_DATABASE_URL, LORA_S3_BUCKET,
    ANTHROPIC_API_KEY, …; see the README). Without an API key, the loopback simulator is used.

    \b
    Exit codes: 0 done; 1 the work failed (a run, every item, a blocking check,
    an invalid document); 2 bad input (argument, setting, file, store not initialised);
    3 the batch was cancelled while `run` generated it (what it kept is stored).
    """


def _register_commands() -> None:
    """Attach every command group's commands to `main` (`--help` lists them by name)."""
    from lora_assets.cli import batches, files, initialise, simulator, training_files
    from lora_assets.cli import review
    from lora_assets.cli.serve import serve_files
    from lora_assets.demo import demo

    for command in (
        initialise.init, files.schema, files.sql, batches.batch, batches.run_batch, batches.judge_batch,
        simulator.simulate_claude, files.parse_cmd, files.enrich_cmd, files.validate_cmd,
        training_files.training_file, review.review, demo, serve_files,
    ):
        main.add_command(command)


_register_commands()
