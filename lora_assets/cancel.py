"""Cancel a batch: stop all further spending on it and keep what it already produced.

Order matters (intent before effect): the status becomes `cancelled` first, so no run that
starts afterwards requests anything (and the queued-batch sensor never starts it again); then
the provider's open Message Batches are cancelled; then Dagster runs of the partition that have
not started yet are cancelled. A run already generating is not killed: it polls the batch's
status every half second, starts no new request once it sees the cancel, stores the answers
already in flight (they are paid for) and ends with a materialization of what it kept and one
line saying it was cancelled. In Message Batches mode it also cancels its open provider batches
at the API itself (whether or not this cancel reached them), polls them until they end, and
stores the results that finished before the cancel; the provider's `canceled` results are
recorded as failed with that reason. Nothing turns a cancelled batch back into another status.
Stored conversations stay, and parse / enrich / training files can use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine

from lora_assets.errors import ConflictError, NotFoundError
from lora_assets.schemas import BatchJobStatus
from lora_assets.store import batches as q

#: Cancels one provider batch by id (the SDK's `messages.batches.cancel`); None = no provider.
ProviderCancel = Callable[[str], None]

#: Runs cancelled outright: they have not started generating. A started run stops by itself (see above).
_NOT_STARTED = ("QUEUED", "NOT_STARTED")


class CancelResult(BaseModel):
    """What a cancellation did."""

    key: str
    batch_id: str
    previous_status: str
    provider_batches_cancelled: list[str]
    provider_errors: list[str]
    runs_cancelled: list[str]
    conversations_kept: int
    items_not_generated: int

    def summary(self) -> str:
        """One line for the log and the CLI."""
        if self.previous_status == BatchJobStatus.CANCELLED:
            return f"batch {self.key!r} was already cancelled"
        return (f"batch {self.key!r} cancelled (was {self.previous_status}): {self.conversations_kept} stored "
                f"conversation(s) kept, {self.items_not_generated} item(s) will not be generated, "
                f"{len(self.provider_batches_cancelled)} provider batch(es) and {len(self.runs_cancelled)} "
                "queued run(s) cancelled; a run generating now stops starting requests within seconds"
                + (f"; provider errors: {self.provider_errors}" if self.provider_errors else ""))

    def metadata(self) -> dict[str, Any]:
        """Figures for the run's metadata in the Dagster UI."""
        return self.model_dump(exclude={"provider_errors"}) | {"provider_errors": len(self.provider_errors)}


def _open_ids(engine: Engine, batch_id: str) -> list[str]:
    with engine.connect() as conn:
        return q.open_provider_batch_ids(conn, batch_id)


def _counts(progress: dict[str, Any]) -> dict[str, int]:
    items = progress["items"]
    return {"conversations_kept": items.get("generated", 0),
            "items_not_generated": sum(n for status, n in items.items() if status != "generated")}


def _cancel_runs(instance: Any, key: str, batch_id: str, exclude_run_id: str | None) -> list[str]:
    from dagster import DagsterRunStatus, RunsFilter

    statuses = [DagsterRunStatus(s) for s in _NOT_STARTED]
    cancelled = []
    for partition in dict.fromkeys((key, batch_id)):
        for record in instance.get_run_records(RunsFilter(tags={"dagster/partition": partition}, statuses=statuses)):
            run_id = record.dagster_run.run_id
            if run_id != exclude_run_id:
                instance.run_coordinator.cancel_run(run_id)
                cancelled.append(run_id)
    return cancelled


def cancel_batch(engine: Engine, ref: str, *, provider: ProviderCancel | None, instance: Any | None,
                 exclude_run_id: str | None = None) -> CancelResult:
    """Cancel the batch `ref` (its partition key or id). NotFoundError for an unknown batch,
    ConflictError for one already completed; cancelling twice is a no-op."""
    with engine.begin() as conn:
        batch = q.batch_for_key(conn, ref)
        if batch is None:
            raise NotFoundError(f"no batch {ref!r} (give its partition key or id; `lora-assets batch list` shows them)")
        previous = batch["status"]
        if previous == BatchJobStatus.COMPLETED:
            raise ConflictError(f"batch {ref!r} is completed: nothing left to cancel")
        if previous != BatchJobStatus.CANCELLED:
            q.set_batch_status(conn, batch["id"], BatchJobStatus.CANCELLED)
        progress = q.batch_progress(conn, batch["id"])
    key = batch.get("slug") or batch["id"]
    if previous == BatchJobStatus.CANCELLED:
        return CancelResult(key=key, batch_id=batch["id"], previous_status=previous, provider_batches_cancelled=[],
                            provider_errors=[], runs_cancelled=[], **_counts(progress))
    done, errors = [], []
    if provider is not None:
        for provider_batch_id in _open_ids(engine, batch["id"]):
            try:
                provider(provider_batch_id)
                done.append(provider_batch_id)
            except Exception as exc:  # noqa: BLE001 - reported per provider batch, the rest still cancelled
                errors.append(f"{provider_batch_id}: {exc.__class__.__name__}: {str(exc)[:200]}")
    runs = _cancel_runs(instance, key, batch["id"], exclude_run_id) if instance is not None else []
    return CancelResult(key=key, batch_id=batch["id"], previous_status=previous, provider_batches_cancelled=done,
                        provider_errors=errors, runs_cancelled=runs, **_counts(progress))
