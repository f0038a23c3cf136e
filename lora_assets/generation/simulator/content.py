"""What the simulator says: deterministic conversations and judge scores, the broken texts of
the content faults, and the ~4-characters-per-token estimate. Pure functions, no HTTP, no state.

Every choice is drawn from a `random.Random` seeded by a hash of the request key, so the same key
always gets the same text and different keys vary.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lora_assets.schemas import RawConversation

from .faults import digest
from .phrases import (
    ADVISOR_ACKS,
    ADVISOR_BRIDGES,
    ADVISOR_CLOSERS,
    ADVISOR_FACTS,
    ADVISOR_QUESTIONS,
    ADVISOR_RECAPS,
    ADVISOR_SIGNOFFS,
    EARLY_EMOTIONS,
    GENERIC,
    LATE_EMOTIONS,
    OUTCOMES,
    PHASES,
    SECONDARY,
    SESSION_CONTEXTS,
    USER_CLOSERS,
    USER_FOLLOWUPS,
    USER_OPENERS,
)

__all__ = [
    "block_text",
    "compose_conversation",
    "content_text",
    "expand",
    "judge_scores",
    "last_user_text",
    "malform",
    "rfc3339",
    "tokens",
]

_MONEY_RE = re.compile(r"\$\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:[kKmM]\b|thousand|million))?")

# --------------------------------------------------------------------------------------------
# Wire text: token estimates, timestamps, the text of message content


def tokens(chars: int) -> int:
    """The simulator's token estimate for `chars` characters (~4 characters per token)."""
    return math.ceil(chars / 4)


def rfc3339(ts: float) -> str:
    """A Unix timestamp as the API writes it: `2026-11-02T10:00:00.123456Z`."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def block_text(block: Any) -> str:
    """The text of one content block (a string, a text block, or any other block as JSON)."""
    if isinstance(block, str):
        return block
    if isinstance(block, dict) and block.get("type") == "text":
        return str(block.get("text", ""))
    return json.dumps(block, ensure_ascii=False)


def content_text(content: Any) -> str:
    """The text of a message's `content` (a string or a list of blocks)."""
    if isinstance(content, list):
        return "".join(block_text(b) for b in content)
    return block_text(content)


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user message: the one the simulator answers."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content", ""))
    return ""


# --------------------------------------------------------------------------------------------
# Conversation composition (phrase banks chosen by a hash of the request key)


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


_CHOICE = re.compile(r"\[([^\[\]]*)\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:?!])")
_LABELLED_FIGURE = re.compile(r"^([A-Za-z][A-Za-z ()'-]*?)\s+([$\d].*)$")


def expand(template: str, rng: random.Random) -> str:
    """`template` with every `[a|b|c]` group replaced by one option drawn from `rng`, left to
    right (an empty option drops the part); `{slots}` are left for `str.format`."""
    out: list[str] = []
    pos = 0
    for match in _CHOICE.finditer(template):
        out.append(template[pos : match.start()])
        out.append(rng.choice(match.group(1).split("|")))
        pos = match.end()
    out.append(template[pos:])
    return "".join(out)


def _say(template: str, rng: random.Random, slots: dict[str, str]) -> str:
    """One sentence: the grammar expanded, the slots filled, the spacing tidied."""
    text = " ".join(expand(template, rng).format(**slots).split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text[:1].upper() + text[1:]


def _facts(background: str) -> list[tuple[str, str]]:
    """(label, value) of each part of the financial background: 'Cash savings: $38,000 in a
    high-yield account' -> ('cash savings', '$38,000 in a high-yield account'); 'Household income
    $92,000' -> ('household income', '$92,000')."""
    facts = []
    for part in (p.strip().rstrip(".") for p in re.split(r";\s*|\.\s+", background)):
        if not part:
            continue
        label, sep, value = part.partition(": ")
        if not sep:
            labelled = _LABELLED_FIGURE.match(part)
            label, value = labelled.groups() if labelled else ("situation", part)
        facts.append((label.strip().lower(), _mid_sentence(value.strip())))
    return facts or [("situation", "what you described")]


def _concepts(description: str) -> list[str]:
    """The clauses of a topic description: the ideas an advisor would name."""
    parts = re.split(r"[:;,.]\s*|\s+and\s+|\s+instead of\s+", description)
    concepts = [_mid_sentence(p.strip()) for p in parts if len(p.split()) >= 2]
    return concepts or [_mid_sentence(description.strip().rstrip("."))]


def _who(demographics: str, figures: dict[str, str]) -> list[str]:
    """Noun phrases for the client ('someone who's 37', 'a parent', …), from their demographics."""
    who = [f"someone with {figures['amount']} already set aside", f"someone earning {figures['income']}"]
    age = re.search(r"\bAge (\d+)", demographics)
    if age:
        who.append(f"someone who's {age.group(1)}")
    if re.search(r"child|kid|daughter|son\b", demographics, re.I):
        who.append("a parent")
    if re.search(r"married|partner|spouse", demographics, re.I):
        who.append("someone planning as a couple")
    return who


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


def _slots(s: dict[str, str], rng: random.Random) -> dict[str, str]:
    """The `str.format` slots of every phrase (see `phrases`), from the completed scaffolding."""
    name = s["persona_name"]
    return {
        "name": name,
        "first": name.split()[0],
        "topic": s["topic_name"],
        "topic_l": _mid_sentence(s["topic_name"]),
        "topic_desc": _sentence(s["topic_description"]),
        "arc": s["arc_name"],
        "start": s["arc_starting_emotion"].strip().lower(),
        "end": s["arc_ending_emotion"].strip().lower(),
        "demographics": s["persona_demographics"].rstrip("."),
        "background": s["persona_financial_background"].rstrip("."),
        **_figures(rng, s["persona_financial_background"]),
    }


@dataclass(frozen=True)
class _Plan:
    """The draws made once per conversation, before its turns."""

    turns: int
    user_count: int
    followups: list[str]
    facts: list[str]
    start_intensity: float
    end_intensity: float
    body: tuple[int, int]


#: Body templates whose fixed part (outside every choice) names a figure.
_FIGURED_FACTS = tuple(t for t in ADVISOR_FACTS if re.search(r"\{(monthly|projection|rate)\}", re.sub(r"\[[^\]]*\]", "", t)))


def _body_range(turns: int) -> tuple[int, int]:
    """Body sentences per advisor turn (min, max) by length tier: the more turns a conversation
    has, the shorter each answer, as a model writing a whole conversation under one `max_tokens`
    does (and so the conversations stay as long as before, within the tests' length budgets)."""
    if turns <= 7:
        return (1, 2)
    return (1, 1)


def _plan(rng: random.Random, n: int) -> _Plan:
    # The draw order below is part of the output: changing it changes every conversation.
    user_count = (n + 1) // 2
    followups = rng.sample(USER_FOLLOWUPS, k=min(len(USER_FOLLOWUPS), max(0, user_count - 2)))
    facts = rng.sample(ADVISOR_FACTS, k=len(ADVISOR_FACTS))  # no body template twice in a conversation
    start_intensity = rng.uniform(0.7, 0.92)
    end_intensity = rng.uniform(0.55, 0.8)
    low, high = _body_range(n)
    # Some conversations run terse and some expansive at any tier, as a model's answers do.
    high += rng.choice((-1, 0, 0))
    return _Plan(n, user_count, followups, facts, start_intensity, end_intensity, (low, max(low, high)))


def _user_turn(rng: random.Random, plan: _Plan, j: int, slots: dict[str, str]) -> dict[str, Any]:
    """The client's `j`-th turn (0-based among the client turns)."""
    start, end = slots["start"], slots["end"]
    progress = j / (plan.user_count - 1) if plan.user_count > 1 else 1.0
    if j == 0:
        primary, secondary = start, rng.sample(SECONDARY, k=2)
        text = rng.choice(USER_OPENERS)
    elif j == plan.user_count - 1:
        primary, secondary = end, [rng.choice(LATE_EMOTIONS)]
        text = rng.choice(USER_CLOSERS)
    else:
        bank = EARLY_EMOTIONS if progress < 0.5 else LATE_EMOTIONS
        primary = rng.choice(bank)
        secondary = [start if progress < 0.5 else end]
        text = plan.followups[(j - 1) % len(plan.followups)]
    # Intensity eases from the starting emotion's peak to the ending emotion's level.
    intensity = plan.start_intensity + (plan.end_intensity - plan.start_intensity) * progress
    intensity -= 0.12 * math.sin(math.pi * progress)
    return {
        "turn_number": 2 * j + 1,
        "role": "user",
        "content": text.format(**slots, emotion=primary),
        "emotional_context": {
            "primary_emotion": primary,
            "secondary_emotions": secondary,
            "intensity": round(min(1.0, max(0.05, intensity)), 2),
        },
    }


def _advisor_turn(rng: random.Random, plan: _Plan, i: int, slots: dict[str, str], emotion: str,
                  used: list[int]) -> dict[str, Any]:
    """The advisor's answer at 0-based turn index `i`, to a client who last felt `emotion`:
    the feeling first, then facts drawn from the client's own figures, then (usually) a question.
    `used` counts the body templates spent so far in the conversation."""
    number = i + 1
    local = {**slots, "emotion": emotion}

    def vary() -> dict[str, str]:
        # Each sentence picks its own background line, topic idea and description of the client.
        label, value = rng.choice(slots_facts)
        return {**local, "fact_label": label, "fact_value": value,
                "concept": rng.choice(slots_concepts), "who": rng.choice(slots_who)}

    slots_facts = json.loads(slots["_facts"])
    slots_concepts = json.loads(slots["_concepts"])
    slots_who = json.loads(slots["_who"])
    if number == plan.turns:
        sentences = [_say(rng.choice(ADVISOR_CLOSERS), rng, vary())]
        sentences.append(_say(rng.choice(ADVISOR_RECAPS), rng, vary()))
        if rng.random() < 0.4:
            sentences.append(_say(rng.choice(ADVISOR_SIGNOFFS), rng, vary()))
    else:
        sentences = [_say(rng.choice(ADVISOR_ACKS), rng, vary())]
        if rng.random() < 0.25:
            sentences.append(_say(rng.choice(ADVISOR_BRIDGES), rng, vary()))
        for _ in range(rng.randint(*plan.body)):
            sentences.append(_say(plan.facts[used[0] % len(plan.facts)], rng, vary()))
            used[0] += 1
        if not any(ch.isdigit() for ch in " ".join(sentences)):
            # Specific means a figure of the client's in every answer (rule 6 of the system prompt).
            sentences.append(_say(rng.choice(_FIGURED_FACTS), rng, vary()))
        if rng.random() < 0.7:
            sentences.append(_say(rng.choice(ADVISOR_QUESTIONS), rng, vary()))
    return {"turn_number": number, "role": "assistant", "content": " ".join(sentences)}


def compose_conversation(scaffolding: dict[str, str], key: str) -> dict[str, Any]:
    """A schema-valid RawConversation dict, fully determined by (scaffolding, key)."""
    s = {**GENERIC, **{k: v for k, v in scaffolding.items() if v}}
    rng = random.Random(digest("compose", key))
    slots = _slots(s, rng)
    plan = _plan(rng, _turn_count(scaffolding.get("turn_count")))
    # Lists travel through the str-only slots as JSON (only the advisor's turns unpack them).
    advisor_slots = {
        **slots,
        "_facts": json.dumps(_facts(s["persona_financial_background"])),
        "_concepts": json.dumps(_concepts(s["topic_description"])),
        "_who": json.dumps(_who(s["persona_demographics"], slots)),
    }
    turns: list[dict[str, Any]] = []
    last_emotion = slots["start"]
    used = [0]
    for i in range(plan.turns):
        if i % 2 == 0:
            turn = _user_turn(rng, plan, i // 2, slots)
            last_emotion = turn["emotional_context"]["primary_emotion"]
        else:
            turn = _advisor_turn(rng, plan, i, advisor_slots, last_emotion, used)
        turns.append(turn)
    conversation = {
        "conversation_metadata": {
            "client_persona": f"{slots['name']} - {s['persona_archetype']}",
            "session_context": rng.choice(SESSION_CONTEXTS).format(**slots),
            "conversation_phase": rng.choice(PHASES).format(**slots),
            "expected_outcome": rng.choice(OUTCOMES).format(**slots),
        },
        "turns": turns,
    }
    RawConversation.model_validate(conversation)  # never send what the pipeline would reject
    return conversation


# --------------------------------------------------------------------------------------------
# Judge answers and broken texts


def judge_scores(transcript: str, key: str) -> dict[str, Any]:
    """Deterministic judge scores for a `<judge_request>` transcript (the simulator's stand-in
    for Claude-as-judge): varied per key, nudged by how much the advisor acknowledges feelings."""
    rng = random.Random(digest("judge", key))
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


def malform(text: str, rng: random.Random) -> str:
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
