"""Resources, chosen from settings in one place: embedded defaults or PostgreSQL + S3 + Claude."""


from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import PrivateAttr, SecretStr
from sqlalchemy.engine import Engine

from lora_assets.settings import DEFAULT_MODEL, DEFAULT_USER_ID, Settings
from lora_assets.store.blobs import BlobStore, LocalBlobStore, S3BlobStore, make_s3_client
from lora_assets.store.db import make_engine

# Process-level caches, on purpose, not resource state: Dagster builds a new resource instance
# for every run, step, sensor tick and `build_defs` call, while an engine's connection pool and
# a boto3 client are meant to live as long as the process (one per URL / endpoint). Tying them to
# a resource's lifetime would open a pool per step and leak its connections until GC. Tests that
# drop a throwaway database pop and dispose its engine here.
_ENGINES: dict[str, Engine] = {}
_S3_CLIENTS: dict[tuple[str, int], Any] = {}


def _s3_client(endpoint_url: str, connections: int) -> Any:
    """One boto3 client per endpoint per process (building one costs ~0.4 s of CPU; clients are
    thread-safe), with a connection pool as large as the stages' blob concurrency, configured
    for many small requests (`blobs.make_s3_client`)."""
    key = (endpoint_url, connections)
    if key not in _S3_CLIENTS:
        _S3_CLIENTS[key] = make_s3_client(endpoint_url, connections)
    return _S3_CLIENTS[key]


class DomainDB(ConfigurableResource):
    """The domain database (SQLite file by default, PostgreSQL in production). `user_id` is who
    plans batches and reviews conversations; `max_items_per_batch` caps one plan."""

    database_url: str
    user_id: str = DEFAULT_USER_ID
    max_items_per_batch: int = 10_000
    max_batch_cost_usd: float = 5.0
    auto_approve_usd: float = 0.25

    def plan_limits(self) -> Any:
        """The limits every plan gets (items, default cost cap, auto-approve threshold)."""
        from lora_assets.planning import PlanLimits

        return PlanLimits(max_items=self.max_items_per_batch, max_cost_usd=self.max_batch_cost_usd,
                          auto_approve_usd=self.auto_approve_usd)

    def engine(self) -> Engine:
        """One engine (and pool) per URL per process."""
        if self.database_url not in _ENGINES:
            _ENGINES[self.database_url] = make_engine(self.database_url)
        return _ENGINES[self.database_url]

    def batch_id(self, partition_key: str) -> str:
        """The id of the batch whose partition key (slug) or id is `partition_key` (the key
        itself when none matches, so the asset's "does not exist" error names it)."""
        from lora_assets.store.batches import batch_id_for_key

        with self.engine().connect() as conn:
            return batch_id_for_key(conn, partition_key)


class BlobStoreResource(ConfigurableResource):
    """Blob store: a local directory, or an S3 bucket (+prefix, +endpoint) via dagster-aws.
    `user_id` is the owner id in conversation keys (`conversation-files/<user_id>/…`)."""

    local_dir: str = ""
    user_id: str = DEFAULT_USER_ID
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    concurrency: int = 32
    scaffolding_dir: str = ""
    # The scaffolding limits `init` applies (LORA_MAX_SCAFFOLDING_RECORD_BYTES, LORA_MAX_TEMPLATE_CHARS,
    # LORA_MAX_INPUT_FILE_BYTES), so the scaffolding assets refuse what `init` refuses.
    max_scaffolding_record_bytes: int = 65_536
    max_template_chars: int = 20_000
    max_scaffolding_file_bytes: int = 16 * 1024 * 1024
    # Where `lora-assets serve-files` serves `local_dir` (LORA_FILES_URL): output links point there.
    files_url: str = ""
    def store(self) -> BlobStore:
        """The configured store (S3 when a bucket is set, else the local directory)."""
        if self.s3_bucket:
            return S3BlobStore(_s3_client(self.s3_endpoint_url, self.concurrency), self.s3_bucket, self.s3_prefix)
        return LocalBlobStore(self.local_dir)

    def identity(self) -> tuple[str, ...]:
        """Which store `store()` reaches: a key means the same blob only within one identity."""
        if self.s3_bucket:
            return ("s3", self.s3_endpoint_url, self.s3_bucket, self.s3_prefix)
        return ("local", self.local_dir)

    def load_scaffolding(self, limits: Any = None) -> Any:
        """The scaffolding bundle from `scaffolding_dir` (a local directory or an s3:// prefix, read
        with this store's S3 endpoint), or the bundled data when it is empty."""
        from lora_assets.store.scaffolding_files import ScaffoldingLimits, load_scaffolding

        limits = limits or ScaffoldingLimits(max_record_bytes=self.max_scaffolding_record_bytes,
                                             max_template_chars=self.max_template_chars,
                                             max_file_bytes=self.max_scaffolding_file_bytes)
        client = _s3_client(self.s3_endpoint_url, self.concurrency) if self.scaffolding_dir.startswith("s3://") else None
        return load_scaffolding(self.scaffolding_dir, limits, s3_client=client)

    def pool(self) -> ThreadPoolExecutor:
        """A pool for one stage's blob reads and writes (`concurrency` in flight)."""
        return ThreadPoolExecutor(self.concurrency, thread_name_prefix="blobs")


class ClaudeResource(ConfigurableResource):
    """Claude through the official SDK. With no API key and no base URL, a loopback simulator is
    started for the run and the SDK is pointed at it (its output is marked generator=simulator)."""

    api_key: str = ""
    base_url: str = ""
    model: str = DEFAULT_MODEL
    max_concurrency: int = 8
    max_attempts_per_item: int = 4
    timeout_s: float = 120.0
    poll_interval_s: float = 5.0
    simulator_latency_s: float = 0.0
    spool_dir: str = ""
    claim_ttl_s: float = 60.0

    _simulator: Any = PrivateAttr(default=None)

    def _simulator_url(self) -> str:
        """Start the loopback simulator on first use. Lazy, so a sensor or schedule that only
        reads `model` starts no server; stopped when the resource is torn down."""
        if self._simulator is None:
            from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig

            self._simulator = ClaudeSimulator(
                FaultConfig(latency_s=self.simulator_latency_s, batch_processing_s=0.5)
            ).start()
        return self._simulator.base_url

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Stop the simulator if this run started one."""
        if self._simulator is not None:
            self._simulator.stop()
            self._simulator = None

    @property
    def uses_simulator(self) -> bool:
        """True when no API key and no base URL are set: requests go to the loopback simulator."""
        return not self.api_key and not self.base_url

    def token_counter(self, model: str) -> Any:
        """count_tokens for `model` as a function (system, user prompts) -> (system tokens, per
        prompt tokens), against the API or the loopback simulator."""
        from lora_assets.generation.count_tokens import count_prompt_tokens

        base_url = self.base_url or (self._simulator_url() if self.uses_simulator else None)
        return lambda system, users: count_prompt_tokens(
            api_key=self.api_key or "simulator-key", base_url=base_url, model=model, system=system, users=users,
            timeout_s=min(self.timeout_s, 60.0))

    def provider_batches(self) -> Any:
        """A function cancelling one Message Batch by its provider id (the SDK's `batches.cancel`)."""
        import anthropic

        base_url = self.base_url or (self._simulator_url() if self.uses_simulator else None)
        client = anthropic.Anthropic(api_key=self.api_key or "simulator-key", base_url=base_url,
                                     timeout=min(self.timeout_s, 60.0))
        return lambda provider_batch_id: client.messages.batches.cancel(provider_batch_id)

    def run_config(self, *, model: str | None = None, run_id: str | None = None, spool_scope: str = "default",
                   **options: Any) -> Any:
        """The generation runner's config (the key stays a SecretStr end to end). `run_id` holds
        the claims (the Dagster run id); `spool_scope` names the spool sub-directory; `options`
        are further RunConfig fields (effort, expected_output_tokens, ...)."""
        from lora_assets.generation.runner import RunConfig

        base_url = self.base_url or (self._simulator_url() if self.uses_simulator else None)
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
            poll_interval_s=self.poll_interval_s if not self.uses_simulator else 0.2,
            **options,
        )


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """All resources from settings (environment): the one local/production switch."""
    s = settings or Settings.from_env()
    return {
        "db": DomainDB(database_url=s.resolved_database_url, user_id=s.user_id,
                       max_items_per_batch=s.max_items_per_batch, max_batch_cost_usd=s.max_batch_cost_usd,
                       auto_approve_usd=s.auto_approve_usd),
        "blobs": BlobStoreResource(
            local_dir=str(s.data_dir / "blobs"),
            user_id=s.user_id,
            s3_bucket=s.s3_bucket or "",
            s3_prefix=s.s3_prefix,
            s3_endpoint_url=s.s3_endpoint_url or "",
            concurrency=s.blob_concurrency,
            scaffolding_dir=s.scaffolding_dir,
            max_scaffolding_record_bytes=s.max_scaffolding_record_bytes,
            max_template_chars=s.max_template_chars,
            max_scaffolding_file_bytes=s.max_input_file_bytes,
            files_url=s.files_url,
        ),
        "claude": ClaudeResource(
            # EnvVar keeps the key out of run config and the UI; only its name is shown.
            api_key=EnvVar("ANTHROPIC_API_KEY") if s.anthropic_api_key else "",
            base_url=s.anthropic_base_url or "",
            model=s.model,
            max_concurrency=s.max_concurrency,
            timeout_s=s.request_timeout_s,
            simulator_latency_s=s.simulator_latency_s,
            spool_dir=str(s.resolved_spool_dir),
            claim_ttl_s=s.claim_ttl_s,
        ),
    }
