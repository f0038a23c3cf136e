"""One Claude request, done right: the request body, the call, and what its outcome means.

The runner (runner.py) owns scheduling, retries and the ledger; this module owns the semantics
of a single Messages request, shared by both modes:

- `message_params`: the body we send (cached system block, structured JSON output, no sampling
  parameters or prefill, which API 2026-10-21 rejects);
- `send_message`: one HTTP call through the official SDK with retries switched off, returning
  the Message with its headers, or raising one `GenerationError` subclass per failure kind;
- `check_message`: the `stop_reason` rules (truncated / refusal / context exceeded are
  failures, malformed JSON on `end_turn` is not: parsing judges that later);
- `build_record`: the GenerationRecord stored for a success.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import anthropic
import httpx2
from anthropic import AsyncAnthropic, DefaultAsyncHttpxClient, transform_schema
from anthropic.types import Message
from pydantic import BaseModel, Field, PrivateAttr

from lora_assets.generation.headers import (  # also imported from here by flow control and tests
    RateLimitSnapshot,
    rate_limit_snapshot,
    retry_after_seconds,
)
from lora_assets.generation.pricing import cost_usd
from lora_assets.schemas.conversation import RawConversation
from lora_assets.schemas.rows import Effort, GenerationRecord, Usage

#: Sent with every Messages request so the simulator (and our logs) can key on the item.
ITEM_ID_HEADER = "x-lora-item-id"

#: The structured-output schema: RawConversation run through the SDK's own strict transform
#: (what `messages.parse(output_format=...)` would send). It sets `additionalProperties: false`
#: on every object and moves constraints the API does not accept (minLength, minimum/maximum,
#: minItems > 1) into descriptions, so the schema is never rejected with a 400.
OUTPUT_SCHEMA: dict[str, Any] = transform_schema(RawConversation)

#: Message ids the loopback simulator mints; anything else came from Claude.
SIMULATOR_ID_PREFIX = "msg_sim_"

#: How hard the model thinks before answering. The 5.5 models think adaptively by default
#: (effort `medium`); `off` sends `thinking: {"type": "disabled"}`. Thinking tokens count toward
#: `max_tokens` and are billed as output.
EFFORTS: tuple[str, ...] = ("off", "low", "medium", "high", "xhigh", "max")
#: The engine's default for bulk generation: measured on the simulator (README "Thinking"), `low`
#: spends the fewest output tokens of the settings that keep adaptive thinking on.
DEFAULT_EFFORT: Effort = "low"


class GenerationRequest(BaseModel):
    """One item to generate: the (static, cached) system prompt and the item's user prompt —
    given as text, or as a function that renders it when the request is sent (`lazy`), so a
    run of 10,000 items does not hold 10,000 rendered prompts."""

    item_id: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    system: str
    user: str = ""
    max_tokens: int = Field(default=8192, ge=1)
    output_schema: dict[str, Any] | None = Field(
        default=None, description="Structured-output JSON schema; None = the raw-conversation schema."
    )
    _render: Callable[[], str] | None = PrivateAttr(default=None)

    @classmethod
    def lazy(cls, item_id: str, system: str, render: Callable[[], str], **kw: Any) -> GenerationRequest:
        """A request whose user prompt is `render()`, called each time it is sent."""
        request = cls(item_id=item_id, system=system, **kw)
        request._render = render
        return request

    def user_prompt(self) -> str:
        """The user prompt: rendered now for a `lazy` request."""
        return self._render() if self._render is not None else self.user


# ---------------------------------------------------------------------------------------------
# Failures: one exception type per kind, each carrying the item id and a readable reason.
# ---------------------------------------------------------------------------------------------


class GenerationError(Exception):
    """An item's request did not produce a storable response.

    `kind` is the failure kind recorded in the ledger; `retryable` says whether another attempt
    can help; `retry_after_s` is the server's requested wait (429/529); `cost_usd` and `usage`
    are what this failed attempt was billed (non-zero only for stop-reason failures, where
    tokens were spent); `rate_limit` and `timing` feed the runner's pacing.
    """

    kind: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, item_id: str, reason: str, *, retry_after_s: float | None = None, cost_usd: float = 0.0,
                 usage: Usage | None = None, rate_limit: RateLimitSnapshot | None = None) -> None:
        self.item_id = item_id
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.cost_usd = cost_usd
        self.usage = usage or Usage()
        self.rate_limit = rate_limit
        self.timing: HttpTiming | None = None
        super().__init__(f"item {item_id}: {kind_label(self.kind)}: {reason}")


def kind_label(kind: str) -> str:
    """`kind` as shown in messages (stable identifiers are what the ledger stores)."""
    return kind.replace("_", " ")


class RateLimitedError(GenerationError):
    """HTTP 429: over the organisation's rate limit."""

    kind = "rate_limited"
    retryable = True


class OverloadedError(GenerationError):
    """HTTP 529: the API is overloaded."""

    kind = "overloaded"
    retryable = True


class ServerError(GenerationError):
    """HTTP 5xx (and 409), or a response the SDK could not read."""

    kind = "server_error"
    retryable = True


class UnreadableResponseError(GenerationError):
    """HTTP 200 whose body is not a Message (not JSON, or not the shape the API promises). The
    request was answered, so it may have been billed: the cost is unknown, never taken as $0,
    and the same request is not sent again blindly (the endpoint is not speaking the API)."""

    kind = "unreadable_response"
    retryable = False


class RequestTimeoutError(GenerationError):
    """No response within `timeout_s` (client side) or HTTP 408."""

    kind = "timeout"
    retryable = True


class ConnectionFailedError(GenerationError):
    """The connection could not be made or broke before a response."""

    kind = "connection"
    retryable = True


class TruncatedError(GenerationError):
    """stop_reason `max_tokens`: the JSON is cut off. A fresh sample may fit."""

    kind = "truncated"
    retryable = True


class RefusalError(GenerationError):
    """stop_reason `refusal`. A fresh sample may not refuse."""

    kind = "refusal"
    retryable = True


class ContextExceededError(GenerationError):
    """stop_reason `model_context_window_exceeded`: the same prompt will not fit next time either."""

    kind = "context_exceeded"
    retryable = False


class UnexpectedStopError(GenerationError):
    """A stop_reason we never ask for (tool_use, pause_turn, none): the output is not a whole answer."""

    kind = "unexpected_stop"
    retryable = True


class BadRequestError(GenerationError):
    """A 4xx the API will repeat for the same request (400, 404, 413, 422, ...)."""

    kind = "bad_request"
    retryable = False


class AuthError(GenerationError):
    """401/402/403: the key is wrong, lacks permission or credit. Every other item would fail the
    same way, so the runner aborts the run instead of burning through the list."""

    kind = "auth"
    retryable = False


class BatchItemError(GenerationError):
    """A Message Batches result of type `errored` whose error is transient on the API side."""

    kind = "batch_errored"
    retryable = True


class ExpiredError(GenerationError):
    """A Message Batches request that was not processed within 24 h."""

    kind = "expired"
    retryable = True


class CanceledError(GenerationError):
    """A Message Batches request canceled before it was processed (someone canceled the batch)."""

    kind = "canceled"
    retryable = False


class MissingResultError(GenerationError):
    """An ended batch returned no result line for a request it contained."""

    kind = "missing_result"
    retryable = False


# ---------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpTiming:
    """Monotonic times the request went to the transport and its response headers came back:
    the round trip without SDK request building, body parsing or event-loop queueing (what rate
    pacing needs to estimate when the server counted the request)."""

    sent: float
    received: float


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~50 ms; every client of the process shares one context.
    return httpx2.create_ssl_context()


def make_client(api_key: str, base_url: str | None, timeout_s: float, *, max_connections: int = 16) -> AsyncAnthropic:
    """The official async client with its own retries off: we retry ourselves, within a budget
    and rate-limit aware (SDK retries would be invisible to both). Its HTTP client is the SDK's
    default one with the pool sized to our concurrency (the SDK keeps only 100 idle connections,
    so above that every answer would cost a new connection). Message Batches and count_tokens
    talk through it; Messages requests go through `MessagesClient`."""
    limits = httpx2.Limits(max_connections=max(1, max_connections) + 4,
                           max_keepalive_connections=max(1, max_connections) + 4, keepalive_expiry=30.0)
    http_client = DefaultAsyncHttpxClient(limits=limits, verify=_ssl_context())
    return AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s, http_client=http_client)


class MessagesClient:
    """The Messages hot path of one run: bodies posted over one aiohttp connection pool with the
    URL and headers of an official SDK client (auth, API version, user agent), answers validated
    as the SDK's `Message` by pydantic-core straight from the bytes, and non-2xx answers turned
    into the SDK's own error types (`_make_status_error_from_response`).

    Why not `client.messages.create` (or `client.post`): at hundreds of requests a second the SDK's
    per-request work (options model, header merging, httpx's request/response objects, httpcore's
    pool, which checks every pooled connection on each request) was ~75% of our CPU per request;
    the same answer through aiohttp (the SDK's own `anthropic[aiohttp]` transport library) costs a
    quarter of that. The SDK client is still what decides what is sent and how a failure reads.
    Create it anywhere; the aiohttp session is opened on first use, inside the running loop."""

    def __init__(self, api_key: str, base_url: str | None, timeout_s: float, max_connections: int = 16) -> None:
        self.sdk = make_client(api_key, base_url, timeout_s, max_connections=1)  # never sends: headers and errors
        self.url, self.headers = _wire(self.sdk)
        self.timeout_s = timeout_s
        self.max_connections = max(1, max_connections)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Keep-alive like the SDK's pool; room for every request in flight plus a few.
            connector = aiohttp.TCPConnector(limit=self.max_connections + 4, limit_per_host=0, keepalive_timeout=30.0,
                                             ssl=_ssl_context())
            # The SDK's timeout applies to connecting and to each read: an endpoint that accepts the
            # request and never answers times out after `timeout_s`, however long the answer would be.
            timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s, sock_connect=self.timeout_s,
                                            sock_read=self.timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers)
        return self._session

    async def post(self, body: bytes, item_id: str) -> tuple[int, Any, bytes, HttpTiming]:
        """POST one Messages body: (status, headers, body bytes, timing). Raises TimeoutError or
        aiohttp.ClientError/OSError when no answer came back."""
        sent = time.monotonic()
        async with self.session().post(self.url, data=body, headers={ITEM_ID_HEADER: item_id,
                                                                     "content-type": "application/json"}) as response:
            received = time.monotonic()
            content = await response.read()
            return response.status, response.headers, content, HttpTiming(sent, received)

    def status_error(self, status: int, headers: Any, content: bytes) -> anthropic.APIStatusError:
        """The SDK's exception for a non-2xx answer (its type, message and request id)."""
        response = httpx2.Response(status, headers=list(headers.items()), content=content,
                                   request=httpx2.Request("POST", self.url))
        return self.sdk._make_status_error_from_response(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.sdk.close()


#: The 5.5 models cache no prompt below 512 tokens. English text runs well under 2 characters a
#: token, so a system prompt shorter than this cannot reach the minimum and is sent without
#: `cache_control` (a breakpoint that can never hit only confuses the usage figures).
CACHE_MIN_TOKENS = 512
CACHE_MIN_CHARS = 2 * CACHE_MIN_TOKENS


#: Room for thinking on top of a request's own `max_tokens` (sized for the answer with the
#: default effort): higher efforts think longer, and thinking counts toward max_tokens.
EFFORT_ROOM: dict[str, int] = {"off": 1, "low": 1, "medium": 1, "high": 2, "xhigh": 3, "max": 4}


def max_tokens_cap(request: GenerationRequest, effort: str) -> int:
    """The most `max_tokens` a request may ask at `effort`: its own limit, times the effort's room."""
    return request.max_tokens * EFFORT_ROOM.get(effort, 1)


def thinking_params(effort: str) -> dict[str, Any]:
    """The body fields that state the thinking choice: adaptive thinking at `effort`, or thinking
    disabled for `off`. Returns `thinking` and, when on, the `effort` for `output_config`."""
    if effort not in EFFORTS:
        raise ValueError(f"effort {effort!r}: must be one of {', '.join(EFFORTS)}")
    if effort == "off":
        return {"thinking": {"type": "disabled"}}
    return {"thinking": {"type": "adaptive"}, "effort": effort}


def message_params(request: GenerationRequest, model: str, *, effort: str = DEFAULT_EFFORT,
                   max_tokens: int | None = None) -> dict[str, Any]:
    """The Messages body for `request` (also the `params` of a Message Batches request).

    The system prompt is one text block marked `cache_control: ephemeral` when it is long enough
    to be cached (CACHE_MIN_CHARS): it is identical for every item of a run, so after the first
    request it is billed at the cache-read rate. Thinking is stated explicitly (`effort`);
    `max_tokens` overrides the request's own (the engine sizes it from observed output).
    """
    system: dict[str, Any] = {"type": "text", "text": request.system}
    if len(request.system) >= CACHE_MIN_CHARS:
        system["cache_control"] = {"type": "ephemeral"}
    thinking = thinking_params(effort)
    output_config: dict[str, Any] = {"format": {"type": "json_schema", "schema": request.output_schema or OUTPUT_SCHEMA}}
    if "effort" in thinking:
        output_config["effort"] = thinking["effort"]
    return {
        "model": model,
        "max_tokens": max_tokens or request.max_tokens,
        "system": [system],
        "messages": [{"role": "user", "content": request.user_prompt()}],
        "thinking": thinking["thinking"],
        "output_config": output_config,
    }


#: Encoded JSON of the parts of a body every request of a run shares (system block, thinking,
#: output schema), by (system, schema identity, effort); the schema object is kept alive with it.
_STATIC_PARTS: dict[tuple[str, int, str], tuple[bytes, bytes, object]] = {}


def encode_params(request: GenerationRequest, model: str, *, effort: str = DEFAULT_EFFORT,
                  max_tokens: int | None = None) -> bytes:
    """`message_params(...)` as JSON bytes. The system block and the output schema (tens of KB,
    the same for every item of a run) are encoded once and spliced in: encoding them per request
    was a quarter of our CPU per request."""
    schema = request.output_schema or OUTPUT_SCHEMA
    key = (request.system, id(schema), effort)
    parts = _STATIC_PARTS.get(key)
    if parts is None:
        static = message_params(request.model_copy(update={"user": ""}), model, effort=effort)
        system = json.dumps(static["system"], ensure_ascii=False).encode()
        tail = json.dumps({"thinking": static["thinking"], "output_config": static["output_config"]},
                          ensure_ascii=False).encode()
        if len(_STATIC_PARTS) > 64:
            _STATIC_PARTS.clear()
        parts = _STATIC_PARTS[key] = (system, tail[1:], schema)
    system, tail, _ = parts
    user = json.dumps(request.user_prompt(), ensure_ascii=False).encode()
    head = json.dumps(model).encode()
    return (b'{"model":' + head + b',"max_tokens":' + str(max_tokens or request.max_tokens).encode()
            + b',"system":' + system + b',"messages":[{"role":"user","content":' + user + b'}],' + tail)


def _wire(client: AsyncAnthropic) -> tuple[str, dict[str, str]]:
    """The Messages URL and the SDK's default headers of `client` (auth and version included),
    computed on first use and kept on the client."""
    cached = getattr(client, "_lora_wire", None)
    if cached is None:
        headers = {k: v for k, v in client.default_headers.items() if isinstance(v, str)}
        cached = (str(client.base_url).rstrip("/") + "/v1/messages", headers)
        client._lora_wire = cached  # type: ignore[attr-defined]
    return cached


@dataclass(frozen=True)
class SentMessage:
    """A 200 response: the Message, its request id, the rate-limit state it reported, and when."""

    message: Message
    request_id: str | None
    rate_limit: RateLimitSnapshot
    timing: HttpTiming | None = None


async def send_message(client: MessagesClient, request: GenerationRequest, model: str, *, secret: str = "",
                       effort: str = DEFAULT_EFFORT, max_tokens: int | None = None) -> SentMessage:
    """POST one Messages request. Raises the GenerationError subclass of the failure; `secret`
    (the API key) is scrubbed from any reason text, whatever a server echoes back. A 200 whose
    body is not a Message raises UnreadableResponseError (answered, so possibly billed)."""
    body = encode_params(request, model, effort=effort, max_tokens=max_tokens)
    try:
        status, headers, content, timing = await client.post(body, request.item_id)
    except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors
        raise RequestTimeoutError(request.item_id, "no response before the client timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ConnectionFailedError(request.item_id, scrub(f"connection failed ({type(exc).__name__})", secret)) from None
    if status >= 300:
        err = classify_error(client.status_error(status, headers, content), request.item_id, secret=secret)
        err.timing = timing
        raise err from None
    try:
        message = Message.model_validate_json(content)
    except ValueError as exc:
        snippet = " ".join(content[:80].decode("utf-8", "replace").split())
        err = UnreadableResponseError(request.item_id, scrub(
            f"HTTP {status} with a body that is not a Message ({headers.get('content-type') or 'no content-type'}"
            f", {len(content)} bytes, starts {snippet!r}): {type(exc).__name__}", secret),
            rate_limit=rate_limit_snapshot(headers))
        err.timing = timing
        raise err from None
    return SentMessage(message=message, request_id=headers.get("request-id"), rate_limit=rate_limit_snapshot(headers),
                       timing=timing)


def classify_error(exc: anthropic.APIError, item_id: str, *, secret: str = "") -> GenerationError:
    """Map an SDK exception to our failure kind, with a readable reason and the server's wait."""
    if isinstance(exc, anthropic.APITimeoutError):
        return RequestTimeoutError(item_id, "no response before the client timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return ConnectionFailedError(item_id, scrub(f"connection failed{detail}", secret))
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        detail = exc.api_message or exc.type or exc.response.reason_phrase or "no detail"
        reason = scrub(f"HTTP {status} {exc.type or ''}: {detail}".replace("  ", " "), secret)
        if exc.request_id:
            reason += f" (request-id {exc.request_id})"
        retry_after = retry_after_seconds(exc.response.headers)
        should_retry = exc.response.headers.get("x-should-retry", "").lower() != "false"
        cls: type[GenerationError]
        if status == 429:
            cls = RateLimitedError
        elif status == 529 or exc.type == "overloaded_error":
            cls = OverloadedError
        elif status == 408:
            cls = RequestTimeoutError
        elif status >= 500 or status == 409:
            cls = ServerError
        elif status in (401, 402, 403):
            cls = AuthError
        else:
            cls = BadRequestError
        if cls.retryable and not should_retry:
            # The server says "do not retry": honour it by reporting a non-retryable kind.
            return BadRequestError(item_id, reason + " (server sent x-should-retry: false)")
        return cls(item_id, reason, retry_after_s=retry_after, rate_limit=rate_limit_snapshot(exc.response.headers))
    # APIResponseValidationError and other SDK errors: the body was not what the API promises.
    return ServerError(item_id, scrub(f"unreadable response: {type(exc).__name__}: {exc}", secret))


def scrub(text: str, secret: str) -> str:
    """`text` with `secret` masked: reasons are stored and shown, keys must never be."""
    return text.replace(secret, "***") if secret else text


# ---------------------------------------------------------------------------------------------
# The outcome
# ---------------------------------------------------------------------------------------------


def usage_of(message: Message) -> Usage:
    """Token usage of a Message as our row model (absent cache counts are 0)."""
    u = message.usage
    return Usage(
        input_tokens=u.input_tokens or 0,
        output_tokens=u.output_tokens or 0,
        cache_creation_input_tokens=u.cache_creation_input_tokens or 0,
        cache_read_input_tokens=u.cache_read_input_tokens or 0,
    )


def generator_of(message: Message) -> str:
    """"simulator" for messages the loopback simulator made, "claude" otherwise."""
    return "simulator" if message.id.startswith(SIMULATOR_ID_PREFIX) else "claude"


def message_text(message: Message) -> str:
    """The text of a Message: its `text` blocks joined, whatever (thinking) blocks lead."""
    return "".join(block.text for block in message.content if block.type == "text")


def check_message(item_id: str, message: Message, model: str, *, batch: bool) -> None:
    """Raise the stop-reason failure if `message` is not a whole answer, else return.

    `end_turn` with unparseable text is NOT a failure here: the raw response is stored and the
    parse stage records why it is unusable (no paying twice for a retry parsing could explain).
    """
    stop = message.stop_reason
    if stop in ("end_turn", "stop_sequence"):
        return
    usage = usage_of(message)
    cost = cost_usd(model, usage, batch=batch)
    tokens = f"{usage.output_tokens} output tokens, ${cost:.6f} spent"
    if stop == "max_tokens":
        raise TruncatedError(item_id, f"stop_reason max_tokens: output cut off ({tokens})", cost_usd=cost, usage=usage)
    if stop == "refusal":
        said = " ".join(message_text(message).split())[:160]
        raise RefusalError(item_id, f"stop_reason refusal ({tokens}): {said!r}", cost_usd=cost, usage=usage)
    if stop == "model_context_window_exceeded":
        raise ContextExceededError(
            item_id, f"stop_reason model_context_window_exceeded: the prompt does not fit ({tokens})", cost_usd=cost, usage=usage
        )
    raise UnexpectedStopError(item_id, f"unexpected stop_reason {stop!r} ({tokens})", cost_usd=cost, usage=usage)


def build_record(item_id: str, message: Message, model: str, *, request_id: str | None, batch: bool,
                 extra: dict[str, Any] | None = None) -> GenerationRecord:
    """The GenerationRecord of a whole answer: the full Message as JSON, usage, cost, provenance."""
    usage = usage_of(message)
    return GenerationRecord(
        batch_item_id=item_id,
        model=message.model or model,
        generator=generator_of(message),  # type: ignore[arg-type]
        stop_reason=message.stop_reason,
        usage=usage,
        cost_usd=cost_usd(model, usage, batch=batch),
        response=message.model_dump(mode="json"),
        request_id=request_id,
        extra=extra or {},
    )
