"""Resources, chosen from settings in one place: embedded defaults or PostgreSQL + S3 + Claude."""


import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import PrivateAttr, SecretStr
from sqlalchemy.engine import Engine

from lora_assets.settings import Settings
from lora_assets.store.blobs import BlobStore, LocalBlobStore, S3BlobStore
from lora_assets.store.db import make_engine

_ENGINES: dict[str, Engine] = {}


_S3_CLIENTS: dict[tuple[str, int], Any] = {}


def _s3_client(endpoint_url: str, connections: int) -> Any:
    """One boto3 client per endpoint per process (building one costs ~0.4 s of CPU; clients are
    thread-safe), with a connection pool as large as the stages' blob concurrency (botocore's
    default of 10 would make every call past the tenth open and drop a connection)."""
    key = (endpoint_url, connections)
    if key not in _S3_CLIENTS:
        import boto3
        from botocore.config import Config

        config = Config(max_pool_connections=connections, retries={"max_attempts": 5, "mode": "standard"})
        _S3_CLIENTS[key] = boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)
    return _S3_CLIENTS[key]


class DomainDB(ConfigurableResource):
    """The domain database (SQLite file by default, PostgreSQL in production)."""

    database_url: str

    def engine(self) -> Engine:
        """One engine (and pool) per URL per process."""
        if self.database_url not in _ENGINES:
            _ENGINES[self.database_url] = make_engine(self.database_url)
        return _ENGINES[self.database_url]


class BlobStoreResource(ConfigurableResource):
    """Blob store: a local directory, or an S3 bucket (+prefix, +endpoint) via dagster-aws."""

    local_dir: str = ""
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    concurrency: int = 32

    def store(self) -> BlobStore:
        if self.s3_bucket:
            return S3BlobStore(_s3_client(self.s3_endpoint_url, self.concurrency), self.s3_bucket, self.s3_prefix)
        return LocalBlobStore(self.local_dir)

    def pool(self) -> ThreadPoolExecutor:
        """A pool for one stage's blob reads and writes (`concurrency` in flight)."""
        return ThreadPoolExecutor(self.concurrency, thread_name_prefix="blobs")


class ClaudeResource(ConfigurableResource):
    """Claude through the official SDK. With no API key and no base URL, a loopback simulator is
    started for the run and the SDK is pointed at it (its output is marked generator=simulator)."""

    api_key: str = ""
    base_url: str = ""
    model: str = "claude-haiku-5-5"
    max_concurrency: int = 8
    max_attempts_per_item: int = 4
    timeout_s: float = 120.0
    poll_interval_s: float = 5.0
    simulator_latency_s: float = 0.0
    spool_dir: str = ""
    claim_ttl_s: float = 60.0

    _simulator: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if not self.api_key and not self.base_url:
            from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig

            self._simulator = ClaudeSimulator(
                FaultConfig(latency_s=self.simulator_latency_s, batch_processing_s=0.5)
            ).start()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._simulator is not None:
            self._simulator.stop()
            self._simulator = None

    @property
    def uses_simulator(self) -> bool:
        return self._simulator is not None

    def run_config(self, *, model: str | None = None, run_id: str | None = None, spool_scope: str = "default") -> Any:
        """The generation runner's config (the key stays a SecretStr end to end). `run_id` holds
        the claims (the Dagster run id); `spool_scope` names the spool sub-directory."""
        from lora_assets.generation.runner import RunConfig

        base_url = self.base_url or (self._simulator.base_url if self._simulator else None)
        extra: dict[str, Any] = {"run_id": run_id} if run_id else {}
        return RunConfig(
            **extra,
            spool_dir=self.spool_dir or None,
            claim_ttl_s=self.claim_ttl_s,
            # Long enough to take over a killed run's items (its lease lapses within one TTL).
            claim_wait_s=2.5 * self.claim_ttl_s,
            spool_scope=spool_scope,
            model=model or self.model,
            api_key=SecretStr(self.api_key or "simulator-key"),
            base_url=base_url or None,
            max_concurrency=self.max_concurrency,
            max_attempts_per_item=self.max_attempts_per_item,
            timeout_s=self.timeout_s,
            poll_interval_s=self.poll_interval_s if not self._simulator else 0.2,
        )


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """All resources from settings (environment): the one local/production switch."""
    s = settings or Settings.from_env()
    return {
        "db": DomainDB(database_url=s.resolved_database_url),
        "blobs": BlobStoreResource(
            local_dir=str(s.data_dir / "blobs"),
            s3_bucket=s.s3_bucket or "",
            s3_prefix=s.s3_prefix,
            s3_endpoint_url=s.s3_endpoint_url or "",
            concurrency=s.blob_concurrency,
        ),
        "claude": ClaudeResource(
            # EnvVar keeps the key out of run config and the UI; only its name is shown.
            api_key=EnvVar("ANTHROPIC_API_KEY") if os.environ.get("ANTHROPIC_API_KEY") else "",
            base_url=s.anthropic_base_url or "",
            model=s.model,
            max_concurrency=s.max_concurrency,
            simulator_latency_s=float(os.environ.get("LORA_SIMULATOR_LATENCY_S", "0") or 0),
            spool_dir=str(s.resolved_spool_dir),
            claim_ttl_s=s.claim_ttl_s,
        ),
    }
