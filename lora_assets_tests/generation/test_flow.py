"""Flow control decisions on a fake clock: one 429 never stops the key, sustained refusal does,
and the rate-limit headers pace requests before the server has to refuse them."""

from __future__ import annotations

import asyncio
import math

from lora_assets.generation.client import HttpTiming, RateLimitSnapshot
from lora_assets.generation.flow import FlowControl


class Clock:
    """A monotonic clock and a wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.wall = 1_000_000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


def make(c: int = 8) -> tuple[FlowControl, Clock]:
    clock = Clock()
    return FlowControl(c, clock=lambda: clock.now, wall_clock=lambda: clock.wall), clock


def fill(flow: FlowControl, clock: Clock, n: int) -> list:
    tickets = []
    for _ in range(n):
        assert flow.wait_needed(clock.now) == 0.0
        tickets.append(flow.admit(clock.now))
    return tickets


NO_HEADERS = RateLimitSnapshot(None, None, None)


def test_concurrency_is_the_limit_and_a_settled_request_frees_its_slot() -> None:
    flow, clock = make(4)
    tickets = fill(flow, clock, 4)
    assert flow.wait_needed(clock.now) is None  # full: wait for an answer
    clock.advance(0.5)
    flow.settle(tickets[0], clock.now, snapshot=NO_HEADERS, success=True)
    assert flow.wait_needed(clock.now) == 0.0


def test_one_429_among_successes_neither_pauses_others_nor_cuts_concurrency() -> None:
    flow, clock = make(32)
    tickets = fill(flow, clock, 32)
    clock.advance(0.5)
    for t in tickets[:9]:
        flow.settle(t, clock.now, snapshot=NO_HEADERS, success=True)
    flow.settle(tickets[9], clock.now, snapshot=NO_HEADERS, congested=True, rate_limited=True, retry_after_s=0.2)
    assert flow.limit == 32 and flow.decreases == 0
    assert flow.wait_needed(clock.now) == 0.0  # nobody waits for the refused request's retry-after


def test_every_tenth_request_refused_never_cuts_concurrency() -> None:
    flow, clock = make(32)
    for i in range(500):
        (t,) = fill(flow, clock, 1)
        clock.advance(0.01)
        refused = i % 10 == 9
        flow.settle(t, clock.now, snapshot=NO_HEADERS, success=not refused, congested=refused,
                    rate_limited=refused, retry_after_s=0.2 if refused else None)
    assert flow.limit == 32 and flow.decreases == 0


def test_sustained_refusal_halves_concurrency_once_per_episode_then_it_grows_back() -> None:
    flow, clock = make(16)
    tickets = fill(flow, clock, 16)
    clock.advance(0.1)
    for t in tickets:  # the whole window refused at once: one episode
        flow.settle(t, clock.now, snapshot=NO_HEADERS, congested=True, rate_limited=True, retry_after_s=1.0)
    assert flow.limit == 8 and flow.decreases == 1
    clock.advance(2.0)
    for _ in range(8):  # a streak of `limit` successes adds one slot
        (t,) = fill(flow, clock, 1)
        flow.settle(t, clock.now, snapshot=NO_HEADERS, success=True)
    assert flow.limit == 9


def test_exhausted_window_in_the_headers_holds_every_request_until_reset() -> None:
    flow, clock = make(8)
    (t,) = fill(flow, clock, 1)
    clock.advance(0.1)
    exhausted = RateLimitSnapshot(limit=50, remaining=0, reset_at=clock.wall + 2.0)
    flow.settle(t, clock.now, snapshot=exhausted, timing=HttpTiming(clock.now - 0.1, clock.now), success=True)
    wait = flow.wait_needed(clock.now)
    assert wait is not None and 1.9 <= wait <= 2.0
    clock.advance(2.0)
    assert flow.wait_needed(clock.now) == 0.0


def test_a_429_saying_the_window_is_exhausted_pauses_until_reset() -> None:
    flow, clock = make(8)
    (t,) = fill(flow, clock, 1)
    refused = RateLimitSnapshot(limit=50, remaining=0, reset_at=clock.wall + 1.5)
    flow.settle(t, clock.now, snapshot=refused, congested=True, rate_limited=True, retry_after_s=1.5)
    wait = flow.wait_needed(clock.now)
    assert wait is not None and 1.4 <= wait <= 1.5


def test_credit_from_remaining_allows_exactly_that_many_more_requests() -> None:
    flow, clock = make(100)
    (t,) = fill(flow, clock, 1)
    clock.advance(0.05)
    flow.settle(t, clock.now, snapshot=RateLimitSnapshot(limit=100, remaining=3, reset_at=clock.wall + 5.0),
                timing=HttpTiming(clock.now - 0.05, clock.now), success=True)
    fill(flow, clock, 3)
    assert flow.wait_needed(clock.now) is not None and flow.wait_needed(clock.now) > 0


def test_the_window_mirror_never_exceeds_the_limit_in_any_window() -> None:
    flow, clock = make(50)
    limit, window = 5, 1.0
    sent: list[float] = []
    for _ in range(40):
        wait = flow.wait_needed(clock.now)
        if wait is None or wait > 0:
            clock.advance(wait if wait else 0.01)
            continue
        t = flow.admit(clock.now)
        sent.append(clock.now)
        clock.advance(0.01)
        oldest = [s for s in sent if s > clock.now - window]
        reset = (min(oldest) if oldest else clock.now) + window
        flow.settle(t, clock.now, snapshot=RateLimitSnapshot(limit, max(0, limit - len(oldest)), clock.wall + (reset - clock.now)),
                    timing=HttpTiming(t.sent, clock.now), success=True)
    for s in sent:
        assert sum(1 for x in sent if s <= x < s + window) <= limit


def test_acquire_and_release_drive_the_same_decisions_under_asyncio() -> None:
    async def main() -> int:
        flow = FlowControl(3)
        peak = 0

        async def one() -> None:
            nonlocal peak
            ticket = await flow.acquire()
            peak = max(peak, flow.inflight)
            await asyncio.sleep(0.01)
            await flow.release(ticket, snapshot=NO_HEADERS, success=True)

        await asyncio.gather(*(one() for _ in range(12)))
        assert flow.inflight == 0
        return peak

    assert asyncio.run(main()) == 3


def test_the_output_sizer_starts_from_the_expectation_then_follows_the_longest_answer() -> None:
    from lora_assets.generation.flow import OutputSizer

    sizer = OutputSizer(expected=1000)
    assert sizer.size(8192) == 2000  # FIRST_HEADROOM x the expected output
    assert sizer.size(8192, truncations=2) == 8000 and sizer.size(1500) == 1500  # doubled, capped
    for n in range(OutputSizer.SAMPLES):
        sizer.observe(600 + n, whole=True)
    assert sizer.size(8192) == math.ceil(1.5 * 619)  # HEADROOM x the longest seen
    sizer.observe(3000, whole=False)  # a cut answer is a lower bound: it raises the size too
    assert sizer.size(8192) == 4500
    assert OutputSizer(enabled=False, expected=1000).size(8192) == 8192
    assert OutputSizer().size(8192) == 8192  # nothing known: the request's own limit


def test_a_token_bucket_mirror_waits_for_what_a_request_reserves_and_learns_from_headers() -> None:
    from lora_assets.generation.headers import BucketSnapshot
    from lora_assets.generation.flow import TokenBucket

    bucket = TokenBucket()
    assert bucket.wait(10_000, 0.0) == 0.0  # unknown limit: no pacing
    # The server: 60,000 per 3 s (20,000/s), 20,000 left, full again in 2 s.
    bucket.observe(BucketSnapshot(60_000, 20_000, 1_000_002.0), now=0.0, wall_now=1_000_000.0, answered=0.0)
    assert bucket.window_s == 3.0 and bucket.level == 20_000
    assert bucket.take(8_000, 0.0) == 8_000
    assert bucket.wait(20_000, 0.0) == (20_000 - 12_000) / 20_000  # refills continuously
    bucket.give(8_000 - 1_500, 0.0)  # settled to the real output
    assert bucket.level == 18_500
    bucket.observe(BucketSnapshot(60_000, 5_000, None), now=0.1, wall_now=1_000_000.1, answered=0.1)
    assert bucket.level == 5_000  # another client of the key: the server's remaining wins
