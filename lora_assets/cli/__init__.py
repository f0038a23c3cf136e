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

import logging
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


class _OneLineLog(logging.Handler):
    """Our modules' WARNING records, one line each on stderr (`warning: …`). ERROR records are
    shown only with `--debug` (with their traceback): each is a failure the command reports
    anyway (an aborted run in its `error:` line, a failed item on its row and in `batch status`),
    and Python's last-resort handler would print it again, stack trace included."""

    #: Lines of one kind (one message template, e.g. a retry during an outage) shown before the
    #: rest of that kind are only counted; --debug shows them all.
    REPEATS_SHOWN = 2

    def __init__(self, debug: bool) -> None:
        super().__init__(logging.WARNING)
        self.debug = debug
        self.seen: dict[tuple[str, str], int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.ERROR and not self.debug:
                return
            kind = (record.name, str(record.msg))
            self.seen[kind] = count = self.seen.get(kind, 0) + 1
            if count > self.REPEATS_SHOWN and not self.debug:
                return
            label = "warning" if record.levelno < logging.ERROR else "logged error"
            more = " (more like this are not shown; --debug shows them)" \
                if count == self.REPEATS_SHOWN and not self.debug else ""
            click.echo(f"{label}: {_first_line(record.getMessage(), 400)}{more}", err=True)
            if self.debug and record.exc_info:
                click.echo(logging.Formatter().formatException(record.exc_info), err=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def _log_one_line(debug: bool) -> None:
    """Route the `lora_assets` loggers through one `_OneLineLog` (replacing the one an earlier
    invocation in this process installed)."""
    logger = logging.getLogger("lora_assets")
    for handler in [h for h in logger.handlers if isinstance(h, _OneLineLog)]:
        logger.removeHandler(handler)
    logger.addHandler(_OneLineLog(debug))


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
    _log_one_line(debug)


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
