"""The generation runner: every request of a run ends exactly once in the ledger, as a stored
response or as a failure with its reason, at the lowest cost and without paying twice.

This module is the public face; the parts live by responsibility:

- `engine.py`: run config and stats, claims on items, the spool-then-ledger store path;
- `flow.py`: flow control (concurrency, per-request retry-after, rate-limit header pacing);
- `messages.py`: Messages mode (`generate_messages`);
- `batches.py`: Message Batches mode (`generate_batches`) with intent reconciliation;
- `ledger.py`: the ledger protocols and an in-memory ledger; `spool.py`: the durable spool.
"""

from __future__ import annotations

from lora_assets.generation.batches import BATCH_MAX_BYTES, BATCH_MAX_REQUESTS, generate_batches
from lora_assets.generation.client import GenerationRequest
from lora_assets.generation.engine import ProviderBatchError, RunAbortedError, RunConfig, RunStats
from lora_assets.generation.ledger import BatchLedger, Ledger, MemoryLedger, OpenSubmission
from lora_assets.generation.messages import generate_messages

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_REQUESTS",
    "BatchLedger",
    "GenerationRequest",
    "Ledger",
    "MemoryLedger",
    "OpenSubmission",
    "ProviderBatchError",
    "RunAbortedError",
    "RunConfig",
    "RunStats",
    "generate_batches",
    "generate_messages",
]
