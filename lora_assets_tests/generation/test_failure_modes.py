"""Claude as it really fails: refusals (429/529) never use up an item's attempts however many
there are, an endpoint that hangs or answers 200 with HTML stops the run with one line naming the
cause, an unreadable 200 is counted as paid, and in-flight requests reach the configured
concurrency (past the spool backlog of 512). Requests are counted where they arrive: at the
server's HTTP layer."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from lora_assets.generation.runner import GenerationRequest, MemoryLedger, RunAbortedError, RunConfig, generate_messages
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets_tests.generation.fake_endpoint import FakeEndpoint, Mode
from lora_assets_tests.generation.test_runner import KEY, make_requests, rejecting_api  # noqa: F401 - a fixture

MODEL = "claude-haiku-5-5"


def config(base_url: str, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {"model": MODEL, "api_key": SecretStr(KEY), "base_url": base_url,
                              "max_concurrency": 8, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    return RunConfig(**(values | overrides))


@pytest.fixture
def endpoint(request: pytest.FixtureRequest) -> Iterator[FakeEndpoint]:
    mode, latency = request.param
    server = FakeEndpoint(mode, latency).start()
    yield server
    server.stop()


def _one_line(err: RunAbortedError) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_429_and_529_storm_never_fails_an_item_nor_uses_its_attempts() -> None:
    # Two answers in three refused (529 at random, 429 from a 20-per-0.2 s request bucket), and
    # only 2 attempts per item: were refusals attempts, most items would fail.
    faults = FaultConfig(overload_rate=0.6, rpm_limit=20, rate_window_s=0.2, seed=3)
    with ClaudeSimulator(faults) as sim:
        # Fixed ids: the simulator's 529s are seeded on them, so the storm is the same every run.
        requests = [r.model_copy(update={"item_id": f"storm-{i}"}) for i, r in enumerate(make_requests(40))]
        ledger = MemoryLedger()
        stats = asyncio.run(generate_messages(requests, ledger, config(
            sim.base_url, max_concurrency=16, max_attempts_per_item=2, retry_budget=0)))
        seen = sim.stats.snapshot()
    assert stats.failed == 0 and stats.done == len(requests) == len(ledger.successes)
    refused = seen["by_outcome"].get("overloaded", 0) + seen["by_outcome"].get("rate_limited", 0)
    assert refused >= len(requests)  # far more refusals than the attempts would have allowed
    # Every request reached the server once and was counted once: ours equal its HTTP count.
    assert stats.requests == sum(seen["attempts_by_key"].values()) == len(requests) + refused
    assert stats.rate_limited + stats.overloaded == refused and stats.retries == 0
    assert all(r.extra["attempts"] == 1 for r in ledger.successes.values())
    assert sum(r.extra["refused"] > 0 for r in ledger.successes.values()) >= len(requests) // 2


@pytest.mark.parametrize("endpoint", [("refuse", 0.0)], indirect=True)
def test_429s_as_the_api_sends_them_are_waited_out_for_their_whole_seconds_and_never_fail_an_item(
        endpoint: FakeEndpoint) -> None:
    # Each item: two 429s with `retry-after: 1` (whole seconds, no retry-after-ms) and headers that
    # show room in every bucket, then two 529s, then the answer; one attempt per item, no budget.
    endpoint.refusals_429, endpoint.refusals_529 = 2, 2
    requests = make_requests(6)
    ledger = MemoryLedger()
    stats = asyncio.run(generate_messages(requests, ledger, config(
        endpoint.base_url, max_attempts_per_item=1, retry_budget=0)))
    assert stats.done == 6 == len(ledger.successes) and stats.failed == 0 and not ledger.failures
    assert (stats.rate_limited, stats.overloaded, stats.retries) == (12, 12, 0)
    assert stats.requests == endpoint.requests == 30
    assert all(r.extra["attempts"] == 1 and r.extra["refused"] == 4 for r in ledger.successes.values())
    for times in endpoint.arrivals.values():
        # The headers do not explain the refusal: its retry-after was waited out each time.
        assert len(times) == 5 and times[1] - times[0] >= 1.0 and times[2] - times[1] >= 1.0


@pytest.mark.parametrize("endpoint", [("hang", 0.0)], indirect=True)
def test_a_hanging_endpoint_stops_the_run_after_one_wave_with_one_line(endpoint: FakeEndpoint) -> None:
    requests = make_requests(30)
    ledger = MemoryLedger()
    started = time.monotonic()
    with pytest.raises(RunAbortedError) as info:
        asyncio.run(generate_messages(requests, ledger, config(endpoint.base_url, timeout_s=1.0)))
    elapsed = time.monotonic() - started
    line = _one_line(info.value)
    assert "is not answering" in line and "8 requests in a row" in line and "LORA_REQUEST_TIMEOUT_S" in line
    assert "30 item(s) left unrecorded for a re-run" in line
    # One wave of 8 timed out together; the retries they had started were cut, not waited for
    # (~1 s; without the stop, 30 items x 4 attempts at 8 in flight wait 15 s). At the defaults
    # (120 s, concurrency 8) the same run ends after ~120 s, under 5 minutes. The bound is loose:
    # the request counts below are the proof, the clock only guards a wait-it-out regression.
    assert elapsed < 10.0, elapsed
    assert 8 <= endpoint.requests <= 16
    assert not ledger.failures and not ledger.successes


@pytest.mark.parametrize("endpoint", [("hang", 0.0)], indirect=True)
def test_planning_against_a_hanging_endpoint_stops_after_two_timeouts_with_one_line(endpoint: FakeEndpoint) -> None:
    from lora_assets.generation.count_tokens import TokenCountError, count_prompt_tokens

    started = time.monotonic()
    with pytest.raises(TokenCountError) as info:
        count_prompt_tokens(api_key=KEY, base_url=endpoint.base_url, model=MODEL, system="s", users=["u"] * 3,
                            timeout_s=0.3)
    # Each of the two first counts timed out twice (one retry), then planning stopped: not 5 x
    # (the request count is the proof; the clock bound is loose, the machine may be saturated).
    assert time.monotonic() - started < 10.0
    assert endpoint.requests == 4
    line = str(info.value)
    assert "not answering" in line and endpoint.base_url in line and "\n" not in line


@pytest.mark.parametrize("endpoint", [("html", 0.01)], indirect=True)
def test_a_200_with_html_is_counted_as_paid_and_not_asked_again(endpoint: FakeEndpoint) -> None:
    requests = make_requests(30)
    ledger = MemoryLedger()
    with pytest.raises(RunAbortedError) as info:
        asyncio.run(generate_messages(requests, ledger, config(endpoint.base_url, max_concurrency=2)))
    line = _one_line(info.value)
    assert "answers HTTP 200 with bodies that are not Messages" in line and re.search(r"\([34] in a row", line)
    assert "text/html" in line
    stats = info.value.stats
    # 3 answers in a row (4 when the other worker's came back too), one per item, then the run stopped.
    assert endpoint.requests == stats.requests == stats.unknown_cost_responses <= 4
    assert len(ledger.failures) == endpoint.requests
    for kind, reason, attempts, cost in ledger.failures.values():
        assert kind == "unreadable_response" and attempts == 1 and cost > 0
        assert "paid, cost unknown" in reason
    assert stats.cost_usd == pytest.approx(sum(f[3] for f in ledger.failures.values())) and stats.cost_usd > 0


@pytest.mark.parametrize("endpoint", [("ok", 1.5)], indirect=True)
def test_in_flight_requests_reach_the_concurrency_past_the_spool_backlog(endpoint: FakeEndpoint) -> None:
    n = 600
    requests = [GenerationRequest(item_id=f"item-{i}", system="s", user="u") for i in range(n)]
    stats = asyncio.run(generate_messages(requests, MemoryLedger(), config(
        endpoint.base_url, max_concurrency=n, max_spool_items=64)))
    assert stats.done == n
    # The backlog of 64 answers waiting for the ledger does not cap requests: all 600 overlap.
    assert endpoint.max_inflight > 512 and stats.max_in_flight > 512


def test_a_rejected_key_fails_the_batch_run_with_one_line_naming_it(sqlite_url: str, tmp_path: Any,
                                                                     rejecting_api: str) -> None:
    from types import SimpleNamespace

    from dagster import DagsterInstance

    from lora_assets.cli.runs import QUIET, run_failure
    from lora_assets_tests.defs import helpers as h

    engine = h.setup_store(sqlite_url)
    defs = h.make_defs(sqlite_url, h.local_blobs(tmp_path / "blobs"), SimpleNamespace(base_url=rejecting_api))
    batch_id = h.plan(engine, 1, 1, 2)
    with DagsterInstance.ephemeral() as instance:
        h.add_partition(instance, batch_id)
        result = defs.resolve_job_def("batch_pipeline").execute_in_process(
            partition_key=batch_id, instance=instance, raise_on_error=False, run_config=QUIET)
    assert not result.success
    # What `lora-assets run` prints: the reason, one line, no stack trace.
    line = run_failure(result)
    assert line.startswith("raw_conversations: generation run aborted") and "auth: HTTP 401" in line
    assert "invalid x-api-key" in line and "\n" not in line and "Traceback" not in line


def test_max_tokens_follows_the_output_seen_and_a_cut_from_sizing_is_not_an_attempt() -> None:
    with ClaudeSimulator(FaultConfig()) as sim:
        requests = [r.model_copy(update={"item_id": f"size-{i}"}) for i, r in enumerate(make_requests(30))]
        ledger = MemoryLedger()
        # An expectation far too low: the first answers are cut at max_tokens 512.
        stats = asyncio.run(generate_messages(requests, ledger, config(
            sim.base_url, max_concurrency=4, max_attempts_per_item=1, retry_budget=0, expected_output_tokens=100,
            effort="medium")))
        seen = sim.stats.snapshot()
    assert stats.failed == 0 and stats.done == 30
    assert stats.resized > 0 and stats.requests == 30 + stats.resized == sum(seen["attempts_by_key"].values())
    assert stats.wasted_cost_usd > 0  # the cut answers were paid for
    records = list(ledger.successes.values())
    assert all(r.extra["attempts"] == 1 and r.stop_reason == "end_turn" for r in records)
    longest = max(r.usage.output_tokens for r in records)
    # Once 20 answers are in, max_tokens is 1.5x the longest seen: far below the 8,192 cap (an item
    # cut earlier asks twice that for each cut, whenever its answer lands).
    late = [r.extra["max_tokens"] / 2 ** r.extra["truncations"] for r in records[-5:]]
    assert all(m < 8192 for m in late) and max(late) <= 1.5 * longest + 1
