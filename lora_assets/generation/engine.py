"""What both generation modes share: the run's config and statistics, its claims on items, and
the path every paid answer takes (durable spool first, then the ledger, off the event loop).

Spend exactly once (design rule 6):
- an item is requested only while this run holds its claim (a lease renewed in the background;
  no request starts if the lease might lapse before its answer could come back);
- a whole answer is fsynced to the local spool before the ledger (blob store, DB) sees it, and
  the ledger write is retried through outages; a re-run stores spooled answers without a request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, SecretStr

from lora_assets.generation.client import DEFAULT_EFFORT, Effort, GenerationError, GenerationRequest, scrub
from lora_assets.generation.ledger import Ledger
from lora_assets.generation.pricing import price_for
from lora_assets.generation.spool import Spool
from lora_assets.schemas.rows import GenerationRecord, Usage

__all__ = ["ProviderBatchError", "RunAbortedError", "RunConfig", "RunStats"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class RunConfig(BaseModel):
    """How one run talks to the API and stores what it buys. `retry_budget` (total retries in
    the run) defaults to 3 x the number of items; attempts and the budget count wrong answers
    only (a 429/529 is waited out, never charged to an item); `timeout_s` is per request;
    `poll_interval_s` paces Batches polling. `spool_dir` None means no durable spool (tests,
    benchmarks). `effort` is the thinking choice sent with every request of the run;
    `size_max_tokens` sizes `max_tokens` from the output observed (thinking included), capped at
    each request's own `max_tokens`, so OTPM reservations are not wasted."""

    model: str
    api_key: SecretStr
    base_url: str | None = None
    max_concurrency: int = Field(default=8, ge=1)
    max_attempts_per_item: int = Field(default=4, ge=1)
    retry_budget: int | None = Field(default=None, ge=0)
    timeout_s: float = Field(default=120.0, gt=0, description="Seconds one request may take before it counts as "
                             "timed out (LORA_REQUEST_TIMEOUT_S).")
    effort: Effort = Field(default=DEFAULT_EFFORT, description="Thinking effort sent with every request; `off` "
                           "disables thinking.")
    size_max_tokens: bool = Field(default=True, description="Size max_tokens from observed output (False: always "
                                  "each request's own max_tokens).")
    expected_output_tokens: int | None = Field(default=None, ge=1, description="Expected output tokens per item "
                                               "(thinking included), e.g. the tier's history: the first sizing.")
    stop_after_timeouts: int = Field(default=8, ge=1, description="Stop the run after this many requests in a row "
                                     "timed out (at most max_concurrency, at least 2).")
    stop_after_unreadable: int = Field(default=3, ge=1, description="Stop the run after this many HTTP 200 answers in "
                                       "a row whose body is not a Message.")
    poll_interval_s: float = Field(default=5.0, gt=0)
    backoff_base_s: float = Field(default=0.5, ge=0, description="First retry delay when the server names none.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Cap of the exponential backoff.")
    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="Who holds the claims.")
    claim_wait_s: float = Field(default=150.0, ge=0, description="After its own items, how long a run waits for "
                                "items another run holds: stored by it, or taken over once its lease lapses (a "
                                "killed run). Items still held after that are left to their run.")
    claim_ttl_s: float = Field(default=60.0, gt=0, description="Lease length; renewed every third of it. A killed "
                               "run's items are taken over by another run this long after its last renewal.")
    spool_dir: Path | None = Field(default=None, description="Durable local copies of paid answers.")
    spool_scope: str = Field(default="default", description="Spool sub-directory: one per batch / judge pass.")
    max_spool_items: int = Field(default=512, ge=1, description="Answers waiting for the ledger; a worker with an "
                                 "answer in hand waits for a place (requests in flight are not bounded by it).")
    store_threads: int = Field(default=8, ge=1, description="Ledger writes (blob + DB) run on this many threads.")
    store_retry_s: float = Field(default=60.0, ge=0, description="How long a failing ledger write is retried.")
    # issue 21: a cancel seen while the run is live (progress.RunWatch); no new request starts once set.
    watch: Any = Field(default=None, exclude=True, description="Stop flag + live stats shared with a watcher.")


class RunStats(BaseModel):
    """What a run did. `cost_usd` is everything billed (stored + duplicates + failed attempts);
    `wasted_cost_usd` is the part spent on attempts that produced nothing storable;
    `throughput_per_s` counts stored responses. In Batches mode `requests` counts requests
    submitted inside batches. `claimed_elsewhere`: items another live run held when this run
    first claimed them (never requested while held); `taken_over`: of those, items whose holder's
    lease lapsed (a dead run) and this run generated; `left_to_other_runs`: items still held by
    another live run when this run ended; `recovered_from_spool`: answers stored from the local
    spool without a request."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    claimed_elsewhere: int = 0
    taken_over: int = 0
    left_to_other_runs: int = 0
    recovered_from_spool: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    overloaded: int = 0
    resized: int = 0
    unknown_cost_responses: int = 0
    max_in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    wasted_cost_usd: float = 0.0
    elapsed_s: float = 0.0
    throughput_per_s: float = 0.0
    failures_by_kind: dict[str, int] = Field(default_factory=dict)
    provider_batches_submitted: int = 0
    provider_batches_resumed: int = 0
    provider_batches_adopted: int = 0
    concurrency_decreases: int = 0

    def _add_usage(self, usage: Usage, cost: float, *, wasted: bool) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_creation_input_tokens += usage.cache_creation_input_tokens
        self.cache_read_input_tokens += usage.cache_read_input_tokens
        self.cost_usd += cost
        if wasted:
            self.wasted_cost_usd += cost


class RunAbortedError(RuntimeError):
    """The run stopped before processing every item: a fault no retry can fix (bad key, the
    ledger failing for longer than `store_retry_s`, claims that could not be renewed). Answers
    already received are in the spool or the ledger; unprocessed items were left untouched so a
    re-run picks them up. `stats` holds what the run did."""

    def __init__(self, item_id: str | None, reason: str, stats: RunStats) -> None:
        self.item_id = item_id
        self.reason = reason
        self.stats = stats
        where = f" (at item {item_id})" if item_id else ""
        super().__init__(f"generation run aborted{where}: {reason}")


class ProviderBatchError(RuntimeError):
    """A Message Batches control call (create/retrieve/results) failed for good. Submissions
    already recorded in the ledger (intents included) are resumed or reconciled by the next run."""

    def __init__(self, provider_batch_id: str | None, reason: str) -> None:
        self.provider_batch_id = provider_batch_id
        self.reason = reason
        super().__init__(f"provider batch {provider_batch_id or '(not created)'}: {reason}")


class RetryBudget:
    """Retries left in the run (shared by all items)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential with jitter in [50%, 100%]: spreads retries so they do not arrive together."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** max(0, attempt - 1))


def check_run(requests: list[GenerationRequest], config: RunConfig) -> None:
    """Refuse a run before any money is spent: unknown model, duplicate item ids."""
    price_for(config.model)
    seen: set[str] = set()
    dupes = {r.item_id for r in requests if r.item_id in seen or seen.add(r.item_id)}  # type: ignore[func-returns-value]
    if dupes:
        raise ValueError(f"duplicate item ids in one run (each would be paid for twice): {sorted(dupes)[:5]}")


def why_stopped(err: GenerationError, attempts: int, config: RunConfig, budget: RetryBudget) -> str:
    """Why an item's attempts ended, for its failure reason."""
    plural = "s" if attempts != 1 else ""
    if not err.retryable:
        return f"not retried (retrying cannot help); {attempts} attempt{plural}"
    if attempts >= config.max_attempts_per_item:
        return f"gave up after {attempts} attempt{plural} (per-item limit {config.max_attempts_per_item})"
    return f"gave up after {attempts} attempt{plural}: the run's retry budget of {budget.total} retries is spent"


def summary(s: RunStats) -> str:
    """One log line for a finished run."""
    return (
        f"{s.done} stored ({s.recovered_from_spool} from the spool), {s.failed} failed {dict(s.failures_by_kind)}, "
        f"{s.skipped} skipped, {s.claimed_elsewhere} claimed by another run ({s.taken_over} taken over, "
        f"{s.left_to_other_runs} left to it); {s.requests} requests, "
        f"{s.retries} retries, {s.rate_limited} rate-limited; ${s.cost_usd:.4f} (${s.wasted_cost_usd:.4f} wasted); "
        f"{s.elapsed_s:.1f}s, {s.throughput_per_s:.2f}/s"
    )


@dataclass
class Run:
    """State shared by the workers of one run: budget, claims, and the store path."""

    config: RunConfig
    ledger: Ledger
    stats: RunStats
    budget: RetryBudget
    abort: RunAbortedError | None = None
    #: True when the abort says the endpoint is unusable: in-flight requests are not waited for.
    endpoint_down: bool = False
    started: float = field(default_factory=time.monotonic)
    clock: Any = time.monotonic

    def __post_init__(self) -> None:
        self.secret = self.config.api_key.get_secret_value()
        self.spool = Spool(self.config.spool_dir, self.config.spool_scope, self.config.run_id) \
            if self.config.spool_dir else None
        self._spool_queue: list[tuple[str, GenerationRecord, asyncio.Future[None]]] = []
        self._spool_writer: asyncio.Task[None] | None = None
        self._io = ThreadPoolExecutor(max_workers=self.config.store_threads, thread_name_prefix="ledger")
        self._stores: set[asyncio.Task[None]] = set()
        self._backlog: asyncio.Semaphore | None = None
        self._lease_until = float("inf")
        self._heartbeat: asyncio.Task[None] | None = None
        self.others: set[str] = set()  # items another live run held when we asked
        self.already_stored: set[str] = set()  # items claims found stored (by an earlier run)
        self.replayed: set[str] = set()  # items this run stored from the spool
        self._waited = 0.0
        self.sending: set[Any] = set()  # worker tasks waiting for an HTTP answer
        if self.config.watch is not None:
            self.config.watch.attach(self.stats)

    # --- threads -------------------------------------------------------------------------------

    async def io(self, fn: Any, *args: Any) -> Any:
        """Run a blocking ledger / spool call on the run's I/O threads."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def stopping(self) -> bool:
        """True once a watcher asked the run to stop (a cancel): no new request starts."""
        return self.config.watch is not None and self.config.watch.stop_requested

    def stop(self, item_id: str | None, reason: str, *, endpoint_down: bool = False) -> None:
        """Abort the run (first reason wins): no new request starts; in-flight answers are kept
        (unless `endpoint_down`: nothing useful will come back, so waiting requests end too)."""
        if self.abort is None:
            self.abort = RunAbortedError(item_id, scrub(reason, self.secret), self.stats)
            self.endpoint_down = endpoint_down
            log.error("%s", self.abort)
            if endpoint_down:
                for task in list(self.sending):
                    task.cancel()

    # --- claims ----------------------------------------------------------------------------------

    async def claim(self, item_ids: list[str]) -> set[str]:
        """Lease `item_ids`; returns those held. Items another live run holds are remembered
        (`others`) for `retake`. Starts the lease heartbeat."""
        held, others = await self._claim(item_ids)
        if others:
            self.stats.claimed_elsewhere += len(others)
            self.others.update(others)
            log.warning("%d item(s) are claimed by another live run: this run does not request them while it "
                        "holds them", len(others))
        return held

    async def _claim(self, item_ids: list[str]) -> tuple[set[str], set[str]]:
        ttl = self.config.claim_ttl_s
        asked = self.clock()
        outcome = await self.io(self.ledger.claim, item_ids, self.config.run_id, ttl) if item_ids else {}
        self._lease_until = asked + ttl
        stored = {i for i, o in outcome.items() if o == "stored"}
        self.stats.skipped += len(stored - self.replayed)  # a spool replay of this run counts as done
        self.already_stored |= stored
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew_forever())
        return {i for i, o in outcome.items() if o == "held"}, {i for i, o in outcome.items() if o == "claimed"}

    async def retake(self) -> set[str]:
        """Wait for items other runs hold (up to `claim_wait_s` in all): returns the ones whose
        holder's lease lapsed and this run now holds (empty when none is left or time is up;
        items stored by their holder meanwhile are counted as skipped)."""
        poll = min(5.0, self.config.claim_ttl_s / 6)
        while self.others and self.abort is None and not self.stopping():
            if self._waited >= self.config.claim_wait_s:
                self.stats.left_to_other_runs = len(self.others)
                log.warning("%d item(s) still held by another live run after waiting %.0fs: left to it",
                            len(self.others), self._waited)
                return set()
            await asyncio.sleep(poll)
            self._waited += poll
            held, others = await self._claim(sorted(self.others))
            self.others = others
            if held:
                self.stats.taken_over += len(held)
                log.warning("%d item(s) taken over from a run whose claims lapsed (killed?)", len(held))
                return held
        return set()

    async def _renew_forever(self) -> None:
        ttl = self.config.claim_ttl_s
        while True:
            await asyncio.sleep(ttl / 3)
            asked = self.clock()
            try:
                await self.io(self.ledger.renew_claims, self.config.run_id, ttl)
            except Exception as exc:  # noqa: BLE001 - sends pause until the lease is renewed (see lease_ok)
                log.warning("could not renew claims (%s); new requests wait for the ledger", type(exc).__name__)
                continue
            self._lease_until = asked + ttl

    async def lease_ok(self, item_id: str) -> bool:
        """True while our lease has at least a renewal period left (renewals run every third of
        the TTL, so a healthy run never waits); when renewals fail (ledger unreachable) new
        requests wait, and once the lease is really gone the run stops."""
        while self.abort is None:
            left = self._lease_until - self.clock()
            if left > self.config.claim_ttl_s / 3:
                return True
            if left <= 0:
                self.stop(item_id, "the claims on this run's items lapsed (the ledger could not be reached to renew "
                                   "them): stopped so no other run pays for them too; re-run to continue")
                return False
            await asyncio.sleep(min(1.0, left))
        return False

    # --- the store path --------------------------------------------------------------------------

    def backlog(self) -> asyncio.Semaphore:
        """Taken when a whole answer is handed to `store`, given back once it is stored: at most
        `max_spool_items` answers wait for the ledger. Requests in flight never hold a place."""
        if self._backlog is None:
            self._backlog = asyncio.Semaphore(self.config.max_spool_items)
        return self._backlog

    async def store(self, item_id: str, record: GenerationRecord, *, from_spool: bool = False) -> None:
        """Store a paid answer in the background: into the spool first (group commit), then the
        ledger (retried through outages). The caller holds one `backlog` slot, released when the
        store ends."""
        task = asyncio.create_task(self._store(item_id, record, from_spool))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _spooled(self, item_id: str, record: GenerationRecord) -> None:
        """Returns once the answer is fsynced. Answers arriving while a write is under way go
        into the next write together (one fsync for the group)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._spool_queue.append((item_id, record, future))
        if self._spool_writer is None:
            self._spool_writer = asyncio.create_task(self._write_spool())
        await future

    async def _write_spool(self) -> None:
        spool = self.spool
        assert spool is not None
        try:
            while self._spool_queue:
                group, self._spool_queue = self._spool_queue, []
                try:
                    await self.io(spool.put_many, [(i, r) for i, r, _ in group])
                except Exception as exc:  # noqa: BLE001 - each waiting store reports it
                    for _, _, future in group:
                        future.set_exception(exc)
                else:
                    for _, _, future in group:
                        future.set_result(None)
        finally:
            self._spool_writer = None

    def _record(self, item_id: str, record: GenerationRecord) -> bool:
        # One thread hop: the ledger write, then the spool's tombstone.
        stored = self.ledger.record_success(item_id, record)
        if self.spool is not None:
            self.spool.mark_stored(item_id)
        return stored

    async def _store(self, item_id: str, record: GenerationRecord, from_spool: bool) -> None:
        try:
            if self.spool is not None and not from_spool:
                try:
                    await self._spooled(item_id, record)
                except Exception as exc:  # noqa: BLE001 - the spool is the last line: stop the run
                    self.stop(item_id, f"could not write the answer to the local spool {self.spool.dir}: {exc!r}")
                    return
            stored = await self._with_retry(item_id, "record_success", self._record, item_id, record)
            if stored is None:
                return  # kept in the spool; the run stops
            if stored:
                self.stats.done += 1
                if from_spool:
                    self.stats.recovered_from_spool += 1
            elif not from_spool:
                log.warning("item %s was already stored: this answer is a duplicate, paid but not stored", item_id)
                self.stats.skipped += 1
            if not from_spool:  # a spooled answer was counted by the run that bought it
                self.stats._add_usage(record.usage, record.cost_usd, wasted=not stored)
        finally:
            self.backlog().release()

    async def fail(self, item_id: str, err: GenerationError, attempts: int, wasted: float, why: str) -> None:
        """Record the item's failure (retried through ledger outages)."""
        reason = scrub(f"{err.reason}; {why}", self.secret)
        log.warning("item %s failed (%s): %s", item_id, err.kind, reason)
        self.stats.failed += 1
        self.stats.failures_by_kind[err.kind] = self.stats.failures_by_kind.get(err.kind, 0) + 1
        await self._with_retry(item_id, "record_failure", self.ledger.record_failure, item_id, err.kind, reason,
                               attempts, wasted)

    async def _with_retry(self, item_id: str, what: str, fn: Any, *args: Any) -> Any:
        """Call a ledger method until it works or `store_retry_s` has passed (then stop the run
        and return None: a spooled answer waits for the next run)."""
        deadline = self.clock() + self.config.store_retry_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.io(fn, *args)
            except Exception as exc:  # noqa: BLE001 - any ledger fault: retry, then stop the run
                if self.clock() >= deadline:
                    kept = " (its answer is kept in the local spool; a re-run stores it without a request)" \
                        if self.spool is not None and what == "record_success" else ""
                    self.stop(item_id, f"ledger.{what} failed for {self.config.store_retry_s:.0f}s: {exc!r}{kept}")
                    return None
                delay = min(backoff(attempt, 0.1, 2.0), max(0.0, deadline - self.clock()))
                log.warning("ledger.%s(%s) failed (%s); retrying in %.1fs", what, item_id, type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def replay_spool(self) -> set[str]:
        """Store the answers earlier runs of this scope spooled but could not store (no request
        is made); journals of runs still alive are theirs. Returns the item ids found: they must
        not be requested again."""
        if self.spool is None:
            return set()
        spool = self.spool
        found: set[str] = set()
        for path, fh, pending in await self.io(lambda: list(spool.orphans())):
            # An answer whose store committed although its tombstone was never written (the
            # COMMIT reply was lost, or the process died right after) is stored already.
            outcome = await self.io(self.ledger.claim, list(pending), self.config.run_id, self.config.claim_ttl_s)
            for item_id, record in pending.items():
                found.add(item_id)
                if outcome.get(item_id) == "stored":
                    self.already_stored.add(item_id)
                    self.stats.skipped += 1
                    continue
                self.replayed.add(item_id)
                await self.backlog().acquire()
                await self.store(item_id, record, from_spool=True)
            await self.drain()
            if self.abort is None:
                spool.forget(path, fh)  # every answer in it is stored
            else:
                fh.close()  # kept for the next run
        if found:
            log.info("%d answer(s) found in the spool %s: stored without a request", len(found), spool.dir)
        return found

    async def drain(self) -> None:
        """Wait for every background store to end."""
        while self._stores:
            await asyncio.gather(*list(self._stores), return_exceptions=True)

    async def close(self) -> None:
        """Drain stores, stop the heartbeat, release claims (best effort: they expire anyway)."""
        await self.drain()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            try:
                await self._heartbeat
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.spool is not None:
            self.spool.close()
        try:
            await self.io(self.ledger.release_claims, self.config.run_id)
        except Exception as exc:  # noqa: BLE001 - they expire after claim_ttl_s
            log.warning("could not release claims (%s): they expire after %.0fs", type(exc).__name__,
                        self.config.claim_ttl_s)
        self._io.shutdown(wait=True)

    def finish(self) -> RunStats:
        s = self.stats
        s.elapsed_s = time.monotonic() - self.started
        s.throughput_per_s = s.done / s.elapsed_s if s.elapsed_s > 0 else 0.0
        return s
