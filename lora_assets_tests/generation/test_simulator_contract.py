"""The simulator's strict contract: one test per rule, through the real `anthropic` SDK over HTTP.

Each refusal must use the API's error shape ({"type": "error", "error": {"type": ...,
"message": ...}, "request_id": ...}) with a message naming the field."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.generation.simulator.contract import BATCH_MAX_BYTES, BATCH_MAX_REQUESTS, output_schema_problem
from lora_assets.schemas import RawConversation

MODEL = "claude-haiku-5-5"
USER = [{"role": "user", "content": "Write one conversation as JSON."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[ClaudeSimulator]:
    with ClaudeSimulator(FaultConfig(batch_processing_s=0.05)) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def client(sim: ClaudeSimulator) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=sim.base_url, api_key="test-key", max_retries=0)
    yield c
    c.close()


def refused(call: Any, error: type[anthropic.APIStatusError] = anthropic.BadRequestError) -> str:
    """Run `call`, expect `error` in the API's error shape; its message."""
    with pytest.raises(error) as info:
        call()
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["request_id"].startswith("req_")
    assert info.value.response.headers["request-id"] == body["request_id"]
    assert info.value.response.headers["anthropic-ratelimit-output-tokens-limit"]  # every answer carries them
    kind = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large"}[info.value.status_code]
    assert body["error"]["type"] == kind
    return body["error"]["message"]


def create(client: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("max_tokens", 2000)
    kwargs.setdefault("messages", USER)
    return client.messages.create(**kwargs)


# ---------------------------------------------------------------------------------------------
# Messages: the SDK's request types


def test_a_valid_body_with_many_sdk_fields_is_accepted(client: anthropic.Anthropic) -> None:
    message = create(
        client,
        system=[{"type": "text", "text": "You write conversations.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Write one conversation as JSON."},
        ],
        metadata={"user_id": "u-1"},
        stop_sequences=["\n\nEND"],
        service_tier="standard_only",
        thinking={"type": "adaptive", "display": "summarized"},
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": anthropic.transform_schema(RawConversation)}},
    )
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"bogus_field": 1}, "bogus_field: Extra inputs are not permitted"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "bogus": 1}]}]}, "messages.0.content.0.bogus:"),
        ({"max_tokens": "100"}, "max_tokens: Input should be a valid integer"),
        ({"system": [{"type": "text", "text": "s", "cache_control": {"type": "forever"}}]}, "system.0.cache_control.type:"),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort:"),
    ],
    ids=["unknown-field", "unknown-nested-field", "wrong-type", "bad-literal", "bad-effort"],
)
def test_bodies_outside_the_sdk_types_are_refused(client: anthropic.Anthropic, extra: dict[str, Any], field: str) -> None:
    assert field in refused(lambda: create(client, extra_body=extra))


@pytest.mark.parametrize("name", ["temperature", "top_p", "top_k"])
def test_sampling_parameters_are_refused(client: anthropic.Anthropic, name: str) -> None:
    message = refused(lambda: create(client, extra_body={name: 0.5}))
    assert message.startswith(f"{name}: sampling parameters are not supported")


def test_assistant_prefill_is_refused(client: anthropic.Anthropic) -> None:
    messages = [*USER, {"role": "assistant", "content": '{"conversation_metadata": '}]
    message = refused(lambda: create(client, messages=messages))
    assert message.startswith("messages.1.role:") and "prefill" in message


def test_manual_thinking_budget_is_refused(client: anthropic.Anthropic) -> None:
    message = refused(lambda: create(client, thinking={"type": "enabled", "budget_tokens": 1024}))
    assert message.startswith("thinking.type:") and "adaptive" in message


@pytest.mark.parametrize(
    ("model", "effort"),
    [("claude-haiku-5-5", "xhigh"), ("claude-haiku-5-5", "max"), ("claude-opus-5-5", "low"), ("claude-sonnet-5-5", "low")],
)
def test_thinking_cannot_be_turned_off_where_the_model_forbids_it(client: anthropic.Anthropic, model: str, effort: str) -> None:
    message = refused(lambda: create(client, model=model, thinking={"type": "disabled"}, output_config={"effort": effort}))
    assert message.startswith("thinking.type: 'disabled' is not supported")


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_haiku_turns_thinking_off_at_effort_high_or_lower(client: anthropic.Anthropic, effort: str) -> None:
    message = create(client, thinking={"type": "disabled"}, output_config={"effort": effort})
    assert [b.type for b in message.content] == ["text"]


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ({"type": "object", "properties": {"a": {"type": "string", "minLength": 1}}, "required": ["a"], "additionalProperties": False},
         "properties.a.minLength"),
        ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "additionalProperties": False}, "properties.n.minimum"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a)\\1$"}}, "additionalProperties": False},
         "properties.a.pattern"),
        ({"type": "object", "properties": {}, "additionalProperties": True}, "schema.additionalProperties"),
        ({"type": "object", "properties": {}}, "schema.additionalProperties"),
        ({"type": "object", "properties": {"t": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
          "additionalProperties": False}, "properties.t.minItems"),
        ({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}, "additionalProperties": False}},
          "$ref": "#/$defs/N"}, "$ref: recursive"),
        ({"$ref": "https://example.com/schema.json"}, "$ref: external"),
        ({"type": "string", "format": "credit-card"}, "schema.format"),
    ],
    ids=["minLength", "minimum", "pattern-backreference", "additionalProperties-true", "additionalProperties-missing",
         "minItems-2", "recursive", "external-ref", "format"],
)
def test_schemas_outside_the_structured_outputs_subset_are_refused(
    client: anthropic.Anthropic, schema: dict[str, Any], field: str
) -> None:
    message = refused(lambda: create(client, output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert message.startswith("output_config.format.schema") and field in message


def test_supported_schemas_pass_the_subset_check() -> None:
    from lora_assets.core.judge import judge_output_schema

    assert output_schema_problem(anthropic.transform_schema(RawConversation)) is None
    assert output_schema_problem(judge_output_schema()) is None
    assert output_schema_problem({"type": "string", "pattern": "^[a-z]{2,5}$", "format": "date"}) is None


def test_unknown_model_is_404_not_found(client: anthropic.Anthropic) -> None:
    assert refused(lambda: create(client, model="claude-nope-9"), anthropic.NotFoundError) == "model: claude-nope-9"
    assert create(client, model="claude-haiku-5-5-20261007").stop_reason == "end_turn"  # a known snapshot id


def test_max_tokens_above_the_models_output_limit_is_refused(client: anthropic.Anthropic) -> None:
    message = refused(lambda: create(client, max_tokens=10_000_000, timeout=30))
    assert message.startswith("max_tokens: 10000000 > 128000")
    # The limit itself is fine (an explicit timeout: the SDK wants streaming for such a long wait).
    assert create(client, max_tokens=128_000, timeout=30).stop_reason == "end_turn"


def test_more_than_four_cache_breakpoints_are_refused(client: anthropic.Anthropic) -> None:
    marked = {"type": "ephemeral"}
    system = [{"type": "text", "text": f"part {i}", "cache_control": marked} for i in range(4)]
    assert create(client, system=system).stop_reason == "end_turn"  # four is the limit
    user = [{"role": "user", "content": [{"type": "text", "text": "Write one.", "cache_control": marked}]}]
    message = refused(lambda: create(client, system=system, messages=user))
    assert message.startswith("cache_control: a maximum of 4 blocks") and "Found 5" in message


def test_streaming_is_refused_with_a_reason(client: anthropic.Anthropic) -> None:
    assert refused(lambda: create(client, extra_body={"stream": True})).startswith("stream:")


def test_lenient_mode_accepts_what_strict_refuses() -> None:
    with ClaudeSimulator(FaultConfig(strict=False)) as lenient:
        c = anthropic.Anthropic(base_url=lenient.base_url, api_key="k", max_retries=0)
        assert create(c, extra_body={"temperature": 0.3, "bogus": 1}).stop_reason == "end_turn"
        c.close()


def test_strict_is_the_default_and_the_env_can_turn_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FaultConfig().strict is True
    monkeypatch.setenv("LORA_SIM_STRICT", "off")
    assert FaultConfig().strict is False
    monkeypatch.setenv("LORA_SIM_STRICT", "perhaps")
    with pytest.raises(ValueError, match="LORA_SIM_STRICT='perhaps'"):
        FaultConfig()


# ---------------------------------------------------------------------------------------------
# count_tokens


def test_count_tokens_is_checked_against_its_sdk_type(client: anthropic.Anthropic) -> None:
    assert client.messages.count_tokens(model=MODEL, messages=USER).input_tokens > 0
    assert refused(lambda: client.messages.count_tokens(model=MODEL, messages=USER, extra_body={"max_tokens": 5})).startswith(
        "max_tokens: Extra inputs"
    )  # count_tokens has no max_tokens
    assert refused(lambda: client.messages.count_tokens(model="claude-nope-1", messages=USER), anthropic.NotFoundError)


# ---------------------------------------------------------------------------------------------
# Message Batches


def batch(n: int, prefix: str = "r", **params: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "params": {"model": MODEL, "max_tokens": 2000, "messages": USER, **params}} for i in range(n)]


@pytest.mark.parametrize("custom_id", ["has space", "a" * 65, "", "dots.not.allowed"])
def test_batch_custom_ids_outside_the_pattern_are_refused(client: anthropic.Anthropic, custom_id: str) -> None:
    requests = [{**batch(1)[0], "custom_id": custom_id}]
    message = refused(lambda: client.messages.batches.create(requests=requests))  # type: ignore[arg-type]
    assert message.startswith("requests.0.custom_id:")


def test_batch_request_count_is_limited(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    assert BATCH_MAX_REQUESTS == FaultConfig().batch_max_requests == 100_000
    sim.config = FaultConfig(batch_max_requests=3)
    try:
        assert client.messages.batches.create(requests=batch(3)).processing_status == "in_progress"  # type: ignore[arg-type]
        message = refused(lambda: client.messages.batches.create(requests=batch(4)))  # type: ignore[arg-type]
        assert message.startswith("requests: 4 requests; a batch holds at most 3")
    finally:
        sim.config = FaultConfig(batch_processing_s=0.05)


def test_batch_body_size_is_limited(sim: ClaudeSimulator, client: anthropic.Anthropic) -> None:
    assert BATCH_MAX_BYTES == FaultConfig().batch_max_bytes == 256 * 1024 * 1024
    sim.config = FaultConfig(batch_max_bytes=2_000)
    try:
        message = refused(lambda: client.messages.batches.create(requests=batch(20)), anthropic.APIStatusError)  # type: ignore[arg-type]
        assert message.startswith("requests: request body is") and "limit is 2000 bytes" in message
        # The body was not read, so the connection ends with the answer, and the answer says so:
        # a client that pooled it sent its next request into a closed socket (a CI flake).
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.batches.create(requests=batch(20))  # type: ignore[arg-type]
        assert info.value.response.headers.get("connection") == "close"
        assert client.messages.batches.create(requests=batch(1)).processing_status == "in_progress"  # type: ignore[arg-type]
    finally:
        sim.config = FaultConfig(batch_processing_s=0.05)


def test_batch_envelope_unknown_field_is_refused(client: anthropic.Anthropic) -> None:
    requests = [{**batch(1)[0], "priority": "high"}]
    assert refused(lambda: client.messages.batches.create(requests=requests)).startswith("requests.0.priority:")  # type: ignore[arg-type]
    no_params = [{"custom_id": "x"}]
    assert refused(lambda: client.messages.batches.create(requests=no_params)).startswith("requests.0.params: Field required")  # type: ignore[arg-type]


def test_batch_request_with_invalid_params_ends_errored(client: anthropic.Anthropic) -> None:
    """As the API documents, params are validated asynchronously: the batch is accepted and
    the bad request ends `errored` with an invalid_request_error naming the field."""
    requests = [*batch(1, "ok"), *batch(1, "temp", temperature=0.2), *batch(1, "prefill", messages=[*USER, {"role": "assistant", "content": "{"}])]
    created = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    for _ in range(400):
        if client.messages.batches.retrieve(created.id).processing_status == "ended":
            break
        time.sleep(0.02)
    results = {r.custom_id: r.result for r in client.messages.batches.results(created.id)}
    assert results["ok0"].type == "succeeded"
    for custom_id, field in (("temp0", "requests.1.params.temperature:"), ("prefill0", "requests.2.params.messages.1.role:")):
        result = results[custom_id]
        assert result.type == "errored"
        assert result.error.error.type == "invalid_request_error"  # type: ignore[union-attr]
        assert result.error.error.message.startswith(field)  # type: ignore[union-attr]
