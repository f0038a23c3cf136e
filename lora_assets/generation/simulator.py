"""Loopback Claude simulator: a small stdlib HTTP server that speaks the Anthropic endpoints the
official `anthropic` 2.x SDK calls (Messages, count_tokens, Message Batches), composes a
deterministic, schema-valid conversation from the prompt's `<scaffolding>` block, reports realistic
usage (including prompt caching) and injects deterministic faults.

Point the real SDK at it with `base_url=sim.base_url`. Every message id starts with `msg_sim_` and
every response carries `x-lora-simulator: true`, so its output is never mistaken for Claude's.

Fault selection: for each request the simulator hashes (seed, request key, attempt index for that
key) to a uniform number in [0, 1) and compares it with the cumulative fault rates, so results are
reproducible and a retry (next attempt index) can succeed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, Field

from lora_assets.core.prompt import parse_scaffolding_block
from lora_assets.schemas import RawConversation

__all__ = ["ClaudeSimulator", "FaultConfig", "SimulatorStats", "serve"]

log = logging.getLogger(__name__)

_MESSAGE_ID_PREFIX = "msg_sim_"
_BATCH_ID_PREFIX = "msgbatch_sim_"
_CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_BATCH_PATH_RE = re.compile(r"^/v1/messages/batches/([^/]+)(/cancel|/results)?$")
#: Rate-limit header values when no `rpm_limit` is configured (roughly a mid usage tier).
_DEFAULT_RPM = 4000
_TOKEN_LIMITS = {"tokens": 480_000, "input-tokens": 400_000, "output-tokens": 80_000}
#: How long a canceling batch takes to end.
_CANCEL_DELAY_S = 0.1
_BATCH_TTL_S = 24 * 3600
_MESSAGE_FAULTS = ("overloaded", "server_error", "slow", "truncated", "malformed", "refusal", "wrapped", "thinking")
_CONTENT_FAULTS = ("truncated", "malformed", "refusal", "wrapped", "thinking")
_BATCH_FAULTS = ("batch_errored", "batch_expired", *_CONTENT_FAULTS)
_RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
#: Outcomes whose text block is a complete conversation (a fence or a thinking block does not break it).
_DELIVERING = frozenset({"ok", "slow", "wrapped", "thinking"})


class FaultConfig(BaseModel):
    """What the simulator does wrong, and how often. Rates are per request, in [0, 1]; they are
    cumulative (checked in field order), so their sum should stay at or below 1."""

    latency_s: float = Field(default=0.0, ge=0.0)
    rpm_limit: int | None = Field(default=None, ge=1)
    rate_window_s: float = Field(default=60.0, gt=0.0)
    overload_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    server_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    slow_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    slow_s: float = Field(default=30.0, ge=0.0)
    truncation_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    malformed_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    refusal_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    wrapped_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    thinking_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_processing_s: float = Field(default=0.3, ge=0.0)
    batch_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_expire_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = 0

    def _message_rates(self) -> tuple[float, ...]:
        return (
            self.overload_rate,
            self.server_error_rate,
            self.slow_rate,
            self.truncation_rate,
            self.malformed_rate,
            self.refusal_rate,
            self.wrapped_rate,
            self.thinking_rate,
        )

    def _content_rates(self) -> tuple[float, ...]:
        return (self.truncation_rate, self.malformed_rate, self.refusal_rate, self.wrapped_rate, self.thinking_rate)


class SimulatorStats:
    """Thread-safe counters of what the simulator did. Read attributes directly or take a
    consistent `snapshot()`.

    - `requests_total`, `by_status`: every HTTP request / response status.
    - `by_outcome`: ok, rate_limited, overloaded, server_error, slow, truncated, malformed, refusal,
      wrapped, thinking (Messages requests and batch results), batch_errored, batch_expired,
      batch_canceled (batch results, counted when the batch ends).
    - `attempts_by_key`: authenticated, well-formed `POST /v1/messages` requests per request key.
    - `delivered_by_key`: complete, schema-valid conversations delivered per key (Messages: the
      whole body was written to a still-connected client; Batches: a succeeded result whose text
      is a whole conversation, counted once when the batch ends).
    - `batches_created`, `batch_requests_by_custom_id`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests_total = 0
        self.by_status: Counter[int] = Counter()
        self.by_outcome: Counter[str] = Counter()
        self.attempts_by_key: Counter[str] = Counter()
        self.delivered_by_key: Counter[str] = Counter()
        self.batches_created = 0
        self.batch_requests_by_custom_id: Counter[str] = Counter()

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter as plain dicts and ints."""
        with self._lock:
            return {
                "requests_total": self.requests_total,
                "by_status": dict(self.by_status),
                "by_outcome": dict(self.by_outcome),
                "attempts_by_key": dict(self.attempts_by_key),
                "delivered_by_key": dict(self.delivered_by_key),
                "batches_created": self.batches_created,
                "batch_requests_by_custom_id": dict(self.batch_requests_by_custom_id),
            }

    def _reset(self) -> None:
        # Clear in place so references a test already holds stay live.
        with self._lock:
            self.requests_total = 0
            self.batches_created = 0
            for counter in (
                self.by_status,
                self.by_outcome,
                self.attempts_by_key,
                self.delivered_by_key,
                self.batch_requests_by_custom_id,
            ):
                counter.clear()

    def _add(self, counter: str, key: Any, n: int = 1) -> None:
        with self._lock:
            target: Counter[Any] = getattr(self, counter)
            target[key] += n
            if target[key] <= 0:  # a take-back leaves no zero entry behind
                del target[key]

    def _response(self, status: int) -> None:
        with self._lock:
            self.requests_total += 1
            self.by_status[status] += 1

    def _batch_created(self, custom_ids: list[str]) -> None:
        with self._lock:
            self.batches_created += 1
            self.batch_requests_by_custom_id.update(custom_ids)


# --------------------------------------------------------------------------------------------
# Deterministic helpers


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) determined by `parts`."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2**64


def _pick(u: float, outcomes: tuple[str, ...], rates: tuple[float, ...], default: str = "ok") -> str:
    """The outcome whose cumulative-rate bucket contains `u`."""
    edge = 0.0
    for outcome, rate in zip(outcomes, rates, strict=True):
        edge += rate
        if u < edge:
            return outcome
    return default


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, dict) and block.get("type") == "text":
        return str(block.get("text", ""))
    return json.dumps(block, ensure_ascii=False)


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(_block_text(b) for b in content)
    return _block_text(content)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content", ""))
    return ""


def _validate_params(params: Any, where: str = "") -> str | None:
    """An invalid_request_error message for a malformed Messages body, or None."""
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


# --------------------------------------------------------------------------------------------
# Conversation composition (phrase banks chosen by a hash of the request key)

_GENERIC = {
    "persona_name": "Jordan Avery",
    "persona_archetype": "The Cautious Planner",
    "persona_demographics": "Age 41, married, two children",
    "persona_financial_background": "Household income $92,000; $14,000 in savings",
    "arc_name": "Anxiety → Confidence",
    "arc_starting_emotion": "anxiety",
    "arc_ending_emotion": "confidence",
    "topic_name": "Building an emergency fund",
    "topic_description": "How much cash to keep for emergencies, where to hold it and how to build it up.",
}

_SESSION_CONTEXTS = (
    "{name} ({demographics}) is meeting the advisor to work through {topic_l}; the session follows the {arc} arc.",
    "First planning session on {topic_l} for {name}. Background: {background}. Emotional arc: {arc}.",
    "{name} booked this meeting after months of worrying about {topic_l}, arriving with {start} and hoping for {end} ({arc}).",
    "Video call with {name}, {demographics}, focused on {topic_l}. The client starts in {start} and the arc is {arc}.",
    "{name} was referred by a friend for help with {topic_l} ({background}); expected arc: {arc}.",
)
_PHASES = (
    "Discovery: exploring {topic_l} while moving from {start} toward {end}",
    "Education and planning on {topic_l} ({arc})",
    "Initial consultation on {topic_l}, arc {arc}",
    "Goal-setting session for {topic_l}: from {start} to {end}",
)
_OUTCOMES = (
    "{first} leaves with a written plan for {topic_l} and a sense of {end} in place of {start}.",
    "{first} understands {topic_l}, commits to {monthly} a month, and moves from {start} to {end}.",
    "A concrete first step on {topic_l} agreed, with {first}'s {start} giving way to {end} ({arc}).",
    "{first} can explain the plan for {topic_l} in their own words and feels {end} rather than {start}.",
)
_USER_OPENERS = (
    "Hi, I'm {first}. I've been putting off this conversation about {topic_l} for months. "
    "We have about {amount} to work with and, if I had to name the feeling, I'd say {start}.",
    "Thanks for making time. I need help with {topic_l}. I keep looking at {amount} in our accounts "
    "and I don't know what the right move is. Mostly I feel {start}.",
    "So, {topic_l}. That's why I'm here. My partner thinks I'm overthinking it, but with {amount} on "
    "the line there's a lot of {start}, and I want to get it right.",
    "I'll be upfront: {topic_l} is something I've avoided. I'm putting away roughly {monthly} a month "
    "and I have no idea whether that's enough. It's mostly {start}, honestly.",
    "My name's {first}, and a friend said you explain things without judgment. I want to understand "
    "{topic_l}; I've got around {amount} and a lot of {start} about what to do with it.",
    "I'm {first}. Every time I read about {topic_l} I end up more confused. We earn about {income} a "
    "year and I still feel {start} when I think about it.",
)
_USER_FOLLOWUPS = (
    "Okay, that helps a little. I'd call where I am now {emotion}. But what if the {rate} assumption "
    "turns out to be wrong?",
    "So if I set aside {monthly} a month, how long before I'd see a real difference? "
    "I'm somewhere around {emotion} right now.",
    "I didn't realise it worked that way. Could you walk me through what {amount} looks like over {years} years?",
    "That makes sense on paper. My worry is that I'll start and then life gets in the way. "
    "Is {monthly} a month realistic on {income} a year?",
    "Right. And how does this fit with everything else? I don't want {topic_l} to crowd out our other goals.",
    "Hm. If I had to put a word on it now, it's {emotion}. What would the very first step be?",
    "Can I ask a basic question? Where exactly would the {monthly} go each month, and who can touch it?",
)
_USER_CLOSERS = (
    "This is the first time {topic_l} has felt manageable. What I feel now is {end}. Can we write those steps down?",
    "Okay. {monthly} a month, and a review in six months. There's real {end} where the {start} used to be.",
    "Thank you. I came in with so much {start}, and now it's closer to {end}. I know what to do on Monday.",
    "I can actually explain this to my family now. {amount}, {monthly} a month, check in twice a year. "
    "That feels like {end}.",
    "Honestly, I expected to leave more stressed. Instead it's {end}. Let's set up the {monthly} transfer.",
)
_ADVISOR_ACKS = (
    "{first}, thank you for being so open about the {emotion}. That's a completely normal reaction "
    "when this much is at stake.",
    "I can hear the {emotion} in what you're saying, {first}, and it makes sense: {topic_l} touches "
    "your security and your family's.",
    "It takes courage to name {emotion} out loud, {first}. Let's slow down and take this one piece at a time.",
    "Feeling {emotion} here doesn't mean you've done anything wrong, {first}; it means you care about "
    "getting it right.",
    "That {emotion} is worth listening to, {first}. It points at the questions we should answer first.",
    "I really appreciate you telling me that, {first}. A lot of people feel {emotion} at exactly this point.",
)
_ADVISOR_FACTS = (
    "Here's the big picture on {topic_l}. {topic_desc} Now the numbers: if you put {monthly} a month toward it at an "
    "assumed {rate} annual return, that grows to roughly {projection} over {years} years.",
    "Let's put numbers on it. Starting from {amount} and adding {monthly} a month, you'd have about "
    "{projection} in {years} years at {rate}, and even at half that return you'd be well ahead of waiting.",
    "The key idea with {topic_l} is that consistency beats timing. {monthly} a month for {years} years "
    "is {contributions} in contributions alone, before any growth.",
    "A useful rule of thumb: keep three to six months of expenses easy to reach before taking more "
    "risk. With {amount} already set aside, you're closer to that than it feels.",
    "Let me frame {topic_l} first. {topic_desc} In your case the gap between a {rate} return and a more "
    "cautious assumption is a few hundred dollars a year, not a disaster.",
    "On {income} a year, {monthly} a month is about {share} of gross income, which is a sustainable "
    "pace for {topic_l} without squeezing your day-to-day budget.",
)
_ADVISOR_QUESTIONS = (
    "What part of that feels most uncertain to you?",
    "Does that match what you were picturing?",
    "Would it help if we mapped out the first three months together?",
    "How does that land for you?",
    "What would make this feel more doable?",
    "Which of those numbers would you like to look at more closely?",
)
_ADVISOR_CLOSERS = (
    "I'm really glad you're feeling {end} now, {first}. To recap: automate {monthly} a month, keep the "
    "{amount} where it is for now, and we'll review {topic_l} together in six months.",
    "{first}, you did the hard part today by looking at this directly, and that {end} is earned. "
    "Next steps: set up the {monthly} transfer, note the {rate} assumption, and check back after your next pay review.",
    "It's wonderful to hear that {end} in your voice, {first}. Your plan for {topic_l} is simple on purpose: {monthly} a "
    "month, a {years}-year horizon, and a check-in twice a year. I'll send a written summary today.",
    "Thank you for trusting me with this, {first}. Hold on to that {end}: with {amount} to start and "
    "{monthly} a month, you're on track for roughly {projection} in {years} years.",
)
_EARLY_EMOTIONS = ("cautious curiosity", "guarded hope", "uncertainty", "tentative interest", "hesitation")
_LATE_EMOTIONS = ("growing relief", "cautious optimism", "emerging clarity", "steadiness", "reassurance")
_SECONDARY = ("self-doubt", "worry", "frustration", "curiosity", "embarrassment", "overwhelm", "hope")
_REFUSALS = (
    "I'm not able to help with writing this conversation as requested.",
    "I can't help with that request.",
    "I'm sorry, but I can't create this content.",
)
_WRAP_BEFORE = (
    "Here is the conversation you asked for:",
    "Sure! Below is the training conversation in JSON format.",
    "I've written the conversation following the scaffolding.",
)
_WRAP_AFTER = (
    "Let me know if you'd like any adjustments.",
    "I hope this is useful for your training data.",
    "The emotional arc moves gradually across the client turns.",
)
_MONEY_RE = re.compile(r"\$\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:[kKmM]\b|thousand|million))?")


def _money(x: float) -> str:
    return f"${round(x):,}"


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def _mid_sentence(name: str) -> str:
    """A title for use mid-sentence: 'Building an emergency fund' -> 'building an emergency fund',
    but proper nouns and acronyms ('Roth IRA conversions', 'Social Security timing') stay."""
    words = name.split()
    if not words or any(w[:1].isupper() for w in words[1:]) or not words[0][1:].islower():
        return name
    return words[0].lower() + name[len(words[0]) :]


def _figures(rng: random.Random, background: str) -> dict[str, str]:
    """Concrete numbers for the conversation: the persona's own figure when the background has one."""
    income = rng.randrange(55_000, 190_000, 5_000)
    balance = rng.randrange(6_000, 60_000, 500)
    monthly = rng.randrange(150, 1_300, 50)
    rate = rng.choice((3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0))
    years = rng.choice((5, 7, 10, 12, 15, 20))
    growth = (1 + rate / 100) ** years
    projection = balance * growth + monthly * 12 * (growth - 1) / (rate / 100)
    stated = _MONEY_RE.findall(background)
    return {
        "income": _money(income),
        "amount": stated[-1].strip() if stated else _money(balance),
        "monthly": _money(monthly),
        "rate": f"{rate:g}%",
        "years": str(years),
        "projection": _money(round(projection, -2)),
        "contributions": _money(monthly * 12 * years),
        "share": f"{monthly * 12 / income:.0%}",
    }


def _turn_count(raw: str | None) -> int:
    try:
        return min(10, max(4, int(str(raw).strip())))
    except (TypeError, ValueError):
        return 6


def _compose_conversation(scaffolding: dict[str, str], key: str) -> dict[str, Any]:
    """A schema-valid RawConversation dict, fully determined by (scaffolding, key)."""
    s = {**_GENERIC, **{k: v for k, v in scaffolding.items() if v}}
    rng = random.Random(_digest("compose", key))
    name = s["persona_name"]
    start = s["arc_starting_emotion"].strip().lower()
    end = s["arc_ending_emotion"].strip().lower()
    slots: dict[str, str] = {
        "name": name,
        "first": name.split()[0],
        "topic": s["topic_name"],
        "topic_l": _mid_sentence(s["topic_name"]),
        "topic_desc": _sentence(s["topic_description"]),
        "arc": s["arc_name"],
        "start": start,
        "end": end,
        "demographics": s["persona_demographics"].rstrip("."),
        "background": s["persona_financial_background"].rstrip("."),
        **_figures(rng, s["persona_financial_background"]),
    }
    n = _turn_count(scaffolding.get("turn_count"))
    user_count = (n + 1) // 2
    followups = rng.sample(_USER_FOLLOWUPS, k=min(len(_USER_FOLLOWUPS), max(0, user_count - 2)))
    acks = rng.sample(_ADVISOR_ACKS, k=len(_ADVISOR_ACKS))
    facts = rng.sample(_ADVISOR_FACTS, k=len(_ADVISOR_FACTS))
    questions = rng.sample(_ADVISOR_QUESTIONS, k=len(_ADVISOR_QUESTIONS))
    start_intensity = rng.uniform(0.7, 0.92)
    end_intensity = rng.uniform(0.55, 0.8)

    turns: list[dict[str, Any]] = []
    last_emotion = start
    for i in range(n):
        number = i + 1
        if i % 2 == 0:
            j = i // 2
            progress = j / (user_count - 1) if user_count > 1 else 1.0
            if j == 0:
                primary, secondary = start, rng.sample(_SECONDARY, k=2)
                text = rng.choice(_USER_OPENERS)
            elif j == user_count - 1:
                primary, secondary = end, [rng.choice(_LATE_EMOTIONS)]
                text = rng.choice(_USER_CLOSERS)
            else:
                bank = _EARLY_EMOTIONS if progress < 0.5 else _LATE_EMOTIONS
                primary = rng.choice(bank)
                secondary = [start if progress < 0.5 else end]
                text = followups[(j - 1) % len(followups)]
            # Intensity eases from the starting emotion's peak to the ending emotion's level.
            intensity = start_intensity + (end_intensity - start_intensity) * progress
            intensity -= 0.12 * math.sin(math.pi * progress)
            turns.append(
                {
                    "turn_number": number,
                    "role": "user",
                    "content": text.format(**slots, emotion=primary),
                    "emotional_context": {
                        "primary_emotion": primary,
                        "secondary_emotions": secondary,
                        "intensity": round(min(1.0, max(0.05, intensity)), 2),
                    },
                }
            )
            last_emotion = primary
        else:
            k = i // 2
            if number == n:
                text = rng.choice(_ADVISOR_CLOSERS)
            else:
                # Feelings first, then the facts, then a question back to the client.
                text = " ".join((acks[k % len(acks)], facts[k % len(facts)], questions[k % len(questions)]))
            turns.append({"turn_number": number, "role": "assistant", "content": text.format(**slots, emotion=last_emotion)})

    conversation = {
        "conversation_metadata": {
            "client_persona": f"{name} - {s['persona_archetype']}",
            "session_context": rng.choice(_SESSION_CONTEXTS).format(**slots),
            "conversation_phase": rng.choice(_PHASES).format(**slots),
            "expected_outcome": rng.choice(_OUTCOMES).format(**slots),
        },
        "turns": turns,
    }
    RawConversation.model_validate(conversation)  # never send what the pipeline would reject
    return conversation


def _judge_scores(transcript: str, key: str) -> dict[str, Any]:
    """Deterministic judge scores for a `<judge_request>` transcript (the simulator's stand-in
    for Claude-as-judge): varied per key, nudged by how much the advisor acknowledges feelings."""
    rng = random.Random(_digest("judge", key))
    advisor = [line for line in transcript.splitlines() if "ADVISOR:" in line]
    warmth = sum(w in line.lower() for line in advisor for w in ("understand", "normal", "feel", "makes sense"))
    bump = min(0.6, 0.15 * warmth)

    def score() -> float:
        return round(min(5.0, rng.uniform(3.0, 4.4) + bump), 1)

    return {
        "empathy_score": score(),
        "clarity_score": score(),
        "appropriateness_score": score(),
        "brand_voice_alignment": score(),
        "rationale": f"Simulated judgement of {len(advisor)} advisor turns (loopback simulator, not Claude).",
    }


def _malform(text: str, rng: random.Random) -> str:
    """Broken JSON of the kinds models actually emit (trailing comma, missing comma, bad quotes)."""
    candidates = [
        text[:-2] + ",]}",  # trailing comma before the closing bracket
        text.replace('},{"turn_number"', '}{"turn_number"', 1),  # missing comma between turns
        text.replace('"content":"', '"content":"The "plan" is ', 1),  # unescaped quotes
        text.replace('"intensity":', "'intensity':", 1),  # single-quoted key
    ]
    broken = rng.choice(candidates)
    try:
        json.loads(broken)
    except ValueError:
        return broken
    return text + "\n}"


# --------------------------------------------------------------------------------------------
# Server state


@dataclass
class _Reply:
    """A composed Messages reply: the message body, its outcome and whether it delivers."""

    message: dict[str, Any]
    outcome: str
    delivers: bool


@dataclass
class _BatchEntry:
    custom_id: str
    result: dict[str, Any]
    outcome: str
    delivers: bool
    finish_fraction: float  # when, within processing, this request finishes (matters on cancel)


@dataclass
class _Batch:
    id: str
    created_at: float
    processing_s: float
    entries: list[_BatchEntry]
    status: str = "in_progress"
    cancel_initiated_at: float | None = None
    ended_at: float | None = None
    final: list[dict[str, Any]] | None = None  # result lines once ended
    counts: dict[str, int] = field(default_factory=dict)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks handler threads and their sockets so stop() can close idle
    keep-alive connections and join every thread."""

    # The default backlog (5) stalls bursts of concurrent SDK connections for ~1 s.
    request_queue_size = 128

    daemon_threads = True
    simulator: ClaudeSimulator

    def __init__(self, address: tuple[str, int], simulator: ClaudeSimulator) -> None:
        self.simulator = simulator
        self._live: dict[threading.Thread, socket.socket] = {}
        self._live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall on loopback.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), daemon=True, name="claude-sim-conn"
        )
        with self._live_lock:
            self._live[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(threading.current_thread(), None)

    def close_connections(self, timeout: float) -> None:
        """Shut every open client socket down and join the handler threads."""
        with self._live_lock:
            live = list(self._live.items())
        for _, sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread, _ in live:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every response has Content-Length
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid the 40 ms delayed-ACK stall
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("claude-sim %s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.simulator._handle(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.server.simulator._handle(self, "POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.simulator._handle(self, "DELETE")

    def client_gone(self) -> bool:
        """True if the client closed its end (e.g. it timed out) while we were busy."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


# --------------------------------------------------------------------------------------------
# The simulator


class ClaudeSimulator:
    """A loopback Anthropic API. Use as a context manager or call start()/stop()."""

    def __init__(self, config: FaultConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = config or FaultConfig()
        self._host = host
        self._port = port
        self._lock = threading.Lock()  # guards config, attempts, rate window, cache and batches
        self._stopping = threading.Event()
        self._released = threading.Event()  # cleared by `hold()`: answers wait, batches do not end
        self._released.set()
        self._server: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._base_url: str | None = None
        self.stats = SimulatorStats()
        # Fault selection uses its own attempt counters so reset_stats() does not replay faults.
        self._attempts: Counter[str] = Counter()
        self._batch_attempts: Counter[str] = Counter()
        self._window: deque[float] = deque()
        self._token_window: deque[tuple[float, int, int]] = deque()
        self._cache: dict[str, float] = {}  # sha256 of a cached system block -> expiry
        self._batches: dict[str, _Batch] = {}

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def config(self) -> FaultConfig:
        """The active fault configuration (assign a new FaultConfig to change faults mid-test)."""
        with self._lock:
            return self._config

    @config.setter
    def config(self, value: FaultConfig) -> None:
        with self._lock:
            self._config = value

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`; valid after start()."""
        if self._base_url is None:
            raise RuntimeError("ClaudeSimulator.base_url is only known after start()")
        return self._base_url

    def start(self) -> ClaudeSimulator:
        """Bind the socket and serve in background threads. Returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _HTTPServer((self._host, self._port), self)
        host, port = server.server_address[:2]
        self._base_url = f"http://{host}:{port}"
        self._server = server
        self._threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True, name="claude-sim"),
            threading.Thread(target=self._batch_clock, daemon=True, name="claude-sim-batches"),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, and join all threads. Idempotent."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency/slow faults
        server.shutdown()
        server.server_close()
        server.close_connections(timeout=5.0)
        for thread in self._threads:
            thread.join(5.0)
        self._threads = []

    def __enter__(self) -> ClaudeSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold(self) -> None:
        """Tests: Messages answers wait (after being counted) and no batch ends until `release()`,
        so a test can hold a run mid-batch for as long as it needs."""
        self._released.clear()

    def release(self) -> None:
        """End a `hold()`: waiting answers go out, due batches end."""
        self._released.set()

    def reset_stats(self) -> None:
        """Zero every counter in `stats` (fault attempt indices are kept)."""
        self.stats._reset()

    # -- request plumbing -----------------------------------------------------------------

    def _handle(self, h: _Handler, method: str) -> None:
        request_id = f"req_sim_{uuid.uuid4().hex[:24]}"
        try:
            self._route(h, method, request_id)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        except Exception as exc:  # a simulator bug must still answer in the API's error shape
            log.exception("claude simulator failed on %s %s", method, h.path)
            self._send_error(h, request_id, 500, "api_error", f"simulator internal error: {exc}")

    def _route(self, h: _Handler, method: str, request_id: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        url = urlsplit(h.path)
        path = url.path.rstrip("/") or "/"

        if not self._authenticated(h):
            self._send_error(
                h, request_id, 401, "authentication_error", "missing credentials: send x-api-key or Authorization: Bearer"
            )
            return
        if not h.headers.get("anthropic-version"):
            self._invalid(h, request_id, "anthropic-version: header is required")
            return
        body: Any = None
        if method == "POST":
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._invalid(h, request_id, "request body is not valid JSON")
                return

        if path == "/v1/messages" and method == "POST":
            self._messages(h, request_id, body, raw)
        elif path == "/v1/messages/count_tokens" and method == "POST":
            self._count_tokens(h, request_id, body)
        elif path == "/v1/messages/batches" and method == "POST":
            self._create_batch(h, request_id, body)
        elif path == "/v1/messages/batches" and method == "GET":
            self._list_batches(h, request_id, parse_qs(url.query))
        elif (match := _BATCH_PATH_RE.match(path)) is not None:
            self._batch_action(h, request_id, method, match.group(1), match.group(2) or "")
        else:
            self._send_error(h, request_id, 404, "not_found_error", f"no route for {method} {path}")

    @staticmethod
    def _authenticated(h: _Handler) -> bool:
        if (h.headers.get("x-api-key") or "").strip():
            return True
        scheme, _, token = (h.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

    def _headers(self, request_id: str) -> dict[str, str]:
        now = time.time()
        with self._lock:
            cfg = self._config
            self._expire_windows(now, cfg.rate_window_s)
            limit = cfg.rpm_limit or _DEFAULT_RPM
            remaining = max(0, limit - len(self._window))
            reset = self._window[0] + cfg.rate_window_s if self._window else now
            used_in = sum(t[1] for t in self._token_window)
            used_out = sum(t[2] for t in self._token_window)
        headers = {
            "x-lora-simulator": "true",
            "request-id": request_id,
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": _rfc3339(reset),
        }
        used = {"tokens": used_in + used_out, "input-tokens": used_in, "output-tokens": used_out}
        for kind, cap in _TOKEN_LIMITS.items():
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(cap)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(max(0, cap - used[kind]))
            headers[f"anthropic-ratelimit-{kind}-reset"] = _rfc3339(reset)
        return headers

    def _send(
        self,
        h: _Handler,
        request_id: str,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        extra: dict[str, str] | None = None,
        deliver_key: str | None = None,
    ) -> bool:
        """Write one response; True if it reached a still-connected client. `deliver_key` counts a
        delivered conversation *before* the last byte goes out (so a client that has the response
        always sees the count) and takes it back if the write fails."""
        self.stats._response(status)
        if h.client_gone():
            h.close_connection = True
            return False
        if deliver_key is not None:
            self.stats._add("delivered_by_key", deliver_key)
        try:
            h.send_response(status)
            for name, value in {**self._headers(request_id), **(extra or {})}.items():
                h.send_header(name, value)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(payload)))
            if self._stopping.is_set():
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            h.wfile.write(payload)
            h.wfile.flush()
            return True
        except OSError:
            if deliver_key is not None:
                self.stats._add("delivered_by_key", deliver_key, -1)
            h.close_connection = True
            return False

    def _send_json(
        self,
        h: _Handler,
        request_id: str,
        status: int,
        obj: Any,
        extra: dict[str, str] | None = None,
        deliver_key: str | None = None,
    ) -> bool:
        payload = json.dumps(obj, ensure_ascii=False).encode()
        return self._send(h, request_id, status, payload, extra=extra, deliver_key=deliver_key)

    def _send_error(
        self, h: _Handler, request_id: str, status: int, kind: str, message: str, extra: dict[str, str] | None = None
    ) -> bool:
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
        return self._send_json(h, request_id, status, body, extra)

    def _invalid(self, h: _Handler, request_id: str, message: str) -> bool:
        return self._send_error(h, request_id, 400, "invalid_request_error", message)

    # -- Messages -------------------------------------------------------------------------

    def _messages(self, h: _Handler, request_id: str, body: Any, raw: bytes) -> None:
        if (problem := _validate_params(body)) is not None:
            self._invalid(h, request_id, problem)
            return
        key = h.headers.get("x-lora-item-id") or "body:" + hashlib.sha256(raw).hexdigest()[:32]
        now = time.time()
        with self._lock:
            cfg = self._config
            attempt = self._attempts[key]
            self._attempts[key] += 1
            retry_after = self._admit(now, cfg)
        self.stats._add("attempts_by_key", key)

        outcome = (
            "rate_limited"
            if retry_after is not None
            else _pick(_unit(cfg.seed, "messages", key, attempt), _MESSAGE_FAULTS, cfg._message_rates())
        )
        while not self._released.wait(0.02):
            if self._stopping.is_set():
                h.close_connection = True
                return
        if cfg.latency_s and self._stopping.wait(cfg.latency_s):
            h.close_connection = True
            return

        if outcome == "rate_limited":
            assert retry_after is not None
            self.stats._add("by_outcome", outcome)
            headers = {
                "retry-after-ms": str(math.ceil(retry_after * 1000)),
                "retry-after": str(max(1, math.ceil(retry_after))),
            }
            message = f"rate limit of {cfg.rpm_limit} requests per {cfg.rate_window_s:g}s exceeded"
            self._send_error(h, request_id, 429, "rate_limit_error", message, headers)
            return
        if outcome == "overloaded":
            self.stats._add("by_outcome", outcome)
            self._send_error(h, request_id, 529, "overloaded_error", "Overloaded")
            return
        if outcome == "server_error":
            self.stats._add("by_outcome", outcome)
            self._send_error(h, request_id, 500, "api_error", "Internal server error")
            return
        if outcome == "slow":
            self.stats._add("by_outcome", outcome)  # counted now: the client has likely given up by the end
            if self._stopping.wait(cfg.slow_s):
                h.close_connection = True
                return

        reply = self._reply(body, key, attempt, outcome, service_tier="standard")
        if outcome != "slow":
            self.stats._add("by_outcome", reply.outcome)
        usage = reply.message["usage"]
        with self._lock:
            self._token_window.append((time.time(), usage["input_tokens"], usage["output_tokens"]))
        self._send_json(h, request_id, 200, reply.message, deliver_key=key if reply.delivers else None)

    def _admit(self, now: float, cfg: FaultConfig) -> float | None:
        """Take a request slot in the sliding window; seconds until one frees if none is left.
        Caller holds the lock."""
        self._expire_windows(now, cfg.rate_window_s)
        if cfg.rpm_limit is not None and len(self._window) >= cfg.rpm_limit:
            return max(0.001, self._window[0] + cfg.rate_window_s - now)
        self._window.append(now)
        return None

    def _expire_windows(self, now: float, window_s: float) -> None:
        while self._window and self._window[0] <= now - window_s:
            self._window.popleft()
        while self._token_window and self._token_window[0][0] <= now - window_s:
            self._token_window.popleft()

    def _usage(self, params: dict[str, Any], output_tokens: int, service_tier: str) -> dict[str, Any]:
        """Realistic usage: ~4 chars per token; cache_control system blocks write then read the cache."""
        system = params.get("system") or []
        blocks = [system] if isinstance(system, str) else list(system)
        uncached_chars = sum(len(_content_text(m.get("content", ""))) for m in params["messages"])
        uncached_chars += len(json.dumps(params["tools"])) if params.get("tools") else 0
        created = {"5m": 0, "1h": 0}
        read = 0
        now = time.time()
        for block in blocks:
            text = _block_text(block)
            control = block.get("cache_control") if isinstance(block, dict) else None
            if not isinstance(control, dict):
                uncached_chars += len(text)
                continue
            ttl = "1h" if control.get("ttl") == "1h" else "5m"
            digest = hashlib.sha256(text.encode()).hexdigest()
            with self._lock:
                hit = self._cache.get(digest, 0.0) > now
                self._cache[digest] = now + (3600 if ttl == "1h" else 300)  # a hit refreshes the TTL
            if hit:
                read += _tokens(len(text))
            else:
                created[ttl] += _tokens(len(text))
        return {
            "input_tokens": _tokens(uncached_chars),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": created["5m"] + created["1h"],
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": created["5m"], "ephemeral_1h_input_tokens": created["1h"]},
            "server_tool_use": None,
            "service_tier": service_tier,
        }

    def _reply(self, params: dict[str, Any], key: str, attempt: int, outcome: str, service_tier: str) -> _Reply:
        """Compose the message for `outcome` (ok or a content fault), cut at max_tokens if needed."""
        user_text = _last_user_text(params["messages"])
        if "<judge_request>" in user_text:
            text = json.dumps(_judge_scores(user_text, key), separators=(",", ":"))
        else:
            conversation = _compose_conversation(parse_scaffolding_block(user_text), key)
            text = json.dumps(conversation, separators=(",", ":"), ensure_ascii=False)
        rng = random.Random(_digest("fault", key, attempt))
        thinking: str | None = None
        stop_reason = "end_turn"
        stop_details: dict[str, Any] | None = None

        if outcome == "truncated":
            text = text[: int(len(text) * rng.uniform(0.3, 0.8))]
            stop_reason = "max_tokens"
        elif outcome == "malformed":
            text = _malform(text, rng)
        elif outcome == "refusal":
            text = rng.choice(_REFUSALS)
            stop_reason = "refusal"
            stop_details = {"type": "refusal", "category": None, "explanation": None}
        elif outcome == "wrapped":
            text = f"{rng.choice(_WRAP_BEFORE)}\n\n```json\n{text}\n```\n\n{rng.choice(_WRAP_AFTER)}"
        elif outcome == "thinking":
            meta = conversation["conversation_metadata"]
            thinking = (
                f"The client is {meta['client_persona']}. I need {len(conversation['turns'])} turns, "
                "alternating client and advisor, with the advisor acknowledging feelings before facts."
            )

        # Natural truncation: the model stops at max_tokens whatever it was writing.
        budget = params["max_tokens"] * 4
        used = len(thinking or "")
        if used + len(text) > budget:
            if thinking is not None and used >= budget:
                thinking, text = thinking[:budget], ""
            else:
                text = text[: budget - used]
            stop_reason, stop_details = "max_tokens", None
            if outcome in _DELIVERING:
                outcome = "truncated"

        content: list[dict[str, Any]] = []
        if thinking is not None:
            content.append({"type": "thinking", "thinking": thinking, "signature": "sim_" + _digest(thinking).hex()[:32]})
        content.append({"type": "text", "text": text, "citations": None})
        message = {
            "id": _MESSAGE_ID_PREFIX + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": params["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "stop_details": stop_details,
            "container": None,
            "usage": self._usage(params, _tokens(len(text) + len(thinking or "")), service_tier),
        }
        return _Reply(message, outcome, stop_reason == "end_turn" and outcome in _DELIVERING)

    def _count_tokens(self, h: _Handler, request_id: str, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            self._invalid(h, request_id, "model and messages are required")
            return
        system = body.get("system") or ""
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        chars = len(_content_text(system)) + sum(len(_content_text(m.get("content", ""))) for m in messages)
        chars += len(json.dumps(body["tools"])) if body.get("tools") else 0
        self._send_json(h, request_id, 200, {"input_tokens": _tokens(chars)})

    # -- Message Batches ------------------------------------------------------------------

    def _create_batch(self, h: _Handler, request_id: str, body: Any) -> None:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            self._invalid(h, request_id, "requests: Field required (non-empty list)")
            return
        seen: set[str] = set()
        for i, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID_RE.match(custom_id):
                self._invalid(h, request_id, f"requests.{i}.custom_id: must match {_CUSTOM_ID_RE.pattern}")
                return
            if custom_id in seen:
                self._invalid(h, request_id, f"requests.{i}.custom_id: duplicate {custom_id!r}")
                return
            seen.add(custom_id)
            if (problem := _validate_params(item.get("params"), f"requests.{i}.params.")) is not None:
                self._invalid(h, request_id, problem)
                return

        cfg = self.config
        rates = (cfg.batch_error_rate, cfg.batch_expire_rate, *cfg._content_rates())
        entries: list[_BatchEntry] = []
        for item in requests:
            custom_id = item["custom_id"]
            with self._lock:
                attempt = self._batch_attempts[custom_id]
                self._batch_attempts[custom_id] += 1
            # Results are decided now; the batch only reveals them when it ends.
            outcome = _pick(_unit(cfg.seed, "batch", custom_id, attempt), _BATCH_FAULTS, rates)
            finish = _unit(cfg.seed, "finish", custom_id, attempt)
            if outcome == "batch_errored":
                error = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
                entries.append(_BatchEntry(custom_id, {"type": "errored", "error": error}, outcome, False, finish))
            elif outcome == "batch_expired":
                entries.append(_BatchEntry(custom_id, {"type": "expired"}, outcome, False, finish))
            else:
                reply = self._reply(item["params"], custom_id, attempt, outcome, service_tier="batch")
                result = {"type": "succeeded", "message": reply.message}
                entries.append(_BatchEntry(custom_id, result, reply.outcome, reply.delivers, finish))

        batch = _Batch(_BATCH_ID_PREFIX + uuid.uuid4().hex[:24], time.time(), cfg.batch_processing_s, entries)
        with self._lock:
            self._batches[batch.id] = batch
        self.stats._batch_created([e.custom_id for e in entries])
        self._send_json(h, request_id, 200, self._batch_json(batch, h))

    def _batch_clock(self) -> None:
        # Batches end on time even if nobody polls (stats then reflect delivered results).
        while not self._stopping.wait(0.02):
            self._advance_all()

    def _advance_all(self) -> None:
        now = time.time()
        with self._lock:
            for batch in self._batches.values():
                self._advance(batch, now)

    def _advance(self, batch: _Batch, now: float) -> None:
        """Move a batch to `ended` when its time comes. Caller holds the lock."""
        if batch.status == "in_progress" and now >= batch.created_at + batch.processing_s and self._released.is_set():
            self._end(batch, batch.created_at + batch.processing_s, canceled_from=None)
        elif batch.status == "canceling" and batch.cancel_initiated_at is not None:
            if now >= batch.cancel_initiated_at + _CANCEL_DELAY_S:
                self._end(batch, batch.cancel_initiated_at + _CANCEL_DELAY_S, canceled_from=batch.cancel_initiated_at)

    def _end(self, batch: _Batch, ended_at: float, canceled_from: float | None) -> None:
        elapsed = None if canceled_from is None else canceled_from - batch.created_at
        lines: list[dict[str, Any]] = []
        counts = {**dict.fromkeys(_RESULT_TYPES, 0), "processing": 0}
        for entry in batch.entries:
            finished = elapsed is None or entry.finish_fraction * batch.processing_s <= elapsed
            result = entry.result if finished else {"type": "canceled"}
            outcome = entry.outcome if finished else "batch_canceled"
            counts[result["type"]] += 1
            self.stats._add("by_outcome", outcome)
            if finished and entry.delivers:
                self.stats._add("delivered_by_key", entry.custom_id)
            lines.append({"custom_id": entry.custom_id, "result": result})
        # Results come back in no particular order, as the real API warns: clients match on custom_id.
        lines.sort(key=lambda line: _digest(batch.id, line["custom_id"]))
        batch.final, batch.counts, batch.status, batch.ended_at = lines, counts, "ended", ended_at

    def _batch_json(self, batch: _Batch, h: _Handler) -> dict[str, Any]:
        host = h.headers.get("Host")
        base = f"http://{host}" if host else self.base_url
        ended = batch.status == "ended"
        # Requests count as processing until the whole batch ends, as in the real API.
        counts = batch.counts if ended else {**dict.fromkeys(_RESULT_TYPES, 0), "processing": len(batch.entries)}
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": dict(counts),
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + _BATCH_TTL_S),
            "ended_at": _rfc3339(batch.ended_at) if batch.ended_at is not None else None,
            "cancel_initiated_at": _rfc3339(batch.cancel_initiated_at) if batch.cancel_initiated_at is not None else None,
            "archived_at": None,
            "results_url": f"{base}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def _list_batches(self, h: _Handler, request_id: str, query: dict[str, list[str]]) -> None:
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            self._invalid(h, request_id, "limit: must be between 1 and 1000")
            return
        self._advance_all()
        with self._lock:
            batches = sorted(self._batches.values(), key=lambda b: b.created_at, reverse=True)  # newest first
            ids = [b.id for b in batches]
            if after := query.get("after_id", [None])[0]:
                batches = batches[ids.index(after) + 1 :] if after in ids else []
                page = batches[:limit]
            elif before := query.get("before_id", [None])[0]:
                batches = batches[: ids.index(before)] if before in ids else []
                page = batches[-limit:]
            else:
                page = batches[:limit]
            has_more = len(batches) > len(page)
            data = [self._batch_json(b, h) for b in page]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        body = {"data": data, "has_more": has_more, "first_id": first, "last_id": last}
        self._send_json(h, request_id, 200, body)

    def _batch_action(self, h: _Handler, request_id: str, method: str, batch_id: str, action: str) -> None:
        allowed = {"": ("GET", "DELETE"), "/cancel": ("POST",), "/results": ("GET",)}[action]
        if method not in allowed:
            self._send_error(h, request_id, 404, "not_found_error", f"no route for {method} {h.path}")
            return
        now = time.time()
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is not None:
                self._advance(batch, now)
                if action == "/cancel" and batch.status == "in_progress":
                    batch.status, batch.cancel_initiated_at = "canceling", now
                if action == "" and method == "DELETE" and batch.status == "ended":
                    del self._batches[batch_id]
            snapshot = None if batch is None else (batch.status, list(batch.final or []), self._batch_json(batch, h))
        if snapshot is None:
            self._send_error(h, request_id, 404, "not_found_error", f"message batch {batch_id!r} not found")
            return
        status, lines, batch_json = snapshot

        if action == "/results":
            if status != "ended":
                self._invalid(h, request_id, f"message batch {batch_id} is {status}: results exist once it has ended")
                return
            payload = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
            self._send(h, request_id, 200, payload, content_type="application/binary")
        elif method == "DELETE":
            if status != "ended":
                self._invalid(h, request_id, f"message batch {batch_id} is {status}: cancel it and let it end first")
                return
            self._send_json(h, request_id, 200, {"id": batch_id, "type": "message_batch_deleted"})
        else:  # retrieve, or cancel (idempotent: an ended or canceling batch is returned as is)
            self._send_json(h, request_id, 200, batch_json)


def serve(host: str, port: int, config: FaultConfig) -> None:
    """Run a simulator in the foreground until interrupted (Ctrl-C or SIGTERM); for the
    `lora-assets simulate-claude` command."""
    done = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set()) if in_main else None
    try:
        with ClaudeSimulator(config, host=host, port=port) as sim:
            # The bound address (port 0 picks one), on stderr so stdout stays free for the caller.
            print(f"Claude simulator listening on {sim.base_url}", file=sys.stderr, flush=True)
            while not done.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
