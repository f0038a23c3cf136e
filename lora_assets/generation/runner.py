"""The generation runner: every request of a run ends exactly once in the ledger, as a stored
response or as a failure with its reason, at the lowest cost and without paying twice.

Two modes over the same single-request semantics (client.py):

- `generate_messages`: per-request Messages API with bounded, adaptive concurrency. Retries are
  ours (SDK retries off) so they are budgeted per item and per run and rate-limit aware: a 429
  pauses every worker until `retry-after` (a shared gate) and halves the concurrency (AIMD,
  +1 per streak of successes); `anthropic-ratelimit-requests-remaining/reset` pace requests
  before the server has to refuse them.
- `generate_batches`: the Message Batches API (half price). Open provider batches recorded by an
  earlier (crashed) run are polled again, never resubmitted; a new batch is recorded in the
  ledger right after `create`, before any polling, so a crash at any later point resumes.

The ledger is called from the event loop thread only (its methods are synchronous and quick), so
an implementation needs no locking of its own.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anthropic
import httpx2
from anthropic import AsyncAnthropic
from pydantic import BaseModel, Field, SecretStr

from lora_assets.generation.client import (
    AuthError,
    BadRequestError,
    BatchItemError,
    CanceledError,
    ConnectionFailedError,
    ExpiredError,
    GenerationError,
    GenerationRequest,
    HttpTiming,
    MissingResultError,
    RateLimitedError,
    RateLimitSnapshot,
    OverloadedError,
    build_record,
    check_message,
    classify_error,
    kind_label,
    make_client,
    message_params,
    scrub,
    send_message,
)
from lora_assets.generation.pricing import price_for
from lora_assets.schemas.rows import GenerationRecord, Usage

__all__ = [
    "GenerationRequest",
    "Ledger",
    "MemoryLedger",
    "ProviderBatchError",
    "RunAbortedError",
    "RunConfig",
    "RunStats",
    "generate_batches",
    "generate_messages",
]

log = logging.getLogger(__name__)

#: Message Batches API limits per batch (requests, bytes); we stay under the byte limit with margin
#: because our estimate is the JSON body, not the exact wire size.
BATCH_MAX_REQUESTS = 100_000
BATCH_MAX_BYTES = 200 * 1024 * 1024


class RunConfig(BaseModel):
    """How one run talks to the API. `retry_budget` (total retries in the run) defaults to 3 x the
    number of items; `timeout_s` is per request; `poll_interval_s` paces Batches polling."""

    model: str
    api_key: SecretStr
    base_url: str | None = None
    max_concurrency: int = Field(default=8, ge=1)
    max_attempts_per_item: int = Field(default=4, ge=1)
    retry_budget: int | None = Field(default=None, ge=0)
    timeout_s: float = Field(default=120.0, gt=0)
    poll_interval_s: float = Field(default=5.0, gt=0)
    backoff_base_s: float = Field(default=0.5, ge=0, description="First retry delay when the server names none.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Cap of the exponential backoff.")


class RunStats(BaseModel):
    """What a run did. `cost_usd` is everything billed (stored + failed attempts);
    `wasted_cost_usd` is the part spent on attempts that produced nothing storable;
    `throughput_per_s` counts stored responses. In Batches mode `requests` counts requests
    submitted inside batches."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
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

    def _add_usage(self, usage: Usage, cost: float, *, wasted: bool) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_creation_input_tokens += usage.cache_creation_input_tokens
        self.cache_read_input_tokens += usage.cache_read_input_tokens
        self.cost_usd += cost
        if wasted:
            self.wasted_cost_usd += cost


class Ledger(Protocol):
    """Where outcomes go (the DB in production). Called from one thread, never concurrently."""

    def record_success(self, item_id: str, record: GenerationRecord) -> bool:
        """Store raw response + row in one step; False if the item was already stored."""
        ...

    def record_failure(self, item_id: str, kind: str, reason: str, attempts: int, cost_usd: float) -> None:
        """Mark the item failed with its kind, a readable reason, attempts made and money spent."""
        ...

    def record_provider_batch(self, provider_batch_id: str, item_ids: list[str]) -> None:
        """Persist a submitted Message Batch (called right after create, before any polling)."""
        ...

    def open_provider_batches(self) -> list[tuple[str, list[str]]]:
        """Submitted batches not yet closed, oldest first, with their item ids."""
        ...

    def close_provider_batch(self, provider_batch_id: str, status: str) -> None:
        """Mark a provider batch finished: all its items are recorded or resubmitted."""
        ...


class RunAbortedError(RuntimeError):
    """The run stopped before processing every item: a fault no retry can fix (bad key, the
    ledger failing). Items already answered were recorded; unprocessed ones were left untouched
    so a re-run picks them up. `stats` holds what the run did."""

    def __init__(self, item_id: str | None, reason: str, stats: RunStats) -> None:
        self.item_id = item_id
        self.reason = reason
        self.stats = stats
        where = f" (at item {item_id})" if item_id else ""
        super().__init__(f"generation run aborted{where}: {reason}")


class ProviderBatchError(RuntimeError):
    """A Message Batches control call (create/retrieve/results) failed for good. Batches already
    recorded in the ledger are resumed by the next run."""

    def __init__(self, provider_batch_id: str | None, reason: str) -> None:
        self.provider_batch_id = provider_batch_id
        self.reason = reason
        super().__init__(f"provider batch {provider_batch_id or '(not created)'}: {reason}")


# ---------------------------------------------------------------------------------------------
# An in-memory ledger (tests, benchmarks, dry runs)
# ---------------------------------------------------------------------------------------------


@dataclass
class MemoryLedger:
    """A Ledger in memory. `successes`/`failures` keep the last outcome per item;
    `failure_log` every record_failure call; `provider_batches` id -> (item ids, status)."""

    successes: dict[str, GenerationRecord] = field(default_factory=dict)
    failures: dict[str, tuple[str, str, int, float]] = field(default_factory=dict)
    failure_log: list[tuple[str, str, str]] = field(default_factory=list)
    provider_batches: dict[str, tuple[list[str], str]] = field(default_factory=dict)
    duplicate_successes: int = 0

    def record_success(self, item_id: str, record: GenerationRecord) -> bool:
        """Store unless already stored."""
        if item_id in self.successes:
            self.duplicate_successes += 1
            return False
        self.successes[item_id] = record
        self.failures.pop(item_id, None)
        return True

    def record_failure(self, item_id: str, kind: str, reason: str, attempts: int, cost_usd: float) -> None:
        """Remember the failure (a stored success is never overwritten)."""
        self.failure_log.append((item_id, kind, reason))
        if item_id not in self.successes:
            self.failures[item_id] = (kind, reason, attempts, cost_usd)

    def record_provider_batch(self, provider_batch_id: str, item_ids: list[str]) -> None:
        """Remember an open batch."""
        self.provider_batches[provider_batch_id] = (list(item_ids), "in_progress")

    def open_provider_batches(self) -> list[tuple[str, list[str]]]:
        """Batches not closed, in submission order."""
        return [(bid, ids) for bid, (ids, status) in self.provider_batches.items() if status == "in_progress"]

    def close_provider_batch(self, provider_batch_id: str, status: str) -> None:
        """Close a batch with `status`."""
        ids, _ = self.provider_batches[provider_batch_id]
        self.provider_batches[provider_batch_id] = (ids, status)


# ---------------------------------------------------------------------------------------------
# Shared run state: budgets, flow control
# ---------------------------------------------------------------------------------------------


class _RetryBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def _backoff(attempt: int, base: float, cap: float) -> float:
    # Exponential with jitter in [50%, 100%]: spreads retries so they do not arrive together.
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class _Ticket:
    """One admitted request: when it started and the limit and window it was admitted under."""

    sent: float
    rate_limit: int | None
    window_s: float | None


class _FlowControl:
    """Admission of requests, shared by all workers of a Messages run (monotonic clock).

    - Concurrency: at most `limit` requests in flight. `limit` is AIMD: halved on 429/529 (once
      per congestion episode, not once per refused request of the same burst), +1 after a
      streak of `limit` successes, never above `max`.
    - Gate: after a 429 nobody starts a request before its `retry-after` has passed.
    - Pacing from `anthropic-ratelimit-requests-{limit,remaining,reset}`:
      * a mirror of the server's window: once the headers told us the limit L and we estimated
        the window W, we never have more than L of our requests in any W. A request counts from
        when it starts until W after it was admitted (estimated when it is answered, see
        `_admitted_at`), so a request that sat in a connect queue keeps its slot as long as the
        server does. `reset` is when the oldest request of the
        window frees its slot, so `reset - admitted` is W for a request that was the oldest and
        less for the others: W is the largest such sample; a 429 the mirror did not foresee
        proves W larger by at least its retry-after, and raises it.
      * credit: the last `remaining`, minus what we sent since; at zero we wait for `reset`.
        This catches what the mirror cannot see (other clients sharing the same limit).
      Together they reuse slots the moment they free, without a 429 storm.
    """

    #: Never trust a window or a reset further away than this (clock skew with a remote API).
    MAX_WINDOW_S = 120.0
    #: Start this much after a slot frees, so the request reaches the server after it freed.
    MARGIN_S = 0.002
    #: How many of the largest window samples are kept to re-estimate W as the round trip improves.
    SAMPLES = 16

    def __init__(self, max_concurrency: int) -> None:
        self.max = max_concurrency
        self.limit = max_concurrency
        self.inflight = 0
        self._cond = asyncio.Condition()
        self._paused_until = 0.0
        self._hold_decrease_until = 0.0
        self._streak = 0
        self._rate_limit: int | None = None
        self._samples: list[tuple[float, float, float]] = []  # (reset, sent, answered), largest first
        self._window_est: float | None = None
        self._window_floor = 0.0
        self._min_rtt = float("inf")
        self._settled: list[float] = []  # sorted admission times of answered requests
        self._credit: int | None = None
        self._credit_reset = 0.0

    @property
    def window_s(self) -> float | None:
        """The current estimate of the server's rate window (None until a response told us)."""
        if self._window_est is None:
            return None
        return max(self._window_est, self._window_floor)

    def _wait_needed(self, now: float) -> float | None:
        """Seconds to wait before the next request may start (0 = now, None = until notified)."""
        waits = [0.0]
        if now < self._paused_until:
            waits.append(self._paused_until - now)
        if self._credit is not None and self._credit <= 0:
            if now < self._credit_reset:
                waits.append(self._credit_reset - now)
            else:
                self._credit = None  # the slot reported as next to free is free now
        window = self.window_s
        mirror_blocked = False
        if self._rate_limit is not None and window is not None:
            expiry = window + self.MARGIN_S
            del self._settled[: bisect.bisect_right(self._settled, now - expiry)]
            excess = len(self._settled) + self.inflight - self._rate_limit
            if excess >= 0:
                if excess < len(self._settled):
                    waits.append(self._settled[excess] + expiry - now)
                else:
                    mirror_blocked = True  # only an answer can tell us more
        if max(waits) == 0.0 and (mirror_blocked or self.inflight >= self.limit):
            return None
        return max(waits)

    async def acquire(self) -> _Ticket:
        """Wait for admission; returns the ticket to hand back to `release`."""
        async with self._cond:
            while (wait := self._wait_needed(time.monotonic())) != 0.0:
                if wait is None:
                    await self._cond.wait()
                    continue
                try:
                    async with asyncio.timeout(wait):
                        await self._cond.wait()
                except TimeoutError:
                    pass
            self.inflight += 1
            if self._credit is not None:
                self._credit -= 1
            return _Ticket(time.monotonic(), self._rate_limit, self.window_s if self._rate_limit is not None else None)

    async def release(self, ticket: _Ticket | None, *, snapshot: RateLimitSnapshot | None = None,
                      timing: HttpTiming | None = None, success: bool = False, congested: bool = False,
                      retry_after_s: float | None = None, rate_limited: bool = False) -> None:
        """Account for a finished request: what its headers said and whether it was congested."""
        async with self._cond:
            self.inflight -= 1
            now = time.monotonic()
            if ticket is not None:
                self._observe(ticket, snapshot, timing, now, rate_limited=rate_limited, retry_after_s=retry_after_s)
            if congested:
                self._streak = 0
                if retry_after_s is not None:
                    self._paused_until = max(self._paused_until, now + min(retry_after_s, self.MAX_WINDOW_S))
                if now >= self._hold_decrease_until:
                    self.limit = max(1, self.limit // 2)
                    # Requests already in flight may be refused too: they belong to this episode.
                    self._hold_decrease_until = max(self._paused_until, now) + 0.05
                    log.info("congestion: concurrency -> %d", self.limit)
            elif success:
                self._streak += 1
                if self._streak >= self.limit and self.limit < self.max:
                    self.limit += 1
                    self._streak = 0
            self._cond.notify_all()

    def _admitted_at(self, sent: float, answered: float) -> float:
        """When the server counted a request, as late as it can have been: the fastest round trip
        before its answer (never before it was sent). A request that waited in a connect queue
        is thus placed where the server placed it, and one that merely came back late is held a
        little longer than needed; the same estimate feeds the W samples, so the two agree."""
        return max(sent, answered - self._min_rtt)

    def _observe(self, ticket: _Ticket, snap: RateLimitSnapshot | None, timing: HttpTiming | None, now: float, *,
                 rate_limited: bool, retry_after_s: float | None) -> None:
        if rate_limited:
            # Refused: it took no slot. If the mirror let it through under the limit the server
            # still reports, W is larger than we thought, by at least the wait the server asked for.
            same_limit = snap is not None and snap.limit == ticket.rate_limit
            if snap is not None and snap.limit:
                self._rate_limit = snap.limit
            if same_limit and ticket.window_s is not None and retry_after_s is not None:
                self._window_floor = max(self._window_floor,
                                         min(ticket.window_s + retry_after_s + self.MARGIN_S, 2 * ticket.window_s))
            return
        # The HTTP round trip when we have it: SDK build time and body parsing say nothing about
        # when the server counted the request.
        sent, answered = (timing.sent, timing.received) if timing is not None else (ticket.sent, now)
        if snap is not None:  # an answer from the API, not a local timeout or a refused connection
            self._min_rtt = min(self._min_rtt, answered - sent)
        bisect.insort(self._settled, self._admitted_at(sent, answered))
        if snap is None:
            return
        if snap.limit is not None and snap.limit > 0:
            self._rate_limit = snap.limit
        if snap.reset_at is None:
            return
        reset = now + min(snap.reset_at - time.time(), self.MAX_WINDOW_S)
        if reset > sent:
            self._samples.append((reset, sent, answered))
            self._samples.sort(key=lambda x: x[0] - x[1], reverse=True)
            del self._samples[self.SAMPLES:]
            self._window_est = max(r - self._admitted_at(s, a) for r, s, a in self._samples)
        if snap.remaining is not None:
            # `remaining` counts what the server admitted before answering, our in-flight requests
            # included (subtracting them again would stall us); later sends decrement it.
            self._credit = snap.remaining
            self._credit_reset = max(answered, reset)


# ---------------------------------------------------------------------------------------------
# Messages mode
# ---------------------------------------------------------------------------------------------


def _check_run(requests: list[GenerationRequest], config: RunConfig) -> None:
    price_for(config.model)  # unknown model: fail before any money is spent
    seen: set[str] = set()
    dupes = {r.item_id for r in requests if r.item_id in seen or seen.add(r.item_id)}  # type: ignore[func-returns-value]
    if dupes:
        raise ValueError(f"duplicate item ids in one run (each would be paid for twice): {sorted(dupes)[:5]}")


@dataclass
class _Run:
    """State shared by the workers of one run."""

    config: RunConfig
    ledger: Ledger
    stats: RunStats
    budget: _RetryBudget
    secret: str
    abort: RunAbortedError | None = None
    started: float = field(default_factory=time.monotonic)

    def fail(self, item_id: str, err: GenerationError, attempts: int, wasted: float, why_stopped: str) -> None:
        reason = scrub(f"{err.reason}; {why_stopped}", self.secret)
        log.warning("item %s failed (%s): %s", item_id, err.kind, reason)
        self.ledger.record_failure(item_id, err.kind, reason, attempts, wasted)
        self.stats.failed += 1
        self.stats.failures_by_kind[err.kind] = self.stats.failures_by_kind.get(err.kind, 0) + 1

    def store(self, item_id: str, record: GenerationRecord) -> None:
        stored = self.ledger.record_success(item_id, record)
        if stored:
            self.stats.done += 1
        else:
            log.warning("item %s was already stored: this response is not counted again", item_id)
            self.stats.skipped += 1
        # Paid either way; a second answer for a stored item bought nothing.
        self.stats._add_usage(record.usage, record.cost_usd, wasted=not stored)

    def finish(self) -> RunStats:
        s = self.stats
        s.elapsed_s = time.monotonic() - self.started
        s.throughput_per_s = s.done / s.elapsed_s if s.elapsed_s > 0 else 0.0
        return s


def _why_stopped(err: GenerationError, attempts: int, config: RunConfig, budget: _RetryBudget) -> str:
    plural = "s" if attempts != 1 else ""
    if not err.retryable:
        return f"not retried (retrying cannot help); {attempts} attempt{plural}"
    if attempts >= config.max_attempts_per_item:
        return f"gave up after {attempts} attempt{plural} (per-item limit {config.max_attempts_per_item})"
    return f"gave up after {attempts} attempt{plural}: the run's retry budget of {budget.total} retries is spent"


async def generate_messages(requests: list[GenerationRequest], ledger: Ledger, config: RunConfig) -> RunStats:
    """Generate every request with the Messages API; each ends in the ledger exactly once.

    Raises UnknownModelError before any request for a model without a price, ValueError on
    duplicate item ids, and RunAbortedError (after in-flight requests are recorded) when the key
    is rejected or the ledger fails. Items inside an open provider batch are skipped: they are
    paid for already and resume with `generate_batches`.
    """
    _check_run(requests, config)
    secret = config.api_key.get_secret_value()
    run = _Run(config, ledger, RunStats(), _RetryBudget(_budget(config, len(requests))), secret)
    in_batches = {i for _, ids in ledger.open_provider_batches() for i in ids}
    queue: deque[GenerationRequest] = deque()
    for r in requests:
        if r.item_id in in_batches:
            log.warning("item %s is in an open provider batch: skipped (resume it in batches mode)", r.item_id)
            run.stats.skipped += 1
        else:
            queue.append(r)
    flow = _FlowControl(config.max_concurrency)
    client = make_client(secret, config.base_url, config.timeout_s)
    log.info("messages run: %d item(s), model %s, concurrency %d", len(queue), config.model, config.max_concurrency)

    async def worker() -> None:
        while queue and run.abort is None:
            request = queue.popleft()
            try:
                await _generate_one(request, client, flow, run)
            except Exception as exc:  # noqa: BLE001 - a bug must stop new work, not orphan in-flight answers
                log.exception("unexpected error on item %s", request.item_id)
                run.abort = run.abort or RunAbortedError(
                    request.item_id, scrub(f"unexpected error: {exc!r}", secret), run.stats)

    try:
        # More workers than slots: items waiting out a backoff must not idle a slot.
        await asyncio.gather(*(worker() for _ in range(2 * config.max_concurrency)))
    finally:
        await client.close()
    stats = run.finish()
    if run.abort is not None:
        ended = stats.done + stats.failed + stats.skipped
        run.abort.reason += f"; {len(requests) - ended} item(s) left unrecorded for a re-run"
        run.abort.args = (f"generation run aborted: {run.abort.reason}",)
        raise run.abort
    log.info("messages run finished: %s", _summary(stats))
    return stats


def _budget(config: RunConfig, items: int) -> int:
    return config.retry_budget if config.retry_budget is not None else 3 * items


async def _generate_one(request: GenerationRequest, client: AsyncAnthropic, flow: _FlowControl, run: _Run) -> None:
    """Attempts for one item until it is stored, fails for good, or the run aborts."""
    config, stats = run.config, run.stats
    item_id = request.item_id
    attempts = 0
    wasted = 0.0
    while run.abort is None:
        ticket = await flow.acquire()
        attempts += 1
        stats.requests += 1
        try:
            sent = await send_message(client, request, config.model, secret=run.secret)
        except GenerationError as exc:
            err: GenerationError = exc
            limited = isinstance(err, RateLimitedError)
            gate = err.retry_after_s if limited else None
            if limited:
                stats.rate_limited += 1
                if gate is None:
                    gate = _backoff(attempts, config.backoff_base_s, config.backoff_max_s)
            await flow.release(ticket, snapshot=err.rate_limit, timing=err.timing,
                               congested=limited or isinstance(err, OverloadedError), retry_after_s=gate,
                               rate_limited=limited)
        except BaseException:
            await flow.release(None)
            raise
        else:
            await flow.release(ticket, snapshot=sent.rate_limit, timing=sent.timing, success=True)
            try:
                check_message(item_id, sent.message, config.model, batch=False)
            except GenerationError as exc:
                err = exc
                wasted += err.cost_usd
                stats._add_usage(err.usage, err.cost_usd, wasted=True)
            else:
                record = build_record(
                    item_id, sent.message, config.model, request_id=sent.request_id, batch=False,
                    extra={"mode": "messages", "attempts": attempts, "wasted_cost_usd": wasted},
                )
                try:
                    run.store(item_id, record)
                except Exception as ledger_exc:  # noqa: BLE001 - any ledger fault stops the run
                    run.abort = run.abort or RunAbortedError(
                        item_id, scrub(f"ledger.record_success failed: {ledger_exc!r}", run.secret), stats)
                    log.error("%s", run.abort)
                return

        if isinstance(err, AuthError):
            run.abort = run.abort or RunAbortedError(item_id, f"{kind_label(err.kind)}: {err.reason}", stats)
            log.error("%s", run.abort)
            return
        if err.retryable and attempts < config.max_attempts_per_item and run.budget.take():
            stats.retries += 1
            delay = _retry_delay(err, attempts, config)
            log.info("item %s: %s (attempt %d), retrying in %.2fs", item_id, err.kind, attempts, delay)
            if delay > 0:
                await asyncio.sleep(delay)
            continue
        try:
            run.fail(item_id, err, attempts, wasted, _why_stopped(err, attempts, config, run.budget))
        except Exception as ledger_exc:  # noqa: BLE001
            run.abort = run.abort or RunAbortedError(
                item_id, scrub(f"ledger.record_failure failed: {ledger_exc!r}", run.secret), stats)
            log.error("%s", run.abort)
        return


def _retry_delay(err: GenerationError, attempts: int, config: RunConfig) -> float:
    if isinstance(err, RateLimitedError):
        return 0.0  # the shared gate in _FlowControl holds every worker until retry-after
    if err.cost_usd > 0 or err.kind == "unexpected_stop":
        return 0.0  # a stop-reason failure: the server is fine, draw a fresh sample now
    if err.retry_after_s is not None:
        return err.retry_after_s * random.uniform(1.0, 1.1)
    return _backoff(attempts, config.backoff_base_s, config.backoff_max_s)


def _summary(s: RunStats) -> str:
    return (
        f"{s.done} stored, {s.failed} failed {dict(s.failures_by_kind)}, {s.skipped} skipped; {s.requests} requests, "
        f"{s.retries} retries, {s.rate_limited} rate-limited; ${s.cost_usd:.4f} (${s.wasted_cost_usd:.4f} wasted); "
        f"{s.elapsed_s:.1f}s, {s.throughput_per_s:.2f}/s"
    )


# ---------------------------------------------------------------------------------------------
# Message Batches mode
# ---------------------------------------------------------------------------------------------

_T = TypeVar("_T")


@dataclass
class _OpenBatch:
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

    def __init__(self, requests: list[GenerationRequest], ledger: Ledger, config: RunConfig,
                 resumed: list[tuple[str, list[str]]]) -> None:
        self.config = config
        self.ledger = ledger
        self.secret = config.api_key.get_secret_value()
        self.by_id = {r.item_id: r for r in requests}
        items = len(set(self.by_id) | {i for _, ids in resumed for i in ids})
        self.run = _Run(config, ledger, RunStats(), _RetryBudget(_budget(config, items)), self.secret)
        self.client = make_client(self.secret, config.base_url, config.timeout_s)
        self.open: dict[str, _OpenBatch] = {}
        self.owner: dict[str, str] = {}  # item id -> the newest open batch holding it
        self.attempts: Counter[str] = Counter()
        self.wasted: defaultdict[str, float] = defaultdict(float)

    # --- control calls -------------------------------------------------------------------------

    async def _control(self, what: str, batch_id: str | None, call: Callable[[], Awaitable[_T]], *,
                       ambiguous_ok: bool = True) -> _T:
        """A create/retrieve/results call with its own retries (never charged to items).

        `ambiguous_ok=False` (create): a timeout or a broken connection after sending may have
        created the batch anyway, and a blind retry would pay twice, so only retry what the
        server refused (HTTP status) or what never left (connect errors)."""
        attempts = max(5, self.config.max_attempts_per_item)
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except httpx2.HTTPError as exc:
                # Raised unwrapped by the SDK while a response body streams (batch results).
                if not ambiguous_ok:
                    raise ProviderBatchError(batch_id, f"{what}: connection broke ({type(exc).__name__}); not retried "
                                                       "because the batch may have been created") from None
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
                                                       "have been created (check the console before re-running)") from None
                if isinstance(err, RateLimitedError):
                    self.run.stats.rate_limited += 1
            if not err.retryable or attempt == attempts:
                raise ProviderBatchError(batch_id, f"{what}: {err.kind}: {err.reason} after {attempt} attempt(s)")
            delay = err.retry_after_s if err.retry_after_s is not None else _backoff(
                attempt, self.config.backoff_base_s, self.config.backoff_max_s)
            log.info("%s (%s): %s, retrying in %.2fs", what, batch_id or "new batch", err.kind, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # --- submission -----------------------------------------------------------------------------

    def _chunks(self, requests: list[GenerationRequest]) -> Iterator[list[dict[str, Any]]]:
        chunk: list[dict[str, Any]] = []
        size = 0
        for r in requests:
            entry = {"custom_id": r.item_id, "params": message_params(r, self.config.model)}
            n = len(json.dumps(entry).encode())
            if chunk and (len(chunk) >= BATCH_MAX_REQUESTS or size + n > BATCH_MAX_BYTES):
                yield chunk
                chunk, size = [], 0
            chunk.append(entry)
            size += n
        if chunk:
            yield chunk

    async def submit(self, requests: list[GenerationRequest]) -> None:
        for chunk in self._chunks(requests):
            ids = [e["custom_id"] for e in chunk]
            batch = await self._control(
                "create batch", None, lambda c=chunk: self.client.messages.batches.create(requests=c), ambiguous_ok=False
            )
            try:
                self.ledger.record_provider_batch(batch.id, ids)
            except Exception as exc:
                # Unrecorded, the batch could not be resumed and a re-run would pay for its items
                # again: cancel it (canceled requests are not billed) and stop.
                await self._cancel_quietly(batch.id)
                raise RunAbortedError(None, scrub(
                    f"ledger.record_provider_batch({batch.id}) failed, batch cancel requested: {exc!r}", self.secret),
                    self.run.stats) from exc
            self.run.stats.provider_batches_submitted += 1
            self.run.stats.requests += len(ids)
            self._open(batch.id, ids, time.monotonic() + self.config.poll_interval_s)
            log.info("submitted provider batch %s with %d request(s)", batch.id, len(ids))

    async def _cancel_quietly(self, batch_id: str) -> None:
        try:
            await self.client.messages.batches.cancel(batch_id)
        except anthropic.APIError as exc:
            log.error("could not cancel unrecorded provider batch %s: %s", batch_id, scrub(str(exc), self.secret))

    def _open(self, batch_id: str, item_ids: list[str], next_poll: float) -> None:
        self.open[batch_id] = _OpenBatch(batch_id, list(item_ids), next_poll)
        for i in item_ids:
            self.owner[i] = batch_id
            self.attempts[i] += 1

    # --- polling and results ----------------------------------------------------------------------

    async def drive(self) -> None:
        while self.open:
            now = time.monotonic()
            due = [b for b in self.open.values() if b.next_poll <= now]
            if not due:
                await asyncio.sleep(min(b.next_poll for b in self.open.values()) - now)
                continue
            for b in due:
                try:
                    batch = await self._control("retrieve", b.id, lambda b=b: self.client.messages.batches.retrieve(b.id))
                except _BatchNotFound:
                    self._lost(b)
                    continue
                if batch.processing_status != "ended":
                    b.next_poll = time.monotonic() + self.config.poll_interval_s
                    continue
                await self._collect(b)
                if b.retry:
                    await self._resubmit(b)
                self.ledger.close_provider_batch(b.id, "ended")
                del self.open[b.id]

    async def _collect(self, b: _OpenBatch) -> None:
        async def read() -> None:
            results = await self.client.messages.batches.results(b.id)
            async for line in results:
                self._result(b, line)

        await self._control("results", b.id, read)
        for item_id in b.item_ids:
            if item_id not in b.seen and self.owner.get(item_id) == b.id:
                b.seen.add(item_id)
                err = MissingResultError(item_id, f"provider batch {b.id} ended without a result for this request")
                self.run.fail(item_id, err, self.attempts[item_id], self.wasted[item_id], "not resubmitted")

    def _lost(self, b: _OpenBatch) -> None:
        """A recorded batch the API no longer knows (deleted, or results past retention): its
        items cannot be collected, so they fail with that reason and a re-run submits them."""
        log.error("provider batch %s is unknown to the API: its %d item(s) are recorded as failed", b.id, len(b.item_ids))
        for item_id in b.item_ids:
            if self.owner.get(item_id) == b.id:
                err = MissingResultError(item_id, f"provider batch {b.id} is unknown to the API (deleted or expired)")
                self.run.fail(item_id, err, self.attempts[item_id], self.wasted[item_id], "a re-run submits it again")
        self.ledger.close_provider_batch(b.id, "not_found")
        del self.open[b.id]

    def _result(self, b: _OpenBatch, line: Any) -> None:
        item_id = line.custom_id
        if item_id not in b.item_ids or item_id in b.seen:
            if item_id not in b.item_ids:
                log.error("provider batch %s returned a result for unknown custom_id %r: ignored", b.id, item_id)
            return  # a result line already handled (results re-read after a broken stream)
        b.seen.add(item_id)
        result = line.result
        newest = self.owner.get(item_id) == b.id
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
                self.run.store(item_id, record)
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
        attempts = self.attempts[item_id]
        if err.retryable and attempts < self.config.max_attempts_per_item and item_id in self.by_id \
                and self.run.budget.take():
            self.run.stats.retries += 1
            b.retry.append(item_id)
            return
        if err.retryable and item_id not in self.by_id and attempts < self.config.max_attempts_per_item:
            why = "not resubmitted: its request was not passed to this run (a re-run retries it)"
        else:
            why = _why_stopped(err, attempts, self.config, self.run.budget)
        self.run.fail(item_id, err, attempts, self.wasted[item_id], why)

    async def _resubmit(self, b: _OpenBatch) -> None:
        log.info("resubmitting %d request(s) of provider batch %s in a new batch", len(b.retry), b.id)
        await self.submit([self.by_id[i] for i in b.retry])


async def generate_batches(requests: list[GenerationRequest], ledger: Ledger, config: RunConfig) -> RunStats:
    """Generate every request through the Message Batches API (50% price).

    First polls the ledger's open provider batches (their items are not submitted again; a
    request passed for such an item is only used if it needs resubmitting), then submits the rest
    in batches of <= 100,000 requests / 256 MB with `custom_id = item_id`, records each batch in
    the ledger right after create, polls every `poll_interval_s` until `ended`, records results
    by `custom_id` with the same stop_reason rules as Messages mode, and resubmits errored /
    expired / truncated / refused items alone in a new batch within the attempt and retry budgets.
    """
    _check_run(requests, config)
    resumed = ledger.open_provider_batches()
    br = _BatchRun(requests, ledger, config, resumed)
    try:
        now = time.monotonic()
        for batch_id, item_ids in resumed:
            br._open(batch_id, item_ids, now)  # poll at once: it may have ended long ago
            br.run.stats.provider_batches_resumed += 1
            log.info("resuming provider batch %s (%d request(s))", batch_id, len(item_ids))
        fresh = [r for r in requests if r.item_id not in br.owner]
        log.info("batches run: %d open batch(es) resumed, %d new request(s), model %s", len(resumed), len(fresh),
                 config.model)
        await br.submit(fresh)
        await br.drive()
    finally:
        await br.client.close()
    stats = br.run.finish()
    log.info("batches run finished: %s", _summary(stats))
    return stats
