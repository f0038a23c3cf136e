"""The loopback Claude simulator, exercised only through the real `anthropic` SDK (or plain HTTP)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from lora_assets.core.prompt import scaffolding_block
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.schemas import RawConversation

MODEL = "claude-haiku-5-5"
SCAFFOLDING = {
    "persona_name": "Marcus Chen",
    "persona_archetype": "The Pragmatic Optimist",
    "persona_demographics": "Age 37, male, Urban/Suburban, Married, 2 children",
    "persona_financial_background": "Household income $118,000; $23,500 in a high-yield savings account",
    "arc_name": "Confusion → Clarity",
    "arc_starting_emotion": "Confusion",
    "arc_ending_emotion": "Clarity",
    "topic_name": "Building an emergency fund",
    "topic_description": "How much cash to keep for emergencies and where to hold it",
    "turn_count": "6",
}


def prompt(**overrides: str) -> str:
    """A user prompt like the pipeline's: instructions followed by the scaffolding block."""
    return "Write one conversation as JSON.\n\n" + scaffolding_block({**SCAFFOLDING, **overrides})


def create(client: anthropic.Anthropic, key: str | None = None, max_tokens: int = 4000, **kwargs: Any) -> anthropic.types.Message:
    headers = {"x-lora-item-id": key} if key else None
    kwargs.setdefault("messages", [{"role": "user", "content": prompt()}])
    return client.messages.create(model=MODEL, max_tokens=max_tokens, extra_headers=headers, **kwargs)


def text_of(message: anthropic.types.Message) -> str:
    return next(block.text for block in message.content if block.type == "text")


def wait_ended(client: anthropic.Anthropic, batch_id: str) -> anthropic.types.messages.MessageBatch:
    """Poll like a real client would (bounded number of polls, no timing assertion)."""
    for _ in range(400):
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} never ended")


def batch_requests(n: int, prefix: str = "item") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "params": {"model": MODEL, "max_tokens": 4000, "messages": [{"role": "user", "content": prompt()}]},
        }
        for i in range(n)
    ]


@pytest.fixture
def sim() -> Iterator[ClaudeSimulator]:
    with ClaudeSimulator(FaultConfig(batch_processing_s=0.2)) as simulator:
        yield simulator


@pytest.fixture
def client(sim: ClaudeSimulator) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=sim.base_url, api_key="test-key", max_retries=0)
    yield c
    c.close()


# ---------------------------------------------------------------------------------------------
# Content


def test_conversation_is_schema_valid_and_follows_the_scaffolding(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=4000, messages=[{"role": "user", "content": prompt()}], extra_headers={"x-lora-item-id": "a1"}
    )
    assert raw.headers["x-lora-simulator"] == "true"
    assert raw.headers["request-id"].startswith("req_")
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        for part in ("limit", "remaining", "reset"):
            assert raw.headers[f"anthropic-ratelimit-{kind}-{part}"]
    message = raw.parse()
    assert message.id.startswith("msg_sim_")
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    # Haiku 5.5 thinks by default: a thinking block (text omitted, signature kept) leads.
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "" and message.content[0].signature  # type: ignore[union-attr]

    conversation = RawConversation.model_validate_json(text_of(message))
    meta = conversation.conversation_metadata
    assert meta.client_persona == "Marcus Chen - The Pragmatic Optimist"
    for field in (meta.session_context, meta.conversation_phase, meta.expected_outcome):
        assert "emergency fund" in field
        assert "confusion" in field.lower() or "clarity" in field.lower()

    turns = conversation.turns
    assert [t.turn_number for t in turns] == list(range(1, 7))
    assert [t.role for t in turns] == ["user", "assistant"] * 3
    user_turns = [t for t in turns if t.role == "user"]
    assert all(t.emotional_context is not None for t in user_turns)
    assert user_turns[0].emotional_context.primary_emotion == "confusion"  # type: ignore[union-attr]
    assert user_turns[-1].emotional_context.primary_emotion == "clarity"  # type: ignore[union-attr]
    assert all(0.0 <= t.emotional_context.intensity <= 1.0 for t in user_turns)  # type: ignore[union-attr]
    assert all("Marcus" in t.content for t in turns if t.role == "assistant")
    assert "$" in " ".join(t.content for t in turns)  # concrete figures
    # Advisor turns acknowledge the client's feeling before the facts.
    for user, advisor in zip(turns[::2], turns[1::2]):
        emotion = user.emotional_context.primary_emotion  # type: ignore[union-attr]
        first_figure = next(i for i, ch in enumerate(advisor.content) if ch.isdigit())
        assert 0 <= advisor.content.find(emotion) < first_figure


def test_same_key_same_text_and_different_keys_vary(client: anthropic.Anthropic) -> None:
    first = text_of(create(client, "item-1"))
    assert text_of(create(client, "item-1")) == first
    texts = {text_of(create(client, f"item-{i}")) for i in range(8)}
    assert len(texts) == 8
    openers = {RawConversation.model_validate_json(t).turns[0].content for t in texts}
    assert len(openers) > 2  # phrase banks vary, not just the numbers


def test_request_key_falls_back_to_a_hash_of_the_body(client: anthropic.Anthropic, sim: ClaudeSimulator) -> None:
    assert text_of(create(client)) == text_of(create(client))
    (key,) = sim.stats.attempts_by_key
    assert key.startswith("body:") and sim.stats.attempts_by_key[key] == 2


@pytest.mark.parametrize(("requested", "expected"), [("4", 4), ("7", 7), ("10", 10), ("2", 4), ("30", 10), ("many", 6)])
def test_turn_count_comes_from_the_block_and_is_clamped(client: anthropic.Anthropic, requested: str, expected: int) -> None:
    message = create(client, f"turns-{requested}", messages=[{"role": "user", "content": prompt(turn_count=requested)}])
    turns = RawConversation.model_validate_json(text_of(message)).turns
    assert len(turns) == expected
    assert [t.role for t in turns] == (["user", "assistant"] * 5)[:expected]


def test_without_scaffolding_a_generic_conversation_is_still_valid(client: anthropic.Anthropic) -> None:
    message = create(client, "plain", messages=[{"role": "user", "content": [{"type": "text", "text": "Write a conversation."}]}])
    conversation = RawConversation.model_validate_json(text_of(message))
    assert len(conversation.turns) == 6


def test_the_last_user_message_is_the_one_read(client: anthropic.Anthropic) -> None:
    messages = [
        {"role": "user", "content": prompt(persona_name="Old Name")},
        {"role": "assistant", "content": "{}"},
        {"role": "user", "content": prompt(persona_name="Priya Nair")},
    ]
    conversation = RawConversation.model_validate_json(text_of(create(client, "multi", messages=messages)))
    assert conversation.conversation_metadata.client_persona.startswith("Priya Nair - ")


# ---------------------------------------------------------------------------------------------
# Protocol: auth, errors, usage, count_tokens


def _post(url: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def _get(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"x-api-key": "test-key", "anthropic-version": "2023-06-01"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_both_auth_headers_accepted_and_none_is_401(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    # The 2.x SDK itself authenticates with a Bearer token.
    assert client.auth_headers == {"Authorization": "Bearer test-key"}
    assert create(client, "auth").stop_reason == "end_turn"

    body = {"model": MODEL, "max_tokens": 1000, "messages": [{"role": "user", "content": prompt()}]}
    base = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    status, headers, payload = _post(f"{sim.base_url}/v1/messages", {**base, "x-api-key": "test-key"}, body)
    assert status == 200 and payload["id"].startswith("msg_sim_")

    status, headers, payload = _post(f"{sim.base_url}/v1/messages", base, body)
    assert status == 401
    assert payload["type"] == "error" and payload["error"]["type"] == "authentication_error"
    assert headers["x-lora-simulator"] == "true"

    no_auth = anthropic.Anthropic(base_url=sim.base_url, api_key="x", max_retries=0, default_headers={"Authorization": anthropic.omit})
    with pytest.raises(anthropic.AuthenticationError):
        create(no_auth)
    no_auth.close()


def test_unknown_routes_and_bad_bodies_use_the_error_shape(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        client.messages.batches.retrieve("msgbatch_does_not_exist")
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=100, messages=[])
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    status, _, payload = _post(f"{sim.base_url}/v1/nope", {"x-api-key": "k", "anthropic-version": "2023-06-01"}, {})
    assert status == 404 and payload["error"]["type"] == "not_found_error"


def test_usage_counts_tokens_and_caches_system_blocks(client: anthropic.Anthropic) -> None:
    system_text = "You write realistic training conversations. " * 100
    system = [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}]
    user = prompt()

    first = create(client, "u1", system=system, messages=[{"role": "user", "content": user}])
    second = create(client, "u2", system=system, messages=[{"role": "user", "content": user}])
    cached = math.ceil(len(system_text) / 4)
    assert cached >= 512  # the 5.5 models' minimum cacheable prompt
    assert first.usage.cache_creation_input_tokens == cached and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == cached and second.usage.cache_creation_input_tokens == 0
    for message in (first, second):
        assert message.usage.input_tokens == math.ceil(len(user) / 4)  # cached tokens are not in input_tokens
        thinking = message.usage.output_tokens_details.thinking_tokens  # type: ignore[union-attr]
        assert message.usage.output_tokens == thinking + math.ceil(len(text_of(message)) / 4)

    # A different system text is a cache miss; an uncached system counts as ordinary input.
    other_text = "Other. " * 300
    other = create(client, "u3", system=[{"type": "text", "text": other_text, "cache_control": {"type": "ephemeral"}}])
    assert other.usage.cache_creation_input_tokens == math.ceil(len(other_text) / 4)
    plain = create(client, "u4", system="S" * 400, messages=[{"role": "user", "content": user}])
    assert plain.usage.cache_creation_input_tokens == 0 and plain.usage.cache_read_input_tokens == 0
    assert plain.usage.input_tokens == math.ceil((400 + len(user)) / 4)


def test_count_tokens(client: anthropic.Anthropic) -> None:
    user = prompt()
    counted = client.messages.count_tokens(model=MODEL, system="S" * 100, messages=[{"role": "user", "content": user}])
    assert counted.input_tokens == math.ceil((100 + len(user)) / 4)


def test_every_sdk_param_our_client_uses_is_accepted(client: anthropic.Anthropic) -> None:
    """Valid optional params pass the strict contract (the structured-output schema as the SDK's
    `transform_schema` writes it, thinking turned off at the default effort)."""
    message = create(
        client,
        "extras",
        metadata={"user_id": "u"},
        thinking={"type": "disabled"},
        output_config={"effort": "low", "format": {"type": "json_schema", "schema": anthropic.transform_schema(RawConversation)}},
    )
    assert [b.type for b in message.content] == ["text"]  # thinking off: no thinking block
    assert message.usage.output_tokens_details is None
    RawConversation.model_validate_json(text_of(message))


# ---------------------------------------------------------------------------------------------
# Faults


def test_overload_is_529(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(overload_rate=1.0)
    with pytest.raises(anthropic.OverloadedError) as err:
        create(client, "o")
    assert err.value.status_code == 529
    assert err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert err.value.response.headers["x-lora-simulator"] == "true"


def test_server_error_is_500(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(server_error_rate=1.0)
    with pytest.raises(anthropic.InternalServerError) as err:
        create(client, "s")
    assert err.value.status_code == 500
    assert err.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_slow_response_makes_the_client_time_out(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(slow_rate=1.0, slow_s=30.0)
    impatient = anthropic.Anthropic(base_url=sim.base_url, api_key="test-key", max_retries=0, timeout=0.3)
    with pytest.raises(anthropic.APITimeoutError):
        create(impatient, "slow")
    impatient.close()
    assert sim.stats.by_outcome["slow"] == 1
    assert sim.stats.delivered_by_key["slow"] == 0
    # stop() (the fixture) wakes the sleeping handler instead of waiting 30 s.


def test_truncation_fault_cuts_the_json(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(truncation_rate=1.0)
    message = create(client, "t")
    assert message.stop_reason == "max_tokens"
    with pytest.raises(ValueError):
        json.loads(text_of(message))
    assert text_of(message).startswith('{"conversation_metadata"')


def test_natural_truncation_at_max_tokens(client: anthropic.Anthropic, sim: ClaudeSimulator) -> None:
    message = create(client, "short", max_tokens=50, thinking={"type": "disabled"})
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 50 and len(text_of(message)) == 200
    assert sim.stats.by_outcome["truncated"] == 1 and sim.stats.delivered_by_key["short"] == 0


def test_malformed_json_with_end_turn(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(malformed_rate=1.0)
    texts = [text_of(create(client, f"m{i}")) for i in range(8)]
    for text in texts:
        with pytest.raises(ValueError):
            json.loads(text)
    assert len(set(texts)) == 8
    assert sim.stats.by_outcome["malformed"] == 8 and not sim.stats.delivered_by_key


def test_refusal(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(refusal_rate=1.0)
    message = create(client, "r")
    assert message.stop_reason == "refusal"
    assert len(text_of(message)) < 100 and "{" not in text_of(message)


def test_wrapped_json_inside_a_fence_with_prose(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(wrapped_rate=1.0)
    message = create(client, "w")
    text = text_of(message)
    assert message.stop_reason == "end_turn"
    assert not text.startswith("{") and "```json\n" in text and not text.endswith("```")
    inner = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    RawConversation.model_validate_json(inner)


def test_thinking_block_comes_first(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(thinking_rate=1.0)
    message = create(client, "th")
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking  # type: ignore[union-attr]
    RawConversation.model_validate_json(text_of(message))
    assert sim.stats.delivered_by_key["th"] == 1


def test_thinking_fault_on_a_judge_request_still_answers(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    """A thinking fault on a `<judge_request>` prompt answers with a thinking block and the
    scores (it used to fail with a 500: there was no conversation to think about)."""
    sim.config = FaultConfig(thinking_rate=1.0)
    judge = "<judge_request>\nCLIENT: hello\nADVISOR: I understand.\n</judge_request>"
    message = create(client, "judge-th", messages=[{"role": "user", "content": judge}])
    assert json.loads(text_of(message))["empathy_score"] >= 3.0


def test_the_answer_is_the_composers_conversation(client: anthropic.Anthropic) -> None:
    """The Messages text is exactly `content.compose_conversation` of the prompt's scaffolding
    and the request key (pure, so benchmarks and tests can compose without HTTP)."""
    from lora_assets.core.prompt import parse_scaffolding_block
    from lora_assets.generation.simulator import compose_conversation

    composed = compose_conversation(parse_scaffolding_block(prompt()), "same-as-http")
    assert json.loads(text_of(create(client, "same-as-http"))) == composed
    assert compose_conversation(parse_scaffolding_block(prompt()), "same-as-http") == composed


def test_package_keeps_the_names_callers_import() -> None:
    """The split package still offers every name other modules, benches and tests import,
    including the private ones used before the split (aliases of the public names)."""
    from lora_assets.generation import simulator
    from lora_assets.generation.simulator import content, faults

    assert simulator._compose_conversation is content.compose_conversation
    assert simulator._judge_scores is content.judge_scores
    assert simulator._MESSAGE_FAULTS is faults.MESSAGE_FAULTS
    assert (simulator._pick, simulator._unit) == (faults.pick, faults.unit)
    assert {"ClaudeSimulator", "FaultConfig", "SimulatorStats", "serve"} <= set(simulator.__all__)


def test_rpm_limit_returns_429_with_retry_after(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(rpm_limit=3, rate_window_s=60.0)
    for i in range(3):
        create(client, f"rl{i}")
    with pytest.raises(anthropic.RateLimitError) as err:
        create(client, "rl3")
    headers = err.value.response.headers
    assert err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "retry-after-ms" not in headers  # the API sends whole seconds only
    assert 18 <= int(headers["retry-after"]) <= 20  # one request refills in 60 s / 3 (less the time taken), rounded up
    assert headers["anthropic-ratelimit-requests-limit"] == "3"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert sim.stats.by_outcome["rate_limited"] == 1

    sim.config = FaultConfig()  # faults can change mid-test
    assert create(client, "rl3").stop_reason == "end_turn"


def _status_pattern(seed: int) -> list[list[int]]:
    """For ten keys, retry by hand until success; the status codes seen per key."""
    config = FaultConfig(overload_rate=0.3, server_error_rate=0.2, seed=seed)
    with ClaudeSimulator(config) as simulator:
        c = anthropic.Anthropic(base_url=simulator.base_url, api_key="test-key", max_retries=0)
        patterns = []
        for k in range(10):
            seen: list[int] = []
            for _ in range(20):
                try:
                    create(c, f"key-{k}")
                    seen.append(200)
                    break
                except anthropic.APIStatusError as err:
                    seen.append(err.status_code)
            patterns.append(seen)
        c.close()
    return patterns


def test_faults_are_deterministic_per_seed_key_and_attempt() -> None:
    pattern = _status_pattern(seed=7)
    assert all(p[-1] == 200 for p in pattern)  # a retry eventually succeeds
    assert any(len(p) > 1 for p in pattern)  # and some first attempts failed
    assert {529, 500} <= {code for p in pattern for code in p}
    assert _status_pattern(seed=7) == pattern
    assert _status_pattern(seed=8) != pattern


def test_sdk_retries_honour_retry_after(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(rpm_limit=1, rate_window_s=1.0)
    retrying = anthropic.Anthropic(base_url=sim.base_url, api_key="test-key", max_retries=5)
    create(retrying, "r0")
    assert create(retrying, "r1").stop_reason == "end_turn"  # 429 first, then the SDK waits and retries
    retrying.close()
    assert sim.stats.attempts_by_key["r1"] >= 2 and sim.stats.delivered_by_key["r1"] == 1


# ---------------------------------------------------------------------------------------------
# Message Batches


def test_batch_lifecycle_and_results(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    # Results exist only once a batch has ended (a long batch, so this cannot race).
    sim.config = FaultConfig(batch_processing_s=3600)
    pending = client.messages.batches.create(requests=batch_requests(1, prefix="pending"))  # type: ignore[arg-type]
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(pending.id)
    status, payload = _get(f"{sim.base_url}/v1/messages/batches/{pending.id}/results")
    assert status == 400 and payload["error"]["type"] == "invalid_request_error"

    sim.config = FaultConfig(batch_processing_s=0.2)
    batch = client.messages.batches.create(requests=batch_requests(6))  # type: ignore[arg-type]
    assert batch.id.startswith("msgbatch_")
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 6 and batch.results_url is None

    ended = wait_ended(client, batch.id)
    assert ended.request_counts.succeeded == 6 and ended.request_counts.processing == 0
    assert ended.ended_at is not None
    assert ended.results_url == f"{sim.base_url}/v1/messages/batches/{batch.id}/results"

    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == {f"item-{i}" for i in range(6)}
    for custom_id, result in results.items():
        assert result.type == "succeeded"
        assert result.message.id.startswith("msg_sim_")  # type: ignore[union-attr]
        assert result.message.usage.service_tier == "batch"  # type: ignore[union-attr]
        RawConversation.model_validate_json(text_of(result.message))  # type: ignore[union-attr]
        # Same request key, same text as in Messages mode.
        assert text_of(result.message) == text_of(create(client, custom_id))  # type: ignore[union-attr]

    snap = sim.stats.snapshot()
    assert snap["batches_created"] == 2
    assert snap["batch_requests_by_custom_id"] == {"pending-0": 1, **{f"item-{i}": 1 for i in range(6)}}
    assert all(snap["delivered_by_key"][f"item-{i}"] == 2 for i in range(6))  # one batch + one Messages call


def test_batch_errored_and_expired_at_set_rates(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(batch_error_rate=0.3, batch_expire_rate=0.3, batch_processing_s=0.1, seed=3)
    batch = client.messages.batches.create(requests=batch_requests(40))  # type: ignore[arg-type]
    ended = wait_ended(client, batch.id)
    results = list(client.messages.batches.results(batch.id))
    by_type: dict[str, int] = {}
    for r in results:
        by_type[r.result.type] = by_type.get(r.result.type, 0) + 1
    counts = ended.request_counts
    assert len(results) == 40
    assert by_type == {k: v for k, v in {"succeeded": counts.succeeded, "errored": counts.errored, "expired": counts.expired}.items() if v}
    assert counts.errored > 0 and counts.expired > 0 and counts.succeeded > 0
    errored = next(r.result for r in results if r.result.type == "errored")
    assert errored.error.error.type == "api_error"  # type: ignore[union-attr]
    assert sim.stats.by_outcome["batch_errored"] == counts.errored
    assert sim.stats.by_outcome["batch_expired"] == counts.expired
    assert sum(sim.stats.delivered_by_key.values()) == counts.succeeded

    # Resubmitting the failed ones is a new attempt per custom_id, so they can now succeed.
    failed = [r.custom_id for r in results if r.result.type != "succeeded"]
    retry = [req for req in batch_requests(40) if req["custom_id"] in failed]
    sim.config = FaultConfig(batch_processing_s=0.05)
    second = wait_ended(client, client.messages.batches.create(requests=retry).id)  # type: ignore[arg-type]
    assert second.request_counts.succeeded == len(failed)
    assert all(sim.stats.batch_requests_by_custom_id[c] == 2 for c in failed)
    assert all(n == 1 for n in sim.stats.delivered_by_key.values())  # nothing delivered twice


def test_batch_content_faults_apply_to_succeeded_results(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(truncation_rate=1.0, batch_processing_s=0.05)
    batch = client.messages.batches.create(requests=batch_requests(2))  # type: ignore[arg-type]
    wait_ended(client, batch.id)
    for r in client.messages.batches.results(batch.id):
        assert r.result.type == "succeeded" and r.result.message.stop_reason == "max_tokens"  # type: ignore[union-attr]
    assert not sim.stats.delivered_by_key


def test_batch_list_cancel_and_delete(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    sim.config = FaultConfig(batch_processing_s=3600)
    ids = [client.messages.batches.create(requests=batch_requests(3, prefix=f"b{i}")).id for i in range(3)]  # type: ignore[arg-type]

    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids[::-1]  # auto-paginates, newest first

    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(ids[0])  # still in progress

    canceling = client.messages.batches.cancel(ids[0])
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    ended = wait_ended(client, ids[0])
    assert ended.request_counts.canceled == 3
    assert {r.result.type for r in client.messages.batches.results(ids[0])} == {"canceled"}
    assert sim.stats.by_outcome["batch_canceled"] == 3

    deleted = client.messages.batches.delete(ids[0])
    assert deleted.id == ids[0] and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(ids[0])
    assert client.messages.batches.retrieve(ids[1]).processing_status == "in_progress"


def test_batch_rejects_bad_custom_ids(client: anthropic.Anthropic) -> None:
    requests = batch_requests(2)
    requests[1]["custom_id"] = requests[0]["custom_id"]
    with pytest.raises(anthropic.BadRequestError, match="duplicate"):
        client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        client.messages.batches.create(requests=[{**batch_requests(1)[0], "custom_id": "has space"}])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# Stats, async client, lifecycle


def test_stats_counters_snapshot_and_reset(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    create(client, "k1")
    create(client, "k1")
    sim.config = FaultConfig(overload_rate=1.0)
    with pytest.raises(anthropic.OverloadedError):
        create(client, "k2")
    snap = sim.stats.snapshot()
    assert snap["requests_total"] == 3
    assert snap["by_status"] == {200: 2, 529: 1}
    assert snap["by_outcome"] == {"ok": 2, "overloaded": 1}
    assert snap["attempts_by_key"] == {"k1": 2, "k2": 1}
    assert snap["delivered_by_key"] == {"k1": 2}
    json.dumps(snap)  # plain data

    sim.reset_stats()
    assert sim.stats.snapshot()["requests_total"] == 0 and not sim.stats.attempts_by_key


def test_async_client_concurrent_requests(sim: ClaudeSimulator) -> None:
    async def run() -> list[anthropic.types.Message]:
        async with anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="test-key", max_retries=0) as c:
            return await asyncio.gather(
                *(
                    c.messages.create(
                        model=MODEL,
                        max_tokens=4000,
                        messages=[{"role": "user", "content": prompt()}],
                        extra_headers={"x-lora-item-id": f"async-{i}"},
                    )
                    for i in range(12)
                )
            )

    messages = asyncio.run(run())
    assert len({m.id for m in messages}) == 12
    for m in messages:
        RawConversation.model_validate_json(text_of(m))
    assert sim.stats.delivered_by_key == {f"async-{i}": 1 for i in range(12)}


def test_stop_frees_the_port_and_is_idempotent() -> None:
    simulator = ClaudeSimulator().start()
    try:
        port = int(simulator.base_url.rsplit(":", 1)[1])
        c = anthropic.Anthropic(base_url=simulator.base_url, api_key="test-key", max_retries=0)
        create(c, "before-stop")  # leaves a keep-alive connection open
    finally:
        simulator.stop()
    simulator.stop()
    with pytest.raises(anthropic.APIConnectionError):
        create(c, "after-stop")
    c.close()
    # The port can be bound again: a new simulator serves on it.
    with ClaudeSimulator(port=port) as again:
        assert again.base_url == f"http://127.0.0.1:{port}"
        c = anthropic.Anthropic(base_url=again.base_url, api_key="test-key", max_retries=0)
        assert create(c, "after-restart").stop_reason == "end_turn"
        c.close()


def test_base_url_needs_start() -> None:
    with pytest.raises(RuntimeError):
        _ = ClaudeSimulator().base_url


def test_serve_runs_in_the_foreground_until_sigterm() -> None:
    code = "from lora_assets.generation.simulator import FaultConfig, serve; serve('127.0.0.1', 0, FaultConfig())"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", proc.stderr.readline())
        assert match, "serve() did not report its address"
        c = anthropic.Anthropic(base_url=match.group(1), api_key="test-key", max_retries=0)
        assert create(c, "served").id.startswith("msg_sim_")
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
