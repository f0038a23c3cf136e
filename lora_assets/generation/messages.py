"""Messages mode: one request per item, as many in flight as the key allows.

Retries are ours (SDK retries off) so they are budgeted per item and per run. Attempts and the
budget are for answers that were wrong (truncated, refused, 5xx, timeouts): a refused request
(429/529) waits its own `retry-after` while every other worker goes on, and is sent again as
often as it takes, never failing its item. `FlowControl` (flow.py) paces on every bucket the
`anthropic-ratelimit-*` headers name (requests, input tokens, output tokens) and cuts concurrency
only on sustained refusal; `OutputSizer` keeps `max_tokens` near the output really seen, so
OTPM reservations do not idle the key. Each whole answer goes to the spool, then to the ledger in
the background (engine.py); the backlog bounds answers waiting for the ledger, never requests
in flight. The run stops itself, with one line naming the cause, when the endpoint is plainly
unusable: a rejected key, N requests in a row unanswered, N answers in a row that are not
Messages.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass, field

from lora_assets.generation.client import (
    AuthError,
    GenerationError,
    GenerationRequest,
    OverloadedError,
    RateLimitedError,
    RequestTimeoutError,
    TruncatedError,
    UnreadableResponseError,
    build_record,
    check_message,
    kind_label,
    max_tokens_cap,
    MessagesClient,
    send_message,
    usage_of,
)
from lora_assets.generation.engine import (
    RetryBudget,
    Run,
    RunConfig,
    RunStats,
    backoff,
    check_run,
    summary,
    why_stopped,
)
from lora_assets.generation.flow import FlowControl, OutputSizer
from lora_assets.generation.headers import RateLimitSnapshot
from lora_assets.generation.ledger import BatchLedger, Ledger
from lora_assets.generation.pricing import cost_usd
from lora_assets.schemas.rows import Usage

__all__ = ["generate_messages"]

log = logging.getLogger(__name__)


@dataclass
class _Pace:
    """What the workers of one run share besides flow control: the max_tokens sizer, the input
    tokens a request is expected to take from ITPM, and the endpoint's health (consecutive
    timeouts and unreadable answers)."""

    config: RunConfig
    sizer: OutputSizer
    input_tokens: float = 0.0  # mean ITPM cost of recent answers (input + cache writes)
    timeouts: int = 0
    unreadable: int = 0
    timeout_limit: int = field(init=False)

    def __post_init__(self) -> None:
        # Every request of a full first wave hanging is plainly an endpoint that does not answer;
        # never fewer than 2 (one slow answer is not an outage).
        self.timeout_limit = max(2, min(self.config.stop_after_timeouts, self.config.max_concurrency))

    def used(self, usage: Usage) -> float:
        """Note an answer's ITPM cost (cache reads are not counted by the API); returns it."""
        taken = usage.input_tokens + usage.cache_creation_input_tokens
        self.input_tokens = taken if self.input_tokens == 0 else 0.8 * self.input_tokens + 0.2 * taken
        return float(taken)


async def generate_messages(requests: list[GenerationRequest], ledger: Ledger, config: RunConfig) -> RunStats:
    """Generate every request with the Messages API; each ends in the ledger exactly once.

    First stores answers a previous run left in the spool (no request), then claims the rest:
    items another live run holds are skipped and counted (`claimed_elsewhere`). Raises
    UnknownModelError before any request for a model without a price, ValueError on duplicate
    item ids, and RunAbortedError (after in-flight answers are spooled and stored) when the key
    is rejected, the endpoint is unusable (timeouts or unreadable answers in a row), the ledger
    stays down, or the claims lapse. Items inside an open provider batch are skipped: they are
    paid for already and resume with `generate_batches`.
    """
    check_run(requests, config)
    run = Run(config, ledger, RunStats(), RetryBudget(_budget(config, len(requests))))
    client = MessagesClient(run.secret, config.base_url, config.timeout_s, config.max_concurrency)
    flow = FlowControl(config.max_concurrency)
    pace = _Pace(config, OutputSizer(enabled=config.size_max_tokens, expected=config.expected_output_tokens))
    try:
        spooled = await run.replay_spool()
        in_batches: set[str] = set()
        if isinstance(ledger, BatchLedger):
            in_batches = {i for s in await run.io(ledger.open_provider_batches) for i in s.item_ids}
        wanted = []
        for r in requests:
            if r.item_id in spooled:
                continue
            if r.item_id in in_batches:
                log.warning("item %s is in an open provider batch: skipped (resume it in batches mode)", r.item_id)
                run.stats.skipped += 1
                continue
            wanted.append(r)
        by_id = {r.item_id: r for r in wanted}
        held = await run.claim(list(by_id))
        queue = deque(r for r in wanted if r.item_id in held)
        log.info("messages run %s: %d item(s), model %s, effort %s, concurrency %d", config.run_id, len(queue),
                 config.model, config.effort, config.max_concurrency)

        async def worker() -> None:
            while queue and run.abort is None and not run.stopping():
                request = queue.popleft()
                try:
                    await _generate_one(request, client, flow, pace, run)
                except asyncio.CancelledError:
                    if not run.endpoint_down:
                        raise
                    # Cancelled by the run itself: its request hung on an endpoint declared down.
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    return
                except Exception as exc:  # noqa: BLE001 - a bug must stop new work, not orphan in-flight answers
                    log.exception("unexpected error on item %s", request.item_id)
                    run.stop(request.item_id, f"unexpected error: {exc!r}")

        while run.abort is None and not run.stopping():
            if queue:
                # More workers than slots: items waiting out their retry-after must not idle a slot.
                await asyncio.gather(*(worker() for _ in range(min(len(queue), 2 * config.max_concurrency))))
            # Items another run held: wait for it to store them, or take over a dead run's.
            taken = await run.retake()
            if not taken:
                break
            queue.extend(by_id[i] for i in sorted(taken))
    finally:
        try:
            await run.close()
        finally:
            await client.close()
    stats = run.finish()
    stats.concurrency_decreases = flow.decreases
    stats.max_in_flight = flow.max_inflight
    if run.abort is not None:
        ended = stats.done + stats.failed + stats.skipped + stats.left_to_other_runs
        run.abort.reason += f"; {max(0, len(requests) - ended)} item(s) left unrecorded for a re-run"
        where = f" (at item {run.abort.item_id})" if run.abort.item_id else ""
        run.abort.args = (f"generation run aborted{where}: {run.abort.reason}",)
        raise run.abort
    log.info("messages run finished: %s", summary(stats))
    return stats


def _budget(config: RunConfig, items: int) -> int:
    return config.retry_budget if config.retry_budget is not None else 3 * items


def _endpoint(config: RunConfig) -> str:
    return config.base_url or "https://api.anthropic.com"


async def _generate_one(request: GenerationRequest, client: MessagesClient, flow: FlowControl, pace: _Pace,
                        run: Run) -> None:
    """Attempts for one item until it is stored, fails for good, or the run aborts. Refusals
    (429/529) are waited out and sent again without counting as attempts."""
    config, stats = run.config, run.stats
    item_id = request.item_id
    attempts = 0
    refusals = 0
    in_a_row = 0  # refusals since the last answer that was not a 429/529
    cap = max_tokens_cap(request, config.effort)
    truncations = 0
    wasted = 0.0
    while run.abort is None:
        if not await run.lease_ok(item_id):
            return
        need_in = pace.input_tokens
        ticket = await flow.acquire(need_in, lambda: pace.sizer.size(cap, truncations))
        max_tokens = ticket.max_tokens
        if run.abort is not None or run.stopping():  # a cancel: start nothing new
            await flow.release(None)
            return
        stats.requests += 1
        task = asyncio.current_task()
        try:
            run.sending.add(task)
            try:
                sent = await send_message(client, request, config.model, secret=run.secret, effort=config.effort,
                                          max_tokens=max_tokens)
            finally:
                run.sending.discard(task)
        except GenerationError as exc:
            err: GenerationError = exc
            congested = isinstance(err, (RateLimitedError, OverloadedError))
            snap = err.rate_limit
            # A 429 with requests left was a token bucket's: the mirrors pace it; fewer requests
            # in flight would not help, so it does not count toward cutting concurrency.
            tokens_only = isinstance(err, RateLimitedError) and snap is not None and (snap.remaining or 0) > 0 \
                and (snap.output_tokens is not None or snap.input_tokens is not None)
            await flow.release(ticket, snapshot=snap, timing=err.timing, congested=congested and not tokens_only,
                               retry_after_s=err.retry_after_s, rate_limited=isinstance(err, RateLimitedError))
            if isinstance(err, RequestTimeoutError) and err.rate_limit is None:
                pace.timeouts += 1
                if pace.timeouts >= pace.timeout_limit:
                    run.stop(None, f"the endpoint {_endpoint(config)} is not answering: {pace.timeouts} requests in "
                                   f"a row got no response within {config.timeout_s:g}s (LORA_REQUEST_TIMEOUT_S); "
                                   "nothing more is sent", endpoint_down=True)
                    return
            else:
                pace.timeouts = 0
            if congested:
                # Not the item's fault and not a wrong answer: wait as asked and send it again.
                refusals += 1
                in_a_row += 1
                if isinstance(err, RateLimitedError):
                    stats.rate_limited += 1
                else:
                    stats.overloaded += 1
                if isinstance(err, RateLimitedError) and in_a_row == 1 and _short(snap, need_in, max_tokens):
                    # The 429's headers show the bucket that refused it and have synced our mirror
                    # of it: flow control holds this request until that bucket refills what it
                    # needs (what `retry-after` says, rounded up to whole seconds). Refused
                    # again, or refused while the headers show room (a limit over a shorter
                    # interval than they report): wait `retry-after`.
                    continue
                delay = _retry_delay(err, refusals, config)
                log.debug("item %s: %s, sending again in %.2fs", item_id, err.kind, delay)
                await asyncio.sleep(delay)
                continue
            attempts += 1
            in_a_row = 0
            if isinstance(err, UnreadableResponseError):
                wasted += _unknown_cost(request, config, need_in, max_tokens, err, stats)
                pace.unreadable += 1
                if pace.unreadable >= config.stop_after_unreadable:
                    # Stop first: no other worker may start a request while this failure is recorded.
                    run.stop(None, f"the endpoint {_endpoint(config)} answers HTTP 200 with bodies that are not "
                                   f"Messages ({pace.unreadable} in a row; last: {err.reason}): it is not the "
                                   "Anthropic API or something between rewrites its answers; each such answer is "
                                   "counted as paid at an unknown cost")
                    await run.fail(item_id, err, attempts, wasted, "not sent again")
                    return
        except BaseException:
            await flow.release(None)
            raise
        else:
            usage = sent.message.usage
            await flow.release(ticket, snapshot=sent.rate_limit, timing=sent.timing, success=True,
                               used_in=pace.used(usage_of(sent.message)), used_out=float(usage.output_tokens or 0))
            pace.timeouts = 0
            pace.unreadable = 0
            attempts += 1
            whole = sent.message.stop_reason != "max_tokens"
            pace.sizer.observe(int(usage.output_tokens or 0), whole=whole)
            try:
                check_message(item_id, sent.message, config.model, batch=False)
            except GenerationError as exc:
                err = exc
                wasted += err.cost_usd
                stats._add_usage(err.usage, err.cost_usd, wasted=True)
                if isinstance(err, TruncatedError):
                    truncations += 1
                    err.reason += f" (max_tokens {max_tokens})"
                    if (usage.output_tokens or 0) >= max_tokens and max_tokens < cap:
                        # Cut by our own sizing, below the request's limit: not a wrong answer.
                        # Sent again at once with twice the room; no attempt or budget used.
                        attempts -= 1
                        stats.resized += 1
                        continue
            else:
                record = build_record(
                    item_id, sent.message, config.model, request_id=sent.request_id, batch=False,
                    extra={"mode": "messages", "attempts": attempts, "refused": refusals, "wasted_cost_usd": wasted,
                           "effort": config.effort, "max_tokens": max_tokens, "truncations": truncations},
                )
                # The backlog bounds answers waiting for the ledger: a full one pauses this
                # worker (its answer in hand, no request slot held), never requests in flight.
                await run.backlog().acquire()
                try:
                    await run.store(item_id, record)
                except Exception as exc:  # noqa: BLE001 - the spool is the last line: stop the run
                    run.backlog().release()
                    run.stop(item_id, f"could not write the answer to the local spool: {exc!r}")
                return
        if isinstance(err, AuthError):
            run.stop(item_id, f"{kind_label(err.kind)}: {err.reason}")
            return
        if err.retryable and attempts < config.max_attempts_per_item and run.budget.take():
            stats.retries += 1
            delay = _retry_delay(err, attempts, config)
            log.info("item %s: %s (attempt %d), retrying in %.2fs", item_id, err.kind, attempts, delay)
            if delay > 0:
                await asyncio.sleep(delay)
            continue
        await run.fail(item_id, err, attempts, wasted, why_stopped(err, attempts, config, run.budget))
        return


def _short(snap: RateLimitSnapshot | None, need_in: float, max_tokens: int) -> bool:
    """True when a 429's `anthropic-ratelimit-*` headers show a bucket without room for this
    request (requests exhausted, fewer input tokens than it takes, less output than its
    `max_tokens`): the headers explain the refusal, and the mirrors they synced can pace it."""
    if snap is None:
        return False
    if snap.remaining is not None and snap.remaining <= 0 and snap.reset_at is not None:
        return True
    if snap.input_tokens is not None and snap.input_tokens.remaining < need_in:
        return True
    return snap.output_tokens is not None and snap.output_tokens.remaining < max_tokens


def _unknown_cost(request: GenerationRequest, config: RunConfig, need_in: float, max_tokens: int,
                  err: GenerationError, stats: RunStats) -> float:
    """An answered request whose body could not be read: paid, at a cost nobody can read. It is
    counted at its upper bound (the prompt's input tokens, `max_tokens` of output), never $0."""
    input_tokens = int(need_in) or (len(request.system) + len(request.user)) // 2
    bound = cost_usd(config.model, Usage(input_tokens=input_tokens, output_tokens=max_tokens), batch=False)
    stats.unknown_cost_responses += 1
    stats._add_usage(Usage(), bound, wasted=True)
    err.cost_usd = bound
    err.reason += f"; paid, cost unknown (counted at its upper bound ${bound:.6f})"
    return bound


def _retry_delay(err: GenerationError, attempts: int, config: RunConfig) -> float:
    """How long this item waits before its next attempt (the other workers do not wait)."""
    if err.cost_usd > 0 or err.kind == "unexpected_stop":
        return 0.0  # a stop-reason failure: the server is fine, draw a fresh sample now
    if err.retry_after_s is not None:
        # The server's own wait for this request, plus a little jitter so refused requests do
        # not all come back in the same millisecond.
        return err.retry_after_s * random.uniform(1.0, 1.1)
    return backoff(attempts, config.backoff_base_s, config.backoff_max_s)
