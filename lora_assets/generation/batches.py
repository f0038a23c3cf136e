"""Message Batches mode (half price): submit once, poll, collect, resubmit only what failed.

Never pay twice for a submission:
- items are claimed first (a concurrent run of the same partition skips them);
- the intent (a token and the item ids) is recorded BEFORE `batches.create`, the provider id
  right after; a crash between the two leaves an open intent;
- on resume, open batches with an id are polled again, and an intent without one is reconciled:
  the provider's batch list is searched for a batch created since the intent with the same
  request count (not already known to the ledger). Found: adopted and polled. Not found: the
  create never happened, and the items are submitted anew.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anthropic
import httpx2

from lora_assets.generation.client import (
    AuthError,
    BadRequestError,
    BatchItemError,
    CanceledError,
    ConnectionFailedError,
    ExpiredError,
    GenerationError,
    GenerationRequest,
    MissingResultError,
    RateLimitedError,
    build_record,
    check_message,
    classify_error,
    kind_label,
    make_client,
    max_tokens_cap,
    message_params,
    scrub,
)
from lora_assets.generation.engine import (
    ProviderBatchError,
    RetryBudget,
    Run,
    RunAbortedError,
    RunConfig,
    RunStats,
    backoff,
    check_run,
    summary,
    why_stopped,
)
from lora_assets.generation.ledger import BatchLedger
from lora_assets.schemas.rows import OpenSubmission

__all__ = ["BATCH_MAX_BYTES", "BATCH_MAX_REQUESTS", "generate_batches"]

log = logging.getLogger(__name__)

#: Message Batches API limits per batch (requests, bytes); we stay under the byte limit with margin
#: because our estimate is the JSON body, not the exact wire size.
BATCH_MAX_REQUESTS = 100_000
BATCH_MAX_BYTES = 200 * 1024 * 1024
#: A provider batch created this long before its intent was recorded is not a candidate
#: (clock skew between us and the API).
RECONCILE_SKEW_S = 300.0
#: Longest nap between polls of open batches: how soon a cancel seen by the run reaches the API.
STOP_CHECK_S = 0.25

_T = TypeVar("_T")


@dataclass
class _OpenBatch:
    token: str
    id: str
    item_ids: list[str]
    next_poll: float
    seen: set[str] = field(default_factory=set)
    retry: list[str] = field(default_factory=list)


#: Batch `errored` result types that another submission can fix; others are the request's fault.
_TRANSIENT_BATCH_ERRORS = {"api_error", "overloaded_error", "rate_limit_error", "gateway_timeout_error", "timeout_error"}
_AUTH_BATCH_ERRORS = {"authentication_error", "permission_error", "billing_error"}


class _BatchNotFound(Exception):
    def __init__(self, batch_id: str) -> None:
        super().__init__(batch_id)
        self.batch_id = batch_id


class _BatchRun:
    """The state of one Message Batches run: open batches, which batch owns each item, attempts."""

    def __init__(self, requests: list[GenerationRequest], ledger: BatchLedger, config: RunConfig) -> None:
        self.config = config
        self.ledger = ledger
        self.by_id = {r.item_id: r for r in requests}
        self.run = Run(config, ledger, RunStats(), RetryBudget(_budget(config, len(requests))))
        self.secret = self.run.secret
        self.client = make_client(self.secret, config.base_url, config.timeout_s)
        self.open: dict[str, _OpenBatch] = {}
        self.owner: dict[str, str] = {}  # item id -> the token of the newest open submission holding it
        self.attempts: Counter[str] = Counter()
        self.wasted: defaultdict[str, float] = defaultdict(float)
        self.left_to_others: set[str] = set()  # items of open submissions another live run polls
        self.cancel_sent: set[str] = set()  # tokens of open batches this run asked the API to cancel

    # --- control calls -------------------------------------------------------------------------

    async def _control(self, what: str, batch_id: str | None, call: Callable[[], Awaitable[_T]], *,
                       ambiguous_ok: bool = True) -> _T:
        """A create/retrieve/results/list call with its own retries (never charged to items).

        `ambiguous_ok=False` (create): a timeout or a broken connection after sending may have
        created the batch anyway, and a blind retry would pay twice, so only retry what the
        server refused (HTTP status) or what never left (connect errors); the recorded intent
        lets the next run find out what happened."""
        attempts = max(5, self.config.max_attempts_per_item)
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except httpx2.HTTPError as exc:
                # Raised unwrapped by the SDK while a response body streams (batch results).
                if not ambiguous_ok:
                    raise ProviderBatchError(batch_id, f"{what}: connection broke ({type(exc).__name__}); not retried "
                                                       "because the batch may have been created (the next run "
                                                       "reconciles the recorded intent)") from None
                err: GenerationError = ConnectionFailedError(
                    batch_id or "-", f"connection broke while reading ({type(exc).__name__})")
            except anthropic.APIError as exc:
                if isinstance(exc, anthropic.NotFoundError) and batch_id is not None:
                    raise _BatchNotFound(batch_id) from None
                err = classify_error(exc, batch_id or "-", secret=self.secret)
                if isinstance(err, AuthError):
                    raise RunAbortedError(None, f"{what}: {kind_label(err.kind)}: {err.reason}", self.run.stats) from None
                never_sent = isinstance(exc, anthropic.APIConnectionError) and isinstance(
                    exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout))
                if not ambiguous_ok and isinstance(exc, anthropic.APIConnectionError) and not never_sent:
                    raise ProviderBatchError(batch_id, f"{what}: {err.reason}; not retried because the batch may "
                                                       "have been created (the next run reconciles the recorded "
                                                       "intent)") from None
                if isinstance(err, RateLimitedError):
                    self.run.stats.rate_limited += 1
            if not err.retryable or attempt == attempts:
                raise ProviderBatchError(batch_id, f"{what}: {err.kind}: {err.reason} after {attempt} attempt(s)")
            delay = err.retry_after_s if err.retry_after_s is not None else backoff(
                attempt, self.config.backoff_base_s, self.config.backoff_max_s)
            log.info("%s (%s): %s, retrying in %.2fs", what, batch_id or "new batch", err.kind, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _ledger(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """A bookkeeping call that must succeed before money moves on: retried, then the run aborts."""
        result = await self.run._with_retry("-", what, fn, *args)
        if self.run.abort is not None:
            raise self.run.abort
        return result  # type: ignore[no-any-return]

    # --- submission -----------------------------------------------------------------------------

    def _chunks(self, requests: list[GenerationRequest]) -> Iterator[list[dict[str, Any]]]:
        chunk: list[dict[str, Any]] = []
        size = 0
        for r in requests:
            entry = {"custom_id": r.item_id, "params": message_params(
                r, self.config.model, effort=self.config.effort, max_tokens=max_tokens_cap(r, self.config.effort))}
            n = len(json.dumps(entry).encode())
            if chunk and (len(chunk) >= BATCH_MAX_REQUESTS or size + n > BATCH_MAX_BYTES):
                yield chunk
                chunk, size = [], 0
            chunk.append(entry)
            size += n
        if chunk:
            yield chunk

    async def submit(self, requests: list[GenerationRequest]) -> None:
        """Intent, create, record id — per chunk. A failure after the intent leaves it open for
        the next run to reconcile; nothing is ever created without an intent on record."""
        for chunk in self._chunks(requests):
            if self.run.stopping():  # issue 21: a cancel seen by the live run: submit no more
                return
            ids = [e["custom_id"] for e in chunk]
            if not await self.run.lease_ok(ids[0]):
                raise self.run.abort  # type: ignore[misc]
            token = f"intent_{uuid.uuid4().hex}"
            await self._ledger("record_intent", self.ledger.record_intent, token, ids)
            batch = await self._control(
                "create batch", None, lambda c=chunk: self.client.messages.batches.create(requests=c), ambiguous_ok=False
            )
            self.run.stats.provider_batches_submitted += 1
            self.run.stats.requests += len(ids)
            await self._ledger("record_provider_batch", self.ledger.record_provider_batch, token, batch.id)
            self._open(token, batch.id, ids, time.monotonic() + self.config.poll_interval_s)
            log.info("submitted provider batch %s (%s) with %d request(s)", batch.id, token, len(ids))

    def _open(self, token: str, batch_id: str, item_ids: list[str], next_poll: float) -> None:
        self.open[token] = _OpenBatch(token, batch_id, list(item_ids), next_poll)
        for i in item_ids:
            self.owner[i] = token
            self.attempts[i] += 1

    # --- reconciliation -----------------------------------------------------------------------

    async def reconcile(self, intent: OpenSubmission, known: set[str]) -> str | None:
        """The provider batch created for `intent`, if any: created at or after the intent (less
        RECONCILE_SKEW_S), with as many requests as the intent, not already known to the ledger;
        the oldest such. Pages newest first and stops once batches are older than the intent."""
        since = intent.created_at - RECONCILE_SKEW_S
        found: list[tuple[float, str]] = []

        async def scan() -> None:
            page = await self.client.messages.batches.list(limit=100)
            while True:
                for b in page.data:
                    created = b.created_at.timestamp()
                    if created < since:
                        return
                    c = b.request_counts
                    total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
                    if b.id not in known and total == len(intent.item_ids):
                        found.append((created, b.id))
                if not page.has_next_page():
                    return
                page = await page.get_next_page()

        await self._control("list batches", None, scan)
        if not found:
            return None
        return min(found)[1]

    async def resume(self, subs: list[OpenSubmission], spooled: set[str]) -> set[str]:
        """Poll again the open submissions whose items this run can claim (adopting the provider
        batch of an intent recorded before a crash, or abandoning an intent whose create never
        happened). A submission whose items another live run holds is that run's to poll.
        Returns the items of the submissions resumed."""
        run, ledger = self.run, self.ledger
        known = {s.provider_batch_id for s in await self._ledger("open_provider_batches", ledger.open_provider_batches)
                 if s.provider_batch_id} | {b.id for b in self.open.values()}
        resumed: set[str] = set()
        for sub in subs:
            if sub.token in self.open:
                continue
            if not await run.claim(sub.item_ids) and run.others & set(sub.item_ids):
                # Its items are claimed by a live run that polls it (or is inside `create` right
                # now: reconciling and resubmitting behind its back could pay twice).
                log.info("submission %s belongs to another live run: left to it", sub.token)
                self.left_to_others.update(sub.item_ids)
                continue
            batch_id = sub.provider_batch_id
            if batch_id is None:
                batch_id = await self.reconcile(sub, known)
                if batch_id is None:
                    log.warning("intent %s (%d item(s)) has no provider batch: the create never happened; "
                                "its items are submitted again", sub.token, len(sub.item_ids))
                    await self._ledger("close_provider_batch", ledger.close_provider_batch, sub.token, "abandoned")
                    continue
                known.add(batch_id)
                await self._ledger("record_provider_batch", ledger.record_provider_batch, sub.token, batch_id)
                run.stats.provider_batches_adopted += 1
                log.warning("intent %s: adopted provider batch %s created before a crash (not submitted again)",
                            sub.token, batch_id)
            self._open(sub.token, batch_id, sub.item_ids, time.monotonic())  # poll at once: it may have ended
            # Results of items already stored (by the crashed run, or from the spool just now) are
            # not read again: they are paid for once and stored once.
            self.open[sub.token].seen.update((run.already_stored | spooled) & set(sub.item_ids))
            resumed.update(sub.item_ids)
            run.stats.provider_batches_resumed += 1
            log.info("resuming provider batch %s (%d request(s))", batch_id, len(sub.item_ids))
        return resumed

    # --- polling and results ----------------------------------------------------------------------

    async def drive(self) -> None:
        while self.open and self.run.abort is None:
            if self.run.stopping():
                await self._cancel_open()
            now = time.monotonic()
            due = [b for b in self.open.values() if b.next_poll <= now]
            if not due:
                # Short naps, not the whole poll interval: a cancel is acted on within a second.
                await asyncio.sleep(min(min(b.next_poll for b in self.open.values()) - now, STOP_CHECK_S))
                continue
            for b in due:
                try:
                    batch = await self._control("retrieve", b.id, lambda b=b: self.client.messages.batches.retrieve(b.id))
                except _BatchNotFound:
                    await self._lost(b)
                    continue
                if batch.processing_status != "ended":
                    b.next_poll = time.monotonic() + self.config.poll_interval_s
                    continue
                await self._collect(b)
                await self.run.drain()  # every answer of the batch stored before it is closed
                if self.run.abort is not None:
                    return
                if b.retry:
                    await self._resubmit(b)
                await self._ledger("close_provider_batch", self.ledger.close_provider_batch, b.token, "ended")
                del self.open[b.token]

    async def _cancel_open(self) -> None:
        """A cancel seen by the live run (issue 21): cancel every open provider batch at the API
        (idempotent there; the cancel action may have done it already), then poll it at once. It
        ends within moments; what finished before is stored, the rest comes back `canceled`."""
        for b in list(self.open.values()):
            if b.token in self.cancel_sent:
                continue
            self.cancel_sent.add(b.token)
            try:
                await self._control("cancel", b.id, lambda b=b: self.client.messages.batches.cancel(b.id))
            except _BatchNotFound:
                pass  # the next retrieve records it as lost
            except ProviderBatchError as exc:
                log.error("could not cancel provider batch %s (%s): polling it until it ends", b.id, exc)
                continue
            log.warning("run cancelled: provider batch %s cancelled at the API; the results that arrive are stored",
                        b.id)
            b.next_poll = time.monotonic()

    async def _collect(self, b: _OpenBatch) -> None:
        async def read() -> None:
            results = await self.client.messages.batches.results(b.id)
            async for line in results:
                await self._result(b, line)

        await self._control("results", b.id, read)
        for item_id in b.item_ids:
            if item_id not in b.seen and self.owner.get(item_id) == b.token:
                b.seen.add(item_id)
                err = MissingResultError(item_id, f"provider batch {b.id} ended without a result for this request")
                await self.run.fail(item_id, err, self.attempts[item_id], self.wasted[item_id], "not resubmitted")

    async def _lost(self, b: _OpenBatch) -> None:
        """A recorded batch the API no longer knows (deleted, or results past retention): its
        items cannot be collected, so they fail with that reason and a re-run submits them."""
        log.error("provider batch %s is unknown to the API: its %d item(s) are recorded as failed", b.id, len(b.item_ids))
        for item_id in b.item_ids:
            if self.owner.get(item_id) == b.token:
                err = MissingResultError(item_id, f"provider batch {b.id} is unknown to the API (deleted or expired)")
                await self.run.fail(item_id, err, self.attempts[item_id], self.wasted[item_id], "a re-run submits it again")
        await self._ledger("close_provider_batch", self.ledger.close_provider_batch, b.token, "not_found")
        del self.open[b.token]

    async def _result(self, b: _OpenBatch, line: Any) -> None:
        item_id = line.custom_id
        if item_id not in b.item_ids or item_id in b.seen:
            if item_id not in b.item_ids:
                log.error("provider batch %s returned a result for unknown custom_id %r: ignored", b.id, item_id)
            return  # a result line already handled (results re-read after a broken stream)
        b.seen.add(item_id)
        result = line.result
        newest = self.owner.get(item_id) == b.token
        err: GenerationError
        if result.type == "succeeded":
            message = result.message
            try:
                check_message(item_id, message, self.config.model, batch=True)
            except GenerationError as exc:
                err = exc
                self.wasted[item_id] += err.cost_usd
                self.run.stats._add_usage(err.usage, err.cost_usd, wasted=True)
            else:
                # Stored even if a newer batch holds the item too: this answer is paid for.
                record = build_record(item_id, message, self.config.model, request_id=None, batch=True, extra={
                    "mode": "batches", "provider_batch_id": b.id, "attempts": self.attempts[item_id],
                    "wasted_cost_usd": self.wasted[item_id]})
                await self.run.backlog().acquire()
                try:
                    await self.run.store(item_id, record)
                except Exception as exc:  # noqa: BLE001 - the spool is the last line: stop the run
                    self.run.backlog().release()
                    self.run.stop(item_id, f"could not write the answer to the local spool: {exc!r}")
                return
        elif result.type == "errored":
            error = result.error.error
            detail = scrub(f"errored in provider batch {b.id}: {error.type}: {error.message}", self.secret)
            if error.type in _TRANSIENT_BATCH_ERRORS:
                err = BatchItemError(item_id, detail)
            elif error.type in _AUTH_BATCH_ERRORS:
                err = AuthError(item_id, detail)
            else:
                err = BadRequestError(item_id, detail)
        elif result.type == "expired":
            err = ExpiredError(item_id, f"expired in provider batch {b.id} before it was processed")
        elif result.type == "canceled":
            err = CanceledError(item_id, f"canceled in provider batch {b.id} before it was processed")
        else:
            err = BadRequestError(item_id, f"unknown result type {result.type!r} in provider batch {b.id}")
        if not newest:
            return  # a newer batch holds this item (resubmitted before a crash): it decides
        if result.type == "errored" and result.error.error.type in ("rate_limit_error", "overloaded_error") \
                and item_id in self.by_id:
            # Refused, not answered wrongly: resubmitted without using up an attempt or the budget.
            self.attempts[item_id] -= 1
            if result.error.error.type == "rate_limit_error":
                self.run.stats.rate_limited += 1
            else:
                self.run.stats.overloaded += 1
            b.retry.append(item_id)
            return
        attempts = self.attempts[item_id]
        if err.retryable and attempts < self.config.max_attempts_per_item and item_id in self.by_id \
                and self.run.budget.take():
            self.run.stats.retries += 1
            b.retry.append(item_id)
            return
        if err.retryable and item_id not in self.by_id and attempts < self.config.max_attempts_per_item:
            why = "not resubmitted: its request was not passed to this run (a re-run retries it)"
        else:
            why = why_stopped(err, attempts, self.config, self.run.budget)
        await self.run.fail(item_id, err, attempts, self.wasted[item_id], why)

    async def _resubmit(self, b: _OpenBatch) -> None:
        log.info("resubmitting %d request(s) of provider batch %s in a new batch", len(b.retry), b.id)
        await self.submit([self.by_id[i] for i in b.retry])


def _budget(config: RunConfig, items: int) -> int:
    return config.retry_budget if config.retry_budget is not None else 3 * items


async def generate_batches(requests: list[GenerationRequest], ledger: BatchLedger, config: RunConfig) -> RunStats:
    """Generate every request through the Message Batches API (50% price).

    In order: stores answers a previous run left in the spool; resumes the ledger's open
    submissions (polls those with a provider id; reconciles intents without one against the
    provider's batch list, adopting the batch found, else abandoning the intent); claims the
    remaining items (those another live run holds are skipped) and submits them in batches of
    <= 100,000 requests / 256 MB with `custom_id = item_id`, recording the intent before each
    `create`; polls every `poll_interval_s` until `ended`; stores results by `custom_id` with the
    same stop_reason rules as Messages mode, and resubmits errored / expired / truncated /
    refused items alone in a new batch within the attempt and retry budgets.
    """
    check_run(requests, config)
    br = _BatchRun(requests, ledger, config)
    run = br.run
    try:
        spooled = await run.replay_spool()
        await run.drain()  # spooled answers stored before their batch's results are looked at
        open_subs = await br._ledger("open_provider_batches", ledger.open_provider_batches)
        resumed = await br.resume(open_subs, spooled)
        candidates = [r for r in requests if r.item_id not in resumed | br.left_to_others | spooled]
        held = await run.claim([r.item_id for r in candidates])
        fresh = [r for r in candidates if r.item_id in held]
        log.info("batches run %s: %d open batch(es) resumed, %d new request(s), model %s", config.run_id,
                 len(br.open), len(fresh), config.model)
        await br.submit(fresh)
        await br.drive()
        # Items another run held: wait for it to store them, or take over a dead run's — polling
        # its open provider batch if it had one, submitting the rest.
        while run.abort is None and (taken := await run.retake()):
            subs = [sub for sub in await br._ledger("open_provider_batches", ledger.open_provider_batches)
                    if taken & set(sub.item_ids)]
            resumed = await br.resume(subs, spooled)
            await br.submit([br.by_id[i] for i in sorted(taken - resumed) if i in br.by_id])
            await br.drive()
        await run.drain()
        if run.abort is not None:
            raise run.abort
    finally:
        try:
            await run.close()
        finally:
            await br.client.close()
    stats = run.finish()
    log.info("batches run finished: %s", summary(stats))
    return stats
