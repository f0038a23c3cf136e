"""The failures a user meets, one type per kind, each with the exit code the CLI ends with.

| exit | meaning | base type |
|---|---|---|
| 0 | the command did what it was asked | – |
| 1 | the work failed: a run ended in failure, every item failed, a blocking check failed | `WorkFailedError` |
| 2 | bad input: an argument, a setting, a file or the state of the store (not initialised) | `UserInputError` |
| 3 | the batch was cancelled while the command ran (what it kept is stored) | `BatchCancelledError` |

A message is one line that names the thing (the file, the setting, the batch) and the reason.
It never quotes the content of a file it could not read or parse: a path may point anywhere
(through a symlink, at /etc/shadow), so only the path and the reason are shown.

Pure: no I/O, no Dagster; any layer may raise these.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 3


class LoraError(Exception):
    """Base of every failure the CLI reports as one line (without a traceback)."""

    exit_code: ClassVar[int] = EXIT_FAILED


class UserInputError(LoraError, ValueError):
    """Bad input: fix the argument, setting or file and run again (exit 2)."""

    exit_code: ClassVar[int] = EXIT_BAD_INPUT


class WorkFailedError(LoraError):
    """The input was fine but the work failed (exit 1)."""

    exit_code: ClassVar[int] = EXIT_FAILED


class SettingsError(UserInputError):
    """An environment variable that cannot become a setting; names the variable, never its value
    when the value may hold a credential."""

    def __init__(self, variable: str, reason: str) -> None:
        self.variable, self.reason = variable, reason
        super().__init__(f"{variable}: {reason}")


class NotInitialisedError(UserInputError):
    """The domain database has no schema yet."""

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(f"the domain database is not initialised ({where}): run `lora-assets init`")


class InputFileError(UserInputError):
    """A file given on the command line that cannot be read or used: names the file and why."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class LimitExceededError(UserInputError):
    """Input over a named limit; says the limit and the environment variable that raises it."""

    def __init__(self, thing: str, what: str, limit: int, unit: str, variable: str) -> None:
        self.thing, self.limit, self.variable = thing, limit, variable
        super().__init__(
            f"{thing}: {what}, over the limit of {limit:,} {unit} (raise it with {variable}=<n> if you mean it)"
        )


class NotFoundError(UserInputError):
    """A named thing (batch job, training file, version, format) that does not exist."""


class ConflictError(UserInputError):
    """The request contradicts what is already there (an existing file, a row's primary key)."""


class StoreSetupError(UserInputError):
    """The database or data directory cannot hold lora-assets data as it is (foreign tables,
    unreachable server, unwritable directory)."""


class RunFailedError(WorkFailedError):
    """A Dagster run of ours ended in failure, or ended with nothing done."""


class BatchCancelledError(LoraError):
    """The batch was cancelled while a run of it was generating: the run stopped starting
    requests and stored what arrived (exit 3)."""

    exit_code: ClassVar[int] = EXIT_CANCELLED
