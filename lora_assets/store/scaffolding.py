"""Scaffolding as runs see it: rows looked up by key, the snapshot a batch is planned with, and
each item's or conversation's scaffolding resolved from that snapshot."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lora_assets.schemas import BatchItemPlan, ConsultantProfile, ResolvedScaffolding
from lora_assets.store import tables as t
from lora_assets.store.db import read_consultant_profile, scaffolding_by_id


class UnknownScaffoldingKeyError(ValueError):
    """A selection names a persona / arc / topic key that is not in the DB."""


def resolve_keys(conn: Connection, table: sa.Table, key_col: str, keys: list[str], what: str) -> list[tuple[str, str]]:
    """(key, id) of each of `keys` (every row, by key, when `keys` is empty); UnknownScaffoldingKeyError
    naming the unknown ones and the known ones."""
    rows = conn.execute(sa.select(table.c[key_col], table.c.id).order_by(table.c[key_col])).all()
    known = {k: i for k, i in rows}
    if not keys:
        return list(known.items())
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise UnknownScaffoldingKeyError(
            f"unknown {what} key(s) {unknown}; known {what} keys: {sorted(known)}"
        )
    return [(k, known[k]) for k in dict.fromkeys(keys)]


_KEYED = (
    ("persona", t.personas, "persona_key", "personas"),
    ("emotional arc", t.emotional_arcs, "arc_key", "emotional_arcs"),
    ("training topic", t.training_topics, "topic_key", "training_topics"),
)


def scaffolding_by_keys(conn: Connection, persona_key: str, arc_key: str, topic_key: str) -> ResolvedScaffolding:
    """The current persona, emotional arc and training topic rows with these keys (what a one-file
    `parse` checks a response against); UnknownScaffoldingKeyError naming the first unknown key."""
    found: list[Any] = []
    for (label, table, col, kind), key in zip(_KEYED, (persona_key, arc_key, topic_key), strict=True):
        row_id = conn.execute(sa.select(table.c.id).where(table.c[col] == key)).scalar()
        model = scaffolding_by_id(conn, [row_id], kind).get(row_id) if row_id is not None else None
        if model is None:
            raise UnknownScaffoldingKeyError(f"unknown {label} key {key!r}")
        found.append(model)
    return ResolvedScaffolding(persona=found[0], emotional_arc=found[1], training_topic=found[2])


SNAPSHOT_KINDS = ("personas", "emotional_arcs", "training_topics", "prompt_templates")


def plan_snapshot(conn: Connection, combos: list[tuple[str, str, str]], template_id: str) -> dict[str, Any]:
    """The scaffolding rows a batch uses and the consultant profile, as they are now (design rule
    6: what is generated, parsed and enriched is the plan, whatever the tables say later)."""
    ids = [{c[k] for c in combos} for k in range(3)] + [{template_id}]
    snapshot: dict[str, Any] = {
        kind: {i: m.model_dump(mode="json") for i, m in scaffolding_by_id(conn, wanted, kind).items()}
        for kind, wanted in zip(SNAPSHOT_KINDS, ids, strict=True)
    }
    consultant = read_consultant_profile(conn)
    snapshot["consultant_profile"] = consultant.model_dump(mode="json") if consultant else None
    return snapshot


def batch_consultant(conn: Connection, batch: dict[str, Any]) -> ConsultantProfile | None:
    """The consultant profile the batch was planned with (the current one for batches planned
    before snapshots existed)."""
    snap = batch.get("scaffolding_snapshot") or {}
    if snap.get("consultant_profile"):
        return ConsultantProfile.model_validate(snap["consultant_profile"])
    return read_consultant_profile(conn)


def resolve_items(conn: Connection, items: Iterable[BatchItemPlan]) -> dict[str, ResolvedScaffolding]:
    """Scaffolding of each item, from the IDs fixed at planning time, as it was at planning time
    (the batch's snapshot; the current rows only for batches planned before snapshots existed)."""
    items = list(items)
    snapshots: dict[str, dict[str, Any] | None] = {}
    for batch_id in {i.batch_job_id for i in items}:
        snapshots[batch_id] = conn.execute(
            sa.select(t.batch_jobs.c.scaffolding_snapshot).where(t.batch_jobs.c.id == batch_id)).scalar()
    out: dict[str, ResolvedScaffolding] = {}
    for batch_id, snap in snapshots.items():
        entries = [(i.id, i.persona_id, i.emotional_arc_id, i.training_topic_id, i.prompt_template_id)
                   for i in items if i.batch_job_id == batch_id]
        out.update(resolve_snapshot(conn, entries, snap))
    return out


def resolve_conversations(conn: Connection, rows: Iterable[dict[str, Any]]) -> dict[str, ResolvedScaffolding]:
    """Scaffolding of each conversation row (by its id): the snapshot stored on the row when it was
    generated; the current rows by the row's IDs only for conversations stored without one."""
    out: dict[str, ResolvedScaffolding] = {}
    legacy = []
    # Rows of one batch planned from the same scaffolding carry equal snapshots: validate each once.
    seen: dict[tuple[Any, ...], ResolvedScaffolding] = {}
    for r in rows:
        if r.get("scaffolding_snapshot"):
            same = (r.get("batch_job_id"), r["persona_id"], r["emotional_arc_id"], r["training_topic_id"],
                    r.get("prompt_template_id"))
            if same not in seen:
                seen[same] = ResolvedScaffolding.model_validate(r["scaffolding_snapshot"])
            out[r["id"]] = seen[same]
        else:
            legacy.append((r["id"], r["persona_id"], r["emotional_arc_id"], r["training_topic_id"], r["prompt_template_id"]))
    out.update(resolve_snapshot(conn, legacy))
    return out


def resolve_snapshot(conn: Connection, entries: list[tuple[str, str, str, str, str | None]],
                     snapshot: dict[str, Any] | None = None) -> dict[str, ResolvedScaffolding]:
    """Resolved scaffolding per entry (key, persona id, arc id, topic id, template id): from
    `snapshot` when given (one object per combination), else from the current rows."""
    if not entries:
        return {}
    if snapshot:
        personas, arcs, topics, templates = (snapshot.get(kind) or {} for kind in SNAPSHOT_KINDS)
        # One object per combination, shared by its items: a batch's memory does not grow with
        # conversations per combination.
        combos: dict[tuple[str, str, str, str | None], ResolvedScaffolding] = {}
        out: dict[str, ResolvedScaffolding] = {}
        for key, p, a, x, tpl in entries:
            if (p, a, x, tpl) not in combos:
                combos[(p, a, x, tpl)] = ResolvedScaffolding.model_validate({
                    "persona": personas[p], "emotional_arc": arcs[a], "training_topic": topics[x],
                    "prompt_template": templates.get(tpl) if tpl else None})
            out[key] = combos[(p, a, x, tpl)]
        return out
    # Four queries for the whole set, whatever its size.
    personas = scaffolding_by_id(conn, (e[1] for e in entries), "personas")
    arcs = scaffolding_by_id(conn, (e[2] for e in entries), "emotional_arcs")
    topics = scaffolding_by_id(conn, (e[3] for e in entries), "training_topics")
    templates = scaffolding_by_id(conn, (e[4] for e in entries if e[4]), "prompt_templates")
    return {
        key: ResolvedScaffolding(
            persona=personas[p], emotional_arc=arcs[a], training_topic=topics[t], prompt_template=templates.get(tpl)
        )
        for key, p, a, t, tpl in entries
    }


#: The columns `ScaffoldingResolver.resolve` reads from a row (`has_snapshot` is
#: `snapshot_flag()`): a stage selects these instead of every row's whole snapshot.
RESOLVE_COLUMNS = ("batch_job_id", "persona_id", "emotional_arc_id", "training_topic_id", "prompt_template_id")
_PARTS = (("persona", "persona_id"), ("emotional_arc", "emotional_arc_id"), ("training_topic", "training_topic_id"),
          ("prompt_template", "prompt_template_id"))


def snapshot_flag() -> sa.ColumnElement[bool]:
    """`has_snapshot`: whether a conversation row stores its scaffolding snapshot (rows generated
    before snapshots existed are resolved from the current rows)."""
    return sa.case((t.conversations.c.scaffolding_snapshot.is_(None), False), else_=True).label("has_snapshot")


class ScaffoldingResolver:
    """`resolve_conversations` for a stage streaming a partition page by page, from rows read
    without their snapshot (`RESOLVE_COLUMNS` + `snapshot_flag()`).

    A row's snapshot is its batch's snapshot of the persona, arc, topic and template it names
    (`claims` copies it at generation), so each part is validated once per batch: a row whose
    parts are all known costs no query and no validation, and a row with a part not seen yet has
    its own snapshot read and validated whole (as `resolve_conversations` does). Rows without a
    snapshot are resolved from the current rows, once per combination. One `ResolvedScaffolding`
    per combination, shared by its conversations."""

    def __init__(self) -> None:
        self._parts: dict[tuple[Any, str, Any], Any] = {}
        self._combos: dict[tuple[Any, ...], ResolvedScaffolding] = {}

    @staticmethod
    def _combo(row: dict[str, Any]) -> tuple[Any, ...]:
        return (bool(row["has_snapshot"]), *(row[c] for c in RESOLVE_COLUMNS))

    def _known(self, row: dict[str, Any]) -> bool:
        batch = row["batch_job_id"]
        return all((batch, part, row[col]) in self._parts for part, col in _PARTS if row[col] is not None)

    def resolve(self, conn: Connection, rows: Iterable[dict[str, Any]]) -> dict[str, ResolvedScaffolding]:
        rows = list(rows)
        todo = [r for r in rows if self._combo(r) not in self._combos]
        unseen = {}  # a representative row (by id) for each combination with a part not validated yet
        for r in todo:
            if r["has_snapshot"] and not self._known(r):
                unseen.setdefault(self._combo(r), r["id"])
        if unseen:
            c = t.conversations
            snaps = dict(conn.execute(sa.select(c.c.id, c.c.scaffolding_snapshot).where(c.c.id.in_(list(unseen.values())))).all())
            for combo, cid in unseen.items():
                if snaps.get(cid):
                    whole = ResolvedScaffolding.model_validate(snaps[cid])
                    batch = combo[1]
                    for part, col in _PARTS:
                        value = getattr(whole, part)
                        row_id = dict(zip(RESOLVE_COLUMNS, combo[1:], strict=True))[col]
                        if value is not None and row_id is not None:
                            self._parts.setdefault((batch, part, row_id), value)
                    self._combos[combo] = whole
        legacy = []
        for r in todo:
            combo = self._combo(r)
            if combo in self._combos:
                continue
            if r["has_snapshot"] and self._known(r):
                batch = r["batch_job_id"]
                self._combos[combo] = ResolvedScaffolding(**{
                    part: self._parts[(batch, part, r[col])] if r[col] is not None else None for part, col in _PARTS})
            else:
                legacy.append(r)
        if legacy:
            entries = {self._combo(r): (r["id"], r["persona_id"], r["emotional_arc_id"], r["training_topic_id"],
                                        r["prompt_template_id"]) for r in legacy}
            found = resolve_snapshot(conn, list(entries.values()))
            for combo, entry in entries.items():
                self._combos[combo] = found[entry[0]]
        return {r["id"]: self._combos[self._combo(r)] for r in rows}
