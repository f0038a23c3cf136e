"""Training files in the domain DB: membership (eligibility + duplicate rules of the seed),
versions, and the per-member metadata the build needs."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection, Engine

from lora_assets.core.aggregate import MemberSummary, validate_training_file_name
from lora_assets.schemas import EnrichmentStatus, TrainingFileStatus
from lora_assets.store import tables as t
from lora_assets.store.common import now


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


def resolve_batches(conn: Connection, refs: Sequence[str]) -> list[str]:
    """The batch job ids that `refs` name (each a batch's partition key (slug) or its id), in
    order; TrainingFileError listing every unknown one. The one lookup of a batch by what a
    person types."""
    b = t.batch_jobs
    rows = conn.execute(sa.select(b.c.id, b.c.slug).where(sa.or_(b.c.id.in_(list(refs)), b.c.slug.in_(list(refs)))))
    by_ref: dict[str, str] = {}
    for batch_id, slug in rows:
        by_ref[batch_id] = batch_id
        if slug:
            by_ref.setdefault(slug, batch_id)
    missing = [r for r in refs if r not in by_ref]
    if missing:
        raise TrainingFileError(f"unknown batch job id(s): {missing} (give a batch's key or id; see `lora-assets batch list`)")
    return list(dict.fromkeys(by_ref[r] for r in refs))


def conversations_of_batches(conn: Connection, batch_ids: Sequence[str]) -> list[str]:
    """Every conversation of the given batches (unknown batch ids are an error)."""
    batch_ids = resolve_batches(conn, batch_ids)
    c = t.conversations
    return list(conn.scalars(sa.select(c.c.id).where(c.c.batch_job_id.in_(batch_ids)).order_by(c.c.batch_job_id, c.c.id)))


def not_enriched_reason(row: Any) -> str | None:
    """Why a conversation row is not usable as an enriched conversation (None when it is): the
    one rule for "enriched", used by membership, the build and the enrichment check. `row` needs
    parse_status, parse_error, enrichment_status, enrichment_error and enriched_file_path."""
    if row["enrichment_status"] == EnrichmentStatus.COMPLETED and row["enriched_file_path"]:
        return None
    why = row["enrichment_error"] or row["parse_error"] or ""
    return (f"not enriched (parse_status={row['parse_status']}, enrichment_status={row['enrichment_status']})"
            + (f": {why}" if why else ""))


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
        elif (reason := not_enriched_reason(row)) is not None:
            problems.setdefault(cid, reason)
    return problems


def eligible_subset(conn: Connection, ids: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Split `ids` into the enriched ones and the rest (with reasons), for `--skip-ineligible`."""
    problems = _membership_problems(conn, None, ids)
    return [i for i in dict.fromkeys(ids) if i not in problems], problems


def _check_thresholds(name: str, min_quality: float | None, min_judge_score: float | None) -> None:
    """Thresholds are scores on the 0-5 scale; refuse anything else, naming the setting."""
    if min_quality is not None and not 0 <= min_quality <= 5:
        raise TrainingFileError(f"training file {name!r}: --min-quality {min_quality} must be between 0 and 5")
    if min_judge_score is not None and not 0 <= min_judge_score <= 5:
        raise TrainingFileError(f"training file {name!r}: min_judge_score {min_judge_score} must be between 0 and 5")


class Selection(BaseModel):
    """Conversations a request selects, and those `skip_ineligible` left out (id -> reason)."""

    conversation_ids: list[str]
    skipped: dict[str, str] = Field(default_factory=dict)


class SelectionError(TrainingFileError):
    """A selection that names both batches and conversations, or neither."""


def select_conversations(
    conn: Connection, *, batches: Sequence[str] = (), conversations: Sequence[str] = (), skip_ineligible: bool = False,
    labels: tuple[str, str] = ("batches", "conversations"),
) -> Selection:
    """The selection rule shared by the CLI and the launch config: either batches (every
    conversation of each) or conversation ids, not both and not neither (SelectionError, naming
    the two as `labels` say, e.g. the CLI's `("--batch", "--conversation")`); with
    `skip_ineligible` the ones that cannot be members are left out and listed instead of refused."""
    if bool(batches) == bool(conversations):
        raise SelectionError(f"give either {labels[0]} or {labels[1]} (one of them, at least once)")
    ids = list(conversations) if conversations else conversations_of_batches(conn, list(batches))
    if not skip_ineligible:
        return Selection(conversation_ids=ids)
    kept, problems = eligible_subset(conn, ids)
    return Selection(conversation_ids=kept, skipped=problems)


class LaunchRequest(BaseModel):
    """What a launch of a training file's build asks for besides the build (the run config)."""

    description: str | None = None
    batches: list[str] = Field(default_factory=list)
    conversations: list[str] = Field(default_factory=list)
    min_quality: float | None = None
    min_judge_score: float | None = None
    skip_ineligible: bool = False

    @property
    def selects(self) -> bool:
        """Whether the request names members (else: rebuild the current membership)."""
        return bool(self.batches or self.conversations)

    @property
    def changes_settings(self) -> bool:
        """Whether the request sets the description or a threshold."""
        return any(v is not None for v in (self.description, self.min_quality, self.min_judge_score))


class LaunchOutcome(BaseModel):
    """What `apply_launch_request` did to the training file."""

    created: bool = False
    added: int = 0
    skipped: dict[str, str] = Field(default_factory=dict)


def apply_launch_request(engine: Engine, name: str, request: LaunchRequest, *, by: str) -> LaunchOutcome:
    """Create training file `name` from the request's selection if it is new, else add the
    selection to it and update the settings the request gives (description, thresholds). All or
    nothing: a refused member (MembershipError names each id and why) writes nothing. With an
    empty request the file must exist (TrainingFileError saying how to create it)."""
    with engine.connect() as conn:
        tf = get_training_file(conn, name)
        selection = select_conversations(conn, batches=request.batches, conversations=request.conversations,
                                         skip_ineligible=request.skip_ineligible) if request.selects else None
    if tf is None:
        if selection is None:
            raise TrainingFileError(
                f"no training file named {name!r}: create it by launching this partition with run config "
                "(`batches` or `conversations`, optionally `description`, `min_quality`, `min_judge_score`), "
                f"or with `lora-assets training-file create {name} --batch BATCH_ID`"
            )
        create_training_file(engine, name=name, conversation_ids=selection.conversation_ids, created_by=by,
                             description=request.description, min_quality=request.min_quality,
                             min_judge_score=request.min_judge_score)
        return LaunchOutcome(created=True, added=len(selection.conversation_ids), skipped=selection.skipped)
    _check_thresholds(name, request.min_quality, request.min_judge_score)
    added = add_members(engine, name=name, conversation_ids=selection.conversation_ids, added_by=by) if selection else 0
    if request.changes_settings:
        settings = {k: getattr(request, k) for k in ("description", "min_quality", "min_judge_score")}
        with engine.begin() as conn:
            conn.execute(sa.update(t.training_files).where(t.training_files.c.id == tf["id"])
                         .values(**{k: v for k, v in settings.items() if v is not None}, updated_at=now()))
    return LaunchOutcome(added=added, skipped=selection.skipped if selection else {})


def create_training_file(
    engine: Engine,
    *,
    name: str,
    conversation_ids: Sequence[str],
    created_by: str,
    description: str | None = None,
    min_quality: float | None = None,
    min_judge_score: float | None = None,
) -> str:
    """Create a training file with its members, in one transaction; refuse (listing every
    offending id and why) rather than skip. Returns the training file id."""
    validate_training_file_name(name)
    if not conversation_ids:
        raise TrainingFileError(f"training file {name!r}: the selection is empty (no conversations)")
    _check_thresholds(name, min_quality, min_judge_score)
    file_id = str(uuid.uuid4())
    try:
        with engine.begin() as conn:
            # The row first: its write lock (and UNIQUE(name)) makes a concurrent create of the
            # same name wait for this one and then fail here, instead of both passing a check.
            conn.execute(
                sa.insert(t.training_files).values(
                    id=file_id, name=name, description=description, min_quality=min_quality,
                    min_judge_score=min_judge_score, status=TrainingFileStatus.ACTIVE, created_by=created_by,
                )
            )
            problems = _membership_problems(conn, None, conversation_ids)
            if problems:
                raise MembershipError(name, problems)
            _insert_members(conn, file_id, conversation_ids, created_by)
    except sa.exc.IntegrityError:
        with engine.connect() as conn:
            if get_training_file(conn, name) is None:
                raise
        raise TrainingFileError(f"training file {name!r} already exists (use `training-file add`)") from None
    return file_id


def add_members(engine: Engine, *, name: str, conversation_ids: Sequence[str], added_by: str) -> int:
    """Add conversations to an existing training file (all or none). Returns how many."""
    if not conversation_ids:
        raise TrainingFileError(f"training file {name!r}: the selection is empty (no conversations)")
    f = t.training_files
    with engine.begin() as conn:
        # Touch the file's row first: two adds to one file run one after the other (the second
        # sees the first's members and refuses them as duplicates, instead of a constraint error).
        touched = conn.execute(sa.update(f).where(f.c.name == name).values(updated_at=now())).rowcount
        tf = get_training_file(conn, name) if touched else None
        if tf is None:
            raise TrainingFileError(f"no training file named {name!r}")
        problems = _membership_problems(conn, tf["id"], conversation_ids)
        if problems:
            raise MembershipError(name, problems)
        _insert_members(conn, tf["id"], conversation_ids, added_by)
    return len(conversation_ids)


def _insert_members(conn: Connection, file_id: str, ids: Iterable[str], by: str) -> None:
    conn.execute(
        sa.insert(t.training_file_conversations),
        [{"id": str(uuid.uuid4()), "training_file_id": file_id, "conversation_id": cid, "added_by": by} for cid in ids],
    )


#: The columns of a `member_rows` row, in order.
MEMBER_COLUMNS = ("id", "batch_job_id", "enrichment_status", "enriched_file_path", "quality_score",
                  "training_pair_count", "turn_count", "human_reviewed", "generator", "model", "cost_usd",
                  "judge_scores", "review_decision", "reviewer_notes", "batch_name", "persona_key", "arc_key",
                  "topic_key")
_MEMBER_INDEX = {name: i for i, name in enumerate(MEMBER_COLUMNS)}


class MemberRow(Mapping[str, Any]):
    """One member of a training file, read-only, by column name (`MEMBER_COLUMNS`): a mapping over
    a tuple. A build holds every member's row; a dict each took ≈ 1 KB, this ≈ 0.2 KB."""

    __slots__ = ("_values",)

    def __init__(self, values: tuple[Any, ...]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[_MEMBER_INDEX[key]]
        except KeyError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(MEMBER_COLUMNS)

    def __len__(self) -> int:
        return len(MEMBER_COLUMNS)

    def __repr__(self) -> str:
        return f"MemberRow({dict(self)!r})"


def member_rows(conn: Connection, training_file_id: str) -> list[MemberRow]:
    """Members in the order they were added, with what the build needs (no training text),
    including their human review state (`review_decision`, `reviewer_notes`)."""
    c, m = t.conversations, t.training_file_conversations
    source = {"batch_name": t.batch_jobs.c.name, "persona_key": t.personas.c.persona_key,
              "arc_key": t.emotional_arcs.c.arc_key, "topic_key": t.training_topics.c.topic_key}
    q = (
        sa.select(*(source[name].label(name) if name in source else c.c[name] for name in MEMBER_COLUMNS))
        .select_from(
            m.join(c, c.c.id == m.c.conversation_id)
            .outerjoin(t.batch_jobs, t.batch_jobs.c.id == c.c.batch_job_id)
            .outerjoin(t.personas, t.personas.c.id == c.c.persona_id)
            .outerjoin(t.emotional_arcs, t.emotional_arcs.c.id == c.c.emotional_arc_id)
            .outerjoin(t.training_topics, t.training_topics.c.id == c.c.training_topic_id)
        )
        .where(m.c.training_file_id == training_file_id)
        .order_by(m.c.added_at, m.c.id)
    )
    # The driver returns a new string object per row for values most rows share (batch, status,
    # model, scaffolding keys…), so each is kept once.
    shared: dict[Any, Any] = {}
    repeated = [name in _SHARED_MEMBER_VALUES for name in MEMBER_COLUMNS]
    return [MemberRow(tuple(shared.setdefault(v, v) if same and isinstance(v, str) else v
                            for v, same in zip(r, repeated, strict=True)))
            for r in conn.execute(q)]


#: `member_rows` columns whose values repeat across members.
_SHARED_MEMBER_VALUES = frozenset({"batch_job_id", "enrichment_status", "generator", "model", "review_decision",
                                   "batch_name", "persona_key", "arc_key", "topic_key"})


def batch_rows(conn: Connection, batch_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """id -> {id, name, model, created_at} of the given batch jobs (no scaffolding snapshot)."""
    b = t.batch_jobs
    q = sa.select(b.c.id, b.c.name, b.c.model, b.c.created_at).where(b.c.id.in_(list(batch_ids)))
    return {r["id"]: dict(r) for r in conn.execute(q).mappings()}


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
    """Other builds kept claiming the next version of this training file before this one could."""


#: Claims of a version number tried before giving up: each lost race means another build got a
#: number, so this only runs out under a storm of concurrent builds of one file.
_CLAIM_ATTEMPTS = 8


def claim_version(engine: Engine, training_file_id: str, name: str) -> tuple[str, int]:
    """Claim the next version number BEFORE any blob is written: a `building` row under
    UNIQUE(training_file_id, version). Builds running at once each get their own number (a claim
    that loses the race takes the next one), so none can overwrite or clean up another build's
    files; BuildInProgressError only when the race is lost `_CLAIM_ATTEMPTS` times."""
    v = t.training_file_versions
    for _ in range(_CLAIM_ATTEMPTS):
        row_id = str(uuid.uuid4())
        # One INSERT … SELECT: on SQLite the statement takes the write lock before it reads the
        # maximum (a read-then-write transaction would fail with "database is locked" instead of
        # waiting); on PostgreSQL a concurrent claim of the same number is a unique violation.
        next_version = (sa.select(sa.literal(row_id), sa.literal(training_file_id),
                                  sa.func.coalesce(sa.func.max(v.c.version), 0) + 1, sa.literal("building"))
                        .where(v.c.training_file_id == training_file_id))
        try:
            with engine.begin() as conn:
                conn.execute(sa.insert(v).from_select(["id", "training_file_id", "version", "status"], next_version))
                version = conn.execute(sa.select(v.c.version).where(v.c.id == row_id)).scalar_one()
        except sa.exc.IntegrityError:
            continue
        return row_id, int(version)
    raise BuildInProgressError(
        f"training file {name!r}: {_CLAIM_ATTEMPTS} other builds claimed the next version first; nothing was written"
    )


def release_version(engine: Engine, row_id: str) -> None:
    """Drop a claimed version whose build failed (its blobs were removed by the builder)."""
    with engine.begin() as conn:
        conn.execute(sa.delete(t.training_file_versions).where(t.training_file_versions.c.id == row_id))


def record_version(conn: Connection, training_file_id: str, row_id: str, values: dict[str, Any]) -> None:
    """Complete the claimed version row and copy its metadata onto training_files (the seed's
    columns) unless a higher version is already recorded there: builds that finish out of order
    leave `current_version` at the highest built version, never move it back."""
    conn.execute(sa.update(t.training_file_versions).where(t.training_file_versions.c.id == row_id).values(**values))
    current = {k: values[k] for k in (
        "json_file_path", "jsonl_file_path", "conversation_count", "total_training_pairs", "json_file_size",
        "jsonl_file_size", "avg_quality_score", "min_quality_score", "max_quality_score", "human_reviewed_count",
        "scaffolding_distribution",
    )}
    f = t.training_files
    # The guard is in the UPDATE itself: PostgreSQL re-evaluates it on the row a concurrent
    # recorder just committed, SQLite runs one writer at a time.
    conn.execute(
        sa.update(f)
        .where(f.c.id == training_file_id, f.c.current_version < values["version"])
        .values(**current, current_version=values["version"], status=TrainingFileStatus.ACTIVE, updated_at=now())
    )


def training_files_holding_batch(conn: Connection, batch_id: str) -> list[dict[str, Any]]:
    """Training files with members from batch `batch_id`: {name, current_version, members (from
    that batch)}, by name. After the batch is re-enriched they are stale until rebuilt."""
    f, m, c = t.training_files, t.training_file_conversations, t.conversations
    q = (
        sa.select(f.c.name, f.c.current_version, sa.func.count(m.c.conversation_id).label("members"))
        .select_from(f.join(m, m.c.training_file_id == f.c.id).join(c, c.c.id == m.c.conversation_id))
        .where(c.c.batch_job_id == batch_id)
        .group_by(f.c.id, f.c.name, f.c.current_version)
        .order_by(f.c.name)
    )
    return [dict(r) for r in conn.execute(q).mappings()]
