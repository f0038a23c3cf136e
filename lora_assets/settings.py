"""Settings from the environment: the one switch between embedded defaults and production."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

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
    anthropic_base_url: str | None = Field(default=None, description="ANTHROPIC_BASE_URL: override the API endpoint.")
    model: str = Field(default=DEFAULT_MODEL, description="LORA_CLAUDE_MODEL: cheap bulk default.")
    max_concurrency: int = Field(default=8, ge=1, description="LORA_MAX_CONCURRENCY: in-flight requests per run.")
    user_id: str = Field(default=DEFAULT_USER_ID, description="LORA_USER_ID: owner id in blob keys.")
    claim_ttl_s: float = Field(default=60.0, gt=0, description="LORA_CLAIM_TTL_S: lease on items a run requests; a "
                               "killed run's items are taken over this long after its last renewal.")
    spool_dir: Path | None = Field(default=None, description="LORA_SPOOL_DIR: durable local copies of paid answers "
                                   "until stored; <data_dir>/spool when unset. Put it on a persistent volume.")
    blob_concurrency: int = Field(default=32, ge=1, le=256, description="LORA_BLOB_CONCURRENCY: blob reads/writes in "
                                  "flight per stage (and S3 connections); 32 keeps S3 busy at tens of ms per round trip.")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: os.environ)."""
        e = os.environ if env is None else env
        data_dir = Path(e.get("LORA_DATA_DIR") or Path.cwd() / ".lora_data").expanduser().resolve()
        return cls(
            data_dir=data_dir,
            database_url=e.get("LORA_DATABASE_URL") or None,
            s3_bucket=e.get("LORA_S3_BUCKET") or None,
            s3_prefix=e.get("LORA_S3_PREFIX", ""),
            s3_endpoint_url=e.get("LORA_S3_ENDPOINT_URL") or None,
            anthropic_api_key=e.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=e.get("ANTHROPIC_BASE_URL") or None,
            model=e.get("LORA_CLAUDE_MODEL") or DEFAULT_MODEL,
            max_concurrency=int(e.get("LORA_MAX_CONCURRENCY") or 8),
            user_id=e.get("LORA_USER_ID") or DEFAULT_USER_ID,
            claim_ttl_s=float(e.get("LORA_CLAIM_TTL_S") or 60.0),
            spool_dir=Path(e["LORA_SPOOL_DIR"]).expanduser().resolve() if e.get("LORA_SPOOL_DIR") else None,
            blob_concurrency=int(e.get("LORA_BLOB_CONCURRENCY") or 32),
        )

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
