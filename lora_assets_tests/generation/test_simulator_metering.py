"""The simulator thinks, meters and caches as the API documents: adaptive thinking by default
(effort, display, max_tokens, billing), per-model RPM/ITPM/OTPM token buckets with `retry-after`
in whole seconds and the rate-limit headers, the minimum cacheable prompt and best-effort cache
hits in Message Batches. Through the real `anthropic` SDK over HTTP."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anthropic
import pytest

from lora_assets.core.prompt import scaffolding_block
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.generation.simulator.replies import thinking_tokens

MODEL = "claude-haiku-5-5"
SCAFFOLDING = {
    "persona_name": "Ana Ruiz",
    "persona_archetype": "The Anxious Planner",
    "persona_demographics": "Age 44, female, Urban, Married",
    "persona_financial_background": "Household income $96,000",
    "arc_name": "Worry → Confidence",
    "arc_starting_emotion": "Worry",
    "arc_ending_emotion": "Confidence",
    "topic_name": "Retirement savings",
    "topic_description": "How much to save for retirement",
    "turn_count": "6",
}
PROMPT = "Write one conversation as JSON.\n\n" + scaffolding_block(SCAFFOLDING)
USER = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def sim() -> Iterator[ClaudeSimulator]:
    with ClaudeSimulator(FaultConfig(batch_processing_s=0.05)) as simulator:
        yield simulator


@pytest.fixture
def client(sim: ClaudeSimulator) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=sim.base_url, api_key="test-key", max_retries=0)
    yield c
    c.close()


def create(client: anthropic.Anthropic, key: str, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("max_tokens", 8000)
    kwargs.setdefault("messages", USER)
    return client.messages.create(extra_headers={"x-lora-item-id": key}, **kwargs)


def rounded(remaining: str, exact: int) -> bool:
    """A token `remaining` header against the exact level: rounded down to the thousand, and at
    most one thousand more (the bucket refills a little while the test runs)."""
    return int(remaining) in (exact // 1000 * 1000, exact // 1000 * 1000 + 1000)


def text_tokens(message: anthropic.types.Message) -> int:
    return sum(math.ceil(len(b.text) / 4) for b in message.content if b.type == "text")


def thinking_of(message: anthropic.types.Message) -> int:
    assert message.usage.output_tokens_details is not None
    return message.usage.output_tokens_details.thinking_tokens


# ---------------------------------------------------------------------------------------------
# Thinking


def test_thinking_is_on_by_default_billed_as_output_and_deterministic(client: anthropic.Anthropic) -> None:
    first = create(client, "item-1")
    again = create(client, "item-1")
    assert [b.type for b in first.content] == ["thinking", "text"]
    assert first.content[0].thinking == ""  # type: ignore[union-attr] # omitted unless display asks
    thinking = thinking_of(first)
    assert thinking == thinking_of(again) == thinking_tokens(text_tokens(first), "medium", "item-1")
    assert first.usage.output_tokens == thinking + text_tokens(first)
    assert 200 < thinking < first.usage.output_tokens


def test_effort_scales_the_thinking(client: anthropic.Anthropic) -> None:
    by_effort = {e: thinking_of(create(client, "same", output_config={"effort": e})) for e in ("low", "medium", "high", "max")}
    assert by_effort["low"] < by_effort["medium"] < by_effort["high"] < by_effort["max"]
    assert by_effort["max"] == pytest.approx(4 * by_effort["medium"], rel=0.01)


def test_summarized_display_shows_the_thinking_text(client: anthropic.Anthropic) -> None:
    message = create(client, "shown", thinking={"type": "adaptive", "display": "summarized"})
    assert "Ana" in message.content[0].thinking  # type: ignore[union-attr]


def test_thinking_that_uses_up_max_tokens_leaves_no_text(client: anthropic.Anthropic, sim: ClaudeSimulator) -> None:
    thinking = thinking_of(create(client, "cut"))
    starved = create(client, "cut", max_tokens=thinking - 10)
    assert starved.stop_reason == "max_tokens"
    assert [b.type for b in starved.content] == ["thinking"]
    assert starved.usage.output_tokens == thinking - 10 == thinking_of(starved)
    partial = create(client, "cut", max_tokens=thinking + 20)
    assert partial.stop_reason == "max_tokens" and text_tokens(partial) == 20
    assert partial.usage.output_tokens == thinking + 20
    assert sim.stats.by_outcome["truncated"] == 2 and sim.stats.delivered_by_key["cut"] == 1


def test_thinking_scale_option(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    normal = thinking_of(create(client, "scaled"))
    sim.config = FaultConfig(thinking_scale=2.0)
    assert thinking_of(create(client, "scaled")) == pytest.approx(2 * normal, abs=1)


def test_thinking_fault_shows_a_thinking_block_even_when_thinking_is_off(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(thinking_rate=1.0)
    message = create(client, "fault", thinking={"type": "disabled"})
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Token buckets


def test_every_answer_carries_the_rate_limit_headers(client: anthropic.Anthropic, sim: ClaudeSimulator) -> None:
    # A day-long window: the buckets barely refill while the test runs.
    sim.config = FaultConfig(rpm_limit=100, itpm_limit=50_000, otpm_limit=40_000, rate_window_s=86_400)
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=8000, messages=USER)
    message = raw.parse()
    h = raw.headers
    assert (h["anthropic-ratelimit-requests-limit"], h["anthropic-ratelimit-requests-remaining"]) == ("100", "99")
    assert h["anthropic-ratelimit-input-tokens-limit"] == "50000"
    # Token counts are rounded down to the thousand.
    assert rounded(h["anthropic-ratelimit-input-tokens-remaining"], 50_000 - message.usage.input_tokens)
    # The output bucket was settled to the actual output, not the 8,000 reserved.
    assert rounded(h["anthropic-ratelimit-output-tokens-remaining"], 40_000 - message.usage.output_tokens)
    assert message.usage.output_tokens < 6_000  # so a reservation left unsettled would show
    for kind in ("requests", "input-tokens", "output-tokens", "tokens"):
        reset = datetime.fromisoformat(h[f"anthropic-ratelimit-{kind}-reset"].replace("Z", "+00:00"))
        assert 0 <= reset.timestamp() - time.time() <= 86_401
    assert h["anthropic-ratelimit-tokens-limit"] == "40000"  # the tighter bucket


def test_otpm_reserves_max_tokens_at_admission(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    """With 20,000 OTPM, a request reserving 16,000 leaves too little for another one reserving
    16,000, even though the first used only ~2,000: the reservation is what admission sees."""
    sim.config = FaultConfig(otpm_limit=20_000)
    sim.hold()  # the first request stays in flight, holding its reservation
    pool = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
    import threading

    done: list[anthropic.types.Message] = []
    first = threading.Thread(target=lambda: done.append(create(pool, "held", max_tokens=16_000)))
    first.start()
    try:
        for _ in range(200):
            if sim.stats.attempts_by_key.get("held"):
                break
            time.sleep(0.01)
        with pytest.raises(anthropic.RateLimitError) as err:
            create(client, "second", max_tokens=16_000)
        assert "20,000 output tokens per minute" in err.value.body["error"]["message"]  # type: ignore[index]
        assert int(err.value.response.headers["retry-after"]) >= 1
    finally:
        sim.release()
        first.join(10)
        pool.close()
    assert done and done[0].stop_reason == "end_turn"
    # Settled to its ~2,000 actual output, the first request's reservation is back: another fits.
    assert create(client, "second", max_tokens=16_000).stop_reason == "end_turn"


def test_itpm_counts_input_and_cache_writes_but_not_cache_reads(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    system_text = "You write realistic training conversations for a financial planner. " * 300  # ~5,100 tokens
    system = [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}]
    sim.config = FaultConfig(itpm_limit=100_000, rate_window_s=86_400)  # next to no refill during the test
    raws = [client.messages.with_raw_response.create(model=MODEL, max_tokens=4000, system=system, messages=USER) for _ in range(2)]
    first, second = (r.parse() for r in raws)
    assert first.usage.cache_creation_input_tokens > 5000 and second.usage.cache_read_input_tokens > 5000
    remaining = [r.headers["anthropic-ratelimit-input-tokens-remaining"] for r in raws]
    charged_first = first.usage.input_tokens + first.usage.cache_creation_input_tokens  # the write counts
    assert rounded(remaining[0], 100_000 - charged_first)
    # The second request is charged its uncached input only: the 5,100-token read is free.
    assert rounded(remaining[1], 100_000 - charged_first - second.usage.input_tokens)


def test_429_retry_after_is_whole_seconds_until_the_bucket_refills(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(rpm_limit=2, rate_window_s=20.0)  # one request back every 10 s
    create(client, "a", max_tokens=2000)
    create(client, "b", max_tokens=2000)
    with pytest.raises(anthropic.RateLimitError) as err:
        create(client, "c", max_tokens=2000)
    headers = err.value.response.headers
    assert 8 <= int(headers["retry-after"]) <= 10 and "retry-after-ms" not in headers  # ceil of the ~10 s left
    assert "2 requests per 20 seconds" in err.value.body["error"]["message"]  # type: ignore[index]
    assert sim.stats.by_outcome["rate_limited"] == 1


def test_buckets_are_per_model(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(rpm_limit=1)
    create(client, "h", max_tokens=2000)
    with pytest.raises(anthropic.RateLimitError):
        create(client, "h2", max_tokens=2000)
    assert create(client, "s", model="claude-sonnet-5-5", max_tokens=4000).stop_reason == "end_turn"


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_SIM_RPM", "4000")
    monkeypatch.setenv("LORA_SIM_ITPM", "400000")
    monkeypatch.setenv("LORA_SIM_OTPM", "80000")
    cfg = FaultConfig()
    assert (cfg.rpm(), cfg.itpm(), cfg.otpm()) == (4000, 400_000, 80_000)
    assert FaultConfig(otpm_limit=5).otpm() == 5  # an explicit value wins


# ---------------------------------------------------------------------------------------------
# Caching


def test_nothing_is_cached_below_the_minimum_cacheable_prompt(client: anthropic.Anthropic) -> None:
    short = "You are a strict judge of advisor conversations. " * 29  # ~363 tokens, like the judge's
    system = [{"type": "text", "text": short, "cache_control": {"type": "ephemeral"}}]
    for key in ("j1", "j2"):
        usage = create(client, key, system=system, max_tokens=4000).usage
        assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
        assert usage.input_tokens == math.ceil((len(short) + len(PROMPT)) / 4)


def batch_usage(client: anthropic.Anthropic, system: list[dict[str, Any]], n: int, prefix: str) -> list[anthropic.types.Usage]:
    requests = [
        {"custom_id": f"{prefix}{i}", "params": {"model": MODEL, "max_tokens": 4000, "system": system, "messages": USER}}
        for i in range(n)
    ]
    created = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    for _ in range(400):
        if client.messages.batches.retrieve(created.id).processing_status == "ended":
            break
        time.sleep(0.02)
    return [r.result.message.usage for r in client.messages.batches.results(created.id)]  # type: ignore[union-attr]


def test_batch_cache_hits_are_best_effort(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    assert FaultConfig().batch_cache_hit_rate == 0.1  # rare by default
    system = [{"type": "text", "text": "Long shared instructions. " * 120, "cache_control": {"type": "ephemeral"}}]
    create(client, "warm", system=system, max_tokens=4000)  # the prefix is in the cache now
    sim.config = FaultConfig(batch_cache_hit_rate=0.25, batch_processing_s=0.05)
    usages = batch_usage(client, system, 40, "d")
    hits = sum(u.cache_read_input_tokens > 0 for u in usages)
    assert 0 < hits < 20  # some, not all (8 of these 40 custom_ids draw a hit at 0.25)
    assert all((u.cache_read_input_tokens > 0) != (u.cache_creation_input_tokens > 0) for u in usages)  # a miss writes again
    sim.config = FaultConfig(batch_cache_hit_rate=1.0, batch_processing_s=0.05)
    assert all(u.cache_read_input_tokens > 0 for u in batch_usage(client, system, 10, "all"))


def test_the_cli_sets_contract_and_limits_from_flags_and_env() -> None:
    """`lora-assets simulate-claude`: --rpm/--otpm flags, LORA_SIM_ITPM from the environment,
    --lenient turns the contract off."""
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "LORA_SIM_ITPM": "300000"}
    argv = [sys.executable, "-m", "lora_assets.cli", "simulate-claude", "--port", "0", "--rpm", "7", "--otpm", "90000", "--lenient"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", proc.stderr.readline())
        assert match, "the command did not report its address"
        assert "lenient; RPM 7, ITPM 300,000, OTPM 90,000" in proc.stdout.readline()
        c = anthropic.Anthropic(base_url=match.group(1), api_key="test-key", max_retries=0)
        raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=2000, messages=USER, extra_body={"temperature": 0.1})
        c.close()
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "7"
        assert raw.headers["anthropic-ratelimit-input-tokens-limit"] == "300000"
        assert raw.headers["anthropic-ratelimit-output-tokens-limit"] == "90000"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
