"""Input tokens of planned requests, counted by the API's count_tokens endpoint (free, but rate
limited): the same system prompt, user prompt and output schema generation will send."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anthropic

from lora_assets.errors import WorkFailedError
from lora_assets.generation.client import OUTPUT_SCHEMA, make_client

#: Count requests in flight at once (the endpoint has its own, lower, rate limit).
COUNT_CONCURRENCY = 8


class TokenCountError(WorkFailedError):
    """The count_tokens endpoint could not be reached or refused a request; nothing was planned."""


def _params(model: str, system: str | None, user: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": user}],
        "output_config": {"format": {"type": "json_schema", "schema": OUTPUT_SCHEMA}},
    }
    if system is not None:
        params["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    return params


async def _count_all(client: anthropic.AsyncAnthropic, model: str, system: str,
                     users: Sequence[str]) -> tuple[int, list[int]]:
    gate = asyncio.Semaphore(COUNT_CONCURRENCY)

    async def count(system_: str | None, user: str) -> int:
        async with gate:
            result = await client.messages.count_tokens(**_params(model, system_, user))
            return int(result.input_tokens)

    # The system prompt's share: the same one-character request with and without it.
    with_system, without = await asyncio.gather(count(system, "."), count(None, "."))
    prompts = await asyncio.gather(*(count(system, u) for u in users))
    return max(0, with_system - without), list(prompts)


def count_prompt_tokens(*, api_key: str, base_url: str | None, model: str, system: str,
                        users: Sequence[str], timeout_s: float = 60.0) -> tuple[int, list[int]]:
    """(system prompt tokens, input tokens of each request `system` + `users[i]`), counted by the
    API. TokenCountError names the endpoint and the reason when it fails."""

    async def run() -> tuple[int, list[int]]:
        # Our own client has SDK retries off (we retry ourselves in generation); counting is
        # free and idempotent, so the SDK's retries (429/5xx, retry-after honoured) are right here.
        client = make_client(api_key, base_url, timeout_s, max_connections=COUNT_CONCURRENCY).with_options(max_retries=4)
        try:
            return await _count_all(client, model, system, users)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except anthropic.APIStatusError as exc:
        raise TokenCountError(f"count_tokens at {base_url or 'api.anthropic.com'}: HTTP {exc.status_code}: "
                              f"{str(exc.message)[:200]}") from None
    except anthropic.APIError as exc:
        raise TokenCountError(f"count_tokens at {base_url or 'api.anthropic.com'}: {exc.__class__.__name__}: "
                              f"{str(exc)[:200]}") from None
