"""Training files in the domain DB: membership (eligibility + duplicate rules of the seed),
versions, and the per-member metadata the build needs."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lora_assets.core.aggregate import MemberSummary, validate_training_file_name
from lora_assets.schemas import EnrichmentStatus, TrainingFileStatus
from lora_assets.store import tables as t
from lora_assets.store.queries import now


class TrainingFileError(ValueError):
    """A training-file request that cannot be carried out; the message says which and why."""


class MembershipError(TrainingFileError):
    """Conversations refused as members; `problems` maps each offending id to its reason."""

    def __init__(self, name: str, problems: dict[str, str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {cid}: {reason}" for cid, reason in problems.items())
        super().__init__(f"training file {name!r}: {len(problems)} conversation(s) refused, nothing was added:\n{lines}")


def get_training_file(conn: Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(t.training_files).where(t.training_files.c.name == name)).mappings().first()
    return dict(row) if row else None


def list_training_files(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.select(t.training_files).order_by(t.training_files.c.name)).mappings()]


def conversations_of_batches(conn: Connection, batch_ids: Sequence[str]) -> list[str]:
    """Every conversation of the given batches (unknown batch ids are an error)."""
    known = set(conn.scalars(sa.select(t.batch_jobs.c.id).where(t.batch_jobs.c.id.in_(batch_ids))))
    missing = [b for b in batch_ids if b not in known]
    if missing:
        raise TrainingFileError(f"unknown batch job id(s): {missing}")
    c = t.conversations
    return list(conn.scalars(sa.select(c.c.id).where(c.c.batch_job_id.in_(batch_ids)).order_by(c.c.batch_job_id, c.c.id)))


def _membership_problems(conn: Connection, training_file_id: str | None, ids: Sequence[str]) -> dict[str, str]:
    """Why each requested conversation cannot be a member (empty when all are fine)."""
    problems: dict[str, str] = {}
    seen: set[str] = set()
    for cid in ids:
        if cid in seen:
            problems[cid] = "listed twice in this request"
        seen.add(cid)
    c = t.conversations
    rows = {
        r["id"]: r
        for r in conn.execute(
            sa.select(c.c.id, c.c.enrichment_status, c.c.enriched_file_path, c.c.parse_status, c.c.parse_error,
                      c.c.enrichment_error).where(c.c.id.in_(list(seen)))
        ).mappings()
    }
    existing: set[str] = set()
    if training_file_id is not None:
        existing = set(
            conn.scalars(
                sa.select(t.training_file_conversations.c.conversation_id).where(
                    t.training_file_conversations.c.training_file_id == training_file_id
                )
            )
        )
    for cid in dict.fromkeys(ids):
        row = rows.get(cid)
        if row is None:
            problems.setdefault(cid, "no such conversation")
        elif cid in existing:
            problems.setdefault(cid, "already a member of this training file")
        elif row["enrichment_status"] != EnrichmentStatus.COMPLETED or not row["enriched_file_path"]:
            why = row["enrichment_error"] or row["parse_error"] or ""
            problems.setdefault(
                cid,
                f"not enriched (parse_status={row['parse_status']}, enrichment_status={row['enrichment_status']})"
                + (f": {why}" if why else ""),
            )
    return problems


def eligible_subset(conn: Connection, ids: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Split `ids` into the enriched ones and the rest (with reasons), for `--skip-ineligible`."""
    problems = _membership_problems(conn, None, ids)
    return [i for i in dict.fromkeys(ids) if i not in problems], problems


def create_training_file(
    engine: Engine,
    *,
    name: str,
    conversation_ids: Sequence[str],
    created_by: str,
    description: str | None = None,
    min_quality: float | None = None,
) -> str:
    """Create a training file with its members, in one transaction; refuse (listing every
    offending id and why) rather than skip. Returns the training file id."""
    validate_training_file_name(name)
    if not conversation_ids:
        raise TrainingFileError(f"training file {name!r}: the selection is empty (no conversations)")
    if min_quality is not None and not 0 <= min_quality <= 5:
        raise TrainingFileError(f"training file {name!r}: --min-quality {min_quality} must be between 0 and 5")
    with engine.begin() as conn:
        if get_training_file(conn, name) is not None:
            raise TrainingFileError(f"training file {name!r} already exists (use `training-file add`)")
        problems = _membership_problems(conn, None, conversation_ids)
        if problems:
            raise MembershipError(name, problems)
        file_id = str(uuid.uuid4())
        conn.execute(
            sa.insert(t.training_files).values(
                id=file_id, name=name, description=description, min_quality=min_quality,
                status=TrainingFileStatus.ACTIVE, created_by=created_by,
            )
        )
        _insert_members(conn, file_id, conversation_ids, created_by)
    return file_id


def add_members(engine: Engine, *, name: str, conversation_ids: Sequence[str], added_by: str) -> int:
    """Add conversations to an existing training file (all or none). Returns how many."""
    if not conversation_ids:
        raise TrainingFileError(f"training file {name!r}: the selection is empty (no conversations)")
    with engine.begin() as conn:
        tf = get_training_file(conn, name)
        if tf is None:
            raise TrainingFileError(f"no training file named {name!r}")
        problems = _membership_problems(conn, tf["id"], conversation_ids)
        if problems:
            raise MembershipError(name, problems)
        _insert_members(conn, tf["id"], conversation_ids, added_by)
        conn.execute(sa.update(t.training_files).where(t.training_files.c.id == tf["id"]).values(updated_at=now()))
    return len(conversation_ids)


def _insert_members(conn: Connection, file_id: str, ids: Iterable[str], by: str) -> None:
    conn.execute(
        sa.insert(t.training_file_conversations),
        [{"id": str(uuid.uuid4()), "training_file_id": file_id, "conversation_id": cid, "added_by": by} for cid in ids],
    )


def member_rows(conn: Connection, training_file_id: str) -> list[dict[str, Any]]:
    """Members in the order they were added, with what the build needs (no training text)."""
    c, m = t.conversations, t.training_file_conversations
    q = (
        sa.select(
            c.c.id, c.c.batch_job_id, c.c.enrichment_status, c.c.enriched_file_path, c.c.quality_score,
            c.c.training_pair_count, c.c.turn_count, c.c.human_reviewed, c.c.generator, c.c.model, c.c.cost_usd,
            t.personas.c.persona_key, t.emotional_arcs.c.arc_key, t.training_topics.c.topic_key,
        )
        .select_from(
            m.join(c, c.c.id == m.c.conversation_id)
            .outerjoin(t.personas, t.personas.c.id == c.c.persona_id)
            .outerjoin(t.emotional_arcs, t.emotional_arcs.c.id == c.c.emotional_arc_id)
            .outerjoin(t.training_topics, t.training_topics.c.id == c.c.training_topic_id)
        )
        .where(m.c.training_file_id == training_file_id)
        .order_by(m.c.added_at, m.c.id)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def enrichment_statuses(conn: Connection, conversation_ids: Iterable[str]) -> dict[str, str]:
    """conversation id -> enrichment_status, for the ids the DB knows (one query)."""
    c = t.conversations
    rows = conn.execute(sa.select(c.c.id, c.c.enrichment_status).where(c.c.id.in_(list(conversation_ids))))
    return {cid: status for cid, status in rows}


def summary_of(row: dict[str, Any]) -> MemberSummary:
    return MemberSummary(
        conversation_id=row["id"],
        persona_key=row["persona_key"],
        arc_key=row["arc_key"],
        topic_key=row["topic_key"],
        quality_score=row["quality_score"],
        pair_count=row["training_pair_count"] or 0,
        turn_count=row["turn_count"] or 0,
        human_reviewed=bool(row["human_reviewed"]),
    )


def versions(conn: Connection, training_file_id: str) -> list[dict[str, Any]]:
    v = t.training_file_versions
    q = sa.select(v).where(v.c.training_file_id == training_file_id, v.c.status == "active").order_by(v.c.version)
    return [dict(r) for r in conn.execute(q).mappings()]


def get_version(conn: Connection, name: str, version: int | None = None, *,
                built_by_run: str | None = None) -> dict[str, Any] | None:
    """A version of a training file by name: the given `version`, else the one the Dagster run
    `built_by_run` built, else the latest."""
    tf = get_training_file(conn, name)
    if tf is None:
        return None
    v = t.training_file_versions
    q = sa.select(v).where(v.c.training_file_id == tf["id"], v.c.status == "active")
    if built_by_run is not None:
        q = q.where(v.c.built_by_run == built_by_run)
    q = q.where(v.c.version == version) if version is not None else q.order_by(v.c.version.desc())
    row = conn.execute(q.limit(1)).mappings().first()
    return dict(row) if row else None


class BuildInProgressError(TrainingFileError):
    """Another build claimed the next version of this training file first."""


def claim_version(engine: Engine, training_file_id: str, name: str) -> tuple[str, int]:
    """Claim the next version number BEFORE any blob is written: a `building` row under
    UNIQUE(training_file_id, version). A concurrent build gets BuildInProgressError and writes
    nothing, so it can never overwrite or clean up another build's files."""
    v = t.training_file_versions
    row_id = str(uuid.uuid4())
    try:
        with engine.begin() as conn:
            latest = conn.execute(sa.select(sa.func.max(v.c.version)).where(v.c.training_file_id == training_file_id)).scalar()
            version = int(latest or 0) + 1
            conn.execute(sa.insert(v).values(id=row_id, training_file_id=training_file_id, version=version, status="building"))
    except sa.exc.IntegrityError as exc:
        raise BuildInProgressError(
            f"training file {name!r}: another build claimed the next version at the same time; nothing was written"
        ) from exc
    return row_id, version


def release_version(engine: Engine, row_id: str) -> None:
    """Drop a claimed version whose build failed (its blobs were removed by the builder)."""
    with engine.begin() as conn:
        conn.execute(sa.delete(t.training_file_versions).where(t.training_file_versions.c.id == row_id))


def record_version(conn: Connection, training_file_id: str, row_id: str, values: dict[str, Any]) -> None:
    """Complete the claimed version row and copy its metadata onto training_files (the seed's columns)."""
    conn.execute(sa.update(t.training_file_versions).where(t.training_file_versions.c.id == row_id).values(**values))
    current = {k: values[k] for k in (
        "json_file_path", "jsonl_file_path", "conversation_count", "total_training_pairs", "json_file_size",
        "jsonl_file_size", "avg_quality_score", "min_quality_score", "max_quality_score", "human_reviewed_count",
        "scaffolding_distribution",
    )}
    conn.execute(
        sa.update(t.training_files)
        .where(t.training_files.c.id == training_file_id)
        .values(**current, current_version=values["version"], status=TrainingFileStatus.ACTIVE, updated_at=now())
    )
