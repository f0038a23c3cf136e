"""One request, end to end: the real SDK talks HTTP to the loopback simulator; we check the body
we send, what we read back, and how every failure is classified."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any

import json

import pytest
from anthropic.types import Message

from lora_assets.core.prompt import scaffolding_block
from lora_assets.generation.client import (
    DEFAULT_EFFORT,
    ITEM_ID_HEADER,
    OUTPUT_SCHEMA,
    BadRequestError,
    ConnectionFailedError,
    ContextExceededError,
    GenerationRequest,
    OverloadedError,
    RateLimitedError,
    RefusalError,
    RequestTimeoutError,
    ServerError,
    TruncatedError,
    build_record,
    check_message,
    MessagesClient,
    message_params,
    message_text,
    rate_limit_snapshot,
    retry_after_seconds,
    send_message,
)
from lora_assets.generation.pricing import cost_usd
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.schemas import RawConversation

MODEL = "claude-haiku-5-5"
SYSTEM = "You write realistic financial-planning training conversations as one JSON object. " * 30


def make_request(item_id: str | None = None) -> GenerationRequest:
    """A request whose user prompt carries the scaffolding block the simulator composes from."""
    variables = {
        "persona_name": "Maya Ortiz",
        "persona_archetype": "The Overwhelmed Parent",
        "persona_demographics": "Age 37, female, Urban/Suburban",
        "persona_financial_background": "Income $84,000; $6,000 in savings",
        "arc_name": "Anxiety → Confidence",
        "arc_starting_emotion": "anxiety",
        "arc_ending_emotion": "confidence",
        "topic_name": "Emergency fund",
        "topic_description": "How much cash to keep and where.",
        "turn_count": "6",
    }
    return GenerationRequest(
        item_id=item_id or str(uuid.uuid4()),
        system=SYSTEM,
        user="Write the conversation.\n\n" + scaffolding_block(variables),
    )


@pytest.fixture
def sim() -> Iterator[ClaudeSimulator]:
    simulator = ClaudeSimulator(FaultConfig()).start()
    yield simulator
    simulator.stop()


async def _send(sim: ClaudeSimulator, request: GenerationRequest, *, timeout_s: float = 10.0, model: str = MODEL) -> Any:
    client = MessagesClient("sk-test-client", sim.base_url, timeout_s)
    try:
        return await send_message(client, request, model)
    finally:
        await client.close()


def _send_error(sim: ClaudeSimulator, request: GenerationRequest, **kwargs: Any) -> Exception:
    try:
        asyncio.run(_send(sim, request, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
        return exc
    raise AssertionError("expected the request to fail")


# --- the request body -------------------------------------------------------------------------


def _objects(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _objects(value)


def _all_dicts(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _all_dicts(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _all_dicts(value)


def test_body_caches_the_system_prompt_and_asks_for_the_conversation_schema() -> None:
    params = message_params(make_request("item-1"), MODEL)
    assert params["model"] == MODEL
    assert params["system"] == [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    assert params["output_config"] == {"format": {"type": "json_schema", "schema": OUTPUT_SCHEMA},
                                       "effort": DEFAULT_EFFORT}
    # Thinking is an explicit choice, never the model's silent default.
    assert params["thinking"] == {"type": "adaptive"}
    # API 2026-10-21 rejects sampling parameters and assistant prefill.
    assert not {"temperature", "top_p", "top_k"} & params.keys()
    assert [m["role"] for m in params["messages"]] == ["user"]


def test_effort_off_disables_thinking_and_a_short_system_prompt_is_not_marked_for_caching() -> None:
    params = message_params(make_request("item-1"), MODEL, effort="off", max_tokens=3000)
    assert params["thinking"] == {"type": "disabled"} and "effort" not in params["output_config"]
    assert params["max_tokens"] == 3000
    short = GenerationRequest(item_id="short", system="Be brief.", user="hi")
    # Far below the 512-token cache minimum: a breakpoint there could never hit.
    assert "cache_control" not in message_params(short, MODEL)["system"][0]
    with pytest.raises(ValueError, match="effort 'huge'"):
        message_params(short, MODEL, effort="huge")


def test_output_schema_is_strict_and_describes_raw_conversation() -> None:
    objects = list(_objects(OUTPUT_SCHEMA))
    assert len(objects) >= 4  # root, metadata, turn, emotional context
    assert all(o["additionalProperties"] is False for o in objects)
    assert OUTPUT_SCHEMA["required"] == ["conversation_metadata", "turns"]
    # Constraints the API does not take (minLength, minimum, ...) are moved into descriptions.
    assert all("minLength" not in o for o in _all_dicts(OUTPUT_SCHEMA))
    assert set(RawConversation.model_fields) == set(OUTPUT_SCHEMA["properties"])


def test_item_ids_are_limited_to_what_custom_id_accepts() -> None:
    with pytest.raises(ValueError):
        GenerationRequest(item_id="has space", system="s", user="u")
    with pytest.raises(ValueError):
        GenerationRequest(item_id="x" * 65, system="s", user="u")


# --- a success --------------------------------------------------------------------------------


def test_success_reads_message_headers_and_builds_the_record(sim: ClaudeSimulator) -> None:
    request = make_request()
    sent = asyncio.run(_send(sim, request))
    assert isinstance(sent.message, Message)
    assert sent.message.stop_reason == "end_turn"
    assert sent.request_id and sent.request_id.startswith("req_sim_")
    assert sent.rate_limit.limit and sent.rate_limit.remaining is not None and sent.rate_limit.reset_at
    assert sim.stats.attempts_by_key[request.item_id] == 1  # the item id header was sent

    record = build_record(request.item_id, sent.message, MODEL, request_id=sent.request_id, batch=False)
    assert record.generator == "simulator"
    assert record.response == sent.message.model_dump(mode="json")
    assert record.usage.output_tokens == sent.message.usage.output_tokens > 0
    assert record.cost_usd == pytest.approx(cost_usd(MODEL, record.usage, batch=False))
    assert record.request_id == sent.request_id
    RawConversation.model_validate_json(message_text(sent.message))


def test_second_request_reads_the_cached_system_prompt(sim: ClaudeSimulator) -> None:
    first = asyncio.run(_send(sim, make_request())).message.usage
    second = asyncio.run(_send(sim, make_request())).message.usage
    assert first.cache_creation_input_tokens > 0 and not first.cache_read_input_tokens
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens


def test_a_leading_thinking_block_is_skipped_when_reading_text(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(thinking_rate=1.0)
    sent = asyncio.run(_send(sim, make_request()))
    assert sent.message.content[0].type == "thinking"
    check_message("x", sent.message, MODEL, batch=False)  # a whole answer
    RawConversation.model_validate_json(message_text(sent.message))


# --- stop reasons -----------------------------------------------------------------------------


def test_truncation_is_a_retryable_failure_that_cost_money(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(truncation_rate=1.0)
    sent = asyncio.run(_send(sim, make_request()))
    with pytest.raises(TruncatedError) as info:
        check_message("item-t", sent.message, MODEL, batch=False)
    assert info.value.retryable and info.value.kind == "truncated" and info.value.item_id == "item-t"
    assert info.value.cost_usd > 0 and "max_tokens" in info.value.reason


def test_refusal_is_a_retryable_failure_quoting_the_refusal(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(refusal_rate=1.0)
    sent = asyncio.run(_send(sim, make_request()))
    with pytest.raises(RefusalError) as info:
        check_message("item-r", sent.message, MODEL, batch=False)
    assert info.value.retryable and "refusal" in info.value.reason and info.value.cost_usd > 0


def test_malformed_json_on_end_turn_is_not_a_generation_failure(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(malformed_rate=1.0)
    sent = asyncio.run(_send(sim, make_request()))
    check_message("item-m", sent.message, MODEL, batch=False)  # stored; parsing judges it later
    with pytest.raises(ValueError):
        RawConversation.model_validate_json(message_text(sent.message))


def test_context_window_exceeded_is_not_retried(sim: ClaudeSimulator) -> None:
    data = asyncio.run(_send(sim, make_request())).message.model_dump(mode="json")
    data["stop_reason"] = "model_context_window_exceeded"
    with pytest.raises(ContextExceededError) as info:
        check_message("item-c", Message.model_validate(data), MODEL, batch=False)
    assert not info.value.retryable and info.value.kind == "context_exceeded"


# --- transport and status failures ------------------------------------------------------------


def test_429_is_rate_limited_with_the_servers_wait_and_headers(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(rpm_limit=1, rate_window_s=30)
    asyncio.run(_send(sim, make_request()))
    err = _send_error(sim, make_request())
    assert isinstance(err, RateLimitedError) and err.retryable
    assert err.retry_after_s is not None and 0 < err.retry_after_s <= 30
    assert err.rate_limit is not None and err.rate_limit.remaining == 0
    assert "429" in err.reason


def test_529_is_overloaded(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(overload_rate=1.0)
    err = _send_error(sim, make_request())
    assert isinstance(err, OverloadedError) and err.retryable and "529" in err.reason


def test_500_is_a_server_error(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(server_error_rate=1.0)
    err = _send_error(sim, make_request())
    assert isinstance(err, ServerError) and err.retryable and err.kind == "server_error"


def test_no_answer_within_the_timeout_is_a_timeout(sim: ClaudeSimulator) -> None:
    sim.config = FaultConfig(slow_rate=1.0, slow_s=5.0)
    request = make_request()
    err = _send_error(sim, request, timeout_s=0.3)
    assert isinstance(err, RequestTimeoutError) and err.retryable and err.kind == "timeout"
    assert sim.stats.delivered_by_key.get(request.item_id, 0) == 0  # nothing reached us, nothing paid


def test_a_4xx_is_a_bad_request_and_not_retried(sim: ClaudeSimulator) -> None:
    err = _send_error(sim, make_request(), model="claude-nonexistent-9")
    # The API answers an unknown model 404 not_found_error: the same request fails the same way.
    assert isinstance(err, BadRequestError) and not err.retryable and "404 not_found_error" in err.reason


def test_a_refused_connection_is_a_connection_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    class _Closed:
        base_url = f"http://127.0.0.1:{port}"

    err = _send_error(_Closed(), make_request())  # type: ignore[arg-type]
    assert isinstance(err, ConnectionFailedError) and err.retryable and err.kind == "connection"


# --- header parsing ---------------------------------------------------------------------------


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({}) is None
    in_3s = retry_after_seconds({"retry-after": formatdate(time.time() + 3, usegmt=True)})
    assert in_3s is not None and 1 <= in_3s <= 3


def test_rate_limit_snapshot_reads_rfc3339_reset() -> None:
    snap = rate_limit_snapshot({
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-11-21T04:00:00.500000Z",
    })
    assert (snap.limit, snap.remaining) == (50, 49)
    assert snap.reset_at == datetime(2026, 11, 21, 4, 0, 0, 500000, tzinfo=timezone.utc).timestamp()
    assert rate_limit_snapshot({}).limit is None


def test_item_header_name_is_the_one_the_simulator_keys_on() -> None:
    assert ITEM_ID_HEADER == "x-lora-item-id"


def test_the_encoded_body_is_the_params_as_json() -> None:
    from lora_assets.generation.client import encode_params

    for effort, max_tokens in (("low", None), ("off", 1234), ("max", 99)):
        request = make_request("item-9")
        assert json.loads(encode_params(request, MODEL, effort=effort, max_tokens=max_tokens)) == \
            message_params(request, MODEL, effort=effort, max_tokens=max_tokens)
    judge = GenerationRequest(item_id="j", system="Judge ü \"quoted\"", user="línea\n2", output_schema={"type": "object"})
    assert json.loads(encode_params(judge, MODEL)) == message_params(judge, MODEL)


def test_higher_efforts_get_room_for_thinking_above_the_requests_own_limit() -> None:
    from lora_assets.generation.client import max_tokens_cap

    request = make_request("item-7")
    caps = [max_tokens_cap(request, e) for e in ("off", "low", "medium", "high", "xhigh", "max")]
    assert caps[:3] == [request.max_tokens] * 3 and caps == sorted(caps) and caps[-1] == 4 * request.max_tokens
