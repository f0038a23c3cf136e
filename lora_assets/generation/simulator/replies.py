"""Messages answers: validating a request's params, composing the message for an outcome (ok or
a content fault, cut at `max_tokens`), and its usage with prompt caching. Shared by the
Messages endpoint and Message Batches results."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from lora_assets.core.prompt import parse_scaffolding_block

from .content import block_text, compose_conversation, content_text, last_user_text, malform, tokens
from .faults import DELIVERING, digest
from .phrases import REFUSALS, WRAP_AFTER, WRAP_BEFORE

__all__ = ["MESSAGE_ID_PREFIX", "PromptCache", "Reply", "compose_reply", "validate_params"]

MESSAGE_ID_PREFIX = "msg_sim_"


@dataclass
class Reply:
    """A composed Messages reply: the message body, its outcome and whether it delivers."""

    message: dict[str, Any]
    outcome: str
    delivers: bool


@dataclass
class _Text:
    """An answer's text blocks and stop reason."""

    text: str
    thinking: str | None = None
    stop_reason: str = "end_turn"
    stop_details: dict[str, Any] | None = None


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

    def usage(self, params: dict[str, Any], output_tokens: int, service_tier: str) -> dict[str, Any]:
        """Realistic usage: ~4 chars per token; cache_control system blocks write then read the cache."""
        system = params.get("system") or []
        blocks = [system] if isinstance(system, str) else list(system)
        uncached_chars = sum(len(content_text(m.get("content", ""))) for m in params["messages"])
        uncached_chars += len(json.dumps(params["tools"])) if params.get("tools") else 0
        created = {"5m": 0, "1h": 0}
        read = 0
        now = time.time()
        for block in blocks:
            text = block_text(block)
            control = block.get("cache_control") if isinstance(block, dict) else None
            if not isinstance(control, dict):
                uncached_chars += len(text)
                continue
            ttl = "1h" if control.get("ttl") == "1h" else "5m"
            digest_hex = hashlib.sha256(text.encode()).hexdigest()
            with self._lock:
                hit = self._expiry.get(digest_hex, 0.0) > now
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


def _judge(transcript: str, key: str) -> dict[str, Any]:
    # Looked up on the package at call time: lora_assets_tests/defs/test_judging.py swaps
    # `lora_assets.generation.simulator._judge_scores` to make the judge's answer unusable.
    from lora_assets.generation import simulator as package

    return package._judge_scores(transcript, key)


def _faulted_text(user_text: str, key: str, attempt: int, outcome: str) -> _Text:
    """The answer for `outcome` (ok or a content fault), before `max_tokens` applies."""
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
        return _Text(text[: int(len(text) * rng.uniform(0.3, 0.8))], stop_reason="max_tokens")
    if outcome == "malformed":
        return _Text(malform(text, rng))
    if outcome == "refusal":
        details = {"type": "refusal", "category": None, "explanation": None}
        return _Text(rng.choice(REFUSALS), stop_reason="refusal", stop_details=details)
    if outcome == "wrapped":
        return _Text(f"{rng.choice(WRAP_BEFORE)}\n\n```json\n{text}\n```\n\n{rng.choice(WRAP_AFTER)}")
    if outcome == "thinking":
        return _Text(text, thinking=thought)
    return _Text(text)


def _cut_at_max_tokens(answer: _Text, max_tokens: int, outcome: str) -> str:
    """Natural truncation: the model stops at max_tokens whatever it was writing. Cuts `answer`
    in place and returns the outcome (a delivering outcome that was cut becomes `truncated`)."""
    budget = max_tokens * 4
    used = len(answer.thinking or "")
    if used + len(answer.text) <= budget:
        return outcome
    if answer.thinking is not None and used >= budget:
        answer.thinking, answer.text = answer.thinking[:budget], ""
    else:
        answer.text = answer.text[: budget - used]
    answer.stop_reason, answer.stop_details = "max_tokens", None
    return "truncated" if outcome in DELIVERING else outcome


def compose_reply(
    params: dict[str, Any], key: str, attempt: int, outcome: str, service_tier: str, cache: PromptCache
) -> Reply:
    """Compose the message for `outcome` (ok or a content fault), cut at max_tokens if needed."""
    answer = _faulted_text(last_user_text(params["messages"]), key, attempt, outcome)
    outcome = _cut_at_max_tokens(answer, params["max_tokens"], outcome)
    content: list[dict[str, Any]] = []
    if answer.thinking is not None:
        signature = "sim_" + digest(answer.thinking).hex()[:32]
        content.append({"type": "thinking", "thinking": answer.thinking, "signature": signature})
    content.append({"type": "text", "text": answer.text, "citations": None})
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
        "usage": cache.usage(params, tokens(len(answer.text) + len(answer.thinking or "")), service_tier),
    }
    return Reply(message, outcome, answer.stop_reason == "end_turn" and outcome in DELIVERING)
