"""Messages mode: one request per item, as many in flight as the key allows.

Retries are ours (SDK retries off) so they are budgeted per item and per run: a refused request
(429/529) waits its own `retry-after` while every other worker goes on; `FlowControl` (flow.py)
cuts concurrency only on sustained refusal and paces from the rate-limit headers. Each whole
answer goes to the spool, then to the ledger in the background (engine.py), so a slow blob
store or DB never holds a request slot.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque

from lora_assets.generation.client import (
    AuthError,
    GenerationError,
    GenerationRequest,
    OverloadedError,
    RateLimitedError,
    build_record,
    check_message,
    kind_label,
    ClientPool,
    send_message,
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
from lora_assets.generation.flow import FlowControl
from lora_assets.generation.ledger import BatchLedger, Ledger

__all__ = ["generate_messages"]

log = logging.getLogger(__name__)


async def generate_messages(requests: list[GenerationRequest], ledger: Ledger, config: RunConfig) -> RunStats:
    """Generate every request with the Messages API; each ends in the ledger exactly once.

    First stores answers a previous run left in the spool (no request), then claims the rest:
    items another live run holds are skipped and counted (`claimed_elsewhere`). Raises
    UnknownModelError before any request for a model without a price, ValueError on duplicate
    item ids, and RunAbortedError (after in-flight answers are spooled and stored) when the key
    is rejected, the ledger stays down, or the claims lapse. Items inside an open provider batch
    are skipped: they are paid for already and resume with `generate_batches`.
    """
    check_run(requests, config)
    run = Run(config, ledger, RunStats(), RetryBudget(_budget(config, len(requests))))
    client = ClientPool(run.secret, config.base_url, config.timeout_s, config.max_concurrency)
    flow = FlowControl(config.max_concurrency)
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
        log.info("messages run %s: %d item(s), model %s, concurrency %d", config.run_id, len(queue), config.model,
                 config.max_concurrency)

        async def worker() -> None:
            while queue and run.abort is None and not run.stopping():
                request = queue.popleft()
                try:
                    await _generate_one(request, client, flow, run)
                except Exception as exc:  # noqa: BLE001 - a bug must stop new work, not orphan in-flight answers
                    log.exception("unexpected error on item %s", request.item_id)
                    run.stop(request.item_id, f"unexpected error: {exc!r}")

        while run.abort is None and not run.stopping():
            if queue:
                # More workers than slots: items waiting out their retry-after must not idle a slot.
                await asyncio.gather(*(worker() for _ in range(2 * config.max_concurrency)))
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


async def _generate_one(request: GenerationRequest, client: ClientPool, flow: FlowControl, run: Run) -> None:
    """Attempts for one item until it is stored, fails for good, or the run aborts."""
    config, stats = run.config, run.stats
    item_id = request.item_id
    attempts = 0
    wasted = 0.0
    backlog = run.backlog()
    while run.abort is None:
        await backlog.acquire()  # given back when this attempt's answer is stored, or below
        if not await run.lease_ok(item_id):
            backlog.release()
            return
        ticket = await flow.acquire()
        if run.abort is not None or run.stopping():  # a cancel: start nothing new
            await flow.release(None)
            backlog.release()
            return
        attempts += 1
        stats.requests += 1
        try:
            slot = client.take()
            try:
                sent = await send_message(client.clients[slot], request, config.model, secret=run.secret)
            finally:
                client.give(slot)
        except GenerationError as exc:
            backlog.release()
            err: GenerationError = exc
            limited = isinstance(err, RateLimitedError)
            if limited:
                stats.rate_limited += 1
            await flow.release(ticket, snapshot=err.rate_limit, timing=err.timing,
                               congested=limited or isinstance(err, OverloadedError), retry_after_s=err.retry_after_s,
                               rate_limited=limited)
        except BaseException:
            backlog.release()
            await flow.release(None)
            raise
        else:
            await flow.release(ticket, snapshot=sent.rate_limit, timing=sent.timing, success=True)
            try:
                check_message(item_id, sent.message, config.model, batch=False)
            except GenerationError as exc:
                backlog.release()
                err = exc
                wasted += err.cost_usd
                stats._add_usage(err.usage, err.cost_usd, wasted=True)
            else:
                record = build_record(
                    item_id, sent.message, config.model, request_id=sent.request_id, batch=False,
                    extra={"mode": "messages", "attempts": attempts, "wasted_cost_usd": wasted},
                )
                try:
                    await run.store(item_id, record)
                except Exception as exc:  # noqa: BLE001 - the spool is the last line: stop the run
                    backlog.release()
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


def _retry_delay(err: GenerationError, attempts: int, config: RunConfig) -> float:
    """How long this item waits before its next attempt (the other workers do not wait)."""
    if err.cost_usd > 0 or err.kind == "unexpected_stop":
        return 0.0  # a stop-reason failure: the server is fine, draw a fresh sample now
    if err.retry_after_s is not None:
        # The server's own wait for this request, plus a little jitter so refused requests do
        # not all come back in the same millisecond.
        return err.retry_after_s * random.uniform(1.0, 1.1)
    return backoff(attempts, config.backoff_base_s, config.backoff_max_s)
