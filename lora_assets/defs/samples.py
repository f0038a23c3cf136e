"""A few generated conversations as readable markdown for asset metadata (batch partitions and
training-file versions): persona, arc, topic, then the turns. Read from the stored raw responses,
so a batch shows its data even before (or without) parsing."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lora_assets.store import tables as t

#: Samples per metadata entry, and characters per turn shown (the metadata stays small).
SAMPLES = 3
TURN_CHARS = 600

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|])")


def escape_md(text: str) -> str:
    """`text` safe inside markdown: `<name>` stays visible (not swallowed as an HTML tag), and
    emphasis / table characters are literal."""
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", "  \n")


def _turns(raw: dict[str, Any]) -> list[dict[str, Any]]:
    from lora_assets.core.parse import extract_json_text

    # raw.json is {"response": the API's message, "generation": our record}; older files are the message.
    message = raw.get("response", raw) if isinstance(raw, dict) else raw
    try:
        return list(json.loads(extract_json_text(message, conversation_id="sample")).get("turns") or [])
    except Exception:  # noqa: BLE001 - a sample that does not parse is shown as such, not hidden
        return []


def render_conversation(*, persona: str, arc: str, topic: str, turns: Sequence[dict[str, Any]],
                        cost_usd: float | None = None, title: str = "") -> str:
    """One conversation as markdown: a heading, persona / arc / topic, then each turn."""
    head = f"#### {escape_md(title)}\n\n" if title else ""
    lines = [f"{head}**Persona:** {escape_md(persona)} · **Arc:** {escape_md(arc)} · **Topic:** {escape_md(topic)}"
             + (f" · **Cost:** ${cost_usd:.6f}" if cost_usd is not None else ""), ""]
    if not turns:
        lines.append("_(the stored response does not parse as a conversation: see its parse error)_")
    for turn in turns:
        who = "Client" if turn.get("role") == "user" else "Advisor"
        text = str(turn.get("content", ""))
        if len(text) > TURN_CHARS:
            text = text[:TURN_CHARS].rstrip() + " …"
        lines += [f"**{who}:** {escape_md(text)}", ""]
    return "\n".join(lines)


def sample_markdown(engine: Engine, store: Any, *, batch_id: str | None = None,
                    conversation_ids: Sequence[str] | None = None, n: int = SAMPLES,
                    responses: dict[str, dict[str, Any]] | None = None) -> str:
    """Up to `n` stored conversations of a batch (or of `conversation_ids`) as markdown, each
    with its cost; an empty string when there is none. `responses` (batch item id → the API
    message, kept in memory by the run that bought them) are shown without reading a blob."""
    c, p, a, x = t.conversations, t.personas, t.emotional_arcs, t.training_topics
    query = (sa.select(c.c.id, c.c.raw_response_path, c.c.cost_usd, p.c.name, p.c.archetype, a.c.name, x.c.name,
                       c.c.batch_item_id)
             .select_from(c.outerjoin(p, p.c.id == c.c.persona_id).outerjoin(a, a.c.id == c.c.emotional_arc_id)
                          .outerjoin(x, x.c.id == c.c.training_topic_id))
             .where(c.c.raw_response_path.is_not(None)).order_by(c.c.created_at, c.c.id).limit(n))
    if batch_id is not None:
        query = query.where(c.c.batch_job_id == batch_id)
    if conversation_ids is not None:
        query = query.where(c.c.id.in_(list(conversation_ids)[:1000]))
    if responses:
        query = query.where(c.c.batch_item_id.in_(list(responses)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    parts = []
    for i, (cid, path, cost, persona, archetype, arc, topic, item_id) in enumerate(rows, 1):
        if responses and item_id in responses:
            raw = {"response": responses[item_id]}
        else:
            try:
                raw = json.loads(store.get_bytes(path))
            except Exception:  # noqa: BLE001 - a missing blob is shown, the others still are
                raw = {}
        parts.append(render_conversation(persona=f"{persona} ({archetype})" if persona else "?", arc=arc or "?",
                                         topic=topic or "?", turns=_turns(raw), cost_usd=float(cost or 0),
                                         title=f"Sample {i}: conversation {cid}"))
    return "\n\n---\n\n".join(parts)


_FENCE = re.compile(r"^\s*(```|~~~)")


def _escape_html(line: str) -> str:
    # The UI renders markdown with HTML: a literal `<name>` would be taken for a tag and vanish.
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def card_markdown(card: str) -> str:
    """The dataset card as the Dagster UI should show it: the Hugging Face front matter (YAML
    between `---` lines, which the UI's markdown turns into a garbled list) as a two-column
    table of its top-level keys, and the body with `<`, `>` and `&` escaped outside code blocks
    so text like `<name>` stays visible. The card file itself is unchanged."""
    import yaml

    front, body = {}, card
    if card.startswith("---\n"):
        end = card.find("\n---", 4)
        if end != -1:
            try:
                front = yaml.safe_load(card[4:end]) or {}
            except yaml.YAMLError:
                front = {}
            body = card[end + 4:].lstrip("\n")
    lines, in_code = [], False
    for line in body.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
            lines.append(line)
            continue
        lines.append(line if in_code else _escape_html(line))
    table = ""
    if isinstance(front, dict) and front:
        rows = [f"| {escape_md(str(k))} | {escape_md(v if isinstance(v, str) else json.dumps(v))} |"
                for k, v in front.items()]
        table = "**Hugging Face front matter** (in the card file's YAML header)\n\n| key | value |\n|---|---|\n" \
                + "\n".join(rows) + "\n\n"
    return table + "\n".join(lines)
