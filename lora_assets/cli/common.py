"""What several command groups share: the domain DB engine (refusing an uninitialised store) and
reading a file given to a one-file tool within the input limits."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from lora_assets.errors import InputFileError, LimitExceededError, NotInitialisedError, SettingsError
from lora_assets.settings import Settings, env_var


def engine(settings: Settings | None = None, *, initialised: bool = True) -> Any:
    """The domain DB engine; with `initialised`, NotInitialisedError (nothing created) unless
    `init` has made the schema."""
    import sqlalchemy.exc as sa_exc

    from lora_assets.store.db import make_engine, require_schema

    url = (settings or Settings.from_env()).resolved_database_url
    if initialised and url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise NotInitialisedError(f"no database file at {url[len('sqlite:///'):]}")
    try:
        made = make_engine(url)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError):
        # The URL may hold a password: never echoed.
        raise SettingsError("LORA_DATABASE_URL", "is not a SQLAlchemy URL this installation can use (the value is "
                            "not shown); e.g. postgresql+psycopg2://user@host:5432/db") from None
    if initialised:
        require_schema(made)
    return made


def read_input(path: Path, settings: Settings) -> str:
    """The text of a file given to a one-file tool, refused (naming the file and the reason,
    never quoting it) when it is not a regular file, unreadable, over the size limit, not UTF-8,
    binary, or nested deeper than the JSON depth limit."""
    from lora_assets.core.parse import json_nesting_depth

    data = _read_bytes(path, settings.max_input_file_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"is not UTF-8 text (a binary file?): invalid byte at offset {exc.start}") from None
    if "\x00" in text:
        raise InputFileError(path, "contains NUL characters (a binary file?)")
    depth = json_nesting_depth(text)
    if depth > settings.max_json_depth:
        raise LimitExceededError(str(path), f"JSON nested {depth:,} levels deep", settings.max_json_depth, "levels",
                                 env_var("max_json_depth"))
    return text


def _read_bytes(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; LimitExceededError when it holds more."""
    try:
        # Checked before opening too: opening a FIFO would wait for a writer.
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputFileError(path, "is not a regular file")
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise InputFileError(path, "is not a regular file")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputFileError(path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:
        size = path.stat().st_size
        raise LimitExceededError(str(path), f"{max(size, len(data)):,} bytes", limit, "bytes",
                                 env_var("max_input_file_bytes"))
    return data


def turn_limit(path: Path, settings: Settings, exc: Exception) -> LimitExceededError:
    """The LimitExceededError for a document with more turns than LORA_MAX_TURNS."""
    return LimitExceededError(str(path), str(exc).split(", over the limit")[0], settings.max_turns,
                              "turns per conversation", env_var("max_turns"))


def scaffolding_limits(settings: Settings) -> Any:
    """The scaffolding size limits configured in `settings` (what every loader of scaffolding uses)."""
    from lora_assets.store.scaffolding_files import ScaffoldingLimits

    return ScaffoldingLimits(max_record_bytes=settings.max_scaffolding_record_bytes,
                             max_template_chars=settings.max_template_chars,
                             max_file_bytes=settings.max_input_file_bytes)


def scaffolding_source(settings: Settings, override: Path | None = None) -> tuple[str, str]:
    """(location, where that choice came from) of the scaffolding a command loads: `override`
    (a command-line option) first, then LORA_SCAFFOLDING_DIR, then the bundled data."""
    from lora_assets.store.scaffolding_files import BUNDLED_DIR

    if override is not None:
        return str(override.resolve()), "--scaffolding-dir"
    if settings.scaffolding_dir:
        return settings.scaffolding_dir, env_var("scaffolding_dir")
    return str(BUNDLED_DIR), "bundled data"


def load_settings_scaffolding(settings: Settings, override: Path | None = None) -> tuple[Any, str]:
    """(validated bundle, a description of its source such as `/srv/s (LORA_SCAFFOLDING_DIR)`),
    loaded the way the scaffolding assets load it: a directory or an s3:// prefix, within the
    configured limits. ScaffoldingFileError names the variable when it points nowhere."""
    from lora_assets.store.scaffolding_files import ScaffoldingFileError, load_scaffolding

    location, origin = scaffolding_source(settings, override)
    described = f"{location} ({origin})"
    client = None
    if location.startswith("s3://"):
        from lora_assets.defs.resources import _s3_client

        client = _s3_client(settings.s3_endpoint_url or "", settings.blob_concurrency)
    elif not Path(location).is_dir():
        raise ScaffoldingFileError([f"{origin}: scaffolding directory not found: {location}"])
    return load_scaffolding(location, scaffolding_limits(settings), s3_client=client), described
