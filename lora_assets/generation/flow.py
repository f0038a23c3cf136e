"""Flow control of a Messages run: how many requests may be in flight, and when the next may start.

The aim is to keep the key busy: a refused request waits out its own `retry-after` (the worker
that got it sleeps; nobody else does), concurrency is cut only when refusals are *sustained*,
and the `anthropic-ratelimit-requests-*` headers pace requests so the server rarely has to
refuse them at all. The decisions are plain methods over an injected clock (`wait_needed`,
`admit`, `settle`), so they are unit-tested with a fake clock; `acquire` / `release` wrap them
for the asyncio workers.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lora_assets.generation.client import HttpTiming, RateLimitSnapshot
from lora_assets.generation.headers import BucketSnapshot

__all__ = ["FlowControl", "OutputSizer", "Ticket", "TokenBucket"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ticket:
    """One admitted request: when it started, the limit and window it was admitted under, and
    the input and output tokens it reserved from the token buckets."""

    sent: float
    rate_limit: int | None
    window_s: float | None
    reserved_in: float = 0.0
    reserved_out: float = 0.0
    #: The output tokens (max_tokens) the request was admitted with.
    max_tokens: int = 0


class TokenBucket:
    """Our mirror of one of the server's token buckets (input or output tokens per minute),
    refilled continuously like the server's. Unknown until an answer names its limit; then a
    request starts only when the bucket holds what it will take (its input tokens; its
    `max_tokens` for output, given back at the end down to what it really used, as the API
    settles OTPM). Every answer's `remaining` corrects the mirror downwards (other clients of the
    key; requests counted earlier than we thought)."""

    #: The API's buckets refill over a minute unless the headers show a shorter window.
    DEFAULT_WINDOW_S = 60.0
    MAX_WINDOW_S = 120.0

    def __init__(self) -> None:
        self.limit: float | None = None
        self.level = 0.0
        self.window_s = self.DEFAULT_WINDOW_S
        self._windows: deque[float] = deque(maxlen=32)
        self._at = 0.0

    @property
    def rate(self) -> float:
        """Tokens refilled per second."""
        return (self.limit or 0.0) / self.window_s

    def _refill(self, now: float) -> None:
        if self.limit is not None and now > self._at:
            self.level = min(self.limit, self.level + self.rate * (now - self._at))
        self._at = max(self._at, now)

    def wait(self, need: float, now: float) -> float:
        """Seconds until `need` tokens are there (a need above the limit waits for a full bucket)."""
        if self.limit is None or need <= 0:
            return 0.0
        self._refill(now)
        need = min(need, self.limit)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, n: float, now: float) -> float:
        """Reserve `n` tokens; returns what was reserved (0 while the limit is unknown)."""
        if self.limit is None:
            return 0.0
        self._refill(now)
        self.level -= n
        return n

    def give(self, n: float, now: float) -> None:
        if self.limit is not None:
            self._refill(now)
            self.level = min(self.limit, self.level + n)

    def observe(self, snap: BucketSnapshot, now: float, wall_now: float, answered: float) -> None:
        """Learn the limit and window from an answer's headers, and lower the mirror to the
        server's `remaining` (refilled from when the server answered to now)."""
        if snap.limit <= 0:
            return
        first = self.limit is None
        self.limit = float(snap.limit)
        if snap.reset_at is not None and snap.remaining < snap.limit:
            # reset = when the bucket is full again: (limit - remaining) / rate from now.
            to_full = snap.reset_at - wall_now
            if to_full > 0:
                window = to_full * snap.limit / (snap.limit - snap.remaining)
                if 0.05 <= window <= self.MAX_WINDOW_S:
                    self._windows.append(window)
                    # Reset times come rounded (to the second, on the real API): the median of
                    # recent samples is steadier than any one of them.
                    self.window_s = sorted(self._windows)[len(self._windows) // 2]
        server = snap.remaining + self.rate * max(0.0, now - answered)
        if first:
            self.level, self._at = min(self.limit, server), now
        else:
            self._refill(now)
            self.level = min(self.level, server)


class OutputSizer:
    """`max_tokens` for the next request of a run: big enough for what the model writes (thinking
    included), small enough that OTPM reservations (charged from `max_tokens` when a request
    starts) do not hold the key idle. `HEADROOM` x the longest output seen once `SAMPLES`
    answers are in; before that `FIRST_HEADROOM` x the expected output (the tier's history), or
    the cap. Each truncation of an item doubles its next size (a cut below the cap is our
    sizing's fault: the engine sends it again without counting an attempt); never above the
    cap (the request's own `max_tokens`)."""

    SAMPLES = 20
    HEADROOM = 1.5
    FIRST_HEADROOM = 2.0
    FLOOR = 512

    def __init__(self, *, enabled: bool = True, expected: int | None = None) -> None:
        self.enabled = enabled
        self.expected = expected
        self.samples = 0
        self.longest = 0

    def size(self, cap: int, truncations: int = 0) -> int:
        """max_tokens for a request whose own limit is `cap`, after `truncations` cut answers."""
        if not self.enabled:
            return cap
        if self.samples >= self.SAMPLES:
            base = self.HEADROOM * self.longest
        elif self.expected:
            base = max(self.FIRST_HEADROOM * self.expected, self.HEADROOM * self.longest)
        else:
            return cap
        return max(1, min(cap, max(self.FLOOR, math.ceil(base)) * 2 ** truncations))

    def observe(self, output_tokens: int, *, whole: bool) -> None:
        """An answer's output tokens (thinking included); a cut answer is a lower bound only."""
        self.longest = max(self.longest, output_tokens)
        if whole:
            self.samples += 1


class FlowControl:
    """Admission of requests, shared by all workers of a Messages run.

    - Concurrency: at most `limit` requests in flight. `limit` starts at `max`; it is halved
      only on *sustained* refusal (at least `SUSTAINED_SHARE` of the last `RECENT` answers were
      429/529, once per episode), and grows by 1 after a streak of `limit` successes. One 429
      among many successes changes nothing: its request alone waits its `retry-after`.
    - Pacing from `anthropic-ratelimit-requests-{limit,remaining,reset}`:
      * a mirror of the server's window: once the headers told us the limit L and we estimated
        the window W, we never have more than L of our requests in any W. A request counts from
        when it starts until W after it was admitted (estimated when it is answered, see
        `_admitted_at`), so a request that sat in a connect queue keeps its slot as long as the
        server does. `reset` is when the oldest request of the window frees its slot, so
        `reset - admitted` is W for a request that was the oldest and less for the others: W is
        the largest such sample; a 429 the mirror did not foresee proves W larger by at least
        its retry-after, and raises it.
      * credit: the last `remaining`, minus what we sent since; at zero (the headers say the
        window is exhausted) nobody starts before `reset`. This catches what the mirror cannot
        see (other clients sharing the same limit).
    """

    #: Never trust a window or a reset further away than this (clock skew with a remote API).
    MAX_WINDOW_S = 120.0
    #: Start this much after a slot frees, so the request reaches the server after it freed.
    MARGIN_S = 0.002
    #: How many of the largest window samples are kept to re-estimate W as the round trip improves.
    SAMPLES = 16
    #: Sustained refusal: this many recent answers, this share of them refused.
    RECENT = 20
    SUSTAINED_SHARE = 0.5

    def __init__(self, max_concurrency: int, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.max = max_concurrency
        self.limit = max_concurrency
        self.inflight = 0
        self.clock = clock
        self.wall_clock = wall_clock
        self._cond: asyncio.Condition | None = None
        self._recent: deque[bool] = deque(maxlen=self.RECENT)  # True = refused (429/529)
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
        self.decreases = 0
        self.input_bucket = TokenBucket()
        self.output_bucket = TokenBucket()
        self.max_inflight = 0
        self._answered = 0  # answers from the API (any status): the first one names the limits

    @property
    def window_s(self) -> float | None:
        """The current estimate of the server's rate window (None until a response told us)."""
        if self._window_est is None:
            return None
        return max(self._window_est, self._window_floor)

    # --- decisions (synchronous, clock passed in) -------------------------------------------------

    def wait_needed(self, now: float, need_in: float = 0.0, need_out: float = 0.0) -> float | None:
        """Seconds to wait before the next request may start (0 = now, None = until a request
        settles); `need_in` / `need_out`: the input tokens and max_tokens it will reserve."""
        wait = max(self.input_bucket.wait(need_in, now), self.output_bucket.wait(need_out, now))
        if self._credit is not None and self._credit <= 0:
            if now < self._credit_reset:
                wait = self._credit_reset - now
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
                    wait = max(wait, self._settled[excess] + expiry - now)
                else:
                    mirror_blocked = True  # only an answer can tell us more
        if wait == 0.0 and (mirror_blocked or self.inflight >= self.limit):
            return None
        return wait

    def admit(self, now: float, need_in: float = 0.0, need_out: float = 0.0) -> Ticket:
        """Count a request as started (call only when `wait_needed(now, ...) == 0`)."""
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        if self._credit is not None:
            self._credit -= 1
        took_in = self.input_bucket.take(need_in, now)
        took_out = self.output_bucket.take(need_out, now)
        return Ticket(now, self._rate_limit, self.window_s if self._rate_limit is not None else None,
                      took_in, took_out, int(need_out))

    def settle(self, ticket: Ticket | None, now: float, *, snapshot: RateLimitSnapshot | None = None,
               timing: HttpTiming | None = None, success: bool = False, congested: bool = False,
               retry_after_s: float | None = None, rate_limited: bool = False,
               used_in: float | None = None, used_out: float | None = None) -> None:
        """Account for a finished request: what its headers said and whether it was refused;
        `used_in` / `used_out`: the tokens it really took (None: none, e.g. refused), which
        settles its reservations as the server does."""
        self.inflight -= 1
        if ticket is not None:
            # Settle what was reserved; a request admitted before the limit was known reserved
            # nothing, and its use was counted by the server's `remaining` already.
            if ticket.reserved_in:
                self.input_bucket.give(ticket.reserved_in - (used_in or 0.0), now)
            if ticket.reserved_out:
                self.output_bucket.give(ticket.reserved_out - (used_out or 0.0), now)
            self._observe(ticket, snapshot, timing, now, rate_limited=rate_limited, retry_after_s=retry_after_s)
            if snapshot is not None:
                self._answered += 1
                answered = timing.received if timing is not None else now
                if snapshot.input_tokens is not None:
                    self.input_bucket.observe(snapshot.input_tokens, now, self.wall_clock(), answered)
                if snapshot.output_tokens is not None:
                    self.output_bucket.observe(snapshot.output_tokens, now, self.wall_clock(), answered)
        if congested:
            self._recent.append(True)
            self._streak = 0
            refused = sum(self._recent)
            sustained = len(self._recent) >= self.RECENT // 2 and refused >= self.SUSTAINED_SHARE * len(self._recent)
            if sustained and now >= self._hold_decrease_until and self.limit > 1:
                self.limit = max(1, self.limit // 2)
                self.decreases += 1
                # Answers already in flight belong to this episode; judge the new limit afresh.
                self._recent.clear()
                self._hold_decrease_until = now + max(retry_after_s or 0.0, self._min_rtt if self._min_rtt < 1e9 else 0.0)
                log.info("sustained refusal (%d of the last answers): concurrency -> %d", refused, self.limit)
        elif success:
            self._recent.append(False)
            self._streak += 1
            if self._streak >= self.limit and self.limit < self.max:
                self.limit += 1
                self._streak = 0

    # --- asyncio wrappers -------------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self, need_in: float = 0.0, need_out: float | Callable[[], float] = 0.0) -> Ticket:
        """Wait for admission; returns the ticket to hand back to `release`. `need_out` may be a
        function (max_tokens sized when the request is admitted, from what is known by then)."""
        size = need_out if callable(need_out) else (lambda: need_out)
        cond = self._condition()
        async with cond:
            while (wait := self.wait_needed(self.clock(), need_in, (need_out := size()))) != 0.0:
                if wait is None:
                    await cond.wait()
                    continue
                try:
                    async with asyncio.timeout(wait):
                        await cond.wait()
                except TimeoutError:
                    pass
            return self.admit(self.clock(), need_in, need_out)

    async def release(self, ticket: Ticket | None, **outcome: object) -> None:
        """`settle` under the lock, then wake as many waiting workers as there are free slots (at
        least one). Not all of them: with up to 2 x C workers, waking every waiter on every answer
        made admission O(C) per request (a third of our CPU per request at C=128). A woken worker
        that still cannot start waits again (on a timer when a bucket or the window is what it
        waits for), so no wake-up is lost."""
        cond = self._condition()
        async with cond:
            self.settle(ticket, self.clock(), **outcome)  # type: ignore[arg-type]
            cond.notify(max(1, self.limit - self.inflight))

    # --- header bookkeeping -----------------------------------------------------------------------

    def _admitted_at(self, sent: float, answered: float) -> float:
        """When the server counted a request, as late as it can have been: the fastest round trip
        before its answer (never before it was sent). A request that waited in a connect queue
        is thus placed where the server placed it, and one that merely came back late is held a
        little longer than needed; the same estimate feeds the W samples, so the two agree."""
        return max(sent, answered - self._min_rtt)

    def _observe(self, ticket: Ticket, snap: RateLimitSnapshot | None, timing: HttpTiming | None, now: float, *,
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
            if snap is not None and snap.remaining is not None and snap.remaining <= 0 and snap.reset_at is not None:
                # The headers say the window is exhausted: nobody starts before it resets.
                self._credit = 0
                self._credit_reset = max(self._credit_reset,
                                         now + min(max(0.0, snap.reset_at - self.wall_clock()), self.MAX_WINDOW_S))
            return
        # The HTTP round trip when we have it: SDK build time and body parsing say nothing about
        # when the server counted the request.
        sent, answered = (timing.sent, timing.received) if timing is not None else (ticket.sent, now)
        if snap is not None:  # an answer from the API, not a local timeout or a refused connection
            self._min_rtt = min(self._min_rtt, answered - sent)
        if snap is not None and snap.limit is not None and snap.limit > 0:
            self._rate_limit = snap.limit
        if self._rate_limit is not None:  # the mirror only matters once the server named a limit
            bisect.insort(self._settled, self._admitted_at(sent, answered))
        if snap is None:
            return
        if snap.reset_at is None:
            return
        reset = now + min(snap.reset_at - self.wall_clock(), self.MAX_WINDOW_S)
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
