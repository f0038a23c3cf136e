"""Messages answers: the lenient shape check (strict mode uses `contract`), composing the message
for an outcome (ok or a content fault) with the model's adaptive thinking, cut at `max_tokens`,
and its usage with prompt caching. Shared by the Messages endpoint and Message Batches results.

Thinking, on the models that think by default (`models.MODELS`): the effort comes from
`output_config.effort` (the model's default otherwise); the thinking tokens are deterministic per
request key and scale with effort (`thinking_tokens`); they come first, count toward `max_tokens`
and are billed as output (`usage.output_tokens`, with `output_tokens_details.thinking_tokens`).
The thinking block's text is empty (with a signature) unless `thinking.display` is
"summarized". `thinking: {"type": "disabled"}` turns it off where the model allows it."""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from lora_assets.core.prompt import parse_scaffolding_block

from .content import block_text, compose_conversation, content_text, last_user_text, malform, tokens
from .faults import DELIVERING, digest, unit
from .models import EFFORTS, model_spec
from .phrases import REFUSALS, WRAP_AFTER, WRAP_BEFORE

__all__ = ["EFFORT_SCALE", "MESSAGE_ID_PREFIX", "PromptCache", "Reply", "compose_reply", "thinking_tokens", "validate_params"]

#: Thinking tokens per effort level, relative to `medium`.
EFFORT_SCALE = {"low": 0.25, "medium": 1.0, "high": 2.0, "xhigh": 3.0, "max": 4.0}
#: At effort medium a request thinks about 200 tokens plus 35% of its answer's length.
_THINK_BASE, _THINK_PER_ANSWER_TOKEN = 200, 0.35


def thinking_tokens(answer_tokens: int, effort: str, key: str, scale: float = 1.0) -> int:
    """The thinking tokens of request `key` at `effort` for an answer of `answer_tokens`:
    (200 + 0.35 x answer) x the effort's scale x a per-key factor in [0.8, 1.2) x `scale`."""
    spread = 0.8 + 0.4 * unit("thinking", key)
    return math.ceil(scale * EFFORT_SCALE[effort] * (_THINK_BASE + _THINK_PER_ANSWER_TOKEN * answer_tokens) * spread)

MESSAGE_ID_PREFIX = "msg_sim_"


@dataclass
class Reply:
    """A composed Messages reply: the message body, its outcome and whether it delivers."""

    message: dict[str, Any]
    outcome: str
    delivers: bool


@dataclass
class _Text:
    """An answer's text, the summary of its thinking and its stop reason."""

    text: str
    thought: str
    stop_reason: str = "end_turn"
    stop_details: dict[str, Any] | None = None
    #: The `thinking` fault: a visible thinking block whatever the request asked for.
    show_thinking: bool = False


def validate_params(params: Any, where: str = "") -> str | None:
    """An invalid_request_error message for a malformed Messages body, or None. `where` prefixes
    the field path (a batch request's `requests.<i>.params.`)."""
    if not isinstance(params, dict):
        return f"{where}body: expected an object"
    if not isinstance(params.get("model"), str) or not params["model"]:
        return f"{where}model: Field required"
    if not isinstance(params.get("max_tokens"), int) or params["max_tokens"] < 1:
        return f"{where}max_tokens: Field required (integer >= 1)"
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return f"{where}messages: Field required (non-empty list)"
    if any(not isinstance(m, dict) or m.get("role") not in ("user", "assistant") for m in messages):
        return f"{where}messages: each message needs role 'user' or 'assistant'"
    if params.get("stream"):
        return f"{where}stream: streaming is not supported by the loopback simulator"
    return None


class PromptCache:
    """The simulated prompt cache: `cache_control` system blocks write it, later requests read it
    until the block's TTL (5 min or 1 h) runs out; a hit refreshes the TTL. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}  # sha256 of a cached system block -> expiry

    def usage(
        self,
        params: dict[str, Any],
        output_tokens: int,
        service_tier: str,
        *,
        hit_allowed: bool = True,
        peek: bool = False,
    ) -> dict[str, Any]:
        """Realistic usage: ~4 chars per token; cache_control system blocks write then read the
        cache. A prefix (the system text up to and including the marked block) shorter than the
        model's minimum cacheable prompt is not cached: it counts as ordinary input. With
        `hit_allowed` False a cached prefix is written again (a batch's best-effort miss); with
        `peek` the cache is not touched (the rate limiter's estimate before admission)."""
        found = model_spec(str(params.get("model")))
        min_tokens = found[1].min_cacheable_tokens if found else 0
        system = params.get("system") or []
        blocks = [system] if isinstance(system, str) else list(system)
        uncached_chars = sum(len(content_text(m.get("content", ""))) for m in params["messages"])
        uncached_chars += len(json.dumps(params["tools"])) if params.get("tools") else 0
        created = {"5m": 0, "1h": 0}
        read = 0
        prefix_chars = 0
        now = time.time()
        for block in blocks:
            text = block_text(block)
            prefix_chars += len(text)
            control = block.get("cache_control") if isinstance(block, dict) else None
            if not isinstance(control, dict) or tokens(prefix_chars) < min_tokens:
                uncached_chars += len(text)
                continue
            ttl = "1h" if control.get("ttl") == "1h" else "5m"
            digest_hex = hashlib.sha256(text.encode()).hexdigest()
            with self._lock:
                hit = self._expiry.get(digest_hex, 0.0) > now and hit_allowed
                if not peek:
                    self._expiry[digest_hex] = now + (3600 if ttl == "1h" else 300)  # a hit refreshes the TTL
            if hit:
                read += tokens(len(text))
            else:
                created[ttl] += tokens(len(text))
        return {
            "input_tokens": tokens(uncached_chars),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": created["5m"] + created["1h"],
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": created["5m"], "ephemeral_1h_input_tokens": created["1h"]},
            "server_tool_use": None,
            "service_tier": service_tier,
        }

    def metered_input(self, params: dict[str, Any]) -> int:
        """The input the ITPM bucket counts: uncached input plus cache writes (reads are free)."""
        usage = self.usage(params, 0, "standard", peek=True)
        return usage["input_tokens"] + usage["cache_creation_input_tokens"]


def _judge(transcript: str, key: str) -> dict[str, Any]:
    # Looked up on the package at call time: lora_assets_tests/defs/test_judging.py swaps
    # `lora_assets.generation.simulator._judge_scores` to make the judge's answer unusable.
    from lora_assets.generation import simulator as package

    return package._judge_scores(transcript, key)


def _faulted_text(user_text: str, key: str, attempt: int, outcome: str) -> _Text:
    """The answer for `outcome` (ok or a content fault), before thinking and `max_tokens` apply."""
    if "<judge_request>" in user_text:
        text = json.dumps(_judge(user_text, key), separators=(",", ":"))
        thought = "I score the advisor's empathy, accuracy and structure from the transcript."
    else:
        conversation = compose_conversation(parse_scaffolding_block(user_text), key)
        text = json.dumps(conversation, separators=(",", ":"), ensure_ascii=False)
        meta = conversation["conversation_metadata"]
        thought = (
            f"The client is {meta['client_persona']}. I need {len(conversation['turns'])} turns, "
            "alternating client and advisor, with the advisor acknowledging feelings before facts."
        )
    rng = random.Random(digest("fault", key, attempt))
    if outcome == "truncated":
        return _Text(text[: int(len(text) * rng.uniform(0.3, 0.8))], thought, stop_reason="max_tokens")
    if outcome == "malformed":
        return _Text(malform(text, rng), thought)
    if outcome == "refusal":
        details = {"type": "refusal", "category": None, "explanation": None}
        return _Text(rng.choice(REFUSALS), thought, stop_reason="refusal", stop_details=details)
    if outcome == "wrapped":
        return _Text(f"{rng.choice(WRAP_BEFORE)}\n\n```json\n{text}\n```\n\n{rng.choice(WRAP_AFTER)}", thought)
    if outcome == "thinking":
        return _Text(text, thought, show_thinking=True)
    return _Text(text, thought)


def _thinking_setup(params: dict[str, Any]) -> tuple[bool, str, str]:
    """Whether the model thinks on this request, at which effort, and the display asked for."""
    found = model_spec(str(params.get("model")))
    if found is None:  # lenient mode, unknown model: no thinking to simulate
        return False, "medium", "omitted"
    spec = found[1]
    thinking = params.get("thinking") or {}
    effort = (params.get("output_config") or {}).get("effort") or spec.default_effort
    effort = effort if effort in EFFORTS else spec.default_effort
    # No tools here, so between_tools (Sonnet 5.5) thinks as little as disabled.
    on = thinking.get("type") not in ("disabled", "between_tools")
    return on, effort, thinking.get("display") or "omitted"


def compose_reply(
    params: dict[str, Any],
    key: str,
    attempt: int,
    outcome: str,
    service_tier: str,
    cache: PromptCache,
    *,
    thinking_scale: float = 1.0,
    cache_hit_allowed: bool = True,
) -> Reply:
    """Compose the message for `outcome` (ok or a content fault): thinking first, then the text,
    cut where `max_tokens` runs out (a delivering outcome that was cut becomes `truncated`)."""
    answer = _faulted_text(last_user_text(params["messages"]), key, attempt, outcome)
    on, effort, display = _thinking_setup(params)
    think = thinking_tokens(tokens(len(answer.text)), effort, key, thinking_scale) if on else 0
    if answer.show_thinking and not on:
        think = tokens(len(answer.thought))
    max_tokens = params["max_tokens"]
    text: str | None = answer.text
    cut = False
    if think >= max_tokens:  # the thinking used up max_tokens: no text at all
        think, text, cut = max_tokens, None, True
    elif think + tokens(len(answer.text)) > max_tokens:
        text, cut = answer.text[: (max_tokens - think) * 4], True
    if cut:
        answer.stop_reason, answer.stop_details = "max_tokens", None
        outcome = "truncated" if outcome in DELIVERING else outcome

    content: list[dict[str, Any]] = []
    if on or answer.show_thinking:
        shown = answer.thought if display == "summarized" or answer.show_thinking else ""
        signature = "sim_" + digest("signature", key, attempt, think).hex()[:32]
        content.append({"type": "thinking", "thinking": shown, "signature": signature})
    if text is not None:
        content.append({"type": "text", "text": text, "citations": None})
    usage = cache.usage(params, think + tokens(len(text or "")), service_tier, hit_allowed=cache_hit_allowed)
    usage["output_tokens_details"] = {"thinking_tokens": think} if think else None
    message = {
        "id": MESSAGE_ID_PREFIX + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": content,
        "stop_reason": answer.stop_reason,
        "stop_sequence": None,
        "stop_details": answer.stop_details,
        "container": None,
        "usage": usage,
    }
    return Reply(message, outcome, answer.stop_reason == "end_turn" and outcome in DELIVERING)
