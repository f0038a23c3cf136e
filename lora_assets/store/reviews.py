"""Human review in the domain DB: the rows a review CSV is exported from (a batch's or a training
file's conversations, with their transcript read from the blob store) and applying the decisions
a reviewer made (`core.review` reads and checks the CSV itself).

Export streams: conversation rows a page at a time (keyset by id), each conversation's file read
through a bounded blob pool, so an export of 100,000 conversations holds a few pages, never the
partition. Import is all or nothing: one transaction, refused before anything is written when a
row names a conversation the DB does not know.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from lora_assets.core.review import (
    JUDGE_CRITERIA,
    MAX_PROBLEMS,
    ReviewDecision,
    ReviewFileError,
    ReviewRow,
    transcript,
    write_review_csv,
)
from lora_assets.errors import NotFoundError
from lora_assets.store import tables as t
from lora_assets.store.blobs import BlobStore, bounded_map
from lora_assets.store.common import chunks, now

#: Conversation rows read per DB round trip.
PAGE_SIZE = 500


class ReviewTarget(BaseModel):
    """What an export covers: a batch (by partition key / slug or id) or a training file (by name)."""

    kind: Literal["batch", "training_file"]
    key: str
    #: Resolved: the batch id or the training file id.
    id: str
    #: A short label for file names: the batch's partition key, or `<name>-v<current version>`.
    label: str


class ExportRow(BaseModel):
    """A conversation as exported: the CSV row, and how many of its training pairs the enrichment
    proposes as seed examples (`use_as_seed_example`; 0 when it is not enriched)."""

    row: ReviewRow
    seed_example_pairs: int = 0


class ExportSummary(BaseModel):
    """What `write_export` wrote: the rows, and the conversations proposing seed examples (id ->
    pairs proposed; the first `SEED_EXAMPLES_LISTED`, the count covers all)."""

    rows: int
    seed_example_conversations: int
    seed_examples: dict[str, int]


#: Seed-example conversations listed by id in an `ExportSummary`.
SEED_EXAMPLES_LISTED = 200


class ReviewOutcome(BaseModel):
    """What `apply_review` did."""

    rows: int
    approved: int
    rejected: int
    undecided: int
    reviewer: str


def resolve_target(engine: Engine, *, batch: str | None = None, training_file: str | None = None) -> ReviewTarget:
    """The batch (its partition key or id) or training file (its name) an export covers;
    NotFoundError naming it when it does not exist, ValueError unless exactly one is given."""
    if bool(batch) == bool(training_file):
        raise ValueError("give exactly one of a batch or a training file")
    with engine.connect() as conn:
        if batch:
            b = t.batch_jobs
            row = conn.execute(sa.select(b.c.id, b.c.slug).where(sa.or_(b.c.id == batch, b.c.slug == batch))
                               .order_by((b.c.id == batch).desc()).limit(1)).mappings().first()
            if row is None:
                raise NotFoundError(f"batch job {batch!r} not found (see `lora-assets batch list`)")
            return ReviewTarget(kind="batch", key=batch, id=row["id"], label=row["slug"] or row["id"])
        f = t.training_files
        row = conn.execute(sa.select(f.c.id, f.c.current_version).where(f.c.name == training_file)).mappings().first()
        if row is None:
            raise NotFoundError(f"no training file named {training_file!r} (see `lora-assets training-file list`)")
        return ReviewTarget(kind="training_file", key=str(training_file), id=row["id"],
                            label=f"{training_file}-v{row['current_version']}")


def _page_query(target: ReviewTarget, after: str, limit: int) -> sa.Select:
    c = t.conversations
    q = (
        sa.select(
            c.c.id, c.c.file_path, c.c.enriched_file_path, c.c.enrichment_status, c.c.quality_score,
            c.c.judge_scores, t.batch_jobs.c.slug.label("batch_slug"), c.c.batch_job_id,
            t.personas.c.persona_key, t.emotional_arcs.c.arc_key, t.training_topics.c.topic_key,
        )
        .select_from(
            c.outerjoin(t.batch_jobs, t.batch_jobs.c.id == c.c.batch_job_id)
            .outerjoin(t.personas, t.personas.c.id == c.c.persona_id)
            .outerjoin(t.emotional_arcs, t.emotional_arcs.c.id == c.c.emotional_arc_id)
            .outerjoin(t.training_topics, t.training_topics.c.id == c.c.training_topic_id)
        )
        .where(c.c.id > after, c.c.file_path.is_not(None))
    )
    if target.kind == "batch":
        q = q.where(c.c.batch_job_id == target.id)
    else:
        m = t.training_file_conversations
        q = q.where(c.c.id.in_(sa.select(m.c.conversation_id).where(m.c.training_file_id == target.id)))
    return q.order_by(c.c.id).limit(limit)


def _pages(engine: Engine, target: ReviewTarget, page_size: int) -> Iterator[dict[str, Any]]:
    """The target's conversations that have a conversation file (parsed at least), by id, a page
    per short connection."""
    after = ""
    while True:
        with engine.connect() as conn:
            page = [dict(r) for r in conn.execute(_page_query(target, after, page_size)).mappings()]
        if not page:
            return
        yield from page
        after = page[-1]["id"]


def _messages(store: BlobStore, row: dict[str, Any]) -> tuple[list[dict[str, str]], int]:
    """(the conversation's messages, pairs proposed as seed examples): from its enriched.json
    (system prompt + the last pair's history, input and target) when enriched, else from its
    parsed conversation file. Runs on the pool: the bytes are dropped before the next read."""
    if row["enriched_file_path"] and row["enrichment_status"] == "completed":
        doc = json.loads(store.get_bytes(row["enriched_file_path"]))
        pairs = doc.get("training_pairs") or []
        if pairs:
            last = pairs[-1]
            messages = [{"role": "system", "content": last["system_prompt"]}]
            messages += [{"role": h["role"], "content": h["content"]} for h in last["conversation_history"]]
            messages.append({"role": "user", "content": last["current_user_input"]})
            if last.get("target_response"):
                messages.append({"role": "assistant", "content": last["target_response"]})
            seeds = sum(1 for p in pairs if (p.get("training_metadata") or {}).get("use_as_seed_example"))
            return messages, seeds
    doc = json.loads(store.get_bytes(row["file_path"]))
    return [{"role": turn["role"], "content": turn["content"]} for turn in doc.get("turns") or []], 0


def _judge(judge_scores: Any) -> tuple[float | None, dict[str, float]]:
    """(overall, per-criterion scores) of a conversation's `judge_scores` (None / {} when never
    judged or the judge's answer was unusable)."""
    if not isinstance(judge_scores, dict) or "error" in judge_scores:
        return None, {}
    overall = judge_scores.get("overall")
    per = {c: float(judge_scores[c]) for c in JUDGE_CRITERIA if isinstance(judge_scores.get(c), int | float)}
    return (float(overall) if isinstance(overall, int | float) else None), per


def export_rows(engine: Engine, store: BlobStore, target: ReviewTarget, *, pool: ThreadPoolExecutor,
                window: int = 64, page_size: int = PAGE_SIZE) -> Iterator[ExportRow]:
    """One `ExportRow` per conversation of `target` that has a conversation file, by id, streaming
    (rows a page at a time, files through `pool` with at most `window` reads in flight). A file
    that cannot be read is said so in the transcript, never skipped silently."""
    for row, got in bounded_map(pool, lambda r: _messages(store, r), _pages(engine, target, page_size), window):
        if isinstance(got, BaseException):
            text, seeds = f"(conversation file cannot be read: {type(got).__name__}: {got})", 0
        else:
            text, seeds = transcript(got[0]), got[1]
        overall, per = _judge(row["judge_scores"])
        yield ExportRow(
            row=ReviewRow(
                conversation_id=row["id"], batch=row["batch_slug"] or row["batch_job_id"] or "",
                persona=row["persona_key"], arc=row["arc_key"], topic=row["topic_key"],
                quality=row["quality_score"], judge_overall=overall, judge_scores=per, transcript=text,
            ),
            seed_example_pairs=seeds,
        )


def write_export(engine: Engine, store: BlobStore, target: ReviewTarget, handle: IO[str], *,
                 pool: ThreadPoolExecutor, window: int = 64) -> ExportSummary:
    """Stream `target`'s review CSV (`core.review.write_review_csv`) to `handle`, noting which
    conversations the enrichment proposes seed examples in, so a reviewer can look at them first."""
    seeds: dict[str, int] = {}
    seed_conversations = 0

    def rows() -> Iterator[ReviewRow]:
        nonlocal seed_conversations
        for exported in export_rows(engine, store, target, pool=pool, window=window):
            if exported.seed_example_pairs:
                seed_conversations += 1
                if len(seeds) < SEED_EXAMPLES_LISTED:
                    seeds[exported.row.conversation_id] = exported.seed_example_pairs
            yield exported.row

    written = write_review_csv(rows(), handle)
    return ExportSummary(rows=written, seed_example_conversations=seed_conversations, seed_examples=seeds)


def apply_review(engine: Engine, decisions: Sequence[ReviewDecision], reviewer: str,
                 max_problems: int = MAX_PROBLEMS) -> ReviewOutcome:
    """Record a reviewer's decisions on `conversations` in one transaction: `review_decision`,
    `reviewer_notes`, `reviewed_at` and `human_reviewed` (True for approve, False for reject); an
    undecided row (blank decision) leaves its conversation unchanged. All or nothing: a row naming
    a conversation the DB does not know is refused (ReviewFileError naming its line) and nothing
    is written; the first `max_problems` such rows are listed, the rest counted. `reviewer` is who
    imported (reported back; the table has no column for it)."""
    decided = [d for d in decisions if d.decision is not None]
    c = t.conversations
    stamp = now()
    with engine.begin() as conn:
        known: set[str] = set()
        for ids in chunks([d.conversation_id for d in decided]):
            known.update(conn.scalars(sa.select(c.c.id).where(c.c.id.in_(ids))))
        unknown = [d for d in decided if d.conversation_id not in known]
        if unknown:
            raise ReviewFileError([f"line {d.line}: conversation {d.conversation_id!r} is not in the domain database"
                                   for d in unknown[:max_problems]], max(0, len(unknown) - max_problems))
        if decided:
            stmt = sa.update(c).where(c.c.id == sa.bindparam("_id")).values(
                review_decision=sa.bindparam("decision"), reviewer_notes=sa.bindparam("notes"),
                human_reviewed=sa.bindparam("approved"), reviewed_at=stamp, updated_at=stamp)
            # In id order: two imports at once lock their rows in the same order, so one waits for
            # the other (the later one wins) instead of deadlocking (a sorted spreadsheet is common).
            conn.execute(stmt, [{"_id": d.conversation_id, "decision": d.decision, "notes": d.notes or None,
                                 "approved": d.decision == "approve"}
                                for d in sorted(decided, key=lambda d: d.conversation_id)])
    approved = sum(1 for d in decided if d.decision == "approve")
    return ReviewOutcome(rows=len(decisions), approved=approved, rejected=len(decided) - approved,
                         undecided=len(decisions) - len(decided), reviewer=reviewer)
