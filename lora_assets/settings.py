"""Settings from the environment: the one switch between embedded defaults and production.

Every field has an environment variable. A value that cannot become a setting (`abc` or `0`
for a count, a base URL with a password in it) is refused by `Settings.from_env` with a
`SettingsError` naming the variable and the reason, never with a traceback, and never echoing a
value that may hold a credential.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError

from lora_assets.errors import SettingsError

DEFAULT_USER_ID = "00000000-0000-0000-0000-000000000000"
DEFAULT_MODEL = "claude-haiku-5-5"


class Settings(BaseModel):
    """Runtime settings. Every field has an environment variable (see README "Settings")."""

    data_dir: Path = Field(description="LORA_DATA_DIR: embedded SQLite DB and local blobs live here.")
    database_url: str | None = Field(default=None, description="LORA_DATABASE_URL: SQLAlchemy URL; SQLite under data_dir when unset.")
    s3_bucket: str | None = Field(default=None, description="LORA_S3_BUCKET: blob store on S3 when set.")
    s3_prefix: str = Field(default="", description="LORA_S3_PREFIX: key prefix inside the bucket.")
    s3_endpoint_url: str | None = Field(default=None, description="LORA_S3_ENDPOINT_URL: any S3-compatible endpoint.")
    anthropic_api_key: SecretStr | None = Field(default=None, description="ANTHROPIC_API_KEY: real Claude; simulator when unset.")
    anthropic_base_url: str | None = Field(default=None, description="ANTHROPIC_BASE_URL: override the API endpoint "
                                           "(http or https, no user name or password in it).")
    model: str = Field(default=DEFAULT_MODEL, description="LORA_CLAUDE_MODEL: cheap bulk default.")
    max_concurrency: int = Field(default=8, ge=1, le=1024, description="LORA_MAX_CONCURRENCY: in-flight requests per run.")
    user_id: str = Field(default=DEFAULT_USER_ID, description="LORA_USER_ID: owner id in blob keys.")
    request_timeout_s: float = Field(default=120.0, gt=0, le=3600, description="LORA_REQUEST_TIMEOUT_S: seconds one "
                                     "Claude request may take; a run stops itself once a whole wave of requests "
                                     "(up to 8 in a row) got no answer in that time.")
    claim_ttl_s: float = Field(default=60.0, gt=0, description="LORA_CLAIM_TTL_S: lease on items a run requests; a "
                               "killed run's items are taken over this long after its last renewal.")
    spool_dir: Path | None = Field(default=None, description="LORA_SPOOL_DIR: durable local copies of paid answers "
                                   "until stored; <data_dir>/spool when unset. Put it on a persistent volume.")
    simulator_latency_s: float = Field(default=0.0, ge=0, description="LORA_SIMULATOR_LATENCY_S: seconds the "
                                       "loopback simulator waits per request when no API key is set (demos, "
                                       "benchmarks).")
    dagster_home: Path | None = Field(default=None, description="DAGSTER_HOME: the Dagster instance directory; "
                                      "<data_dir>/dagster_home (SQLite, telemetry off) when unset.")
    scaffolding_dir: str = Field(default="", description="LORA_SCAFFOLDING_DIR: where the scaffolding assets load "
                                 "personas, arcs, topics, templates and the consultant profile from: a local directory "
                                 "or an s3://bucket/prefix with the bundled layout; the bundled data when unset.")
    blob_concurrency: int = Field(default=32, ge=1, le=256, description="LORA_BLOB_CONCURRENCY: blob reads/writes in "
                                  "flight per stage (and S3 connections); 32 keeps S3 busy at tens of ms per round trip.")

    # --- limits: each refusal names its limit and the variable that raises it ----------------------
    max_items_per_batch: int = Field(default=10_000, ge=1, description="LORA_MAX_ITEMS_PER_BATCH: items one "
                                     "`batch create` may plan (persona × arc × topic × per-combination).")
    max_batch_cost_usd: float = Field(default=5.0, gt=0, description="LORA_MAX_BATCH_COST_USD: the cost cap of a "
                                      "plan that names no max_cost_usd (USD, estimated before anything is spent).")
    auto_approve_usd: float = Field(default=0.25, ge=0, description="LORA_AUTO_APPROVE_USD: a plan estimated above "
                                    "this waits as `planned` until approved (`approve_batch` job, `lora-assets batch "
                                    "approve`); at or below it the batch starts on its own.")
    files_url: str = Field(default="", description="LORA_FILES_URL: where `lora-assets serve-files` serves the local "
                           "blob store (e.g. http://127.0.0.1:3031); metadata then links every output file there.")
    max_scaffolding_record_bytes: int = Field(default=65_536, ge=256, description="LORA_MAX_SCAFFOLDING_RECORD_BYTES: "
                                              "size of one scaffolding record as JSON; every byte is sent with "
                                              "each request that uses it.")
    max_template_chars: int = Field(default=20_000, ge=100, description="LORA_MAX_TEMPLATE_CHARS: length of one "
                                    "prompt template body.")
    max_input_file_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="LORA_MAX_INPUT_FILE_BYTES: "
                                      "size of a file given to `parse`, `enrich` or `validate` (memory grows "
                                      "with it: a 16 MiB file stays well under 1 GB).")
    max_json_depth: int = Field(default=64, ge=8, le=512, description="LORA_MAX_JSON_DEPTH: nesting of objects and "
                                "arrays in an input file (our documents nest under 10 levels).")
    max_turns: int = Field(default=200, ge=2, description="LORA_MAX_TURNS: turns of one conversation read by "
                           "`parse`, `enrich` and `validate` (enrichment copies the history into every pair).")
    max_validation_lines: int = Field(default=200, ge=1, description="LORA_MAX_VALIDATION_LINES: problems "
                                      "`validate` and `review import` print before summarising the rest as a count.")
    max_review_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1024, description="LORA_MAX_REVIEW_FILE_BYTES: "
                                       "size of a review CSV `review import` reads (transcripts make rows of "
                                       "a few KB each).")
    max_review_rows: int = Field(default=50_000, ge=1, description="LORA_MAX_REVIEW_ROWS: data rows of one review "
                                 "CSV; reading stops at the first row over it.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: os.environ). Raises `SettingsError` naming the
        variable and the reason for a value that cannot be used."""
        e = os.environ if env is None else env
        data_dir = Path(e.get("LORA_DATA_DIR") or Path.cwd() / ".lora_data").expanduser().resolve()
        values: dict[str, Any] = dict(
            data_dir=data_dir,
            database_url=e.get("LORA_DATABASE_URL") or None,
            s3_bucket=e.get("LORA_S3_BUCKET") or None,
            s3_prefix=e.get("LORA_S3_PREFIX", ""),
            s3_endpoint_url=e.get("LORA_S3_ENDPOINT_URL") or None,
            anthropic_api_key=e.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=_base_url(e.get("ANTHROPIC_BASE_URL") or None),
            model=e.get("LORA_CLAUDE_MODEL") or DEFAULT_MODEL,
            user_id=e.get("LORA_USER_ID") or DEFAULT_USER_ID,
            spool_dir=Path(e["LORA_SPOOL_DIR"]).expanduser().resolve() if e.get("LORA_SPOOL_DIR") else None,
            dagster_home=_dagster_home(e.get("DAGSTER_HOME") or None),
            scaffolding_dir=(e.get("LORA_SCAFFOLDING_DIR") or "").strip(),
            files_url=(e.get("LORA_FILES_URL") or "").strip().rstrip("/"),
        )
        for name, field in cls.model_fields.items():
            variable = env_var(name)
            if field.annotation in (int, float) and e.get(variable):
                values[name] = env_number(variable, e[variable], int if field.annotation is int else float)
        _directory("LORA_DATA_DIR", data_dir)
        if values["spool_dir"] is not None:
            _directory("LORA_SPOOL_DIR", values["spool_dir"])
        try:
            return cls(**values)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            name = str(error["loc"][0]) if error.get("loc") else ""
            variable = env_var(name) if name in cls.model_fields else "settings"
            shown = "" if name in _SECRET_FIELDS else f" (got {str(error.get('input'))[:40]!r})"
            reason = error["msg"].rstrip(".").replace("Input should be", "must be").replace("Value error, ", "")
            raise SettingsError(variable, f"{reason}{shown}") from None

    @cached_property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under `data_dir`."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'lora.db'}"

    @property
    def resolved_spool_dir(self) -> Path:
        """Where paid answers wait until stored: `spool_dir`, else `<data_dir>/spool`."""
        return self.spool_dir or self.data_dir / "spool"

    @property
    def uses_simulator(self) -> bool:
        """True when no API key is set: generation goes to the loopback simulator."""
        return self.anthropic_api_key is None


_SECRET_FIELDS = frozenset({"anthropic_api_key", "anthropic_base_url", "database_url"})


def env_var(field: str) -> str:
    """The environment variable of a settings field (from its description: 'LORA_X: ...')."""
    description = Settings.model_fields[field].description or ""
    return description.split(":", 1)[0]


def env_number(variable: str, raw: str, kind: Callable[[str], Any]) -> int | float:
    """`raw` (the value of environment variable `variable`) as an int or a finite float;
    SettingsError naming `variable` otherwise."""
    text = raw.strip().replace("_", "")
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise SettingsError(variable, f"{raw[:40]!r} is not {noun}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(variable, f"{raw[:40]!r} is not a finite number")
    return value


def _directory(variable: str, path: Path) -> None:
    """SettingsError unless `path` is a directory or could be made one (created lazily, when
    first written): a file at it or above it is refused now, not halfway through a paid run."""
    for at in (path, *path.parents):
        if at.exists():
            if not at.is_dir():
                where = "is a file" if at == path else f"cannot be created: {at} is a file"
                raise SettingsError(variable, f"{path} {where}, not a directory")
            return


def _dagster_home(value: str | None) -> Path | None:
    """DAGSTER_HOME, checked as Dagster needs it (an existing directory, by absolute path) so every
    command refuses it alike, instead of an obscure CheckError from whichever first opens the
    instance."""
    if value is None:
        return None
    path = Path(value)
    if not path.is_absolute() or not path.is_dir():
        raise SettingsError("DAGSTER_HOME", f"{value} is not an existing directory given as an absolute path (Dagster "
                            "reads its dagster.yaml there); create it, or unset DAGSTER_HOME for the embedded "
                            "instance under LORA_DATA_DIR")
    return path


def _base_url(url: str | None) -> str | None:
    """ANTHROPIC_BASE_URL, checked: http(s), a host, and no user name or password. The SDK would
    send userinfo as Basic auth instead of the API key, and the credential would then show up in
    errors, rows and logs; it is refused without echoing the URL."""
    if url is None:
        return None
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # ValueError on a port that is not a number
    except ValueError:
        raise SettingsError("ANTHROPIC_BASE_URL", "is not a valid URL") from None
    if "@" in parts.netloc:
        raise SettingsError(
            "ANTHROPIC_BASE_URL",
            "has a user name or password in it (user:password@host); remove them: the API key goes in "
            "ANTHROPIC_API_KEY, never in the URL (the value is not shown here)",
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("ANTHROPIC_BASE_URL", "must be an http:// or https:// URL with a host")
    return url.strip()
