"""The build of a training-file version, outside Dagster: quality and Claude-judge filters →
exact/near-duplicate removal (one GET per member) → seeded split by conversation → claim the
next version → stream every output → dataset card → record the version row. Either every output
of the version is stored and recorded, or none is (every key is removed on any failure).

Plain Python over the domain DB (an SQLAlchemy engine) and a `BlobStore`; the `training_files`
asset only reads its partition, config and resources, calls `build_training_file` and turns a
`BuildError` into a run failure.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from lora_assets.core.aggregate import AggregateStats, AggregateWriter, write_training_json
from lora_assets.core.card import SourceBatch, dataset_card
from lora_assets.core.dedup import DedupDecision, Deduplicator, TargetTexts, quality_filter
from lora_assets.core.export import ExportStats, ExportWriter, axolotl_config, chat_example
from lora_assets.core.leakage import LeakageReport, LeakageThresholds
from lora_assets.core.tokens import LengthReport, TokenizerLoadError, token_counter
from lora_assets.core.split import MIN_TURN_WORDS, SplitReport, grouped_split
from lora_assets.schemas import ConsultantProfile, EnrichedConversation, EnrichmentStatus
from lora_assets.store import db as dbq
from lora_assets.store import training_files as tfq
from lora_assets.store.blobs import BlobStore, bounded_map, release_freed_memory
from lora_assets.training_stats import APPROVE, BuildMeasures, Measured, filters_run, is_rejected, with_review

VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0

#: Output files of a version, by format name (what `training-file download --format` takes).
OUTPUTS = {
    "json": "{name}.json",
    "jsonl": "{name}.jsonl",
    "messages-train": "train.messages.jsonl",
    "messages-validation": "validation.messages.jsonl",
    "openai-train": "openai.train.jsonl",
    "openai-validation": "openai.validation.jsonl",
    "sharegpt-train": "sharegpt.train.jsonl",
    "sharegpt-validation": "sharegpt.validation.jsonl",
    "parquet": "pairs.parquet",
    "axolotl": "axolotl.yml",
    "card": "README.md",
}
#: Formats written in the streaming pass (the others are made from them afterwards).
_STREAMED = tuple(fmt for fmt in OUTPUTS if fmt not in ("json", "axolotl", "card"))
_SPLIT_FILES = tuple((fmt, side) for fmt in ("messages", "openai", "sharegpt") for side in ("train", "validation"))


def version_prefix(name: str, version: int) -> str:
    """Blob key prefix of version `version` of training file `name`."""
    return f"training-files/{name}/v{version}"


class BuildError(ValueError):
    """A build a user can fix: the message names the training file, the thing and the reason."""


class MemberFileError(Exception):
    """A member's enriched.json cannot be used; names the conversation, the file and why."""


class BuildPlan(BaseModel):
    """What to build: the next version of training file `name`, split this way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    validation_fraction: float = Field(default=VALIDATION_FRACTION, gt=0, lt=1)
    split_seed: int = SPLIT_SEED
    tokenizer: str | None = Field(
        default=None, description="Local tokenizer.json (or HF tokenizer directory) to count tokens with; "
        "None: the labelled chars/4 estimate.")
    max_length: int | None = Field(
        default=None, ge=1, description="Training max_length to judge truncation at; None: the recommended one.")
    leakage_thresholds: LeakageThresholds = Field(default_factory=LeakageThresholds)


class OutputFile(BaseModel):
    """One stored output of a version."""

    path: str
    bytes: int
    lines: int | None = None
    rows: int | None = None


class KeptMember(BaseModel):
    """A member that made it into the version, as a person reads it in the members table."""

    conversation_id: str
    batch_id: str | None = None
    batch_name: str | None = None
    persona_key: str | None = None
    arc_key: str | None = None
    topic_key: str | None = None
    quality_score: float | None = None
    judge_score: float | None = None
    human_reviewed: bool = False


class BuildResult(BaseModel):
    """What a build stored and recorded (also on the version row), for the asset's metadata."""

    name: str
    version: int
    prefix: str
    location: str
    outputs: dict[str, OutputFile]
    members: int
    kept: list[KeptMember]
    min_quality: float | None
    min_judge_score: float | None
    quality_filtered_out: int
    judge_filtered_out: int
    review_rejected_out: int
    filters_run: list[str]
    exact_duplicates: int
    near_duplicates: int
    train_conversations: int
    validation_conversations: int
    conversations: int
    training_pairs: int
    estimated_tokens: int
    avg_quality: float | None
    min_quality_score: float | None
    max_quality_score: float | None
    human_reviewed_count: int
    quality_histogram: list[int]
    scaffolding_distribution: dict[str, dict[str, int]]
    lengths: LengthReport
    max_length: int | None
    leakage: LeakageReport
    leakage_blocking: list[str]
    leakage_warnings: list[str]
    split_groups: SplitReport
    card: str


def judge_score_of(judge_scores: Any) -> float | None:
    """The Claude judge's overall score stored on a conversation row (`judge_scores`), or None
    when it was never judged or its judge answer was unusable (`{"error": ...}`)."""
    if not isinstance(judge_scores, dict) or "error" in judge_scores:
        return None
    overall = judge_scores.get("overall")
    return float(overall) if isinstance(overall, int | float) else None


def _member(row: dict[str, Any], data: bytes | BaseException) -> EnrichedConversation:
    """A member's enriched conversation from its file's bytes (or the error reading them), or
    MemberFileError naming it (missing file, invalid JSON, or pairs that belong to another
    conversation, e.g. a copied file)."""
    where = f"conversation {row['id']} ({row['enriched_file_path']})"
    if isinstance(data, BaseException):
        raise MemberFileError(f"{where}: enriched.json cannot be read ({data.__class__.__name__}: {data})") from data
    try:
        conv = EnrichedConversation.model_validate_json(data)
    except ValueError as exc:
        first = " ".join(str(exc).split())[:300]
        raise MemberFileError(f"{where}: enriched.json is not a valid v4.0 enriched conversation: {first}") from exc
    foreign = {p.conversation_id for p in conv.training_pairs} - {row["id"]}
    if foreign:
        raise MemberFileError(
            f"{where}: its training pairs carry conversation_id {sorted(foreign)} — the file belongs to another "
            "conversation (copied or overwritten); re-enrich it"
        )
    return conv


class _LocalCopies:
    """The kept members' enriched.json bytes in one local temp file, so the second pass reads
    each member from local disk instead of from the blob store again (one GET per member)."""

    def __init__(self) -> None:
        # Unlinked at creation (TemporaryFile): nothing is left behind whatever happens.
        self._file = tempfile.TemporaryFile()
        self._where: dict[str, tuple[int, int]] = {}
        self._end = 0

    def put(self, conversation_id: str, data: bytes) -> None:
        self._where[conversation_id] = (self._end, len(data))
        self._file.write(data)  # appends: every put happens before the first get
        self._end += len(data)

    def get(self, conversation_id: str) -> bytes:
        offset, size = self._where[conversation_id]
        self._file.seek(offset)
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()


@dataclass
class _Inputs:
    """What the build reads from the DB before touching any blob."""

    tf: dict[str, Any]
    members: list[dict[str, Any]]
    consultant: ConsultantProfile
    batches: dict[str, dict[str, Any]]


@dataclass
class _Curation:
    """Who is in: the filters' and dedup's decisions, and the kept members' bytes."""

    review_rejected: list[dict[str, Any]] = field(default_factory=list)
    quality_filtered: list[dict[str, Any]] = field(default_factory=list)
    judge_filtered: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[tuple[dict[str, Any], DedupDecision]] = field(default_factory=list)
    dedup: Deduplicator = field(default_factory=Deduplicator)
    copies: _LocalCopies = field(default_factory=_LocalCopies)
    #: By kept member: what its example adds to its split, measured in pass 1 (None: it exports
    #: no example; `_UNMEASURED`: its turns do not form one, which pass 2 reports as it did).
    measured: list[Any] = field(default_factory=list)
    # Kept member id -> digests of its assistant turns: the split keeps sharers on one side.
    turn_keys: dict[str, frozenset[bytes]] = field(default_factory=dict)


#: A kept member whose example could not be built in pass 1 (pass 2's export raises the error).
_UNMEASURED = object()


def _measure(conv: EnrichedConversation, row: dict[str, Any], targets: TargetTexts, measures: BuildMeasures) -> Any:
    """Pass 1's share of a kept member's measures (see `BuildMeasures.measure`), its answers'
    text normalised once for dedup and the leakage check."""
    try:
        example = chat_example(conv, row["id"])
    except ValueError:
        return _UNMEASURED
    return measures.measure(example, row, known=targets.known())


def _turn_keys(targets: TargetTexts) -> frozenset[bytes]:
    """`split.turn_keys` of the member's answers, from the text dedup normalised already (the same
    digests: normalised answers of at least MIN_TURN_WORDS words; tested)."""
    return frozenset(hashlib.blake2b(text.encode(), digest_size=16).digest()
                     for text, words in zip(targets.normalised, targets.words, strict=True)
                     if len(words) >= MIN_TURN_WORDS)


def _load(engine: Engine, name: str) -> _Inputs:
    """The training file, its members, the consultant profile and the members' batches."""
    with engine.connect() as conn:
        tf = tfq.get_training_file(conn, name)
        if tf is None:
            raise BuildError(f"no training file named {name!r} in the domain DB (create it from the launch dialog "
                             "with run config, or with `lora-assets training-file create`)")
        members = tfq.member_rows(conn, tf["id"])
        consultant = dbq.read_consultant_profile(conn)
        batches = tfq.batch_rows(conn, {m["batch_job_id"] for m in members if m["batch_job_id"]})
    if not members:
        raise BuildError(f"training file {name!r} has no members")
    stale = {m["id"]: m["enrichment_status"] for m in members
             if m["enrichment_status"] != EnrichmentStatus.COMPLETED or not m["enriched_file_path"]}
    if stale:
        raise BuildError(f"training file {name!r}: members no longer enriched: {stale}")
    return _Inputs(tf, members, consultant, batches)


def _filter(members: list[dict[str, Any]], min_quality: float | None, min_judge_score: float | None,
            cur: _Curation) -> list[dict[str, Any]]:
    """Leave out what a human reviewer rejected, then apply the quality filter, then the judge
    filter (a member below both counts as low quality; one never judged counts as below
    `min_judge_score`). Returns the candidates."""
    candidates = []
    for m in members:
        judge = judge_score_of(m["judge_scores"])
        if is_rejected(m):
            cur.review_rejected.append(m)
        elif not quality_filter(tfq.summary_of(m), min_quality):
            cur.quality_filtered.append(m)
        elif min_judge_score is not None and (judge is None or judge < min_judge_score):
            cur.judge_filtered.append(m)
        else:
            candidates.append(m)
    return candidates


def _curate(name: str, inputs: _Inputs, store: BlobStore, concurrency: int, measures: BuildMeasures) -> _Curation:
    """Pass 1: filters and dedup decide who is in, and each kept member's example is measured
    (lengths, diversity, leakage sketches: everything but its split) while the next members are
    read; the kept members' bytes are copied locally for pass 2."""
    cur = _Curation()
    candidates = _filter(inputs.members, inputs.tf["min_quality"], inputs.tf.get("min_judge_score"), cur)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="blobs") as pool:
        try:
            reads = bounded_map(pool, lambda r: store.get_bytes(r["enriched_file_path"]), candidates, 2 * concurrency)
            for number, (m, data) in enumerate(reads, start=1):
                conv = _member(m, data)
                targets = TargetTexts.of(conv)
                decision = cur.dedup.check(conv, conversation_id=m["id"], targets=targets)
                if decision.keep:
                    cur.kept.append(m)
                    cur.turn_keys[m["id"]] = _turn_keys(targets)
                    cur.copies.put(m["id"], data)  # type: ignore[arg-type] - _member raised on an exception
                    cur.measured.append(_measure(conv, m, targets, measures))
                else:
                    cur.dropped.append((m, decision))
                if number % 256 == 0:
                    release_freed_memory()
        except MemberFileError as exc:
            cur.copies.close()
            raise BuildError(f"training file {name!r}: {exc}; no version was written") from exc
    if not cur.kept:
        cur.copies.close()
        raise BuildError(f"training file {name!r}: no conversation left after quality filter "
                         f"({len(cur.quality_filtered)}), judge filter ({len(cur.judge_filtered)}), review "
                         f"rejections ({len(cur.review_rejected)}) and dedup ({len(cur.dropped)})")
    return cur


class _Tee:
    """A binary write handle that writes to two: the JSONL goes to the store and to a local copy,
    from which the JSON document is then made (instead of reading the JSONL back from the store)."""

    def __init__(self, first: IO[bytes], second: IO[bytes]) -> None:
        self._first, self._second = first, second

    def write(self, data: bytes) -> int:
        self._first.write(data)
        self._second.write(data)
        return len(data)


def _stream_outputs(store: BlobStore, key: dict[str, str], cur: _Curation, split: dict[str, str],
                    min_quality: float | None, measures: BuildMeasures,
                    jsonl_copy: IO[bytes]) -> tuple[AggregateStats, ExportStats]:
    """Pass 2: the JSONL (also into `jsonl_copy`) and every export at once, conversation by
    conversation (each with the DB's review state on its pairs); every exported chat example is
    measured on the way. The store uploads each file part by part while this goes on."""
    with ExitStack() as stack:
        handles = {fmt: stack.enter_context(store.writer(key[fmt])) for fmt in _STREAMED}
        aggregate = AggregateWriter(_Tee(handles["jsonl"], jsonl_copy))
        # Entered after the handles, so it is closed (Parquet footer) before they are.
        exports = stack.enter_context(ExportWriter(
            messages_train=handles["messages-train"], messages_validation=handles["messages-validation"],
            openai_train=handles["openai-train"], openai_validation=handles["openai-validation"],
            sharegpt_train=handles["sharegpt-train"], sharegpt_validation=handles["sharegpt-validation"],
            parquet=handles["parquet"], min_trained_quality=min_quality,
        ))
        for index, (m, measured) in enumerate(zip(cur.kept, cur.measured, strict=True)):
            cur.measured[index] = None  # recorded below: its sketches then live in the leakage check only
            conv = with_review(_member(m, cur.copies.get(m["id"])), m)
            aggregate.add(conv, conversation_id=m["id"])
            example = exports.add(conv, split[m["id"]], conversation_id=m["id"])  # type: ignore[arg-type]
            if measured is _UNMEASURED:  # cannot happen (the export raised); measured now to be safe
                measures.add(example, split[m["id"]], m)  # type: ignore[arg-type]
            else:
                measures.record(measured, split[m["id"]], m)  # type: ignore[arg-type]
        export_stats = exports.close()
        return aggregate.stats, export_stats


def _sources(kept: list[dict[str, Any]], batches: dict[str, dict[str, Any]]) -> list[SourceBatch]:
    """Provenance of every batch that contributed kept members."""
    sources = []
    for b, n in sorted(Counter(m["batch_job_id"] for m in kept).items(), key=lambda kv: str(kv[0])):
        if b not in batches:
            continue
        mine = [m for m in kept if m["batch_job_id"] == b]
        sources.append(SourceBatch(
            batch_id=b, name=batches[b]["name"], model=batches[b]["model"],
            generator="simulator" if any(m["generator"] == "simulator" for m in mine) else "claude",
            created=batches[b]["created_at"], conversations=n,
            cost_usd=round(sum(m["cost_usd"] or 0 for m in mine), 6),
        ))
    return sources


@dataclass
class _Built:
    """The figures of a version while it is being written."""

    version: int
    created: datetime
    stats: AggregateStats
    export: ExportStats
    split: dict[str, str]
    measured: Measured
    split_report: SplitReport
    card: str = ""
    outputs: dict[str, OutputFile] = field(default_factory=dict)


def _write_rest(plan: BuildPlan, inputs: _Inputs, cur: _Curation, store: BlobStore, key: dict[str, str],
                built: _Built, jsonl_copy: IO[bytes]) -> None:
    """The JSON document (from the local copy of the JSONL), the Axolotl snippet and the
    dataset card."""
    jsonl_copy.seek(0)
    with store.writer(key["json"]) as json_out:
        write_training_json(dataset_name=plan.name, created_date=built.created, consultant=inputs.consultant,
                            stats=built.stats, jsonl_in=jsonl_copy, json_out=json_out)
    store.put_bytes(key["axolotl"], axolotl_config(
        train_path=OUTPUTS["messages-train"],
        validation_path=OUTPUTS["messages-validation"] if built.export.conversations_validation else None,
        sequence_len=built.measured.lengths.recommended_sequence_len,
        sequence_len_counted_with=built.measured.lengths.method).encode())
    tf = inputs.tf
    built.card = dataset_card(
        name=plan.name, stats=built.stats, sources=_sources(cur.kept, inputs.batches), export=built.export,
        dedup=cur.dedup.stats, min_quality=tf["min_quality"], quality_filtered_out=len(cur.quality_filtered),
        min_judge_score=tf.get("min_judge_score"), judge_filtered_out=len(cur.judge_filtered),
        validation_fraction=plan.validation_fraction, split_seed=plan.split_seed, version=built.version,
        description=tf["description"], created_date=built.created,
        train_file=OUTPUTS["messages-train"], validation_file=OUTPUTS["messages-validation"],
        review_rejected_out=len(cur.review_rejected), lengths=built.measured.lengths, leakage=built.measured.leakage,
        filters_run=filters_run(tf["min_quality"], tf.get("min_judge_score")),
        split_report=built.split_report,
    )
    store.put_bytes(key["card"], built.card.encode())


def _outputs(store: BlobStore, key: dict[str, str], built: _Built) -> dict[str, OutputFile]:
    """Every output with its size and, for line formats, its line (or row) count."""
    outputs = {fmt: OutputFile(path=key[fmt], bytes=store.size(key[fmt])) for fmt in OUTPUTS}
    for fmt, side in _SPLIT_FILES:
        outputs[f"{fmt}-{side}"].lines = built.export.lines(fmt, side)  # type: ignore[arg-type]
    outputs["jsonl"].lines = built.stats.total_training_pairs
    outputs["parquet"].rows = built.export.parquet_rows
    return outputs


def _version_values(plan: BuildPlan, inputs: _Inputs, cur: _Curation, built: _Built, run_id: str) -> dict[str, Any]:
    """The version row: the seed's metadata columns, outputs, curation stats, members, split."""
    qs, stats, out = built.stats.quality_summary, built.stats, built.outputs
    return {
        "version": built.version, "status": "active",
        "json_file_path": out["json"].path, "jsonl_file_path": out["jsonl"].path,
        "conversation_count": stats.conversation_count, "total_training_pairs": stats.total_training_pairs,
        "json_file_size": out["json"].bytes, "jsonl_file_size": out["jsonl"].bytes,
        "avg_quality_score": qs.avg_quality_score, "min_quality_score": qs.min_quality_score,
        "max_quality_score": qs.max_quality_score, "human_reviewed_count": qs.human_reviewed_count,
        "scaffolding_distribution": _distribution(plan.name, built),
        "outputs": {fmt: o.model_dump(exclude_none=True) for fmt, o in out.items()},
        "stats": {
            "members": len(inputs.members),
            "review_rejected_out": len(cur.review_rejected),
            "quality_filtered_out": len(cur.quality_filtered),
            "judge_filtered_out": len(cur.judge_filtered),
            "min_judge_score": inputs.tf.get("min_judge_score"),
            "exact_duplicates": cur.dedup.stats.exact_duplicates,
            "near_duplicates": cur.dedup.stats.near_duplicates,
            "train_conversations": built.export.conversations_train,
            "validation_conversations": built.export.conversations_validation,
            "estimated_tokens": stats.estimated_tokens,
            "dropped": [{"conversation_id": m["id"], "reason": d.reason, "duplicate_of": d.duplicate_of}
                        for m, d in cur.dropped],
            "filtered": [{"conversation_id": m["id"], "quality_score": m["quality_score"]} for m in cur.quality_filtered],
            "judge_filtered": [{"conversation_id": m["id"], "judge_score": judge_score_of(m["judge_scores"])}
                               for m in cur.judge_filtered],
            "review_rejected": [m["id"] for m in cur.review_rejected],
            "filters_run": filters_run(inputs.tf["min_quality"], inputs.tf.get("min_judge_score")),
            "split_groups": built.split_report.model_dump(mode="json"),
            **built.measured.stats(),
        },
        "conversation_ids": [m["id"] for m in cur.kept],
        "split": built.split,
        "built_by_run": run_id,
    }


def _distribution(name: str, built: _Built) -> dict[str, dict[str, int]]:
    return built.stats.dataset_metadata(dataset_name=name, created_date=built.created).scaffolding_distribution.model_dump()


def _rollback(engine: Engine, store: BlobStore, key: dict[str, str], version_row: str) -> None:
    """No partial version: this build owns v<N> (claimed), so removing its keys can never touch
    another build's files."""
    for k in key.values():
        if store.exists(k):
            store.delete(k)
    tfq.release_version(engine, version_row)


def _result(plan: BuildPlan, inputs: _Inputs, cur: _Curation, built: _Built, store: BlobStore) -> BuildResult:
    qs, stats = built.stats.quality_summary, built.stats
    prefix = version_prefix(plan.name, built.version)
    kept = [KeptMember(
        conversation_id=m["id"], batch_id=m["batch_job_id"], batch_name=m.get("batch_name"),
        persona_key=m["persona_key"], arc_key=m["arc_key"], topic_key=m["topic_key"],
        quality_score=m["quality_score"], judge_score=judge_score_of(m["judge_scores"]),
        human_reviewed=bool(m["human_reviewed"]) or m.get("review_decision") == APPROVE,
    ) for m in cur.kept]
    blocking, warnings = built.measured.leakage.problems(built.measured.leakage_thresholds)
    no_validation = built.split_report.line()
    if no_validation:
        warnings = [no_validation, *warnings]
    return BuildResult(
        name=plan.name, version=built.version, prefix=prefix, location=f"{store.location}/{prefix}",
        outputs=built.outputs, members=len(inputs.members), kept=kept,
        min_quality=inputs.tf["min_quality"], min_judge_score=inputs.tf.get("min_judge_score"),
        quality_filtered_out=len(cur.quality_filtered), judge_filtered_out=len(cur.judge_filtered),
        review_rejected_out=len(cur.review_rejected),
        filters_run=filters_run(inputs.tf["min_quality"], inputs.tf.get("min_judge_score")),
        exact_duplicates=cur.dedup.stats.exact_duplicates, near_duplicates=cur.dedup.stats.near_duplicates,
        train_conversations=built.export.conversations_train,
        validation_conversations=built.export.conversations_validation,
        conversations=stats.conversation_count, training_pairs=stats.total_training_pairs,
        estimated_tokens=stats.estimated_tokens, avg_quality=qs.avg_quality_score,
        min_quality_score=qs.min_quality_score, max_quality_score=qs.max_quality_score,
        human_reviewed_count=qs.human_reviewed_count, quality_histogram=list(stats.quality_histogram),
        scaffolding_distribution=_distribution(plan.name, built), card=built.card,
        lengths=built.measured.lengths, max_length=built.measured.max_length, leakage=built.measured.leakage,
        leakage_blocking=blocking, leakage_warnings=warnings, split_groups=built.split_report,
    )


def build_training_file(plan: BuildPlan, *, engine: Engine, store: BlobStore, concurrency: int,
                        run_id: str) -> BuildResult:
    """Build, store and record the next version of training file `plan.name` (see the module
    docstring). `concurrency` bounds the blob reads in flight; `run_id` is recorded as the
    version's builder (its checks judge that version). Raises BuildError for what a user can
    fix (unknown file, no members, a tokenizer that cannot be loaded, a member's unusable file,
    nothing left after curation, a concurrent build); nothing partial is left behind in any case."""
    try:
        counter = token_counter(plan.tokenizer)  # before anything is read: a bad path fails fast
    except TokenizerLoadError as exc:
        raise BuildError(f"training file {plan.name!r}: {exc}; no version was written") from exc
    inputs = _load(engine, plan.name)
    measures = BuildMeasures(counter, max_length=plan.max_length, thresholds=plan.leakage_thresholds)
    cur = _curate(plan.name, inputs, store, concurrency, measures)
    try:
        grouped = grouped_split([tfq.summary_of(m) for m in cur.kept], validation_fraction=plan.validation_fraction,
                                seed=plan.split_seed, keys=cur.turn_keys)
        split = grouped.sides
        try:
            version_row, version = tfq.claim_version(engine, inputs.tf["id"], plan.name)
        except tfq.BuildInProgressError as exc:
            raise BuildError(str(exc)) from exc
        prefix = version_prefix(plan.name, version)
        key = {fmt: f"{prefix}/{pattern.format(name=plan.name)}" for fmt, pattern in OUTPUTS.items()}
        try:
            with tempfile.TemporaryFile(prefix="lora-jsonl-") as jsonl_copy:
                stats, export = _stream_outputs(store, key, cur, split, inputs.tf["min_quality"], measures, jsonl_copy)
                built = _Built(version, datetime.now(UTC), stats, export, split, measures.result(), grouped.report)
                _write_rest(plan, inputs, cur, store, key, built, jsonl_copy)
            built.outputs = _outputs(store, key, built)
            with engine.begin() as conn:
                tfq.record_version(conn, inputs.tf["id"], version_row,
                                   _version_values(plan, inputs, cur, built, run_id))
        except BaseException as exc:
            _rollback(engine, store, key, version_row)
            # Unusable member data (core raises ValueError naming the conversation) is the user's
            # to fix; anything else is a bug or an outage and propagates as it is.
            if isinstance(exc, MemberFileError | ValueError):
                raise BuildError(f"training file {plan.name!r}: {exc}; no version was written") from exc
            raise
    finally:
        cur.copies.close()
    return _result(plan, inputs, cur, built, store)
