"""Input tokens of planned requests, counted by the API's count_tokens endpoint (free, but rate
limited): the same system prompt, user prompt and output schema generation will send."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anthropic

from lora_assets.errors import WorkFailedError
from lora_assets.generation.client import OUTPUT_SCHEMA, make_client
from lora_assets.generation.engine import backoff
from lora_assets.generation.headers import retry_after_seconds

#: Count requests in flight at once (the endpoint has its own, lower, rate limit).
COUNT_CONCURRENCY = 8
#: Retries of one count: refusals (429/529) and 5xx are waited out (`retry-after` honoured) and
#: retried this many times; a count that got no answer within the timeout is retried once only,
#: so an endpoint that accepts connections and never answers stops planning after two timeouts,
#: not after five (the SDK's own retries would retry every timeout).
COUNT_RETRIES = 6
COUNT_TIMEOUT_RETRIES = 1


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
        params = _params(model, system_, user)
        timeouts = 0
        for attempt in range(COUNT_RETRIES + 1):
            async with gate:
                try:
                    result = await client.messages.count_tokens(**params)
                    return int(result.input_tokens)
                except anthropic.APITimeoutError:
                    timeouts += 1
                    if timeouts > COUNT_TIMEOUT_RETRIES:
                        raise
                    wait = 0.0
                except (anthropic.RateLimitError, anthropic.InternalServerError, anthropic.APIConnectionError) as exc:
                    if attempt >= COUNT_RETRIES:
                        raise
                    response = getattr(exc, "response", None)
                    asked = retry_after_seconds(response.headers) if response is not None else None
                    wait = asked if asked is not None else backoff(attempt + 1, 0.5, 8.0)
            await asyncio.sleep(wait)  # outside the gate: the slot counts something else meanwhile
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # The system prompt's share: the same one-character request with and without it.
    with_system, without = await asyncio.gather(count(system, "."), count(None, "."))
    prompts = await asyncio.gather(*(count(system, u) for u in users))
    return max(0, with_system - without), list(prompts)


def count_prompt_tokens(*, api_key: str, base_url: str | None, model: str, system: str,
                        users: Sequence[str], timeout_s: float = 60.0) -> tuple[int, list[int]]:
    """(system prompt tokens, input tokens of each request `system` + `users[i]`), counted by the
    API. TokenCountError names the endpoint and the reason when it fails."""

    async def run() -> tuple[int, list[int]]:
        # SDK retries off (they would retry every timeout): `count` retries refusals and 5xx,
        # and a timeout once.
        client = make_client(api_key, base_url, timeout_s, max_connections=COUNT_CONCURRENCY)
        try:
            return await _count_all(client, model, system, users)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except anthropic.APIStatusError as exc:
        raise TokenCountError(f"count_tokens at {base_url or 'api.anthropic.com'}: HTTP {exc.status_code}: "
                              f"{str(exc.message)[:200]}") from None
    except anthropic.APITimeoutError:
        raise TokenCountError(f"count_tokens at {base_url or 'api.anthropic.com'}: no answer within {timeout_s:g}s, "
                              f"twice (LORA_REQUEST_TIMEOUT_S): the endpoint is not answering; nothing was "
                              "planned") from None
    except anthropic.APIError as exc:
        raise TokenCountError(f"count_tokens at {base_url or 'api.anthropic.com'}: {exc.__class__.__name__}: "
                              f"{str(exc)[:200]}") from None
