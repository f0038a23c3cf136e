"""The generation runner against the loopback simulator over HTTP (the real SDK, no mocks):
every item ends exactly once in the ledger, nothing is paid for twice, batches resume after a
crash, and the API key appears nowhere."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from lora_assets.core.prompt import scaffolding_block
from lora_assets.generation.client import message_text
from lora_assets.generation.pricing import UnknownModelError, cost_usd
from lora_assets.generation.runner import (
    GenerationRequest,
    MemoryLedger,
    RunAbortedError,
    RunConfig,
    RunStats,
    generate_batches,
    generate_messages,
)
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.schemas import GenerationRecord, RawConversation
from anthropic.types import Message

MODEL = "claude-haiku-5-5"
KEY = "sk-ant-api03-LEAKCANARY-7f3e9b21c4d8a6e5"
SYSTEM = "You write realistic financial-planning training conversations as one JSON object. " * 30
FAILURE_KINDS = {
    "rate_limited", "overloaded", "server_error", "timeout", "connection", "truncated", "refusal",
    "context_exceeded", "unexpected_stop", "bad_request", "auth", "batch_errored", "expired", "canceled",
    "missing_result",
}


def make_requests(n: int, fixed_ids: str = "") -> list[GenerationRequest]:
    """N items with uuid ids (the simulator keys faults on them) and a scaffolding block. With
    `fixed_ids`, the ids are derived from it and the index: the simulator's faults are then the
    same every run."""
    requests = []
    for i in range(n):
        variables = {
            "persona_name": f"Client {i}",
            "persona_archetype": "The Cautious Planner",
            "persona_demographics": "Age 41, married, two children",
            "persona_financial_background": "Income $92,000; $14,000 in savings",
            "arc_name": "Anxiety → Confidence",
            "arc_starting_emotion": "anxiety",
            "arc_ending_emotion": "confidence",
            "topic_name": "Emergency fund",
            "topic_description": "How much cash to keep and where.",
            "turn_count": "6",
        }
        user = "Write the conversation.\n\n" + scaffolding_block(variables)
        item_id = uuid.uuid5(uuid.NAMESPACE_URL, f"lora-test/{fixed_ids}/{i}") if fixed_ids else uuid.uuid4()
        requests.append(GenerationRequest(item_id=str(item_id), system=SYSTEM, user=user))
    return requests


@pytest.fixture
def sim() -> Iterator[ClaudeSimulator]:
    simulator = ClaudeSimulator(FaultConfig()).start()
    yield simulator
    simulator.stop()


def run_config(base_url: str, **overrides: Any) -> RunConfig:
    """Fast settings for tests: short backoffs and polls."""
    values: dict[str, Any] = {
        "model": MODEL,
        "api_key": SecretStr(KEY),
        "base_url": base_url,
        "max_concurrency": 8,
        "timeout_s": 10.0,
        "poll_interval_s": 0.05,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.2,
        "store_retry_s": 0.5,
    }
    values.update(overrides)
    return RunConfig(**values)


def is_whole(record: GenerationRecord) -> bool:
    """True if the stored response's text is a complete, schema-valid conversation."""
    try:
        RawConversation.model_validate_json(message_text(Message.model_validate(record.response)))
    except ValueError:
        return False
    return True


def assert_accounted(requests: list[GenerationRequest], ledger: MemoryLedger, sim: ClaudeSimulator) -> None:
    """Every item ended exactly once (stored xor failed with a reason); nothing paid twice."""
    ids = {r.item_id for r in requests}
    stored, failed = set(ledger.successes), set(ledger.failures)
    assert stored | failed == ids, "an item was lost"
    assert not stored & failed
    assert ledger.duplicate_successes == 0
    logged = [item for item, _, _ in ledger.failure_log]
    assert sorted(logged) == sorted(failed), "a failure was recorded twice or not at all"
    for item, (kind, reason, attempts, cost) in ledger.failures.items():
        assert kind in FAILURE_KINDS and reason.strip() and attempts >= 1 and cost >= 0, (item, kind, reason)
    delivered = sim.stats.snapshot()["delivered_by_key"]
    assert all(n <= 1 for n in delivered.values()), "a whole conversation was paid for twice"
    for item, record in ledger.successes.items():
        assert delivered.get(item, 0) == (1 if is_whole(record) else 0), item


# --- happy paths ------------------------------------------------------------------------------


def test_messages_happy_path_records_usage_cost_and_cache(sim: ClaudeSimulator) -> None:
    requests = make_requests(20)
    ledger = MemoryLedger()
    stats = asyncio.run(generate_messages(requests, ledger, run_config(sim.base_url)))

    assert (stats.done, stats.failed, stats.skipped, stats.retries) == (20, 0, 0, 0)
    assert stats.requests == 20
    assert_accounted(requests, ledger, sim)
    records = list(ledger.successes.values())
    for record in records:
        assert record.generator == "simulator" and record.stop_reason == "end_turn"
        assert record.request_id and record.request_id.startswith("req_sim_")
        assert record.response["id"].startswith("msg_sim_") and record.response["usage"]["output_tokens"] > 0
        assert record.cost_usd == pytest.approx(cost_usd(MODEL, record.usage, batch=False))
        assert record.extra["mode"] == "messages" and record.extra["attempts"] == 1
    assert stats.cost_usd == pytest.approx(sum(r.cost_usd for r in records))
    assert stats.wasted_cost_usd == 0
    assert stats.output_tokens == sum(r.usage.output_tokens for r in records)
    # The static system prompt was written to the cache once and read by the others.
    assert stats.cache_creation_input_tokens > 0
    assert stats.cache_read_input_tokens >= 10 * stats.cache_creation_input_tokens
    assert stats.throughput_per_s > 0 and stats.elapsed_s > 0


def test_batches_happy_path_at_batch_prices(sim: ClaudeSimulator) -> None:
    # Cache hits in batches are best effort (rare by default): every hit here, so the cache-read
    # accounting at batch prices is exercised on each run, not one in ten.
    sim.config = FaultConfig(batch_processing_s=0.1, batch_cache_hit_rate=1.0)
    requests = make_requests(25)
    ledger = MemoryLedger()
    stats = asyncio.run(generate_batches(requests, ledger, run_config(sim.base_url)))

    assert (stats.done, stats.failed, stats.provider_batches_submitted, stats.provider_batches_resumed) == (25, 0, 1, 0)
    assert_accounted(requests, ledger, sim)
    (batch_id, (item_ids, status)), = ledger.provider_batches.items()
    assert sorted(item_ids) == sorted(r.item_id for r in requests) and status == "ended"
    for record in ledger.successes.values():
        assert record.cost_usd == pytest.approx(cost_usd(MODEL, record.usage, batch=True))
        assert record.extra["provider_batch_id"] == batch_id
        assert record.response["usage"]["service_tier"] == "batch"
    assert stats.cost_usd == pytest.approx(sum(r.cost_usd for r in ledger.successes.values()))
    assert stats.cache_read_input_tokens > 0
    assert sim.stats.batches_created == 1


# --- faults -----------------------------------------------------------------------------------


def test_messages_under_faults_every_item_ends_once_and_nothing_is_paid_twice(sim: ClaudeSimulator) -> None:
    faults = FaultConfig(
        latency_s=0.01,
        rpm_limit=3,  # per 0.25 s: most of the first burst is refused
        rate_window_s=0.25,
        overload_rate=0.05,
        server_error_rate=0.05,
        slow_rate=0.03,
        slow_s=4.0,  # longer than timeout_s: client-side timeouts
        truncation_rate=0.05,
        malformed_rate=0.05,
        refusal_rate=0.05,
        seed=11,
    )
    sim.config = faults

    class StormLedger(MemoryLedger):
        """The run starts against a limit far below its concurrency (a 429 storm before any
        header has told the workers the limit), which then opens up; later it collapses for a
        while, and the workers, paced for the old limit, must learn the new one."""

        def record_success(self, item_id: str, record: GenerationRecord) -> bool:
            phases = {10: 40, 60: 2, 70: 40}
            if len(self.successes) in phases:
                sim.config = faults.model_copy(update={"rpm_limit": phases[len(self.successes)]})
            return super().record_success(item_id, record)

    # Fixed ids: every item's first admitted request draws the same fault every run (at 3-5 %
    # per fault, 120 random ids drew no refusal once in a clean-clone run).
    requests = make_requests(120, fixed_ids="faults")
    ledger = StormLedger()
    # timeout_s above 1 s: the simulator's listen backlog can hold a new connection that long.
    # Injected timeouts are faults to account for here, not a dead endpoint (that stop: test_failure_modes).
    stats = asyncio.run(generate_messages(requests, ledger, run_config(sim.base_url, max_concurrency=16, timeout_s=1.2,
                                                                     stop_after_timeouts=10_000)))

    assert_accounted(requests, ledger, sim)
    outcomes = sim.stats.snapshot()["by_outcome"]
    for fault in ("rate_limited", "overloaded", "server_error", "slow", "truncated", "malformed", "refusal"):
        assert outcomes.get(fault, 0) > 0, fault
    assert outcomes["rate_limited"] >= 3
    assert stats.rate_limited == outcomes["rate_limited"]
    assert stats.done == len(ledger.successes) and stats.failed == len(ledger.failures)
    assert sum(stats.failures_by_kind.values()) == stats.failed
    # Every request the simulator saw was counted (ours may also include refused connections).
    assert stats.requests >= sum(sim.stats.snapshot()["attempts_by_key"].values())
    # Every request beyond the first per item is a retry of a wrong answer or a refusal sent again.
    assert stats.retries + stats.rate_limited + stats.overloaded == stats.requests - len(requests)
    assert stats.wasted_cost_usd > 0  # truncations and refusals were paid for
    assert stats.cost_usd > stats.wasted_cost_usd
    # Malformed JSON on end_turn is stored as-is: parsing judges it, not generation.
    assert any(not is_whole(r) for r in ledger.successes.values())
    # With 4 attempts per item, nearly everything got through.
    assert stats.done >= 110


def test_exhausted_retries_fail_with_a_reason_saying_why(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(server_error_rate=1.0)
    requests = make_requests(10)
    ledger = MemoryLedger()
    config = run_config(sim.base_url, max_attempts_per_item=3, retry_budget=5, max_concurrency=2)
    stats = asyncio.run(generate_messages(requests, ledger, config))

    assert_accounted(requests, ledger, sim)
    assert stats.failed == 10 and stats.failures_by_kind == {"server_error": 10}
    assert stats.retries == 5 and stats.requests == 15 == sum(sim.stats.attempts_by_key.values())
    reasons = [reason for _, reason, _, _ in ledger.failures.values()]
    assert all("HTTP 500" in r for r in reasons)
    assert any("per-item limit 3" in r for r in reasons)
    assert any("retry budget of 5 retries is spent" in r for r in reasons)
    assert {attempts for _, _, attempts, _ in ledger.failures.values()} <= {1, 2, 3}


def test_truncation_retried_then_failed_with_the_money_it_wasted(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(truncation_rate=1.0)
    requests = make_requests(3)
    ledger = MemoryLedger()
    stats = asyncio.run(generate_messages(requests, ledger, run_config(sim.base_url, max_attempts_per_item=2)))

    assert_accounted(requests, ledger, sim)
    assert stats.failures_by_kind == {"truncated": 3} and stats.requests == 6
    for kind, reason, attempts, cost in ledger.failures.values():
        assert attempts == 2 and cost > 0 and "max_tokens" in reason and "after 2 attempts" in reason
    assert stats.wasted_cost_usd == pytest.approx(sum(f[3] for f in ledger.failures.values()))


def test_an_item_the_ledger_already_stored_is_counted_as_skipped(sim: ClaudeSimulator) -> None:
    requests = make_requests(3)
    ledger = MemoryLedger()
    asyncio.run(generate_messages(requests[:1], ledger, run_config(sim.base_url)))
    stats = asyncio.run(generate_messages(requests, ledger, run_config(sim.base_url)))
    assert (stats.done, stats.skipped, stats.failed) == (2, 1, 0)
    # The stored item is never requested again (its claim says "stored"), so nothing is paid twice.
    assert ledger.duplicate_successes == 0 and len(ledger.successes) == 3
    assert sim.stats.snapshot()["attempts_by_key"][requests[0].item_id] == 1


def test_items_of_an_open_provider_batch_are_never_sent_as_messages(sim: ClaudeSimulator) -> None:
    requests = make_requests(4)
    ledger = MemoryLedger()
    ledger.record_intent("intent_elsewhere", [requests[0].item_id])
    ledger.record_provider_batch("intent_elsewhere", "msgbatch_elsewhere")
    stats = asyncio.run(generate_messages(requests, ledger, run_config(sim.base_url)))
    assert (stats.done, stats.skipped) == (3, 1)
    assert requests[0].item_id not in sim.stats.attempts_by_key


def test_unknown_model_and_duplicate_ids_fail_before_any_request(sim: ClaudeSimulator) -> None:
    requests = make_requests(2)
    with pytest.raises(UnknownModelError):
        asyncio.run(generate_messages(requests, MemoryLedger(), run_config(sim.base_url, model="claude-nope-1")))
    with pytest.raises(UnknownModelError):
        asyncio.run(generate_batches(requests, MemoryLedger(), run_config(sim.base_url, model="claude-nope-1")))
    with pytest.raises(ValueError, match="duplicate"):
        asyncio.run(generate_messages(requests + requests[:1], MemoryLedger(), run_config(sim.base_url)))
    assert sim.stats.requests_total == 0


class _RejectingHandler(BaseHTTPRequestHandler):
    """An API that rejects every key (the simulator accepts any non-empty one)."""

    protocol_version = "HTTP/1.1"
    hits = 0

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                           "request_id": "req_reject"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("request-id", "req_reject")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def rejecting_api() -> Iterator[str]:
    _RejectingHandler.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RejectingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_rejected_key_aborts_the_run_clearly(rejecting_api: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    requests = make_requests(40)
    ledger = MemoryLedger()
    with pytest.raises(RunAbortedError) as info:
        asyncio.run(generate_messages(requests, ledger, run_config(rejecting_api, max_concurrency=4)))
    message = str(info.value)
    assert "auth" in message and "401" in message and "left unrecorded for a re-run" in message
    assert not ledger.successes and not ledger.failures  # nothing marked failed for a config error
    assert _RejectingHandler.hits < len(requests)  # it stopped instead of trying every item
    assert info.value.stats.requests == _RejectingHandler.hits
    assert KEY not in message and KEY not in caplog.text


# --- Message Batches: resubmission, cancel, resume --------------------------------------------


def test_errored_expired_and_truncated_batch_results_are_resubmitted_alone(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(batch_processing_s=0.05, batch_error_rate=0.15, batch_expire_rate=0.1,
                             truncation_rate=0.1, refusal_rate=0.05, seed=5)
    requests = make_requests(80)
    ledger = MemoryLedger()
    stats = asyncio.run(generate_batches(requests, ledger, run_config(sim.base_url)))

    assert_accounted(requests, ledger, sim)
    snapshot = sim.stats.snapshot()
    outcomes = snapshot["by_outcome"]
    assert outcomes.get("batch_errored") and outcomes.get("batch_expired") and outcomes.get("truncated")
    batches = list(ledger.provider_batches.items())
    assert len(batches) == stats.provider_batches_submitted == snapshot["batches_created"] >= 2
    assert all(status == "ended" for _, (_, status) in batches)
    first_id, (first_items, _) = batches[0]
    assert sorted(first_items) == sorted(r.item_id for r in requests)
    stored_first_time = {i for i, rec in ledger.successes.items() if rec.extra["provider_batch_id"] == first_id}
    resubmitted = {i for _, (items, _) in batches[1:] for i in items}
    assert resubmitted and not resubmitted & stored_first_time  # only the ones that needed it
    assert len(batches[1][1][0]) < len(requests)
    per_item = snapshot["batch_requests_by_custom_id"]
    assert all(per_item[i] == 1 for i in stored_first_time)
    assert max(per_item.values()) <= 4  # max_attempts_per_item
    assert stats.retries == sum(per_item.values()) - len(requests)
    assert stats.done >= 70


def test_a_canceled_batch_records_its_items_as_canceled(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(batch_processing_s=30.0)

    class CancelingLedger(MemoryLedger):
        def record_provider_batch(self, token: str, provider_batch_id: str) -> None:
            super().record_provider_batch(token, provider_batch_id)
            _http(sim, "POST", f"/v1/messages/batches/{provider_batch_id}/cancel")  # someone cancels it

    requests = make_requests(6)
    ledger = CancelingLedger()
    stats = asyncio.run(generate_batches(requests, ledger, run_config(sim.base_url)))
    assert_accounted(requests, ledger, sim)
    assert stats.failures_by_kind == {"canceled": 6} and sim.stats.batches_created == 1
    assert all("canceled in provider batch" in reason for _, reason, _, _ in ledger.failures.values())


def test_a_batch_the_ledger_could_not_record_is_adopted_by_the_next_run_not_paid_again(sim: ClaudeSimulator) -> None:
    """The DB fails right after `batches.create`: the run stops; its recorded intent lets the next
    run find the provider batch in the API's list and poll it instead of submitting again."""
    sim.config = FaultConfig(batch_processing_s=0.2)

    class BrokenLedger(MemoryLedger):
        broken = True

        def record_provider_batch(self, token: str, provider_batch_id: str) -> None:
            if self.broken:
                raise RuntimeError("database is locked")
            super().record_provider_batch(token, provider_batch_id)

    requests = make_requests(5)
    ledger = BrokenLedger()
    with pytest.raises(RunAbortedError, match="database is locked"):
        asyncio.run(generate_batches(requests, ledger, run_config(sim.base_url)))
    assert sim.stats.batches_created == 1 and [s.provider_batch_id for s in ledger.open_provider_batches()] == [None]
    ledger.broken = False
    stats = asyncio.run(generate_batches(requests, ledger, run_config(sim.base_url)))
    assert (stats.provider_batches_adopted, stats.provider_batches_submitted, stats.done) == (1, 0, 5)
    assert sim.stats.batches_created == 1
    assert all(n == 1 for n in sim.stats.snapshot()["batch_requests_by_custom_id"].values())
    assert_accounted(requests, ledger, sim)


class _CrashBeforeCreate(MemoryLedger):
    """The process 'dies' right after recording the intent, before `batches.create`."""

    crash = True

    def record_intent(self, token: str, item_ids: list[str]) -> None:
        super().record_intent(token, item_ids)
        if self.crash:
            raise _Crash()


def test_an_intent_whose_batch_was_never_created_is_abandoned_and_submitted_once(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(batch_processing_s=0.2)
    requests = make_requests(4)
    ledger = _CrashBeforeCreate()
    with pytest.raises(_Crash):
        asyncio.run(generate_batches(requests, ledger, run_config(sim.base_url)))
    assert sim.stats.batches_created == 0
    ledger.crash = False
    stats = asyncio.run(generate_batches(requests, ledger, run_config(sim.base_url)))
    assert (stats.provider_batches_adopted, stats.provider_batches_submitted, stats.done) == (0, 1, 4)
    assert sim.stats.batches_created == 1 and "abandoned" in ledger.closed.values()
    assert_accounted(requests, ledger, sim)


class _Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing in the runner may catch it)."""


class CrashingLedger(MemoryLedger):
    """Stores the provider batch, then 'crashes' before the runner polls it (or, with
    `before_record`, between `batches.create` and recording its id)."""

    crash = True
    before_record = False

    def record_provider_batch(self, token: str, provider_batch_id: str) -> None:
        if self.crash and self.before_record:
            raise _Crash()
        super().record_provider_batch(token, provider_batch_id)
        if self.crash:
            raise _Crash()


@pytest.mark.parametrize("before_record", [False, True], ids=["after-record", "between-create-and-record"])
@pytest.mark.parametrize("pass_requests_again", [False, True], ids=["submitted-not-passed", "submitted-passed"])
def test_batches_resume_after_a_crash_without_resubmitting(
    sim: ClaudeSimulator, pass_requests_again: bool, before_record: bool
) -> None:
    sim.config = FaultConfig(batch_processing_s=0.3)
    requests = make_requests(30)
    ledger = CrashingLedger()
    ledger.before_record = before_record
    with pytest.raises(_Crash):
        asyncio.run(generate_batches(requests, ledger, run_config(sim.base_url)))
    assert sim.stats.batches_created == 1 and len(ledger.open_provider_batches()) == 1
    assert not ledger.successes

    ledger.crash = False
    again = requests if pass_requests_again else []
    stats = asyncio.run(generate_batches(again, ledger, run_config(sim.base_url)))

    assert (stats.provider_batches_resumed, stats.provider_batches_submitted) == (1, 0)
    assert stats.provider_batches_adopted == (1 if before_record else 0)
    assert sim.stats.batches_created == 1  # polled again, never resubmitted
    assert all(n == 1 for n in sim.stats.snapshot()["batch_requests_by_custom_id"].values())
    assert stats.done == 30 and not ledger.open_provider_batches()
    assert_accounted(requests, ledger, sim)


def test_a_recorded_batch_the_api_does_not_know_fails_its_items_instead_of_blocking(sim: ClaudeSimulator) -> None:
    requests = make_requests(3)
    ledger = MemoryLedger()
    ledger.record_intent("intent_gone", [r.item_id for r in requests[:2]])
    ledger.record_provider_batch("intent_gone", "msgbatch_gone_0001")
    stats = asyncio.run(generate_batches(requests[2:], ledger, run_config(sim.base_url)))
    assert stats.done == 1 and stats.failures_by_kind == {"missing_result": 2}
    assert ledger.provider_batches["msgbatch_gone_0001"][1] == "not_found"
    assert all("unknown to the API" in ledger.failures[r.item_id][1] for r in requests[:2])


# --- the key never leaks ----------------------------------------------------------------------


def test_the_api_key_appears_nowhere(sim: ClaudeSimulator, rejecting_api: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sim.config = FaultConfig(latency_s=0.005, rpm_limit=10, rate_window_s=0.2, server_error_rate=0.1,
                             overload_rate=0.05, truncation_rate=0.1, refusal_rate=0.1, batch_processing_s=0.05,
                             batch_error_rate=0.2, seed=3)
    config = run_config(sim.base_url, max_concurrency=12, max_attempts_per_item=2)
    ledger = MemoryLedger()
    texts: list[str] = [repr(config), config.model_dump_json()]
    stats_m = asyncio.run(generate_messages(make_requests(40), ledger, config))
    stats_b = asyncio.run(generate_batches(make_requests(30), ledger, config))
    with pytest.raises(RunAbortedError) as info:
        asyncio.run(generate_messages(make_requests(3), MemoryLedger(), run_config(rejecting_api)))
    assert ledger.failures, "the faults should have produced failure reasons to inspect"

    texts += [stats_m.model_dump_json(), stats_b.model_dump_json(), str(info.value), info.value.stats.model_dump_json()]
    texts += [r.model_dump_json() for r in ledger.successes.values()]
    texts += [json.dumps(f) for f in ledger.failures.values()]
    texts.append(caplog.text)
    for text in texts:
        assert KEY not in text
    assert "LEAKCANARY" not in "\n".join(texts)


# --- helpers ----------------------------------------------------------------------------------


def _http(sim: ClaudeSimulator, method: str, path: str) -> dict[str, Any]:
    """A plain HTTP call to the simulator (outside the runner)."""
    req = urllib.request.Request(sim.base_url + path, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"x-api-key": "other-operator", "anthropic-version": "2023-06-01",
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def test_run_stats_has_the_fields_the_asset_reads() -> None:
    fields = set(RunStats.model_fields)
    assert {"done", "failed", "skipped", "requests", "retries", "rate_limited", "input_tokens", "output_tokens",
            "cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd", "wasted_cost_usd", "elapsed_s",
            "throughput_per_s", "failures_by_kind", "provider_batches_submitted", "provider_batches_resumed"} <= fields
